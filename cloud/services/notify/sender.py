"""The sender: claims outbox rows, renders them, hands each to the first channel of the project's
order that can carry it, and records what happened (docs/notifications.md).

One message per event and channel: before a vendor is called, a ``notification_delivery`` row keyed
``<outbox id>:<channel>:<recipient>`` (UNIQUE) is committed as ``sending``. A sender that finds such a
row still ``sending`` (its writer died mid-call) asks the vendor (:meth:`Channel.lookup`); when the
vendor cannot say, the channel is given up for that event rather than risk a second message, and
the next channel (or, at the end, a person through an alarm) takes over.

Retries: a transient failure waits ``base · 2^(attempts−1)`` (capped) and tries the same channel
again, up to ``max_attempts``; then the next channel. No channel left: the row is ``dead`` and an
alarm asks a person to tell the tenant. Non-urgent kinds wait out the project's quiet hours.
Each row is processed in a worker thread with its own database sessions, and every vendor call has
its own timeout, so a vendor that hangs delays only its own messages.

Manager notices (:data:`MANAGER_KINDS`, no account) are for people, not a project: once out of quiet
hours, the row is handed on as one copy per staff user of the project's organisation who opted in to
the kind (``staff_contact.notices``), each with ``user_id`` and the key ``<row id>:user:<user id>``
(UNIQUE, so a second sender or a restart finds the copies written), and the original is
``fanned_out`` in the same transaction. Each copy is then an ordinary row: the project's channel
order with that user's phone, openid and language, its own fallback, retries and deliveries keyed
``<copy id>:<channel>:<recipient>``. With nobody opted in, the row goes out on the project's channels
as it is (to the log: it names no phone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlmodel import col

from cloud.domain.errors import DomainError
from cloud.domain.localtime import time_of_day, zone
from cloud.events import BALANCE_CHANGED
from cloud.models import (
    Account,
    Alarm,
    AlarmKind,
    DeliveryStatus,
    NotificationDelivery,
    NotificationOutbox,
    NotificationStatus,
    NotifyConsent,
    NotifyContact,
    NotifySettings,
    Project,
    Role,
    StaffContact,
    Tenant,
    User,
)
from cloud.services.arrears import mark_notification_delivered
from cloud.services.notify.channels import Channel, ChannelError, Failed, Message, Refused, Sent
from cloud.services.notify.outbox import claim, release
from cloud.services.notify.ratelimit import LocalRateLimiter, RateLimiter
from cloud.services.notify.templates import MANAGER_KINDS, is_urgent, render
from cloud.services.unit import Publisher

__all__ = ["Sender", "SenderConfig", "final_notice_delivered", "quiet_until"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SenderConfig:
    lease: timedelta = timedelta(seconds=60)
    batch: int = 50
    workers: int = 8
    max_attempts: int = 3
    """Attempts per channel before falling back to the next one."""
    backoff: timedelta = timedelta(seconds=5)
    max_backoff: timedelta = timedelta(minutes=10)
    rate_wait: timedelta = timedelta(seconds=1)


def quiet_until(settings: NotifySettings | None, tz: tzinfo, now: datetime) -> datetime | None:
    """The end of the quiet hours ``now`` falls in (project local time), or None outside them."""
    start = time_of_day(settings.quiet_start if settings else "22:00")
    end = time_of_day(settings.quiet_end if settings else "08:00")
    if start == end:
        return None
    local = now.astimezone(tz)
    t = local.time().replace(tzinfo=None)
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    until = datetime.combine(local.date(), end, tzinfo=tz)
    if until <= local:
        until += timedelta(days=1)
    return until.astimezone(UTC)


def final_notice_delivered(publish: Publisher | None, row: NotificationOutbox) -> None:
    """After the commit: a delivered final notice may let the policy cut now — wake the reconciler
    (``balance_changed`` re-evaluates the account) instead of waiting for the minute's cut sweep."""
    if publish is not None and row.kind == "final_notice" and row.account_id is not None:
        publish(BALANCE_CHANGED, {"account_id": row.account_id})


@dataclass
class _Prepared:
    settings: NotifySettings | None
    channels: list[str]
    templates: Mapping[str, Mapping[str, str]]
    sms_sign: str
    lang: str
    tz: tzinfo
    phone: str
    mp_openid: str
    oa_openid: str
    addressee: str = ""


class Sender:
    """One replica's sender. :meth:`run_once` claims and processes one batch (the runtime loops it);
    :meth:`poll_receipts` lives in :mod:`cloud.services.notify.receipts`."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        channels: Mapping[str, Channel],
        *,
        runner: str,
        config: SenderConfig | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        publish: Publisher | None = None,
    ) -> None:
        self._factory = factory
        self._publish = publish
        self.channels = dict(channels)
        self.runner = runner
        self.config = config or SenderConfig()
        self._limiter = limiter or LocalRateLimiter({})
        self._clock = clock
        self._pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix=f"mf-notify-{runner}")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run_once(self) -> int:
        """Claim one batch and process it concurrently; returns how many rows were claimed."""
        with self._factory() as session:
            ids = claim(session, self.runner, self._clock(), lease=self.config.lease, limit=self.config.batch)
        if ids:
            for future in [self._pool.submit(self._guarded, row_id) for row_id in ids]:
                future.result()
        return len(ids)

    def _guarded(self, row_id: int) -> None:
        try:
            self.process(row_id)
        except Exception:  # one row's fault must not stop the batch; its claim expires, it is retried
            log.exception("notification %s: processing failed", row_id)

    # --- one row --------------------------------------------------------------------------------------

    def _prepare(self, session: Session, row: NotificationOutbox) -> _Prepared:
        account = session.get(Account, row.account_id) if row.account_id is not None else None
        project_id = account.project_id if account else row.payload.get("project_id")
        project = session.get(Project, project_id) if isinstance(project_id, int) else None
        settings = (
            session.scalars(
                select(NotifySettings).where(col(NotifySettings.project_id) == project.id)
            ).first()
            if project is not None
            else None
        )
        if row.user_id is not None:
            return self._prepared_for_staff(session, row, project, settings)
        contact = (
            session.scalars(
                select(NotifyContact).where(col(NotifyContact.account_id) == row.account_id)
            ).first()
            if row.account_id is not None
            else None
        )
        phone = contact.phone if contact and contact.phone else ""
        if not phone and account is not None and account.tenant_id is not None:
            tenant = session.get(Tenant, account.tenant_id)
            phone = tenant.phone if tenant else ""
        try:
            tz: tzinfo = zone(project.timezone) if project else zone("Asia/Shanghai")
        except DomainError:
            tz = zone("Asia/Shanghai")
        lang = (contact.lang if contact and contact.lang else "") or (settings.lang if settings else "zh")
        return _Prepared(
            settings=settings,
            channels=list(settings.channels) if settings else ["log"],
            templates=settings.templates if settings else {},
            sms_sign=settings.sms_sign if settings else "",
            lang=lang,
            tz=tz,
            phone=phone,
            mp_openid=(contact.miniprogram_openid if contact else "") or str(row.payload.get("openid") or ""),
            oa_openid=contact.official_openid if contact else "",
        )

    def _prepared_for_staff(
        self,
        session: Session,
        row: NotificationOutbox,
        project: Project | None,
        settings: NotifySettings | None,
    ) -> _Prepared:
        """A manager notice's copy for one staff user: their phone, official-account openid and
        language, the project's channels."""
        staff = session.scalars(select(StaffContact).where(col(StaffContact.user_id) == row.user_id)).first()
        user = session.get(User, row.user_id)
        try:
            tz: tzinfo = zone(project.timezone) if project else zone("Asia/Shanghai")
        except DomainError:
            tz = zone("Asia/Shanghai")
        return _Prepared(
            settings=settings,
            channels=list(settings.channels) if settings else ["log"],
            templates=settings.templates if settings else {},
            sms_sign=settings.sms_sign if settings else "",
            lang=(staff.lang if staff and staff.lang else "") or (settings.lang if settings else "zh"),
            tz=tz,
            phone=staff.phone if staff else "",
            mp_openid="",  # subscribe messages need a tenant's one-shot consent: never for staff
            oa_openid=staff.official_openid if staff else "",
            addressee=user.username if user else f"user {row.user_id}",
        )

    def _fan_out(self, session: Session, row: NotificationOutbox) -> bool:
        """Hand a manager notice on as one copy per opted-in staff user of the project's organisation
        (see the module docstring); False when nobody opted in (the row is sent as it is)."""
        project_id = row.payload.get("project_id")
        project = session.get(Project, project_id) if isinstance(project_id, int) else None
        if project is None:
            return False
        wanted = session.execute(
            select(col(User.id), col(StaffContact.notices))
            .join(StaffContact, col(StaffContact.user_id) == col(User.id))
            .where(
                col(User.org_id) == project.org_id,
                col(User.active).is_(True),
                col(User.role) != Role.TENANT,
            )
            .order_by(col(User.id))
        ).all()
        users = [user_id for user_id, kinds in wanted if row.kind in (kinds or [])]
        if not users:
            return False
        existing = set(
            session.scalars(
                select(col(NotificationOutbox.user_id)).where(
                    col(NotificationOutbox.dedupe_key).startswith(f"{row.id}:user:")
                )
            )
        )
        for user_id in users:
            if user_id in existing:
                continue
            session.add(
                NotificationOutbox(
                    org_id=row.org_id,
                    account_id=None,
                    user_id=user_id,
                    kind=row.kind,
                    dedupe_key=f"{row.id}:user:{user_id}",
                    payload=dict(row.payload),
                    created_at=row.created_at,
                )
            )
        row.status = NotificationStatus.FANNED_OUT
        row.next_try_at = None
        row.last_error = ""
        release(row)
        try:
            session.commit()
        except IntegrityError:  # another sender wrote the copies (its lease on this row had expired)
            session.rollback()
        log.info("notification %s (%s): a copy for each of users %s", row.id, row.kind, users)
        return True

    def _template_for(self, prepared: _Prepared, kind: str, channel: str) -> str:
        base = "low_balance" if kind.startswith("low_balance") else kind
        per_kind = prepared.templates.get(kind) or prepared.templates.get(base) or {}
        return str(per_kind.get(channel, ""))

    def process(self, row_id: int) -> None:
        now = self._clock()
        with self._factory() as session:
            row = session.get(NotificationOutbox, row_id)
            if row is None or row.claimed_by != self.runner[:64]:
                return
            prepared = self._prepare(session, row)
            if not is_urgent(row.kind):
                until = quiet_until(prepared.settings, prepared.tz, now)
                if until is not None:
                    row.next_try_at = until
                    release(row)
                    session.commit()
                    return
            original = row.kind in MANAGER_KINDS and row.account_id is None and row.user_id is None
            if original and self._fan_out(session, row):
                return
            notice = render(row.kind, row.payload, row.created_at, prepared.tz, prepared.lang)
            while row.channel_pos < len(prepared.channels):
                name = prepared.channels[row.channel_pos]
                channel = self.channels.get(name)
                msg = Message(
                    key="",
                    notice=notice,
                    phone=prepared.phone,
                    miniprogram_openid=prepared.mp_openid,
                    official_openid=prepared.oa_openid,
                    template_id=self._template_for(prepared, row.kind, name),
                    sms_sign=prepared.sms_sign,
                    addressee=prepared.addressee,
                )
                outcome = self._try_channel(session, row, name, channel, msg, now)
                if outcome == "done":
                    return
                if outcome == "next":
                    row.channel_pos += 1
                    session.commit()
                    continue
                return  # "later": retry or rate-limit wait already recorded
            self._dead(session, row, now)

    def _try_channel(
        self,
        session: Session,
        row: NotificationOutbox,
        name: str,
        channel: Channel | None,
        msg: Message,
        now: datetime,
    ) -> str:
        if channel is None:
            row.last_error = f"{name}: not configured on this service"[:500]
            return "next"
        recipient = channel.recipient(msg)
        if not recipient:
            row.last_error = f"{name}: no recipient or template for {row.kind}"[:500]
            return "next"
        key = f"{row.id}:{name}:{recipient}"[:200]
        msg = replace(msg, key=key)
        delivery = session.scalars(
            select(NotificationDelivery).where(col(NotificationDelivery.idempotency_key) == key)
        ).first()
        if delivery is not None and delivery.status in (DeliveryStatus.SENT, DeliveryStatus.DELIVERED):
            self._accepted(
                session, row, delivery, Sent(delivery.vendor_id, delivery.status == "delivered"), now
            )
            return "done"
        if delivery is not None and delivery.status == DeliveryStatus.REFUSED:
            return "next"
        if delivery is not None and delivery.status == DeliveryStatus.SENDING:
            outcome = self._orphan(session, row, delivery, channel, msg, now)
            if outcome != "resend":
                return outcome
        if not self._limiter.allow(name):
            row.next_try_at = now + self.config.rate_wait
            release(row)
            session.commit()
            return "later"
        if name == "wechat_subscribe" and not self._spend_consent(session, row, msg.template_id):
            row.last_error = "wechat_subscribe: no consent left (每次订阅仅可发送一次)"
            return "next"
        if delivery is None:
            delivery = NotificationDelivery(
                outbox_id=row.id or 0,
                org_id=row.org_id,
                channel=name,
                recipient=recipient[:128],
                idempotency_key=key,
            )
            session.add(delivery)
        delivery.status = DeliveryStatus.SENDING
        delivery.attempts += 1
        row.attempts += 1
        row.channel = name[:16]
        try:
            session.commit()  # the record of the attempt exists before the vendor hears of it
        except IntegrityError:
            session.rollback()
            return "later"  # another sender holds this key: its outcome stands
        try:
            sent = channel.send(msg)
        except Refused as exc:
            delivery.status = DeliveryStatus.REFUSED
            delivery.error = str(exc)[:500]
            row.last_error = f"{name}: {exc}"[:500]
            session.commit()
            return "next"
        except (Failed, ChannelError) as exc:
            # a request that may have reached the vendor stays "sending": the next try looks it up
            delivery.status = DeliveryStatus.SENDING if exc.ambiguous else DeliveryStatus.FAILED
            delivery.error = str(exc)[:500]
            row.last_error = f"{name}: {exc}"[:500]
            if delivery.attempts >= self.config.max_attempts:
                session.commit()
                return "next"
            row.status = NotificationStatus.FAILED
            row.next_try_at = now + self._backoff(delivery.attempts)
            release(row)
            session.commit()
            return "later"
        self._accepted(session, row, delivery, sent, now)
        return "done"

    def _orphan(
        self,
        session: Session,
        row: NotificationOutbox,
        delivery: NotificationDelivery,
        channel: Channel,
        msg: Message,
        now: datetime,
    ) -> str:
        try:
            found = channel.lookup(msg, delivery.created_at)
        except ChannelError as exc:
            row.status = NotificationStatus.FAILED
            row.next_try_at = now + self._backoff(max(1, delivery.attempts))
            row.last_error = f"{delivery.channel}: lookup failed: {exc}"[:500]
            release(row)
            session.commit()
            return "later"
        if found is not None:
            self._accepted(session, row, delivery, found, now)
            return "done"
        if channel.can_lookup:
            return "resend"  # the vendor says it never got it
        delivery.status = DeliveryStatus.REFUSED
        delivery.error = "outcome of an interrupted send unknown: not sent again on this channel"
        row.last_error = f"{delivery.channel}: {delivery.error}"
        session.commit()
        return "next"

    def _accepted(
        self,
        session: Session,
        row: NotificationOutbox,
        delivery: NotificationDelivery,
        sent: Sent,
        now: datetime,
    ) -> None:
        delivery.vendor_id = sent.vendor_id[:64]
        delivery.sent_at = delivery.sent_at or now
        row.sent_at = row.sent_at or now
        row.next_try_at = None
        row.last_error = ""
        release(row)
        if sent.delivered:
            delivery.status = DeliveryStatus.DELIVERED
            delivery.delivered_at = now
            assert row.id is not None
            mark_notification_delivered(session, row.id, now)
        else:
            delivery.status = DeliveryStatus.SENT
            row.status = NotificationStatus.SENT
        session.commit()
        if sent.delivered:
            final_notice_delivered(self._publish, row)

    def _spend_consent(self, session: Session, row: NotificationOutbox, template_id: str) -> bool:
        consent = session.scalars(
            select(NotifyConsent)
            .where(
                col(NotifyConsent.account_id) == row.account_id, col(NotifyConsent.template_id) == template_id
            )
            .with_for_update()
        ).first()
        if consent is None or consent.used >= consent.granted:
            return False
        consent.used += 1
        return True

    def _backoff(self, attempts: int) -> timedelta:
        delay: timedelta = self.config.backoff * (2 ** max(0, attempts - 1))
        return min(self.config.max_backoff, delay)

    def _dead(self, session: Session, row: NotificationOutbox, now: datetime) -> None:
        row.status = NotificationStatus.DEAD
        release(row)
        final = row.kind == "final_notice"
        session.add(
            Alarm(
                org_id=row.org_id,
                kind=AlarmKind.NOTICE_UNDELIVERABLE,
                level=3 if final else 1,
                dedupe_key=f"notice-dead:{row.id}",
                account_id=row.account_id,
                message_zh=f"通知 {row.kind} 无法送达（{row.last_error[:200]}），请人工联系"
                + ("住户" if row.user_id is None else f"用户 {row.user_id}")
                + ("；未送达前不会自动停电" if final else ""),
                message_en=f"notice {row.kind} could not be delivered ({row.last_error[:200]}); tell the "
                + ("tenant" if row.user_id is None else f"user {row.user_id}")
                + " in person"
                + ("; no automatic cut until it is delivered" if final else ""),
                detail={"notification": row.id, "kind": row.kind},
            )
        )
        session.commit()
        log.warning("notification %s (%s) is dead: %s", row.id, row.kind, row.last_error)
