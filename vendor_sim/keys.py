"""RSA keys and X.509 certificates made at run time (nothing secret is ever stored in the repository)."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.x509.oid import NameOID

__all__ = ["KeyPair", "MerchantKeys", "make_key_pair", "merchant_keys", "random_apiv3_key"]


@dataclass(frozen=True)
class KeyPair:
    """An RSA-2048 key with a self-signed certificate; ``serial_no`` is the certificate serial in the
    upper-case hex WeChat Pay prints (and sends in ``Wechatpay-Serial`` / ``serial_no``)."""

    private_key: RSAPrivateKey
    certificate: x509.Certificate

    @property
    def public_key(self) -> RSAPublicKey:
        key = self.certificate.public_key()
        assert isinstance(key, RSAPublicKey)
        return key

    @property
    def serial_no(self) -> str:
        return format(self.certificate.serial_number, "X")

    @property
    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def public_pem(self) -> str:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def make_key_pair(common_name: str, *, valid_days: int = 365 * 5, now: datetime | None = None) -> KeyPair:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    start = (now or datetime.now(UTC)) - timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=valid_days))
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


def random_apiv3_key() -> str:
    """32 characters, as the merchant platform makes them (letters and digits)."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


@dataclass(frozen=True)
class MerchantKeys:
    """What a merchant holds: its API certificate key pair and its API v3 key."""

    mchid: str
    keys: KeyPair
    apiv3_key: str


def merchant_keys(mchid: str) -> MerchantKeys:
    return MerchantKeys(mchid, make_key_pair(f"{mchid} merchant API certificate"), random_apiv3_key())
