"""The sender of one replica, built from settings, and its loop in the cloud runtime.

Every replica runs it (``MF_NOTIFY_ENABLED``, default on): claims are leases, so replicas share the
work without sending anything twice. The loop wakes on ``balance_changed`` / ``desired_changed``
events (whatever wrote an outbox row in the same transaction usually publishes one) and otherwise
every ``MF_NOTIFY_INTERVAL_S``; it pulls SMS delivery receipts every ``receipts_every_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from cloud.events import BALANCE_CHANGED, DESIRED_CHANGED, AsyncSubscription, EventBus
from cloud.integrations.wechat_client import make_wechat_client
from cloud.services.notify.channels import (
    AliyunSms,
    Channel,
    LogChannel,
    TencentSms,
    WeChatSubscribe,
    WeChatTemplate,
)
from cloud.services.notify.ratelimit import make_rate_limiter
from cloud.services.notify.receipts import poll_receipts
from cloud.services.notify.sender import Sender, SenderConfig
from cloud.settings import Settings

__all__ = ["build_channels", "make_sender", "run_sender"]

log = logging.getLogger(__name__)


def build_channels(settings: Settings) -> dict[str, Channel]:
    """The channels this replica can use: log always, the others when their keys are set."""
    channels: dict[str, Channel] = {"log": LogChannel()}
    timeout = settings.notify_timeout_s
    mp = make_wechat_client(settings)
    if mp is not None:
        mp.timeout = timeout
        channels["wechat_subscribe"] = WeChatSubscribe(mp)
    oa = make_wechat_client(settings, official=True)
    if oa is not None:
        oa.timeout = timeout
        channels["wechat_template"] = WeChatTemplate(oa)
    if settings.sms_aliyun_access_key_id and settings.sms_aliyun_access_key_secret is not None:
        channels["sms_aliyun"] = AliyunSms(
            settings.sms_aliyun_access_key_id,
            settings.sms_aliyun_access_key_secret.get_secret_value(),
            endpoint=settings.sms_aliyun_endpoint,
            protocol=settings.sms_aliyun_protocol,
            timeout_s=timeout,
        )
    if settings.sms_tencent_secret_id and settings.sms_tencent_secret_key is not None:
        channels["sms_tencent"] = TencentSms(
            settings.sms_tencent_secret_id,
            settings.sms_tencent_secret_key.get_secret_value(),
            settings.sms_tencent_sdk_app_id,
            endpoint=settings.sms_tencent_endpoint,
            protocol=settings.sms_tencent_protocol,
            region=settings.sms_tencent_region,
            timeout_s=timeout,
        )
    return channels


def make_sender(
    settings: Settings,
    factory: sessionmaker[Session],
    runner: str,
    *,
    channels: dict[str, Channel] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Sender:
    channels = channels if channels is not None else build_channels(settings)
    limiter = make_rate_limiter(settings.redis_url, dict.fromkeys(channels, settings.notify_rate_per_s))
    config = SenderConfig(workers=settings.notify_workers, max_attempts=settings.notify_max_attempts)
    return Sender(factory, channels, runner=runner, config=config, limiter=limiter, clock=clock)


async def run_sender(
    sender: Sender,
    factory: sessionmaker[Session],
    bus: EventBus,
    stop: asyncio.Event,
    *,
    interval_s: float = 1.0,
    receipts_every_s: float = 10.0,
    receipt_timeout: timedelta = timedelta(minutes=15),
) -> None:
    """Send due notices until ``stop`` is set (see the module docstring)."""
    sub = AsyncSubscription(bus, {BALANCE_CHANGED, DESIRED_CHANGED}, asyncio.get_running_loop())
    next_receipts = 0.0
    try:
        while not stop.is_set():
            try:
                while await asyncio.to_thread(sender.run_once):
                    pass  # a full batch: there may be more
                if time.monotonic() >= next_receipts:
                    next_receipts = time.monotonic() + receipts_every_s
                    await asyncio.to_thread(
                        poll_receipts, factory, sender.channels, receipt_timeout=receipt_timeout
                    )
            except Exception:
                log.exception("notification sender step failed; continuing")
            with suppress(TimeoutError):
                await asyncio.wait_for(sub.queue.get(), timeout=interval_s)
            while not sub.queue.empty():
                sub.queue.get_nowait()
    finally:
        sub.close()
        await asyncio.to_thread(sender.close)
