"""Locally generated signing keys and Firebase-shaped ID tokens for authentication tests."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt


@dataclass
class SigningKey:
    kid: str
    private_pem: bytes
    cert_pem: str

    def sign(self, claims: dict, *, kid: str | None = None) -> str:
        signer = crypt.RSASigner.from_string(self.private_pem, key_id=kid or self.kid)
        return jwt.encode(signer, claims).decode()


def make_key(kid: str = "test-key") -> SigningKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SigningKey(kid, private_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


def firebase_claims(project: str, user: str, *, ttl: int = 3600, **overrides) -> dict:
    now = int(time.time())
    claims = {
        "iss": f"https://securetoken.google.com/{project}",
        "aud": project,
        "sub": user,
        "user_id": user,
        "iat": now,
        "exp": now + ttl,
        "auth_time": now,
    }
    claims.update(overrides)
    return claims
