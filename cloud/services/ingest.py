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

Malformed payloads (bad JSON, schema violations, a topic that does not match the payload's gateway,
an unknown gateway) go to ``dead_letter`` with the reason, the topic and the raw bytes, and the ingest
carries on. A failure of the database itself propagates, so the MQTT adapter withholds the PUBACK and
retries; any other unexpected error also dead-letters the message (raw bytes kept for a replay).

Per batch, the meters' ``meter_state`` rows and the paying accounts are locked in id order before any
billing, so concurrent batches (shared subscriptions hand one gateway's batches to several replicas)
serialise per meter and per account without deadlocks. Those rows are then detached from the session:
billing changes them in memory and the batch writes them back with statements compiled once (on
PostgreSQL one ``UPDATE ... FROM unnest(...)`` per table), not with an ORM flush per row.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, TextClause, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.errors import CloudError
from cloud.domain.ledger import Transaction
from cloud.events import ACK_RECEIVED, DESIRED_CHANGED, GATEWAY_BILLED
from cloud.models import (
    Account,
    AccountMeter,
    AccountState,
    AccountStatus,
    Alarm,
    AlarmKind,
    DeadLetter,
    Gateway,
    GatewayEvent,
    GatewayStatusRow,
    Meter,
    MeterState,
    ProcessedBatch,
    ReadingRow,
    ReadingStatus,
    metadata,
)
from cloud.services.arrears import PolicyCache, evaluate_account
from cloud.services.billing import BillableReading, BillingCache, bill_reading, post_charges
from cloud.services.control import ControlConfig, apply_ack
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
)
from protocol.errors import ContractError

__all__ = ["Ingest", "IngestStats"]

log = logging.getLogger(__name__)

_MAX_ATTEMPTS = 3

_READINGS = metadata.tables["reading"]
_STATES = metadata.tables["meter_state"]
_ACCOUNTS = metadata.tables["account"]
# Core executemany statements, compiled once: the batch's rows change through these, not ORM flushes.
_UPDATE_READING = (
    update(_READINGS)
    .where(_READINGS.c.id == bindparam("b_id"))
    .values(meter_id=bindparam("b_meter"), status=bindparam("b_status"), txn_key=bindparam("b_key"))
)
_UPDATE_STATE = (
    update(_STATES)
    .where(_STATES.c.meter_id == bindparam("b_meter"))
    .values(
        last_at=bindparam("b_last_at"),
        last_values=bindparam("b_last_values"),
        last_seq=bindparam("b_last_seq"),
        last_seen=bindparam("b_last_seen"),
        observed=bindparam("b_observed"),
        observed_at=bindparam("b_observed_at"),
        offline=bindparam("b_offline"),
    )
)
_UPDATE_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("b_id"))
    .values(
        residue_millifen=bindparam("b_residue"),
        tier_period=bindparam("b_period"),
        tier_usage=bindparam("b_usage"),
    )
)


# PostgreSQL: the same updates as one statement over arrays (psycopg would otherwise send one
# statement per row); the columns' Python-side types do nothing for these values (ints, strings,
# aware datetimes, booleans; the JSON column gets its text).
_PG_UPDATE_READING = text(
    "UPDATE reading AS t SET meter_id = u.meter_id, status = u.status, txn_key = u.txn_key "
    "FROM unnest(CAST(:b_id AS bigint[]), CAST(:b_meter AS bigint[]), CAST(:b_status AS varchar[]), "
    "CAST(:b_key AS varchar[])) AS u(id, meter_id, status, txn_key) WHERE t.id = u.id"
)
_PG_UPDATE_STATE = text(
    "UPDATE meter_state AS t SET last_at = u.last_at, last_values = CAST(u.last_values AS json), "
    "last_seq = u.last_seq, last_seen = u.last_seen, observed = u.observed, observed_at = u.observed_at, "
    "offline = u.offline "
    "FROM unnest(CAST(:b_meter AS bigint[]), CAST(:b_last_at AS timestamptz[]), "
    "CAST(:b_last_values AS text[]), CAST(:b_last_seq AS bigint[]), CAST(:b_last_seen AS timestamptz[]), "
    "CAST(:b_observed AS varchar[]), CAST(:b_observed_at AS timestamptz[]), CAST(:b_offline AS boolean[])) "
    "AS u(meter_id, last_at, last_values, last_seq, last_seen, observed, observed_at, offline) "
    "WHERE t.meter_id = u.meter_id"
)


def _pg_update(connection: Connection, statement: TextClause, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns: dict[str, list[Any]] = {name: [] for name in rows[0]}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, dict):
                value = json.dumps(value)
            elif isinstance(value, datetime):
                value = _aware(value)
            columns[name].append(value)
    connection.execute(statement, columns)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: timestamps must carry a timezone")
    return value.astimezone(UTC)


def _state_row(state: MeterState) -> dict[str, Any]:
    """What billing and the batch may have changed in a meter's state (every other column is left)."""
    return {
        "b_meter": state.meter_id,
        "b_last_at": state.last_at,
        "b_last_values": state.last_values,
        "b_last_seq": state.last_seq,
        "b_last_seen": state.last_seen,
        "b_observed": state.observed,
        "b_observed_at": state.observed_at,
        "b_offline": state.offline,
    }


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _DeadLetter(CloudError):
    """Internal: the message is refused for ``reason``."""


@dataclass
class IngestStats:
    messages: int = 0
    readings_new: int = 0
    readings_duplicate: int = 0
    charges: int = 0
    dead_letters: int = 0
    batches_skipped: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


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
    ) -> None:
        self._factory = factory
        self._prefix = prefix
        self._publish = publish
        self._clock = clock
        self._control = control or ControlConfig(prefix=prefix)
        self._runner = runner
        self._rand = rand
        self.stats = IngestStats()
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
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                handler(gateway_device, payload)
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

    def _dead_letter(self, topic: str, payload: bytes, reason: str, gateway: str | None) -> None:
        self.stats.dead_letters += 1
        log.warning("dead letter on %s: %s", topic, reason)
        with unit_of_work(self._factory) as session:
            session.add(
                DeadLetter(
                    topic=topic[:300],
                    payload=payload,
                    reason=reason[:1000],
                    gateway_device=gateway[:64] if gateway else None,
                    received_at=self._clock(),
                )
            )

    def _gateway(self, session: Session, device: str) -> Gateway:
        gateway = session.scalars(select(Gateway).where(col(Gateway.device_id) == device)).first()
        if gateway is None:
            raise _DeadLetter(f"unknown gateway {device!r}")
        return gateway

    def _seen(self, session: Session, gateway: Gateway, now: datetime) -> GatewayStatusRow:
        assert gateway.id is not None
        row = session.get(GatewayStatusRow, gateway.id)
        if row is None:
            row = GatewayStatusRow(gateway_id=gateway.id, online=True)
            session.add(row)
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
        with unit_of_work(self._factory, self._publish) as session:
            gateway = self._gateway(session, device)
            assert gateway.id is not None
            gateway_id = gateway.id
            changed = self._apply_batch(session, gateway, batch, now)
        if changed:
            self._publish_after(DESIRED_CHANGED, {"meter_ids": changed})
        self._publish_after(GATEWAY_BILLED, {"gateway_id": gateway_id})

    def _apply_batch(
        self, session: Session, gateway: Gateway, batch: ReadingBatch, now: datetime
    ) -> list[int]:
        assert gateway.id is not None
        self._seen(session, gateway, now)
        rows = [
            {
                "gateway_id": gateway.id,
                "meter_device": r.meter,
                "meter_id": None,
                "seq": r.seq,
                "ts": r.ts,
                "received_at": now,
                "values": {q.value: str(v) for q, v in r.values.items()},
                "relay": r.relay.value if r.relay else None,
                "status": ReadingStatus.UNKNOWN_METER,
                "txn_key": None,
            }
            for r in batch.readings
        ]
        stmt = (
            self._insert(ReadingRow)
            .on_conflict_do_nothing(index_elements=["gateway_id", "meter_device", "seq"])
            .returning(col(ReadingRow.id), col(ReadingRow.meter_device), col(ReadingRow.seq))
        )
        inserted = session.execute(stmt, rows).all()
        new_ids = {(m, int(s)): int(i) for i, m, s in inserted}
        self.stats.readings_new += len(new_ids)
        self.stats.readings_duplicate += len(rows) - len(new_ids)
        session.execute(
            self._insert(ProcessedBatch)
            .values(
                gateway_id=gateway.id,
                batch=batch.batch,
                readings=len(rows),
                new_readings=len(new_ids),
                processed_at=now,
                runner=self._runner[:100],
            )
            .on_conflict_do_nothing(index_elements=["gateway_id", "batch"])
        )
        if not new_ids:
            self.stats.batches_skipped += 1  # every reading was a duplicate: a redelivered batch
            return []
        devices = sorted({m for m, _ in new_ids})
        meters = {
            m.device_id: m
            for m in session.scalars(
                select(Meter).where(col(Meter.gateway_id) == gateway.id, col(Meter.device_id).in_(devices))
            )
        }
        meter_ids = sorted(m.id for m in meters.values() if m.id is not None)
        states = self._lock_states(session, meter_ids)
        for state in states.values():  # written back with Core below: no ORM flush of 1000 rows
            session.expunge(state)
        links = session.execute(
            select(col(AccountMeter.meter_id), col(AccountMeter.account_id)).where(
                col(AccountMeter.meter_id).in_(meter_ids), col(AccountMeter.unlinked_at).is_(None)
            )
        ).all()
        account_of = {int(m): int(a) for m, a in links}
        accounts = {
            a.id: a
            for a in session.scalars(
                select(Account)
                .where(col(Account.id).in_(sorted(set(account_of.values()))))
                .order_by(col(Account.id))
                .with_for_update()
            )
        }
        for loaded in accounts.values():  # detached like the states; residue and tier written below
            session.expunge(loaded)
        before = {a.id: (a.residue_millifen, a.tier_period, a.tier_usage) for a in accounts.values()}
        cache = BillingCache()
        by_meter: dict[str, list[tuple[datetime, int, int]]] = {}
        source = {(r.meter, r.seq): r for r in batch.readings}
        for (device, seq), rid in new_ids.items():
            by_meter.setdefault(device, []).append((source[(device, seq)].ts, seq, rid))
        updates: list[dict[str, Any]] = []
        pending: list[tuple[int, Transaction]] = []
        deltas: dict[int, int] = {}
        for device, items in sorted(by_meter.items()):
            meter = meters.get(device)
            if meter is None or meter.id is None:
                continue  # rows keep status unknown_meter
            state = states[meter.id]
            account = accounts.get(account_of.get(meter.id, -1))
            if account is not None and account.status != AccountStatus.OPEN:
                account = None
            for ts, seq, rid in sorted(items):
                reading = source[(device, seq)]
                row = BillableReading(rid, seq, ts, reading.values)
                outcome = bill_reading(
                    session,
                    gateway_device=gateway.device_id,
                    meter=meter,
                    state=state,
                    account=account,
                    reading=row,
                    now=now,
                    cache=cache,
                )
                updates.append(
                    {"b_id": rid, "b_meter": meter.id, "b_status": outcome.status, "b_key": outcome.txn_key}
                )
                self.stats.by_status[outcome.status] = self.stats.by_status.get(outcome.status, 0) + 1
                if outcome.txn is not None and outcome.org_id is not None and outcome.account_id is not None:
                    pending.append((outcome.org_id, outcome.txn))
                    deltas[outcome.account_id] = deltas.get(outcome.account_id, 0) - outcome.charged_fen
                if state.last_seen is None or ts > state.last_seen:
                    state.last_seen = ts
                    state.offline = False
                    if reading.relay is not None and reading.relay is not RelayState.UNKNOWN:
                        state.observed = reading.relay.value
                        state.observed_at = ts
        session.flush()  # holds and alarms of this batch, before the Core statements below
        connection = session.connection()
        state_rows = [_state_row(s) for s in states.values()]
        if connection.dialect.name == "postgresql":
            _pg_update(connection, _PG_UPDATE_READING, updates)
            _pg_update(connection, _PG_UPDATE_STATE, state_rows)
        else:  # sqlite3's executemany runs one prepared statement in C
            if updates:
                connection.execute(_UPDATE_READING, updates)
            if state_rows:
                connection.execute(_UPDATE_STATE, state_rows)
        changed_accounts = [
            {
                "b_id": a.id,
                "b_residue": a.residue_millifen,
                "b_period": a.tier_period,
                "b_usage": a.tier_usage,
            }
            for a in accounts.values()
            if before[a.id] != (a.residue_millifen, a.tier_period, a.tier_usage)
        ]
        if changed_accounts:
            connection.execute(_UPDATE_ACCOUNT, changed_accounts)
        self.stats.charges += post_charges(session, pending, cache)
        return self._evaluate(session, accounts, deltas, cache, now)

    def _evaluate(
        self,
        session: Session,
        accounts: dict[int | None, Account],
        deltas: dict[int, int],
        cache: BillingCache,
        now: datetime,
    ) -> list[int]:
        """Run the arrears policy for charged accounts, skipping those it cannot change: in credit
        above every alarm threshold before and after, never in arrears, already evaluated."""
        if not deltas:
            return []
        known = {
            s.account_id: s
            for s in session.scalars(
                select(AccountState).where(col(AccountState.account_id).in_(sorted(deltas)))
            )
        }
        policy_cache = PolicyCache()
        changed: list[int] = []
        for account_id, delta in sorted(deltas.items()):
            account = accounts.get(account_id)
            if account is None:
                continue
            project = cache.project(session, account.project_id)
            top = max(
                v for v in (project.alarm1_fen, project.alarm2_fen, project.alarm3_fen, 0) if v is not None
            )
            state = known.get(account_id)
            quiet = state is not None and state.alarm_level == 0 and state.arrears_since is None
            if quiet and account.balance_fen + delta > top:
                continue
            # the batch's account objects are detached (Core wrote them): the policy gets a fresh one
            fresh = session.get(Account, account_id, populate_existing=True)
            if fresh is not None:
                changed.extend(evaluate_account(session, fresh, now, policy_cache))
        return changed

    def _lock_states(self, session: Session, meter_ids: list[int]) -> dict[int, MeterState]:
        if not meter_ids:
            return {}
        connection = session.connection()
        present = set(
            connection.execute(select(_STATES.c.meter_id).where(_STATES.c.meter_id.in_(meter_ids))).scalars()
        )
        missing = [m for m in meter_ids if m not in present]
        if missing:  # a meter's first reading; a concurrent replica may create the same row
            connection.execute(
                self._insert(_STATES).on_conflict_do_nothing(index_elements=["meter_id"]),
                [
                    {"meter_id": m, "last_values": {}, "desired_reasons": [], "offline": False}
                    for m in missing
                ],
            )
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
            row = self._seen(session, gateway, now)
            if row.reported_at is not None and status.ts < row.reported_at:
                return  # an older status redelivered after a newer one
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
            row.lines = [line.model_dump(mode="json") for line in status.lines]

    def _ack(self, device: str, payload: bytes) -> None:
        ack = decode(Ack, payload)
        if ack.gateway != device:
            raise _DeadLetter(f"payload gateway {ack.gateway!r} does not match topic gateway {device!r}")
        now = self._clock()
        with unit_of_work(self._factory) as session:
            gateway = self._gateway(session, device)
            self._seen(session, gateway, now)
            meter_id = apply_ack(session, gateway, ack, now, self._control, self._rand)
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
            self._seen(session, gateway, now)
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
                if event.id in fresh and event.meter is not None:
                    meter_id = self._apply_event(
                        session, gateway, event.kind, event.meter, event.ts, event.detail
                    )
                    if meter_id is not None:
                        touched.append(meter_id)
        if touched:
            self._publish_after(DESIRED_CHANGED, {"meter_ids": touched})

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
