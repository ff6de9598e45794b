"""Hostile input through the HTTP API: request-size limit (413), RFC 5321/5322 limits, line separators in
headers, run_at bounds, huge integers, one error body for every 4xx, dead letters holding raw bytes, and
values cut in responses. Each refusal writes nothing."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from settings import Settings
from tests.api.conftest import ADMIN, api_settings
from tests.helpers import eventually
from worker.api import create_app
from worker.api.server import serve
from worker.runtime import Worker, create_pool

ACCOUNT = {
    "email": "me@example.com",
    "username": "me",
    "secret": "pw",
    "imap_host": "127.0.0.1",
    "imap_port": 1,
    "imap_tls": "plain",
    "smtp_host": "127.0.0.1",
    "smtp_port": 1,
    "smtp_tls": "plain",
}
BIG = "x" * 10_000_000


def assert_error_body(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    body = r.json()
    assert set(body) == {"message", "detail"} and isinstance(body["message"], str) and body["message"]
    assert isinstance(body["detail"], list)
    for item in body["detail"]:
        assert set(item) == {"loc", "msg", "type"}
    return dict(body)


@pytest.fixture
async def account(acme: httpx.AsyncClient) -> str:
    r = await acme.post("/v1/tenants/acme/accounts", json=ACCOUNT)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def mail(account: str, **over: object) -> dict[str, object]:
    return {"account_id": account, "sender": "me@example.com", "to": ["you@example.com"], "subject": "hi"} | over


async def outbox_count(client: httpx.AsyncClient) -> int:
    r = await client.get("/v1/tenants/acme/outbox")
    assert r.status_code == 200
    return len(r.json())


async def test_request_body_limit_is_413_with_the_error_body(acme: httpx.AsyncClient, account: str) -> None:
    big = mail(account, text="a" * (3 * 1024 * 1024))  # over the default API_MAX_BODY_BYTES (2 MiB)
    assert_error_body(await acme.post("/v1/tenants/acme/outbox", json=big), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: found while it streams in
        data = json.dumps(big).encode()
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    r = await acme.post("/v1/tenants/acme/outbox", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error_body(r, 413)
    assert await outbox_count(acme) == 0
    ok = await acme.post("/v1/tenants/acme/outbox", json=mail(account, text="a" * (1024 * 1024)))
    assert ok.status_code == 202, ok.text


async def test_body_limit_is_configurable(redis: Redis, redis_url: str) -> None:
    async with (
        serve(create_app(api_settings(api_max_body_bytes=2048), redis_url=redis_url)) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin,
    ):
        r = await admin.post("/v1/jobs", json={"function": "admin_task", "payload": {"note": "n" * 3000}})
        assert_error_body(r, 413)
        r = await admin.post("/v1/jobs", json={"function": "admin_task", "payload": {"note": "n" * 1000}})
        assert r.status_code == 202


RCPT_CASES: list[tuple[str, dict[str, object]]] = [
    ("101 recipients", {"to": [f"r{i}@example.com" for i in range(101)]}),
    ("10,000 recipients", {"to": [f"r{i}@example.com" for i in range(10_000)]}),
    (
        "101 over to, cc, bcc",
        {"cc": [f"c{i}@example.com" for i in range(50)], "bcc": [f"b{i}@x.example" for i in range(50)]},
    ),
    ("local part of 65 octets", {"to": ["a" * 65 + "@example.com"]}),
    ("local part of 33 two-octet characters", {"to": ["ü" * 33 + "@example.com"]}),
    ("address over 254 octets", {"to": ["a@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 62 + ".com"]}),
    ("sender local part over 64", {"sender": "s" * 65 + "@example.com"}),
    ("subject of 1,000,000 characters", {"subject": "s" * 1_000_000}),
    ("subject of 999 octets", {"subject": "s" * 999}),
    ("subject of 500 two-octet characters", {"subject": "é" * 500}),
    ("U+2028 in the subject", {"subject": "a\u2028b"}),
    ("U+2029 in the subject", {"subject": "a\u2029b"}),
    ("U+0085 in the subject", {"subject": "a\u0085b"}),
    ("CR LF in the subject", {"subject": "a\r\nBcc: x@evil.example"}),
    ("LF in the sender name", {"sender_name": "a\nb"}),
    ("U+2028 in the sender name", {"sender_name": "a\u2028b"}),
    ("U+2028 in an address", {"to": ["a\u2028b@example.com"]}),
]


@pytest.mark.parametrize(("case", "over"), RCPT_CASES, ids=[c[0] for c in RCPT_CASES])
async def test_mail_limits_are_422_and_write_nothing(
    acme: httpx.AsyncClient, account: str, case: str, over: dict[str, object]
) -> None:
    body = assert_error_body(await acme.post("/v1/tenants/acme/outbox", json=mail(account, **over)), 422)
    assert len(json.dumps(body)) < 5000, case  # the refused value is not echoed
    assert await outbox_count(acme) == 0, case


async def test_mail_at_the_limits_is_accepted(acme: httpx.AsyncClient, account: str) -> None:
    fine = mail(
        account,
        to=[f"r{i}@example.com" for i in range(98)] + ["l" * 64 + "@example.com"],
        cc=["c@example.com"],
        subject="s" * 998,
        sender_name="Zoë\tZ",
        text="line one\u2028still the body\r\n",
    )
    r = await acme.post("/v1/tenants/acme/outbox", json=fine)
    assert r.status_code == 202, r.text
    assert await outbox_count(acme) == 1


async def test_recipient_limit_is_configurable(redis: Redis, redis_url: str) -> None:
    async with (
        serve(create_app(api_settings(mail_max_recipients=2), redis_url=redis_url)) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin,
    ):
        r = await admin.post("/v1/tenants/acme/accounts", json=ACCOUNT)
        account = r.json()["id"]
        r = await admin.post("/v1/tenants/acme/outbox", json=mail(account, to=["a@x.example", "b@x.example"]))
        assert r.status_code == 202, r.text
        r = await admin.post(
            "/v1/tenants/acme/outbox", json=mail(account, to=["a@x.example"], cc=["b@x.example", "c@x.example"])
        )
        assert "MAIL_MAX_RECIPIENTS" in assert_error_body(r, 422)["message"]


def _in(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


RUN_AT_CASES: list[tuple[str, object]] = [
    ("year 9999", "9999-12-31T23:59:59Z"),
    ("year 0001", "0001-01-01T00:00:00Z"),
    ("a bare number", 1_900_000_000),
    ("a bare float", 1.9e9),
    ("a numeric string", "1900000000"),
    ("no timezone", "2030-01-01T09:00:00"),
    ("two days ago", (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).isoformat()),
    ("beyond the horizon", _in(400 * 86400)),
    ("not a time", "soon"),
]


@pytest.mark.parametrize(("case", "run_at"), RUN_AT_CASES, ids=[c[0] for c in RUN_AT_CASES])
async def test_run_at_bounds(acme: httpx.AsyncClient, account: str, case: str, run_at: object) -> None:
    assert_error_body(await acme.post("/v1/tenants/acme/outbox", json=mail(account, run_at=run_at)), 422)
    assert_error_body(
        await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": {}, "run_at": run_at}), 422
    )
    assert await outbox_count(acme) == 0, case


async def test_run_at_within_bounds(acme: httpx.AsyncClient, account: str) -> None:
    for run_at in (_in(3600), _in(360 * 86400), _in(-3600)):
        r = await acme.post("/v1/tenants/acme/outbox", json=mail(account, run_at=run_at))
        assert r.status_code == 202, (run_at, r.text)
    assert_error_body(await acme.post("/v1/tenants/acme/outbox", json=mail(account, delay=400 * 86400)), 422)


async def test_huge_numbers_are_422(admin: httpx.AsyncClient, acme: httpx.AsyncClient, redis: Redis) -> None:
    for payload in ({"n": 10**30}, {"n": 2**64}, {"n": -(10**30)}):
        r = await acme.post("/v1/jobs", json={"function": "tenant_task", "payload": payload})
        assert_error_body(r, 422)
    for raw in ('{"n": NaN}', '{"n": Infinity}', '{"n": 1e400}'):  # Python's JSON parser takes these
        body = '{"function": "tenant_task", "payload": ' + raw + "}"
        assert_error_body(await acme.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"}), 422)
    r = await admin.post("/v1/jobs", json={"function": "admin_task", "payload": {"note": 1}, "priority": 10**30})
    assert_error_body(r, 422)
    for query in (
        "offset=1000000000000000000000000000000",
        "offset=2000000",
        "offset=-1",
        "limit=99999999999999999999",
    ):
        assert_error_body(await admin.get(f"/v1/dead-letters?{query}"), 422)
    assert_error_body(await admin.post("/v1/tenants/acme/accounts", json=ACCOUNT | {"imap_port": 10**30}), 422)
    assert await redis.keys("arq:job:*") == []


async def test_every_4xx_has_the_same_body(
    admin: httpx.AsyncClient, acme: httpx.AsyncClient, anon: httpx.AsyncClient
) -> None:
    assert_error_body(await anon.get("/v1/queues"), 401)
    assert_error_body(await acme.get("/v1/queues"), 403)
    assert_error_body(await acme.get("/v1/tenants/globex/accounts"), 403)
    assert_error_body(await admin.get("/v1/jobs/nope"), 404)
    assert_error_body(await admin.get("/v1/no-such-route"), 404)
    assert_error_body(await admin.delete("/v1/queues"), 405)
    body = assert_error_body(await admin.get("/v1/tenants/bad:tenant/accounts"), 422)
    assert body["detail"][0]["loc"] == ["path", "tenant_id"]
    assert_error_body(await admin.post("/v1/admin/tenants/-bad/tokens"), 422)
    assert_error_body(
        await admin.post("/v1/jobs", json={"function": "admin_task"}, headers={"Idempotency-Key": "k" * 201}), 422
    )
    assert_error_body(
        await admin.post("/v1/jobs", content=b"{not json", headers={"Content-Type": "application/json"}), 422
    )
    r = await admin.post("/v1/jobs", json={"function": "admin_task", "payload": {}, "run_at": _in(3600)})
    job = r.json()["job_id"]
    assert (await admin.post(f"/v1/jobs/{job}/cancel")).status_code == 200
    assert_error_body(await admin.post(f"/v1/jobs/{job}/cancel"), 409)


async def test_dead_letters_with_raw_bytes_are_served(
    admin: httpx.AsyncClient, redis: Redis, redis_url: str, worker: Worker
) -> None:
    """Payloads with non-UTF-8 bytes (from any producer), and a dead-letter entry that is not even msgpack:
    the listing, the entries and the job's detail all answer 200 with JSON."""
    pool = await create_pool(redis_url)
    try:
        enq = await pool.enqueue_job("tenant_task", tenant_id="acme", n=b"\xff\xfe", _queue_name="api-test")
        odd = await pool.enqueue_job("tenant_task", tenant_id=b"\xc3\x28", fail=True, _queue_name="api-test")
    finally:
        await pool.aclose()
    assert enq is not None and odd is not None
    await redis.set("rt:dlq:junk", b"\xc1\xff\x00 not msgpack")
    await redis.set(b"rt:dlq:\xff\xfe", b"\x93\x01\x02\x03")
    await redis.zadd("rt:dlq", {"junk": 1, b"\xff\xfe": 2})

    async def dead() -> bool:
        r = await admin.get("/v1/dead-letters")
        return r.status_code == 200 and r.json()["total"] == 4

    await eventually(dead, within=15)
    listing = (await admin.get("/v1/dead-letters")).json()
    assert {i["job_id"] for i in listing["items"]} >= {enq.job_id, odd.job_id, "junk"}
    for jid in (enq.job_id, odd.job_id, "junk"):
        r = await admin.get(f"/v1/dead-letters/{jid}")
        assert r.status_code == 200, r.text
        r = await admin.get(f"/v1/jobs/{jid}", params={"detail": "true"})
        assert r.status_code in (200, 404), r.text
    assert (await admin.get("/v1/dead-letters/junk")).json()["error"].startswith("unreadable dead-letter entry")
    detail = (await admin.get(f"/v1/jobs/{enq.job_id}", params={"detail": "true"})).json()
    assert detail["state"] == "dead" and detail["payload"]["n"] == "\\xff\\xfe"
    assert (await admin.get("/v1/queues/api-test/jobs", params={"state": "dead"})).status_code == 200


async def test_huge_values_are_cut_in_responses(
    admin: httpx.AsyncClient, redis: Redis, redis_url: str, worker: Worker
) -> None:
    """A 10 MB id from a plain arq producer: the dead letter keeps only the payload's first bytes, the job
    detail shows its payload cut to a few KB."""
    pool = await create_pool(redis_url)
    try:
        enq = await pool.enqueue_job("tenant_task", tenant_id="acme", n=1, fail=True, note=BIG, _queue_name="api-test")
    finally:
        await pool.aclose()
    assert enq is not None

    async def dead() -> bool:
        return (await admin.get(f"/v1/dead-letters/{enq.job_id}")).status_code == 200

    await eventually(dead, within=15)
    for path in (f"/v1/dead-letters/{enq.job_id}", f"/v1/jobs/{enq.job_id}?detail=true", "/v1/dead-letters"):
        r = await admin.get(path)
        assert r.status_code == 200 and len(r.content) < 50_000, (path, len(r.content))
    assert len(await redis.get(f"rt:dlq:{enq.job_id}") or b"") < 50_000


def test_openapi_declares_every_status_and_shape(settings: Settings) -> None:
    """Walk every operation of the app (any router's): each declares the standard error responses with the
    ErrorBody schema, and the tenant id path parameter carries its pattern."""
    from worker.api.errors import standard_codes

    schema = create_app(settings).openapi()
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    assert "HTTPValidationError" not in json.dumps(schema)
    operations = [(p, m, op) for p, ops in schema["paths"].items() for m, op in ops.items()]
    assert len(operations) > 40
    for path, method, op in operations:
        wanted = standard_codes(path, method, op)
        if path.startswith("/v1/"):
            assert {404, 422, 503} <= wanted
            if path != "/v1/oauth/callback":
                assert {401, 403} <= wanted, path
        for code in wanted:
            got = op["responses"].get(str(code))
            assert got is not None, (method, path, code)
            assert got["content"]["application/json"]["schema"] == ref, (method, path, code)
        for param in op.get("parameters", []):
            if param["name"] == "tenant_id":
                assert param["schema"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", path
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"message", "detail"}


async def test_a_refused_send_writes_nothing_at_all(acme: httpx.AsyncClient, account: str, redis: Redis) -> None:
    keys = set(await redis.keys("*"))
    for _, over in RCPT_CASES[:3]:
        assert_error_body(await acme.post("/v1/tenants/acme/outbox", json=mail(account, **over)), 422)
    assert set(await redis.keys("*")) == keys


def test_cli_shows_dead_letters_holding_raw_bytes(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    """`worker dlq list/show` (table and --json) print entries whose payload holds non-UTF-8 bytes or huge
    values: escaped and cut, never a crash."""
    import msgpack
    import redis as sync_redis

    from tests.test_cli import run

    r = sync_redis.Redis.from_url(redis_url)
    entry = {"job_id": "raw1", "function": "tenant_task", "queue": "api-test", "error": "e" * 100_000,
             "payload": {"tenant_id": "acme", "n": b"\xff\xfe", "big": "b" * 100_000}, "failed_at": 1}  # fmt: skip
    r.set("rt:dlq:raw1", msgpack.packb(entry, use_bin_type=True))
    r.zadd("rt:dlq", {"raw1": 1})
    r.close()
    common = ("--redis-url", redis_url)
    shows = (("dlq", "list"), ("dlq", "list", "--json"), ("dlq", "show", "raw1"), ("dlq", "show", "raw1", "--json"))
    for argv in shows:
        code, out, err = run(capsys, *argv, *common)
        assert code == 0, (argv, err)
        assert "raw1" in out and len(out) < 30_000, argv
    code, out, _ = run(capsys, "dlq", "show", "raw1", "--json", *common)
    assert json.loads(out)["payload"]["n"] == "\\xff\\xfe"


async def test_routes_answer_503_with_the_error_body_while_redis_is_down(settings: Settings) -> None:
    from worker.devstack import RedisServer

    down = RedisServer()  # never started: nothing listens on its port
    async with (
        serve(create_app(settings, redis_url=down.url)) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as admin,
    ):
        for path in ("/v1/queues", "/v1/dead-letters", "/v1/jobs/x"):
            r = await admin.get(path)
            assert_error_body(r, 503)
            assert r.headers["Retry-After"] == "2"
