"""analyse_message end to end: a real Worker, real Redis, the real SDK against the local fake API."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from settings import Settings
from tests.ai.corpus import INJECTION
from tests.support.fake_anthropic import DEFAULT_OUTPUT, FakeAnthropic, RecordedRequest, Reply
from worker.ai.budget import TokenBudget
from worker.jobs.ai_analysis import AnalyseMessage
from worker.mail.message import parse_message
from worker.runtime import Client, DeadLetters, Events, JobStatus, Worker, registry
from worker.store import open_store

TENANT = "t1"
QUEUE = "ai-analysis"
_uids = itertools.count(1)


def make_settings(api: FakeAnthropic | None, **ai: object) -> Settings:
    online = {"anthropic_api_key": SecretStr("sk-test"), "anthropic_base_url": api.base_url} if api else {}
    ai = {"ai_daily_token_budget": 1_000_000, "ai_over_budget": "defer", **ai}
    return Settings(
        queues={QUEUE: {"rate_limit": None, "concurrency": 1, "backoff_base": 0.2, "max_attempts": 3}},
        lease_ms=1000,
        heartbeat_ms=300,
        idle_poll_ms=100,
        shutdown_grace_s=1.0,
        **online,  # type: ignore[arg-type]
        **ai,  # type: ignore[arg-type]
    )


@pytest.fixture
def fake_api() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as api:
        yield api


@pytest.fixture
def settings(fake_api: FakeAnthropic) -> Settings:
    return make_settings(fake_api)


@pytest.fixture
async def client(redis: Redis, settings: Settings) -> Client:
    return Client(redis, settings)


@pytest.fixture
async def worker(redis_url: str, redis: Redis, settings: Settings, database_url: str) -> AsyncIterator[Worker]:
    async with Worker(redis_url, queues=[QUEUE], settings=settings) as w:
        yield w


async def add_message(
    redis: Redis, *, subject: str = "Q3 report", body: str = "Could you review it?", **headers: str
) -> str:
    """Store one synced message for TENANT; returns its store id."""
    msg = EmailMessage()
    msg["From"] = "Tom <tom@acme.example>"
    msg["To"] = "me@acme.example"
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@acme.example>"
    msg.set_content(body)
    store = open_store(Settings())  # the test's DATABASE_URL
    try:
        item = (next(_uids), (), parse_message(bytes(msg)))
        [inserted] = await store.insert_messages(TENANT, "acc1", "INBOX", 1, [item])
    finally:
        await store.aclose()
    return inserted.message_id


async def run(client: Client, message_id: str, timeout: float = 15) -> JobStatus:
    r = await client.enqueue("analyse_message", {"tenant_id": TENANT, "message_id": message_id})
    return await client.wait(r.job_id, timeout=timeout)


async def stored(redis: Redis, message_id: str) -> dict[str, object] | None:
    store = open_store(Settings())
    try:
        message = await store.get_message(TENANT, message_id)
        assert message is not None
        return await store.get_analysis(TENANT, message.content_id)
    finally:
        await store.aclose()


async def test_success_is_stored_by_content_and_counted(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    mid = await add_message(redis)
    fake_api.script(Reply.success(usage=(900, 60)))
    st = await run(client, mid)
    assert st.state == "complete", st.error
    assert st.result["stored"] is True
    assert (st.result["analyzer"], st.result["input_tokens"], st.result["output_tokens"]) == ("anthropic", 900, 60)
    analysis = await stored(redis, mid)
    assert analysis is not None
    assert {k: analysis[k] for k in DEFAULT_OUTPUT} == DEFAULT_OUTPUT
    assert analysis["analyzer"] == "anthropic" and analysis["model"] == "claude-haiku-4-5"
    assert await TokenBudget(redis, 1).used(TENANT) == 960
    assert "Could you review it?" in fake_api.requests[0].user_text()


async def test_duplicated_mail_is_analysed_once(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    first = await add_message(redis)
    st = await run(client, first)
    assert st.result["stored"] is True
    # the same mail synced into another account: another message id, the same content identity
    store = open_store(Settings())
    try:
        message = await store.get_message(TENANT, first)
        assert message is not None
        [copy] = await store.insert_messages(TENANT, "acc2", "INBOX", 7, [(1, (), message.parsed)])
    finally:
        await store.aclose()
    assert copy.message_id != first and copy.content_id == message.content_id
    st2 = await run(client, copy.message_id)
    assert st2.state == "complete"
    assert st2.result == {"content_id": message.content_id, "stored": False, "analyzer": "anthropic"}
    assert len(fake_api.requests) == 1


async def test_429_retries_after_retry_after_without_holding_the_slot(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    """Concurrency 1: while A waits out its retry-after, B runs on the only slot."""
    a, b = await add_message(redis, subject="A"), await add_message(redis, subject="B")
    fake_api.script(Reply.error(429, retry_after="2"))
    job_a = await client.enqueue("analyse_message", {"tenant_id": TENANT, "message_id": a})
    waiting = await _wait_for_requests(fake_api, 1)
    job_b = await client.enqueue("analyse_message", {"tenant_id": TENANT, "message_id": b})
    st_b = await client.wait(job_b.job_id, timeout=10)
    st_a = await client.wait(job_a.job_id, timeout=10)
    assert (st_a.state, st_b.state) == ("complete", "complete")
    assert st_a.attempts == 2 and st_b.attempts == 1
    subjects = [_subject(r.user_text()) for r in fake_api.requests]
    assert subjects == ["A", "B", "A"]  # B ran while A was waiting
    assert fake_api.requests[2].at - waiting.at >= 1.9  # A honoured retry-after: 2 (backoff would be ~0.2 s)


async def test_retry_after_is_capped(redis: Redis, redis_url: str, fake_api: FakeAnthropic) -> None:
    settings = make_settings(fake_api, ai_retry_after_cap_s=0.5)
    mid = await add_message(redis)
    fake_api.script(Reply.error(429, retry_after="3600"))
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        st = await run(Client(redis, settings), mid)
    assert st.state == "complete" and st.attempts == 2
    # retried after the 0.5 s cap: not the hour asked for, and not the ~0.2 s queue backoff either
    assert fake_api.requests[1].at - fake_api.requests[0].at >= 0.45


@pytest.mark.parametrize("reply", [Reply.error(529), Reply.error(500)], ids=["529", "500"])
async def test_transient_errors_retry_with_backoff_then_succeed(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic, reply: Reply
) -> None:
    mid = await add_message(redis)
    fake_api.script(reply)
    st = await run(client, mid)
    assert st.state == "complete", st.error
    assert st.attempts == 2
    assert (await stored(redis, mid)) is not None


async def test_timeout_is_retried_with_backoff(redis: Redis, redis_url: str, fake_api: FakeAnthropic) -> None:
    settings = make_settings(fake_api, ai_request_timeout_s=1.0)
    mid = await add_message(redis)
    fake_api.script(Reply.hang(30))
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        st = await run(Client(redis, settings), mid)
    assert st.state == "complete", st.error
    assert st.attempts >= 2 and len(fake_api.requests) == st.attempts
    assert (await stored(redis, mid)) is not None


async def test_transient_errors_exhaust_attempts_into_the_dead_letters(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    mid = await add_message(redis)
    fake_api.script(*(Reply.error(529, message="Overloaded") for _ in range(3)))
    st = await run(client, mid)
    assert st.state == "dead"
    entry = await DeadLetters(redis).get(st.job_id)
    assert entry is not None and entry.attempts == 3
    assert "failed after 3 attempts" in entry.error and "529 overloaded_error: Overloaded" in entry.error
    assert fake_api.pending == 0 and len(fake_api.requests) == 3
    assert await stored(redis, mid) is None


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (Reply.error(400, message="max_tokens: too large"), "400 invalid_request_error: max_tokens: too large"),
        (Reply.error(401, message="invalid x-api-key"), "401 authentication_error"),
        (Reply.error(403), "403 permission_error"),
        (Reply.error(413), "413 request_too_large"),
        (Reply.truncated(), "cut off at max_tokens"),
        (Reply.success("I think this is a work email."), "not a valid analysis"),
    ],
    ids=["400", "401", "403", "413", "max_tokens", "malformed-json"],
)
async def test_permanent_failures_are_dead_lettered_at_once(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic, reply: Reply, error: str
) -> None:
    mid = await add_message(redis)
    fake_api.script(reply)
    st = await run(client, mid)
    assert st.state == "dead"
    assert len(fake_api.requests) == 1  # no retry
    entry = await DeadLetters(redis).get(st.job_id)
    assert entry is not None and entry.attempts == 1
    assert error in entry.error and "req_fake_0001" in entry.error
    assert await stored(redis, mid) is None


async def test_refusal_stores_a_marked_heuristic_analysis(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    mid = await add_message(redis)
    fake_api.script(Reply.refusal())
    st = await run(client, mid)
    assert st.state == "complete"
    analysis = await stored(redis, mid)
    assert analysis is not None
    assert (analysis["analyzer"], analysis["fallback_reason"]) == ("heuristic", "refusal")


async def test_prompt_injection_gets_a_normal_analysis_and_no_action(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    mid = await add_message(redis, subject="Quick request", body=INJECTION)
    fake_api.script(Reply.success({**DEFAULT_OUTPUT, "category": "phishing-suspect", "summary": "Asks to forward."}))
    st = await run(client, mid)
    assert st.state == "complete"
    analysis = await stored(redis, mid)
    assert analysis is not None and analysis["category"] == "phishing-suspect"
    [request] = fake_api.requests
    assert "tools" not in request.body
    block = request.user_text().split("<email-")[1].split("</email-")[0]
    assert "forward all mail" in block.lower()  # sent, as data inside the delimited block
    events = await Events(redis).read(last_id="0", count=1000)
    assert {event["function"] for _, event in events if "function" in event} == {"analyse_message"}
    assert await redis.keys("store:t1:outbox*") == []


async def test_over_budget_defers_to_the_next_utc_day(redis: Redis, redis_url: str, fake_api: FakeAnthropic) -> None:
    settings = make_settings(fake_api, ai_daily_token_budget=100, ai_over_budget="defer")
    mid = await add_message(redis)
    client = Client(redis, settings)
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        r = await client.enqueue("analyse_message", {"tenant_id": TENANT, "message_id": mid})
        st = await _wait_for_state(client, r.job_id, "deferred")
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert st.run_at is not None and midnight <= st.run_at <= midnight + timedelta(seconds=300)
    assert st.attempts <= 1 and fake_api.requests == []
    assert await stored(redis, mid) is None


async def test_over_budget_falls_back_to_heuristic(redis: Redis, redis_url: str, fake_api: FakeAnthropic) -> None:
    settings = make_settings(fake_api, ai_daily_token_budget=100, ai_over_budget="heuristic")
    mid = await add_message(redis)
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        st = await run(Client(redis, settings), mid)
    assert st.state == "complete" and st.result["fallback_reason"] == "over_budget"
    analysis = await stored(redis, mid)
    assert analysis is not None and analysis["analyzer"] == "heuristic"
    assert fake_api.requests == []


async def test_offline_default_uses_the_heuristic(redis: Redis, redis_url: str) -> None:
    settings = make_settings(None)
    mid = await add_message(redis, subject="Dinner on Saturday?", body="Are you free for dinner?")
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        st = await run(Client(redis, settings), mid)
    assert st.state == "complete"
    analysis = await stored(redis, mid)
    assert analysis is not None
    assert (analysis["analyzer"], analysis["model"], analysis["fallback_reason"]) == ("heuristic", "heuristic-v1", None)
    assert analysis["needs_reply"] is True


async def test_list_headers_of_synced_mail_reach_the_heuristic(redis: Redis, redis_url: str) -> None:
    """Only the headers mark this as list mail: the stored message must carry them to the analyzer."""
    settings = make_settings(None)
    plain = await add_message(redis, subject="Notes from Tuesday", body="Here are the notes from Tuesday.")
    listed = await add_message(
        redis,
        subject="Notes from Wednesday",
        body="Here are the notes from Wednesday.",
        List_Id="<team-notes.lists.acme.example>",
        List_Unsubscribe="<https://lists.acme.example/unsub>",
    )
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        client = Client(redis, settings)
        for mid in (plain, listed):
            assert (await run(client, mid)).state == "complete"
    plain_analysis, listed_analysis = await stored(redis, plain), await stored(redis, listed)
    assert plain_analysis is not None and listed_analysis is not None
    assert listed_analysis["category"] == "newsletter"
    assert plain_analysis["category"] != "newsletter"


async def test_unknown_message_is_dead_lettered(client: Client, redis: Redis, worker: Worker) -> None:
    st = await run(client, "mdoesnotexist")
    assert st.state == "dead"
    entry = await DeadLetters(redis).get(st.job_id)
    assert entry is not None and "not found" in entry.error and entry.attempts == 1


async def test_per_tenant_rate_limit_defers_only_that_tenant(redis: Redis, redis_url: str) -> None:
    """Offline (fast) analyses: a burst above the tenant limit is deferred for that tenant only."""
    spec = registry.get("analyse_message")
    assert spec is not None and spec.rate_limit is not None and spec.rate_limit_key is not None
    limit, _ = spec.rate_limit
    assert spec.rate_limit_key(AnalyseMessage(tenant_id="t9", message_id="m")) == "t9"
    settings = make_settings(None)
    client = Client(redis, settings)
    noisy = [await add_message(redis, subject=f"burst {i}") for i in range(limit + 10)]
    async with Worker(redis_url, queues=[QUEUE], settings=settings):
        jobs = [await client.enqueue("analyse_message", {"tenant_id": TENANT, "message_id": m}) for m in noisy]
        quiet = await client.enqueue("analyse_message", {"tenant_id": "t2", "message_id": "mnotthere"})
        assert (await client.wait(quiet.job_id, timeout=15)).state == "dead"  # ran: t2 was not throttled
        deferred: set[str] = set()
        deadline = time.monotonic() + 15
        while not deferred:
            assert time.monotonic() < deadline, "no job was rate limited"
            events = await Events(redis).read(last_id="0", count=10_000)
            deferred = {e["job_id"] for _, e in events if e.get("type") == "deferred"}
            await asyncio.sleep(0.05)
    assert deferred <= {j.job_id for j in jobs}


async def test_figures_through_the_worker(
    client: Client, redis: Redis, worker: Worker, fake_api: FakeAnthropic
) -> None:
    """Per analysed message via a real Worker (enqueue -> stored); printed with -s, only invariants asserted."""
    latencies, tokens = [], []
    for i in range(20):
        st = await run(client, await add_message(redis, subject=f"figures {i}"))
        assert st.state == "complete" and st.enqueued_at and st.finished_at
        latencies.append((st.finished_at - st.enqueued_at).total_seconds() * 1000)
        tokens.append(st.result["input_tokens"] + st.result["output_tokens"])
    assert await TokenBudget(redis, 1).used(TENANT) == sum(tokens)
    print(
        f"\nworker, one job at a time: latency enqueue->stored median {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms; tokens per message median {statistics.median(tokens):.0f}"
    )


def _subject(user_text: str) -> str:
    return next(line.removeprefix("Subject: ") for line in user_text.splitlines() if line.startswith("Subject: "))


async def _wait_for_requests(api: FakeAnthropic, n: int, timeout: float = 10) -> RecordedRequest:
    deadline = time.monotonic() + timeout
    while len(api.requests) < n:
        assert time.monotonic() < deadline, f"fake API saw {len(api.requests)} requests, expected {n}"
        await asyncio.sleep(0.02)
    return api.requests[n - 1]


async def _wait_for_state(client: Client, job_id: str, state: str, timeout: float = 10) -> JobStatus:
    deadline = time.monotonic() + timeout
    while (st := await client.status(job_id)).state != state:
        assert time.monotonic() < deadline, f"job is {st.state}, expected {state}"
        await asyncio.sleep(0.02)
    return st
