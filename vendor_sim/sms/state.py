"""One simulated SMS vendor's platform, in memory: keys, approved signatures (签名) and templates,
the messages it accepted and the delivery reports it will hand out.

How it behaves is set per phone number (or for all, :attr:`SmsSim.default_mode`):

- ``accept``: accepted, delivered after ``receipt_delay_s`` (the report shows up then);
- ``undeliverable``: accepted, then reported failed (a phone switched off for days);
- ``fail``: refused with the vendor's throttling error (the sender retries);
- ``timeout``: the answer never comes within any sane timeout (``hang_s``);
- ``silent``: accepted, never reported.

The HTTP faces (:mod:`vendor_sim.sms.aliyun`, :mod:`vendor_sim.sms.tencent`) check each request's
real signature with the key of the id it names before anything else.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SmsRecord", "SmsSim"]

MODES = ("accept", "undeliverable", "fail", "timeout", "silent")


@dataclass
class SmsRecord:
    vendor_id: str
    phone: str
    sign: str
    template: str
    params: Any
    context: str
    """Aliyun ``OutId`` / Tencent ``SessionContext``."""
    accepted_at: float
    outcome: str
    report_at: float
    reported: bool = False
    """Tencent hands each report out once."""


@dataclass
class SmsSim:
    keys: dict[str, str] = field(default_factory=dict)
    """access key id / SecretId → secret."""
    signs: set[str] = field(default_factory=set)
    templates: dict[str, tuple[str, ...] | int] = field(default_factory=dict)
    """template id → its parameter names (Aliyun) or how many parameters it takes (Tencent)."""
    app_ids: set[str] = field(default_factory=set)
    """Tencent SmsSdkAppId values."""
    default_mode: str = "accept"
    modes: dict[str, str] = field(default_factory=dict)
    receipt_delay_s: float = 0.0
    hang_s: float = 30.0
    records: list[SmsRecord] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    """Requests refused (bad signature, template, sign …): what and why, for tests."""
    nonces: set[str] = field(default_factory=set)
    hanging: int = 0
    """Requests being held right now (mode ``timeout``)."""
    release: threading.Event = field(default_factory=threading.Event)
    """Set to let held requests answer before ``hang_s``."""
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def mode_of(self, phone: str) -> str:
        digits = phone[3:] if phone.startswith("+86") else phone
        return self.modes.get(digits, self.modes.get(phone, self.default_mode))

    async def hang(self) -> None:
        """Hold a request (mode ``timeout``) until ``hang_s`` passes or :attr:`release` is set."""
        import asyncio

        with self._lock:
            self.hanging += 1
        try:
            await asyncio.to_thread(self.release.wait, self.hang_s)
        finally:
            with self._lock:
                self.hanging -= 1

    def refuse(self, why: str, **detail: Any) -> None:
        with self._lock:
            self.refused.append({"why": why, **detail})

    def fresh_nonce(self, nonce: str) -> bool:
        with self._lock:
            if not nonce or nonce in self.nonces:
                return False
            self.nonces.add(nonce)
            return True

    def accept(
        self, prefix: str, phone: str, sign: str, template: str, params: Any, context: str
    ) -> SmsRecord:
        outcome = self.mode_of(phone)
        now = time.time()
        with self._lock:
            record = SmsRecord(
                vendor_id=f"{prefix}{next(self._ids):012d}",
                phone=phone,
                sign=sign,
                template=template,
                params=params,
                context=context,
                accepted_at=now,
                outcome=outcome,
                report_at=now + self.receipt_delay_s,
            )
            self.records.append(record)
        return record

    def sent_to(self, phone: str) -> list[SmsRecord]:
        with self._lock:
            return [r for r in self.records if r.phone.removeprefix("+86") == phone.removeprefix("+86")]

    def due_reports(self, *, consume: bool) -> list[SmsRecord]:
        now = time.time()
        out: list[SmsRecord] = []
        with self._lock:
            for record in self.records:
                if record.outcome in ("accept", "undeliverable") and record.report_at <= now:
                    if consume and record.reported:
                        continue
                    if consume:
                        record.reported = True
                    out.append(record)
        return out

    def record(self, vendor_id: str) -> SmsRecord | None:
        with self._lock:
            return next((r for r in self.records if r.vendor_id == vendor_id), None)
