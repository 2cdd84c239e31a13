"""The cryptography of WeChat Pay API v3, written from the published rules (independently of the
client library the cloud uses, so the two check each other).

- Merchant request signature: ``Authorization: WECHATPAY2-SHA256-RSA2048 mchid="…",nonce_str="…",
  signature="…",timestamp="…",serial_no="…"`` over ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``
  (RSA PKCS#1 v1.5, SHA-256, base64), the merchant's certificate key.
- Platform signature of responses and notifications: ``Wechatpay-Timestamp``, ``Wechatpay-Nonce``,
  ``Wechatpay-Signature``, ``Wechatpay-Serial`` over ``TIMESTAMP\\nNONCE\\nBODY\\n``.
- Resources: AEAD_AES_256_GCM, key = the 32-byte API v3 key, nonce = 12 ASCII characters,
  associated data a short ASCII label, ciphertext = base64(ciphertext ‖ 16-byte tag).
- JSAPI payment: ``paySign`` = RSA-SHA256 over ``APPID\\nTIMESTAMP\\nNONCESTR\\nPACKAGE\\n`` (merchant key).
"""

from __future__ import annotations

import base64
import re
import secrets
import string
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "AuthHeader",
    "decrypt_resource",
    "encrypt_resource",
    "nonce",
    "parse_authorization",
    "rsa_sign",
    "rsa_verify",
]

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
_FIELD = re.compile(r'\s*([a-z_]+)="([^"]*)"\s*')


def nonce(length: int = 32) -> str:
    alphabet = string.ascii_uppercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(length))


def rsa_sign(key: RSAPrivateKey, message: str) -> str:
    return base64.b64encode(key.sign(message.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(key: RSAPublicKey, message: str, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message.encode(), padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class AuthHeader:
    mchid: str
    nonce_str: str
    signature: str
    timestamp: str
    serial_no: str


def parse_authorization(value: str) -> AuthHeader | None:
    schema, _, rest = value.partition(" ")
    if schema != SCHEMA:
        return None
    fields: dict[str, str] = {}
    for part in rest.split(","):
        match = _FIELD.fullmatch(part)
        if match is None:
            return None
        fields[match.group(1)] = match.group(2)
    try:
        return AuthHeader(
            fields["mchid"],
            fields["nonce_str"],
            fields["signature"],
            fields["timestamp"],
            fields["serial_no"],
        )
    except KeyError:
        return None


def encrypt_resource(apiv3_key: str, plaintext: str, associated_data: str) -> dict[str, str]:
    iv = nonce(12)
    sealed = AESGCM(apiv3_key.encode()).encrypt(iv.encode(), plaintext.encode(), associated_data.encode())
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(sealed).decode(),
        "associated_data": associated_data,
        "nonce": iv,
    }


def decrypt_resource(apiv3_key: str, resource: dict[str, str]) -> str | None:
    try:
        sealed = base64.b64decode(resource["ciphertext"])
        plain = AESGCM(apiv3_key.encode()).decrypt(
            resource["nonce"].encode(), sealed, resource.get("associated_data", "").encode()
        )
    except (InvalidTag, KeyError, ValueError):
        return None
    return plain.decode()
