"""Typed settings of the cloud service, read once from ``MF_*`` environment variables.

Built once at start-up (``Settings()`` or :func:`load_settings`) and passed down; nothing below reads
the environment again. The key that signs API tokens is either ``MF_SECRET_KEY`` or, when that is unset,
a random key generated once into the data directory (:func:`cloud.datadir.token_secret`). The old
built-in development key is public (it is in this file), so it is refused in every environment; with
``MF_ENVIRONMENT=production`` the key must be given explicitly, because API replicas must share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cloud.domain.errors import PolicyError
from cloud.domain.localtime import zone

__all__ = [
    "DEFAULT_SECRET_KEY",
    "DEFAULT_SHARE_GROUP",
    "MIN_SECRET_KEY_LENGTH",
    "InsecureSettingsError",
    "Settings",
    "load_settings",
]

DEFAULT_SECRET_KEY = "meterflow-development-secret-change-me"  # noqa: S105 - public, so refused everywhere
"""The key older versions signed tokens with when none was set; anyone could mint tokens with it."""
MIN_SECRET_KEY_LENGTH = 16
DEFAULT_SHARE_GROUP = "meterflow"
"""Refused in production: Mosquitto 2.0 does not check SUBSCRIBE against its ACL, so a gateway that
knows the ingest's group can join it and take a share of every gateway's messages (docs/security.md)."""


class InsecureSettingsError(ValueError):
    """A setting that is only acceptable on a developer's machine was used elsewhere."""


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "meterflow"


class Settings(BaseSettings):
    """Everything the cloud service needs to know about its surroundings."""

    model_config = SettingsConfigDict(
        env_prefix="MF_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # errors never show keys
    )

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Field(default_factory=_default_data_dir)

    database_url: str = ""
    """SQLAlchemy URL; empty means ``sqlite:///<data_dir>/meterflow.db``."""
    database_echo: bool = False
    database_pool_size: int = Field(default=10, ge=1)
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)

    redis_url: str | None = None
    """Locks, rate limits and live events across replicas; in-process equivalents when unset."""

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_prefix: str = "mf/v1"
    mqtt_shared: bool = True
    """Use ``$share/<group>/...`` subscriptions; the embedded demo broker may not support them."""
    mqtt_share_group: str = Field(default=DEFAULT_SHARE_GROUP, pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    """A private value in production (see :data:`DEFAULT_SHARE_GROUP`); ``meterflow broker add --cloud``
    makes one."""
    mqtt_client_id: str | None = None
    poll_interval_s: int = Field(default=900, ge=1, le=86400)
    """How often gateways poll the meters the cloud plans for them (commissioned with a code)."""
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    """MQTT 5 (session expiry, shared subscriptions); "3.1.1" for brokers without v5, e.g. amqtt."""

    secret_key: SecretStr | None = None
    """Signs API tokens; unset: a random key kept in ``<data_dir>/secret_key`` (mode 0600)."""
    token_ttl_s: int = Field(default=12 * 3600, ge=60)
    login_max_failures: int = Field(default=5, ge=1)
    """Failed logins per username within ``login_window_s`` before each further attempt is delayed
    (1 s after the last failure, then 2, 4, … up to ``login_lockout_s``); see cloud/api/ratelimit.py."""
    login_address_max_failures: int = Field(default=20, ge=1)
    """The same, per client address (an IPv6 client counts by its /64)."""
    login_window_s: int = Field(default=24 * 3600, ge=60)
    """Failures older than this are forgotten (sliding window)."""
    login_lockout_s: int = Field(default=900, ge=1)
    """The longest delay between attempts on one username or address."""
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()
    """Reverse proxies (addresses or CIDRs, comma-separated) whose ``X-Forwarded-For`` names the
    client; from any other peer the header is ignored. Empty: no proxy is trusted."""

    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    """Largest request body the API reads (413 above it), declared or chunked."""
    approval_limit_fen: int = Field(default=50_000, ge=0)
    """Four eyes: money moved on one person's word above this (fen) waits for a second person — a
    replaced or closed local-prepay meter's money, a refund, a manual adjustment."""

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    run_background: bool = True
    """``serve`` also runs ingest, control and jobs; API-only replicas set this to false."""

    # --- tenant payments (docs/payments.md) -------------------------------------------------------
    wechatpay_mode: Literal["off", "direct", "partner"] = "off"
    """WeChat Pay: ``direct`` (the merchant is the property company), ``partner`` (服务商: a service
    provider's merchant, each organisation a sub-merchant, see ``pay_merchant``), or ``off``."""
    wechatpay_base_url: str = "https://api.mch.weixin.qq.com"
    wechatpay_mchid: str = ""
    """The merchant id (``sp_mchid`` in partner mode)."""
    wechatpay_serial_no: str = ""
    """Serial number of the merchant API certificate whose key signs requests."""
    wechatpay_private_key: SecretStr | None = None
    """PEM of that key (or ``wechatpay_private_key_file``)."""
    wechatpay_private_key_file: Path | None = None
    wechatpay_apiv3_key: SecretStr | None = None
    """The 32-byte API v3 key: decrypts notifications and platform certificates."""
    wechatpay_public_key: SecretStr | None = None
    """Public-key mode: the WeChat Pay public key (PEM) and its id ``PUB_KEY_ID_…``; unset: platform
    certificates, fetched and refreshed by serial."""
    wechatpay_public_key_id: str = ""
    wechatpay_notify_base_url: str = ""
    """This service as WeChat Pay reaches it (``https://pay.example.com``): notifications go to
    ``<it>/api/v1/pay/wechat/notify`` and ``…/refund-notify``."""
    wechatpay_timeout_s: float = Field(default=10.0, gt=0, le=60)
    pay_order_ttl_s: int = Field(default=900, ge=60, le=7200)
    """An unpaid order is closed after this (the payment page stays valid as long)."""
    pay_poll_after_s: int = Field(default=120, ge=5, le=3600)
    """Orders still pending after this are queried (a notification may never come)."""
    pay_notify_window_s: int = Field(default=300, ge=30, le=900)
    """A notification whose timestamp is further off than this is refused (replays)."""
    wechat_api_base_url: str = "https://api.weixin.qq.com"
    wechat_open_base_url: str = "https://open.weixin.qq.com"
    wechat_miniprogram_appid: str = ""
    wechat_miniprogram_secret: SecretStr | None = None
    wechat_official_appid: str = ""
    """The official account (公众号) whose web authorisation logs tenants into the H5 page."""
    wechat_official_secret: SecretStr | None = None
    tenant_page_url: str = ""
    """The tenant H5 page as tenants' phones reach it (``https://pay.example.com/h5/``): the web
    authorisation returns to ``<it>auth``. Unset: this request's own address."""
    tenant_sim_pay_url: str = ""
    """A WeChat Pay *simulator* (``vendor_sim``) the tenant page pays through in a normal browser
    (``<it>/sim/jsapi/pay``), where WeChat's JS bridge does not exist: tests and the demo. Refused in
    production."""
    tenant_token_ttl_s: int = Field(default=7 * 24 * 3600, ge=300)
    """A tenant's session token from a WeChat login."""
    bind_token_ttl_s: int = Field(default=90 * 24 * 3600, ge=300)
    """A room's binding QR code is valid this long (the manager prints a new one after)."""

    # --- notifications (docs/notifications.md) --------------------------------------------------------
    notify_enabled: bool = True
    """Run the notification sender on this replica (every replica may: claims are leases)."""
    notify_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often the sender looks for due notices when no event wakes it."""
    notify_workers: int = Field(default=8, ge=1, le=64)
    """Vendor calls in flight at once per replica."""
    notify_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """Each vendor call's own timeout: a hanging vendor holds one worker this long at most."""
    notify_max_attempts: int = Field(default=3, ge=1, le=20)
    """Attempts per channel before falling back to the next one."""
    notify_rate_per_s: int = Field(default=50, ge=1, le=10_000)
    """Messages per second per channel across all replicas (Redis) or per replica (in-process)."""
    notify_receipt_timeout_s: int = Field(default=900, ge=30, le=7 * 24 * 3600)
    """An SMS with no delivery report after this counts as not delivered (next channel)."""
    notify_receipts_interval_s: float = Field(default=10.0, gt=0, le=600)
    """How often the SMS vendors are asked for delivery reports (a final notice counts, and so lets
    the arrears policy cut, only once its report is in)."""
    sms_aliyun_access_key_id: str = ""
    sms_aliyun_access_key_secret: SecretStr | None = None
    sms_aliyun_endpoint: str = "dysmsapi.aliyuncs.com"
    """``host[:port]``; a simulator's for tests and the demo."""
    sms_aliyun_protocol: Literal["https", "http"] = "https"
    sms_tencent_secret_id: str = ""
    sms_tencent_secret_key: SecretStr | None = None
    sms_tencent_sdk_app_id: str = ""
    sms_tencent_endpoint: str = "sms.tencentcloudapi.com"
    sms_tencent_protocol: Literal["https", "http"] = "https"
    sms_tencent_region: str = "ap-guangzhou"

    timezone: str = "Asia/Shanghai"
    """Default local timezone of projects: friendly hours, holidays, daily aggregates. A tzdata name:
    anything else is refused at start-up, not by the daily job of every day after."""

    @field_validator("timezone")
    @classmethod
    def _tzdata_name(cls, value: str) -> str:
        try:
            zone(value)
        except PolicyError as exc:
            raise ValueError(f"MF_TIMEZONE: {exc}") from exc
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            items = [item for item in value.replace(",", " ").split() if item]
            if "*" in items:
                raise ValueError("MF_TRUSTED_PROXIES takes addresses or CIDRs; '*' would trust anyone")
            return tuple(items)
        return value

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'meterflow.db'}")
        if self.tenant_sim_pay_url and self.environment == "production":
            raise InsecureSettingsError(
                "MF_TENANT_SIM_PAY_URL names a WeChat Pay simulator: tenants would pay nobody; unset it "
                "when MF_ENVIRONMENT=production"
            )
        if self.secret_key is None:
            if self.environment == "production":
                raise InsecureSettingsError(
                    "MF_SECRET_KEY must be set to a private value when MF_ENVIRONMENT=production "
                    "(every API replica must sign tokens with the same key)"
                )
            return self
        key = self.secret_key.get_secret_value()
        if key == DEFAULT_SECRET_KEY:
            raise InsecureSettingsError(
                "MF_SECRET_KEY is the public built-in development key: anyone could sign tokens with it; "
                "set a private value or unset it to use a generated one"
            )
        if len(key) < MIN_SECRET_KEY_LENGTH:
            raise InsecureSettingsError(f"MF_SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters")
        if self.environment == "production" and self.mqtt_shared and len(self.mqtt_share_group) < 16:
            raise InsecureSettingsError(
                "MF_MQTT_SHARE_GROUP must be a private value of at least 16 characters when "
                "MF_ENVIRONMENT=production (a gateway that knows it can divert readings; docs/security.md)"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (tests, the demo)."""
    return Settings(**overrides)
