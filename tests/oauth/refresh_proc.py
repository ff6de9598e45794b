"""A separate process asking for an account's access token the moment the test says go (a Redis list).

Prints a SHA-256 of the token it got (never the token) or the error class.
    python -m tests.oauth.refresh_proc REDIS_URL TENANT ACCOUNT GO_KEY
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from pydantic import SecretStr
from redis.asyncio import Redis

from tests.support import SECRET_KEY
from worker.mail.oauth import TokenError, TokenManager
from worker.store import RedisStore


async def main(url: str, tenant: str, account: str, go: str) -> None:
    redis = Redis.from_url(url)
    store = RedisStore(redis, SecretStr(SECRET_KEY))
    tokens = TokenManager(redis, store, SecretStr(SECRET_KEY), margin_s=60)
    await redis.rpush(go + ":ready", 1)
    await redis.blpop([go], timeout=30)
    try:
        token = await tokens.access_token(tenant, account)
        print(hashlib.sha256(token.token.get_secret_value().encode()).hexdigest(), token.refreshed, flush=True)
    except TokenError as exc:
        print(type(exc).__name__, flush=True)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
