"""Encryption of account secrets at rest (AES-GCM; tenant and account ids as associated data)."""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr


class SecretBox:
    """AES-GCM encryption of account secrets; the tenant and account ids are authenticated data."""

    def __init__(self, secret_key: SecretStr) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"worker-store-v1", info=b"account-secrets")
        self._aead = AESGCM(hkdf.derive(secret_key.get_secret_value().encode()))

    def encrypt(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, plaintext.encode(), aad.encode())).decode()

    def decrypt(self, token: str, aad: str) -> str:
        blob = base64.b64decode(token)
        return self._aead.decrypt(blob[:12], blob[12:], aad.encode()).decode()
