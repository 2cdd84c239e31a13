"""Ingest: apply one MQTT message from a gateway, completely, in one database transaction.

:meth:`Ingest.handle` is the MQTT handler (``(topic, payload)``); it returns only after the message's
effects are committed, so paho's PUBACK (sent when the handler returns) means "applied" — see
:mod:`cloud.integrations.mqtt`. Whatever the broker redelivers is applied at most once:

- readings are inserted with ``ON CONFLICT DO NOTHING`` on their identity ``(gateway, meter, seq)``;
  only the rows this transaction inserted are billed, and the charge keys derive from the same identity;
- the batch id lands in ``processed_batch`` in the same transaction (a record of who applied what;
  the reading identity, not the batch id, decides what is new, so a gateway reusing batch ids loses
  nothing);
- events are unique per ``(gateway, event id)``, acks move a command only once.

Before anything else, a message must be sealed by the gateway its topic names (docs/security.md,
"Signed messages and gateway keys"): :func:`protocol.contract.unseal` checks the HMAC over the exact
bytes received, bound to the topic's kind and gateway, under a key of that gateway that is not retired
(:class:`KeyCache`, cached per gateway). Anyone with broker access can publish on any topic; an
unsigned, forged, retired-key or other-gateway message goes to ``dead_letter`` with the reason and
moves nothing. A replayed genuine message changes nothing either: readings and events are applied once
by identity, an ack once per command, a status only if newer than the last; and only news (a new
reading, a new event, an ack that moves its command, a newer status) counts as the gateway being seen.

Malformed payloads (bad JSON, schema violations, a topic that does not match the payload's gateway,
an unknown gateway) go to ``dead_letter`` with the reason, the topic and the first bytes of the
payload with its size and SHA-256 (:mod:`cloud.services.dead_letters`: bounded, whoever published it),
and the ingest carries on. A failure of the database itself propagates, so the MQTT adapter withholds
the PUBACK and retries; any other unexpected error also dead-letters the message (small ones whole,
for a replay). A billing error of one meter is not
such an error: the batch is then applied again with that meter's readings held (verdict ``error``,
one alarm), so a corrupt row of one tenant never costs the others their readings
(:mod:`cloud.services.isolation`).

Per batch, the meters' ``meter_state`` rows and the paying accounts are locked in id order before any
billing, so concurrent batches (shared subscriptions hand one gateway's batches to several replicas)
serialise per meter and per account without deadlocks. Those rows are loaded as plain rows, not ORM
objects: billing changes them in memory and the batch writes them back with statements compiled once (on
PostgreSQL ``COPY`` and one ``UPDATE ... FROM`` per table, see :mod:`cloud.services.bulk`), not
with an ORM flush per row.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

import msgspec
from sqlalchemy import Column, Connection, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.errors import CloudError
from cloud.domain.ledger import wallet_code
from cloud.events import ACK_RECEIVED, DESIRED_CHANGED, GATEWAY_BILLED, GATEWAY_KEYS_CHANGED
from cloud.models import (
    Account,
    AccountStatus,
    Alarm,
    AlarmKind,
    Gateway,
    GatewayEvent,
    GatewayStatusRow,
    Meter,
    MeterState,
    ProcessedBatch,
    ReadingHold,
    ReadingStatus,
    metadata,
)
from cloud.services import dead_letters
from cloud.services.arrears import PolicyCache, evaluate_account
from cloud.services.billing import bill_reading
from cloud.services.bulk import in_values, insert_missing, insert_rows, int_array, text_array, update_rows
from cloud.services.control import ControlConfig, ack_is_news, apply_ack
from cloud.services.isolation import FAULTS, Unit, UnitKind, account_unit, clear_fault, each_isolated
from cloud.services.keys import KeyCache, mark_seen
from cloud.services.ledger import PendingCharge, plan_charges, post_charges
from cloud.services.notify.events import notify_holds
from cloud.services.rating import BillableReading, BillingCache, hold_faulty
from cloud.services.unit import Publisher, unit_of_work
from protocol.contract import (
    Ack,
    EventBatch,
    EventKind,
    GatewayStatus,
    ReadingBatch,
    RelayState,
    decode,
    parse_topic,
    unseal,
)
from protocol.errors import ContractError

__all__ = ["Ingest", "IngestStats"]

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 3

_READINGS = metadata.tables["reading"]
_STATES = metadata.tables["meter_state"]
_ACCOUNTS = metadata.tables["account"]
_METERS = metadata.tables["meter"]
_LINKS = metadata.tables["account_meter"]
_GATEWAY_STATUS = metadata.tables["gateway_status"]

# Which of a batch's reading identities are stored already: one probe of the UNIQUE index per pair.
# Written as LATERAL ... LIMIT 1 so that the plan can only be a probe (or, on a tiny table, a scan) per
# pair, and planned afresh for every batch (never prepared, see _stored_pairs) so that it sees the
# table as it is. As a plain join, planned with the statistics of a table that was small when last
# analyzed, it read every stored reading of the gateway and hashed them: 8 → 22 ms per batch within
# 60 s of the sustained benchmark, the reason its rate fell as it ran.
_PG_EXISTING = (
    "SELECT u.device, u.seq "
    "FROM unnest(CAST(%(devices)s AS varchar[]), CAST(%(seqs)s AS bigint[])) AS u(device, seq) "
    "CROSS JOIN LATERAL (SELECT 1 FROM reading AS r WHERE r.gateway_id = %(gateway)s "
    "AND r.meter_device = u.device AND r.seq = u.seq LIMIT 1) AS hit"
)
_SQLITE_EXISTING = text(  # CROSS JOIN: SQLite then walks the pairs and probes the UNIQUE index
    "SELECT r.meter_device, r.seq FROM json_each(:pairs) AS j CROSS JOIN reading AS r "
    "ON r.gateway_id = :gateway AND r.meter_device = json_extract(j.value, '$[0]') "
    "AND r.seq = json_extract(j.value, '$[1]')"
)
_SQLITE_MAX_ID = text("SELECT coalesce(max(id), 0) FROM reading")
# the sequence is looked up once per statement (a scalar subquery), not once per id
_PG_NEXT_IDS = text(
    "SELECT nextval(s.seq) FROM "
    "(SELECT CAST(pg_get_serial_sequence('reading', 'id') AS regclass) AS seq) AS s, generate_series(1, :n)"
)
_READING_COLUMNS = (
    "id",
    "gateway_id",
    "meter_device",
    "meter_id",
    "seq",
    "ts",
    "received_at",
    "values",
    "relay",
    "status",
    "txn_key",
)


@dataclass(slots=True)
class _MeterRow:
    """What the ingest and billing need of a meter, loaded as a plain row (no ORM identity map)."""

    id: int
    org_id: int
    gateway_id: int
    device_id: str
    kind: str
    prepay_mode: str
    tariff_id: int | None
    ct_ratio: int
    model: str
    max_rate_per_hour: Decimal | None


@dataclass(slots=True)
class _StateRow:
    """A locked ``meter_state`` row: the billing baseline and the observed supply."""

    meter_id: int
    last_at: datetime | None
    last_values: dict[str, str]
    last_seq: int | None
    rate_budget: Decimal | None
    last_seen: datetime | None
    observed: str | None
    observed_at: datetime | None
    offline: bool


@dataclass(slots=True)
class _AccountRow:
    """A locked paying account: billing carries its residue (tier usage: its own table)."""

    id: int
    org_id: int
    project_id: int
    status: str
    balance_fen: int
    residue_millifen: int


_STATE_COLUMNS = tuple(f.name for f in fields(_StateRow) if f.name != "meter_id")
"""What billing and the batch may change in a meter's state (written back; the rest is left)."""
_CARRIED = ("residue_millifen",)
"""What billing carries on an account from one charge to the next (written back when changed)."""


_carried: Callable[[_AccountRow], tuple[Any, ...]] = (
    attrgetter(*_CARRIED) if len(_CARRIED) > 1 else lambda row: (getattr(row, _CARRIED[0]),)
)
"""An account's carried fields, as a tuple (compared before and after billing, then written back);
``attrgetter`` of one name gives the bare value, not a 1-tuple."""
_state_row: Callable[[_StateRow], tuple[Any, ...]] = attrgetter("meter_id", *_STATE_COLUMNS)
"""A state's key and the columns written back, as a tuple (one C call, not a generator per row)."""


def _columns(table: Table, row_type: type[Any]) -> list[Column[Any]]:
    """The columns of ``table`` named like the fields of the plain row type, in field order."""
    return [table.c[f.name] for f in fields(row_type)]


def _relay(relay: RelayState | None) -> str | None:
    return relay.value if relay is not None else None


def _utcnow() -> datetime:
    return datetime.now(UTC)


_MAX_SKIPPED = 16
"""Meters of one batch whose billing may raise before the batch is given up (dead-lettered)."""


@dataclass
class _Billing:
    """A batch's billing, across attempts: the meter being billed when it raised, and the meters whose
    billing raised before (their readings are held the next time, verdict ``error``)."""

    meter: _MeterRow | None = None
    skip: dict[str, BaseException] = field(default_factory=dict)


def _meter_unit(meter: _MeterRow) -> Unit:
    return Unit(UnitKind.METER, meter.id, org_id=meter.org_id, name=meter.device_id)


class _DeadLetter(CloudError):
    """Internal: the message is refused for ``reason``."""


_NOT_A_METER_FAULT = (OperationalError, InterfaceError, IntegrityError, ContractError, _DeadLetter)
"""Failures that are not one meter's: the database (retried with the PUBACK withheld), a race with
another replica (retried), a refused message (dead-lettered) — :meth:`Ingest.handle` decides."""


@dataclass
class IngestStats:
    messages: int = 0
    readings_new: int = 0
    readings_duplicate: int = 0
    charges: int = 0
    dead_letters: int = 0
    batches_skipped: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


def _stored_pairs(connection: Connection, gateway_id: int, pairs: list[tuple[str, int]]) -> list[Any]:
    """:data:`_PG_EXISTING` on the driver's cursor with ``prepare=False``: planned with the batch's
    own arrays and the table as it is now, every time (psycopg would otherwise prepare it after five
    runs, and PostgreSQL could keep one generic plan from then on)."""
    driver = connection.connection.driver_connection
    assert driver is not None
    params = {  # array literals: psycopg would adapt each list element by element (bulk.int_array)
        "devices": text_array(d for d, _ in pairs),
        "seqs": int_array(q for _, q in pairs),
        "gateway": gateway_id,
    }
    with driver.cursor() as cursor:
        cursor.execute(_PG_EXISTING, params, prepare=False)
        return list(cursor.fetchall())


class Ingest:
    """Applies gateway messages to the database; one instance per process (thread-safe per call)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        prefix: str = "mf/v1",
        publish: Publisher | None = None,
        clock: Callable[[], datetime] = _utcnow,
        control: ControlConfig | None = None,
        runner: str = "",
        rand: Callable[[], float] = random.random,
        keys: KeyCache | None = None,
    ) -> None:
        self._factory = factory
        self.keys = keys or KeyCache(factory)
        self._prefix = prefix
        self._publish = publish
        self._clock = clock
        self._control = control or ControlConfig(prefix=prefix)
        self._runner = runner
        self._rand = rand
        self.stats = IngestStats()
        self._with_state: set[int] = set()
        """Meters whose ``meter_state`` row this process has locked (see :meth:`_lock_state_rows`)."""
        dialect = factory.kw["bind"].dialect.name if factory.kw.get("bind") is not None else "sqlite"
        self._insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert

    # --- entry point ----------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """Apply one message (commit) or dead-letter it; database outages propagate (no PUBACK)."""
        self.stats.messages += 1
        try:
            gateway_device, kind = parse_topic(topic, self._prefix)
        except ContractError as exc:
            self._dead_letter(topic, payload, str(exc), None)
            return
        handler = {
            "up/readings": self._readings,
            "up/status": self._status,
            "up/acks": self._ack,
            "up/events": self._events,
        }.get(kind)
        if handler is None:
            self._dead_letter(topic, payload, f"no ingest for topic kind {kind!r}", gateway_device)
            return
        try:
            body = self._unseal(gateway_device, kind, payload)
        except (ContractError, _DeadLetter) as exc:
            self._dead_letter(topic, payload, str(exc), gateway_device)
            return
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                handler(gateway_device, body)
                return
            except (ContractError, _DeadLetter) as exc:
                self._dead_letter(topic, payload, str(exc), gateway_device)
                return
            except IntegrityError:
                # A concurrent replica won a race on a unique key; the retry sees its commit.
                if attempt == _MAX_ATTEMPTS:
                    log.exception("message on %s kept violating constraints", topic)
                    self._dead_letter(topic, payload, "integrity error after retries", gateway_device)
                    return
            except (OperationalError, InterfaceError):
                raise  # the database is unwell (or a deadlock): the adapter retries, no PUBACK
            except DBAPIError as exc:  # data the database refuses: a poison message, not an outage
                log.exception("database refused a message on %s", topic)
                self._dead_letter(topic, payload, f"database refused it: {type(exc.orig).__name__}", None)
                return
            except Exception as exc:
                log.exception("unexpected error applying a message on %s", topic)
                self._dead_letter(topic, payload, f"processing error: {type(exc).__name__}: {exc}", None)
                return

    def _unseal(self, device: str, kind: str, payload: bytes) -> bytes:
        """The body of a message genuinely sealed by ``device`` for ``kind``, or a refusal."""
        if self.keys.gateway_id(device) is None:
            raise _DeadLetter(f"unknown gateway {device!r}")
        now = self._clock()
        try:
            opened = unseal(kind, device, payload, lambda kid: self.keys.key_for(device, kid, now))
        except ContractError as exc:
            raise _DeadLetter(f"unsigned or forged: {exc}") from exc
        if not self.keys.seen(device, opened.kid):
            self._first_use(device, opened.kid, now)
        return opened.body

    def _first_use(self, device: str, kid: str, now: datetime) -> None:
        """The gateway sealed with ``kid`` for the first time: from now on it is signed down with."""
        gateway_id = self.keys.gateway_id(device)
        if gateway_id is None:
            return
        with unit_of_work(self._factory) as session:
            first = mark_seen(session, gateway_id, kid, now)
        self.keys.invalidate(gateway_id)
        if first:
            log.info("gateway %s now seals with key %s", device, kid)
            self._publish_after(GATEWAY_KEYS_CHANGED, {"gateway_id": gateway_id})

    def _dead_letter(self, topic: str, payload: bytes, reason: str, gateway: str | None) -> None:
        """Keep a bounded record of the refused message (:mod:`cloud.services.dead_letters`)."""
        self.stats.dead_letters += 1
        log.warning("dead letter on %r (%d bytes): %s", topic[:300], len(payload), reason[:300])
        with unit_of_work(self._factory) as session:
            dead_letters.record(
                session, topic=topic, payload=payload, reason=reason, gateway=gateway, at=self._clock()
            )

    def _gateway(self, session: Session, device: str) -> Gateway:
        gateway = session.scalars(select(Gateway).where(col(Gateway.device_id) == device)).first()
        if gateway is None:
            raise _DeadLetter(f"unknown gateway {device!r}")
        return gateway

    def _seen(self, session: Session, gateway: Gateway, now: datetime) -> GatewayStatusRow:
        assert gateway.id is not None
        row = session.get(GatewayStatusRow, gateway.id)
        if row is None:  # a new gateway's first message; another replica may be creating the row too
            insert_missing(session.connection(), _GATEWAY_STATUS, "gateway_id", [gateway.id])
            row = session.get(GatewayStatusRow, gateway.id)
            assert row is not None
            row.online = row.online or row.reported_at is None  # what is known: it is sending
        row.last_seen = now if row.last_seen is None or now > row.last_seen else row.last_seen
        return row

    def _publish_after(self, kind: str, payload: dict[str, Any]) -> None:
        if self._publish is None:
            return
        try:
            self._publish(kind, payload)
        except Exception:  # committed already; the reconciler's sweep catches up
            log.exception("could not publish %s", kind)

    # --- readings ------------------------------------------------------------------------------
    def _readings(self, device: str, payload: bytes) -> None:
        batch = decode(ReadingBatch, payload)
        if batch.gateway != device:
            raise _DeadLetter(f"payload gateway {batch.gateway!r} does not match topic gateway {device!r}")
        now = self._clock()
        changed: list[int] = []
        billing = _Billing()
        while True:
            try:
                with unit_of_work(self._factory, self._publish) as session:
                    gateway = self._gateway(session, device)
                    assert gateway.id is not None
                    gateway_id = gateway.id
                    changed = self._apply_batch(session, gateway, batch, now, billing)
                break
            except _NOT_A_METER_FAULT:
                raise
            except Exception as exc:
                # One meter's billing raised (a corrupt row, a bug): everything was rolled back. Apply
                # the batch again with that meter's readings held, so the others are billed now.
                meter = billing.meter
                if meter is None or meter.device_id in billing.skip or len(billing.skip) >= _MAX_SKIPPED:
                    raise
                billing.skip[meter.device_id] = exc
                billing.meter = None
                FAULTS.failed(_meter_unit(meter), exc)
        if changed:
            self._publish_after(DESIRED_CHANGED, {"meter_ids": changed})
        self._publish_after(GATEWAY_BILLED, {"gateway_id": gateway_id})

    def _apply_batch(
        self,
        session: Session,
        gateway: Gateway,
        batch: ReadingBatch,
        now: datetime,
        billing: _Billing | None = None,
    ) -> list[int]:
        """Store the batch's new readings, bill them, write everything back in a few statements.

        Order: the meters' states and their paying accounts are locked (id order), *then* the batch's
        reading identities are checked against the store — the ingest is the only writer of readings
        and holds these locks while it writes, so "new" cannot change under it. The new rows get their
        ids first (:meth:`_new_readings`), are billed, and are written complete in one go
        (:func:`cloud.services.bulk.insert_rows`: ``COPY`` on PostgreSQL, ``executemany`` on SQLite).
        A reading of a meter the cloud does not know is stored with status ``unknown_meter``; the
        readings of a meter in ``billing.skip`` are held (verdict ``error``), not billed.
        """
        billing = billing if billing is not None else _Billing()
        assert gateway.id is not None
        gateway_id = gateway.id
        connection = session.connection()
        wanted = {r.meter for r in batch.readings}
        meters = {
            row.device_id: row
            for row in (
                _MeterRow(*r)
                for r in connection.execute(
                    # the gateway's meters, not the batch's: one index range instead of a probe per
                    # device (a batch usually names most of them; the others are dropped below)
                    select(*_columns(_METERS, _MeterRow)).where(_METERS.c.gateway_id == gateway_id)
                ).all()
            )
            if row.device_id in wanted
        }
        meter_ids = sorted(m.id for m in meters.values())
        states = self._lock_state_rows(connection, meter_ids)
        account_of = {
            int(m): int(a)
            for m, a in connection.execute(
                select(_LINKS.c.meter_id, _LINKS.c.account_id).where(
                    in_values(_LINKS.c.meter_id, meter_ids, connection), _LINKS.c.unlinked_at.is_(None)
                )
            ).all()
        }
        accounts = {
            row.id: row
            for row in (
                _AccountRow(*r)
                for r in connection.execute(
                    select(*_columns(_ACCOUNTS, _AccountRow))
                    .where(in_values(_ACCOUNTS.c.id, sorted(set(account_of.values())), connection))
                    .order_by(_ACCOUNTS.c.id)
                    .with_for_update()
                ).all()
            )
        }
        before = {a.id: _carried(a) for a in accounts.values()}
        new_ids = self._new_readings(connection, gateway_id, batch)
        self.stats.readings_new += len(new_ids)
        self.stats.readings_duplicate += len(batch.readings) - len(new_ids)
        connection.execute(
            self._insert(ProcessedBatch)
            .values(
                gateway_id=gateway_id,
                batch=batch.batch,
                readings=len(batch.readings),
                new_readings=len(new_ids),
                processed_at=now,
                runner=self._runner[:100],
            )
            .on_conflict_do_nothing(index_elements=["gateway_id", "batch"])
        )
        if not new_ids:
            self.stats.batches_skipped += 1  # every reading was a duplicate: a redelivered batch
            return []
        self._seen(session, gateway, now)  # news only: a replayed batch does not keep a gateway "alive"
        cache = BillingCache()
        by_meter: dict[str, list[tuple[datetime, int, int]]] = {}
        source = {(r.meter, r.seq): r for r in batch.readings}
        for (device, seq), rid in new_ids.items():
            by_meter.setdefault(device, []).append((source[(device, seq)].ts, seq, rid))
        outcomes: dict[int, tuple[int | None, str, str | None]] = {}
        pending: list[PendingCharge] = []
        held: list[Any] = []  # holds and alarms: written after the reading rows they refer to
        deltas: dict[int, int] = {}
        # Holds and alarms added while billing refer to readings written after the loop: no query in
        # it (a tariff, a meter's first reading) may flush them first.
        session.autoflush = False
        for device, items in sorted(by_meter.items()):
            meter = meters.get(device)
            if meter is None:
                for _, _, rid in items:
                    outcomes[rid] = (None, ReadingStatus.UNKNOWN_METER, None)
                continue
            billing.meter = meter  # what a failure below is blamed on (see _readings)
            state = states[meter.id]
            account = accounts.get(account_of.get(meter.id, -1))
            if account is not None and account.status != AccountStatus.OPEN:
                account = None
            for ts, seq, rid in sorted(items):
                reading = source[(device, seq)]
                row = BillableReading(rid, seq, ts, reading.values)
                skipped = billing.skip.get(device)
                outcome = (
                    hold_faulty(session, meter, row, _meter_unit(meter), skipped)
                    if skipped is not None
                    else bill_reading(
                        session,
                        gateway_device=gateway.device_id,
                        meter=meter,
                        state=state,
                        account=account,
                        reading=row,
                        now=now,
                        cache=cache,
                    )
                )
                outcomes[rid] = (meter.id, outcome.status, outcome.txn_key)
                held.extend(outcome.rows)
                self.stats.by_status[outcome.status] = self.stats.by_status.get(outcome.status, 0) + 1
                if outcome.txn is not None and outcome.org_id is not None and outcome.account_id is not None:
                    pending.append(PendingCharge(outcome.org_id, rid, outcome.txn))
                    # the wallet's part only: a local-prepay meter's charge leaves held:<meter>
                    spent = outcome.txn.amount_on(wallet_code(outcome.account_id))
                    if spent:
                        deltas[outcome.account_id] = deltas.get(outcome.account_id, 0) + spent
                if state.last_seen is None or ts > state.last_seen:
                    state.last_seen = ts
                    state.offline = False
                    if reading.relay is not None and reading.relay is not RelayState.UNKNOWN:
                        state.observed = reading.relay.value
                        state.observed_at = ts
            if device not in billing.skip and FAULTS.any_failing():  # a Unit per meter only then
                clear_fault(session, _meter_unit(meter))
        billing.meter = None
        session.autoflush = True
        plan = plan_charges(pending, gateway_id)  # batch charges: which key each reading's charge has
        insert_rows(  # the rows, complete, before the holds and alarms that refer to them
            connection,
            _READINGS,
            _READING_COLUMNS,
            [
                (
                    rid,
                    gateway_id,
                    device,
                    outcomes[rid][0],
                    seq,
                    source[(device, seq)].ts,
                    now,
                    {q.value: str(v) for q, v in source[(device, seq)].values.items()},
                    _relay(source[(device, seq)].relay),
                    outcomes[rid][1],
                    plan.key_of.get(rid, outcomes[rid][2]),
                )
                for (device, seq), rid in sorted(new_ids.items(), key=lambda item: item[1])
            ],
        )
        session.add_all(held)
        session.flush()  # holds and alarms of this batch
        notify_holds(session, [row for row in held if isinstance(row, ReadingHold)], now)
        update_rows(
            connection,
            _STATES,
            "meter_id",
            _STATE_COLUMNS,
            [_state_row(s) for s in states.values()],
        )
        update_rows(
            connection,
            _ACCOUNTS,
            "id",
            _CARRIED,
            [(a.id, *_carried(a)) for a in accounts.values() if before[a.id] != _carried(a)],
        )
        self.stats.charges += post_charges(session, plan)
        return self._evaluate(session, accounts, deltas, cache, now)

    def _new_readings(
        self, connection: Connection, gateway_id: int, batch: ReadingBatch
    ) -> dict[tuple[str, int], int]:
        """The batch's reading identities not stored yet, each with the id its row will have.

        Called with the batch's meter states locked (PostgreSQL) or the database's write lock held
        (SQLite's ``BEGIN IMMEDIATE``), so what is new cannot change before the rows are written. Ids:
        PostgreSQL's sequence; on SQLite the next rowids (``max(id)`` + 1…, what SQLite would assign).
        A reading of an unknown meter is not covered by a lock on PostgreSQL: a concurrent replica
        storing it first makes the insert fail on the UNIQUE identity, and the message is retried.
        """
        pairs = sorted({(r.meter, r.seq) for r in batch.readings})
        found: Sequence[Any]
        if connection.dialect.name == "postgresql":
            found = _stored_pairs(connection, gateway_id, pairs)
        else:
            found = connection.execute(
                _SQLITE_EXISTING, {"pairs": json.dumps(pairs), "gateway": gateway_id}
            ).all()
        seen = {(str(d), int(q)) for d, q in found}
        fresh = [p for p in pairs if p not in seen]
        if not fresh:
            return {}
        if connection.dialect.name == "postgresql":
            ids = [int(i) for i in connection.execute(_PG_NEXT_IDS, {"n": len(fresh)}).scalars().all()]
        else:
            top = int(connection.execute(_SQLITE_MAX_ID).scalar_one())
            ids = list(range(top + 1, top + 1 + len(fresh)))
        return dict(zip(fresh, ids, strict=True))

    def _evaluate(
        self,
        session: Session,
        accounts: dict[int, _AccountRow],
        deltas: dict[int, int],
        cache: BillingCache,
        now: datetime,
    ) -> list[int]:
        """Run the arrears policy for charged accounts, skipping those it cannot change: in credit
        above every alarm threshold before and after, never in arrears, already evaluated."""
        if not deltas:
            return []
        states = metadata.tables["account_state"]
        connection = session.connection()
        quiet_ids = set(
            connection.execute(
                select(states.c.account_id).where(
                    in_values(states.c.account_id, sorted(deltas), connection),
                    states.c.alarm_level == 0,
                    states.c.arrears_since.is_(None),
                )
            ).scalars()
        )
        policy_cache = PolicyCache()
        due: list[Account] = []
        tops: dict[int, int] = {}  # per project, not per account
        for account_id, delta in sorted(deltas.items()):
            account = accounts.get(account_id)
            if account is None:
                continue
            top = tops.get(account.project_id)
            if top is None:
                project = cache.project(session, account.project_id)
                alarms = (project.alarm1_fen, project.alarm2_fen, project.alarm3_fen, 0)
                top = tops[account.project_id] = max(v for v in alarms if v is not None)
            if account_id in quiet_ids and account.balance_fen + delta > top:
                continue
            # the batch's account rows are plain copies (Core wrote them): the policy loads the ORM row
            fresh = session.get(Account, account_id, populate_existing=True)
            if fresh is not None:
                due.append(fresh)
        evaluated = each_isolated(  # a project with unusable settings holds its accounts only
            session,
            due,
            account_unit,
            lambda account: evaluate_account(session, account, now, policy_cache),
            now,
        )
        return [meter_id for _, meter_ids in evaluated.done for meter_id in meter_ids]

    def _lock_state_rows(self, connection: Connection, meter_ids: list[int]) -> dict[int, _StateRow]:
        """The meters' states, locked in id order (``FOR UPDATE``), as plain rows.

        A meter's first reading creates its row (:func:`cloud.services.bulk.insert_missing`). Once this
        process has locked a meter's row, later batches skip that step's lookup (a statement per batch)
        and lock at once; should a row it saw be gone (created by work that rolled back), the lock finds
        fewer rows and the missing ones are created and locked as for a new meter."""
        if not meter_ids:
            return {}
        if not self._with_state.issuperset(meter_ids):
            insert_missing(connection, _STATES, "meter_id", meter_ids)  # a meter's first reading
        query = (
            select(*_columns(_STATES, _StateRow))
            .where(in_values(_STATES.c.meter_id, meter_ids, connection))
            .order_by(_STATES.c.meter_id)
            .with_for_update()
        )
        # .all(): one fetchall, not a fetchone per row (this runs for every batch)
        rows = {int(r[0]): _StateRow(*r) for r in connection.execute(query).all()}
        if len(rows) < len(set(meter_ids)):
            insert_missing(connection, _STATES, "meter_id", meter_ids)
            rows = {int(r[0]): _StateRow(*r) for r in connection.execute(query).all()}
        self._with_state.update(rows)
        return rows

    def _lock_states(self, session: Session, meter_ids: list[int]) -> dict[int, MeterState]:
        """The meters' states as ORM objects, locked (events change a single meter's state)."""
        if not meter_ids:
            return {}
        insert_missing(session.connection(), _STATES, "meter_id", meter_ids)
        return {
            s.meter_id: s
            for s in session.scalars(
                select(MeterState)
                .where(col(MeterState.meter_id).in_(meter_ids))
                .order_by(col(MeterState.meter_id))
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        }

    # --- status, acks, events ------------------------------------------------------------------
    def _status(self, device: str, payload: bytes) -> None:
        status = decode(GatewayStatus, payload)
        if status.gateway != device:
            raise _DeadLetter(f"payload gateway {status.gateway!r} does not match topic gateway {device!r}")
        now = self._clock()
        with unit_of_work(self._factory) as session:
            gateway = self._gateway(session, device)
            assert gateway.id is not None
            row = session.get(GatewayStatusRow, gateway.id)
            if row is not None and row.reported_at is not None and status.ts <= row.reported_at:
                return  # redelivered or replayed: no newer than what the gateway last said
            row = self._seen(session, gateway, now)
            if status.online:
                row.offline_since = None
            elif row.online or row.offline_since is None:
                row.offline_since = status.ts
            row.online = status.online
            row.version = status.version[:64] or row.version  # the LWT carries no version
            row.reported_at = status.ts
            row.uptime_s = status.uptime_s
            row.outbox_backlog = status.outbox_backlog
            row.outbox_oldest_age_s = status.outbox_oldest_age_s
            row.autonomous = status.autonomous
            row.lines = [msgspec.to_builtins(line) for line in status.lines]

    def _ack(self, device: str, payload: bytes) -> None:
        ack = decode(Ack, payload)
        if ack.gateway != device:
            raise _DeadLetter(f"payload gateway {ack.gateway!r} does not match topic gateway {device!r}")
        now = self._clock()
        with unit_of_work(self._factory) as session:
            gateway = self._gateway(session, device)
            news = ack_is_news(session, gateway, ack)  # a replayed ack keeps no gateway "alive"
            meter_id = apply_ack(session, gateway, ack, now, self._control, self._rand)
            # after the meter_state lock, as a batch of readings takes them (meter_state, account,
            # gateway_status): marked first, the status row was flushed — locked — before the meter's
            # state, and an ack and a batch of one gateway on two replicas deadlocked
            if news:
                self._seen(session, gateway, now)
        if meter_id is not None:
            self._publish_after(ACK_RECEIVED, {"command_id": ack.command, "meter_id": meter_id})

    def _events(self, device: str, payload: bytes) -> None:
        batch = decode(EventBatch, payload)
        if batch.gateway != device:
            raise _DeadLetter(f"payload gateway {batch.gateway!r} does not match topic gateway {device!r}")
        now = self._clock()
        touched: list[int] = []
        with unit_of_work(self._factory) as session:
            gateway = self._gateway(session, device)
            assert gateway.id is not None
            rows = [
                {
                    "gateway_id": gateway.id,
                    "event_id": e.id,
                    "ts": e.ts,
                    "kind": e.kind.value,
                    "meter_device": e.meter,
                    "detail": e.detail,
                    "received_at": now,
                }
                for e in batch.events
            ]
            stmt = (
                self._insert(GatewayEvent)
                .on_conflict_do_nothing(index_elements=["gateway_id", "event_id"])
                .returning(col(GatewayEvent.event_id))
            )
            fresh = {str(e) for e in session.execute(stmt, rows).scalars()}
            for event in batch.events:
                if event.id in fresh and event.kind is EventKind.CONFIG_REJECTED:
                    self._config_rejected(session, gateway, event.id, event.detail)
                if event.id in fresh and event.meter is not None:
                    meter_id = self._apply_event(
                        session, gateway, event.kind, event.meter, event.ts, event.detail
                    )
                    if meter_id is not None:
                        touched.append(meter_id)
            if fresh:  # news only: a replayed batch keeps no gateway "alive"; last: the lock order of
                self._seen(session, gateway, now)  # a batch of readings (see _ack)
        if touched:
            self._publish_after(DESIRED_CHANGED, {"meter_ids": touched})

    def _config_rejected(
        self, session: Session, gateway: Gateway, event_id: str, detail: dict[str, Any]
    ) -> None:
        """The gateway refused a config (someone forged one, or a key is wrong): the operator must know."""
        reason = str(detail.get("reason", ""))[:200]
        session.add(
            Alarm(
                org_id=gateway.org_id,
                kind=AlarmKind.CONFIG_REJECTED,
                level=2,
                dedupe_key=f"config-rejected:{gateway.id}:{event_id}"[:200],
                gateway_id=gateway.id,
                message_zh=f"网关 {gateway.device_id} 拒绝了下发的配置（伪造、过期或密钥不符）：{reason}",
                message_en=(
                    f"gateway {gateway.device_id} refused a config (forged, stale or wrong key): {reason}"
                ),
                detail={k: str(v)[:200] for k, v in detail.items()},
            )
        )

    def _apply_event(
        self,
        session: Session,
        gateway: Gateway,
        kind: EventKind,
        device: str,
        ts: datetime,
        detail: dict[str, Any],
    ) -> int | None:
        meter = session.scalars(
            select(Meter).where(col(Meter.gateway_id) == gateway.id, col(Meter.device_id) == device)
        ).first()
        if meter is None or meter.id is None:
            return None
        state = self._lock_states(session, [meter.id])[meter.id]
        if kind is EventKind.METER_OFFLINE:
            state.offline = True
        elif kind is EventKind.METER_ONLINE:
            state.offline = False
        elif kind is EventKind.AUTONOMY_TRIP:
            if state.observed_at is None or ts >= state.observed_at:
                state.observed = RelayState.OPEN
                state.observed_at = ts
        elif kind is EventKind.COMMAND_REJECTED:
            session.add(
                Alarm(
                    org_id=meter.org_id,
                    kind=AlarmKind.COMMAND_REJECTED,
                    level=2,
                    dedupe_key=f"rejected:{gateway.id}:{device}:{ts.isoformat()}",
                    meter_id=meter.id,
                    gateway_id=gateway.id,
                    message_zh=f"网关拒绝了表计 {device} 的指令",
                    message_en=f"gateway refused a command for meter {device}",
                    detail={k: str(v) for k, v in detail.items()},
                )
            )
        return meter.id
