"""Encryption of account secrets at rest (AES-GCM; tenant and account ids as associated data), with key rotation.

`SECRET_KEY` may hold several comma-separated keys: the first encrypts, every one decrypts. A token is
`<key id>:<base64 nonce+ciphertext>`, the key id being a short hash of the derived key, so a stored secret
names the key it needs and `needs_rotation` tells which ones `worker secrets rotate` must re-encrypt.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr


def _derive(key: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"worker-store-v1", info=b"account-secrets")
    return hkdf.derive(key.encode())


def split_keys(secret_key: SecretStr) -> list[str]:
    """The keys of a SECRET_KEY value (comma-separated, blanks ignored)."""
    return [k.strip() for k in secret_key.get_secret_value().split(",") if k.strip()]


class SecretBox:
    """AES-GCM encryption of account secrets; the tenant and account ids are authenticated data."""

    def __init__(self, secret_key: SecretStr) -> None:
        keys = split_keys(secret_key)
        if not keys:
            raise ValueError("SECRET_KEY is empty")
        self._keys: dict[str, AESGCM] = {}
        for key in keys:
            derived = _derive(key)
            self._keys.setdefault(hashlib.sha256(derived).hexdigest()[:8], AESGCM(derived))
        self.primary = next(iter(self._keys))

    def encrypt(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(12)
        blob = nonce + self._keys[self.primary].encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{self.primary}:{base64.b64encode(blob).decode()}"

    def decrypt(self, token: str, aad: str) -> str:
        """The plaintext; raises InvalidTag for a wrong key, a tampered token or another account's token."""
        kid, sep, body = token.partition(":")
        aead = self._keys.get(kid) if sep else None
        if aead is None:
            raise InvalidTag(f"no configured SECRET_KEY matches key id {kid[:8]!r}")
        blob = base64.b64decode(body)
        return aead.decrypt(blob[:12], blob[12:], aad.encode()).decode()

    def needs_rotation(self, token: str) -> bool:
        """True when the token was encrypted with another key than the first."""
        return token.partition(":")[0] != self.primary
