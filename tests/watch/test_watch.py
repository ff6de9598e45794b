"""Watchers against real Dovecot and pymap: new mail stored and analysed without any periodic sync, IDLE refresh,
dropped connections, servers without IDLE, auth failures, debounce, accounts added and disabled."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.helpers import eventually
from tests.support import mail_account
from tests.support.imap import DovecotServer, ImapServer, dovecot_available, make_mail
from tests.support.tcprelay import TcpRelay
from tests.watch.conftest import Services, connected, watches
from worker.mail.oauth import AUTH_ERROR_EVENT
from worker.runtime import Client, Events, Worker
from worker.store import SqlStore
from worker.watch.notify import notify_accounts_changed


async def sync_jobs(redis: Redis) -> list[str]:
    """Ids of the sync_mailbox jobs enqueued so far."""
    events = await Events(redis).read(count=100_000)
    return [e["job_id"] for _, e in events if e["type"] == "enqueued" and e.get("function") == "sync_mailbox"]


async def analysed(redis: Redis, store: SqlStore, tenant: str) -> int:
    """Analyses stored (from the completed analyse_message jobs)."""
    client = Client(redis)
    n = 0
    for _, e in await Events(redis).read(count=100_000):
        if e["type"] == "completed" and e.get("function") == "analyse_message":
            result = (await client.status(e["job_id"])).result
            n += await store.get_analysis(tenant, result["content_id"]) is not None
    return n


@pytest.fixture(params=["dovecot", "pymap"])
def imap(request: pytest.FixtureRequest) -> ImapServer:
    if request.param == "dovecot" and not dovecot_available():
        pytest.skip("dovecot-imapd is not installed")
    server: ImapServer = request.getfixturevalue(request.param)
    return server


async def test_appended_mail_is_stored_and_analysed_without_periodic_sync(
    worker: Worker, services: Services, store: SqlStore, redis: Redis, imap: ImapServer
) -> None:
    account = await mail_account(store, imap_port=imap.port)
    await services.start()
    await eventually(lambda: connected(redis, 1), within=15)
    [w] = await watches(redis, "t1")
    assert (w.account_id, w.mailbox, w.mode) == (account.id, "INBOX", "idle")
    await eventually(lambda: _synced_once(store, account.id), within=15)  # the catch-up sync of a new watch
    imap.append([make_mail(1, subject="hello watcher")])
    await eventually(lambda: _count(store, account.id, 1), within=20)
    await eventually(lambda: _analysed(redis, store, 1), within=20)
    [w] = await watches(redis, "t1")
    assert w.last_event is not None
    # the first sync that started after the push reports the latency (a sync already running may store the
    # message first: the report then comes from the one after it)
    await eventually(lambda: _latency_reported(redis), within=15)


async def _latency_reported(redis: Redis) -> bool:
    events = await Events(redis).read(count=100_000)
    return any(e["type"] == "watch_stored" and float(e["latency_s"]) >= 0 for _, e in events)


async def _synced_once(store: SqlStore, account_id: str) -> bool:
    return (await store.get_sync_state("t1", account_id, "INBOX")).uidvalidity is not None


async def _count(store: SqlStore, account_id: str, n: int) -> bool:
    return await store.count_messages("t1", account_id) == n


async def _analysed(redis: Redis, store: SqlStore, n: int) -> bool:
    return await analysed(redis, store, "t1") == n


async def test_a_burst_of_50_arrivals_becomes_one_or_two_syncs(
    worker: Worker, services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer
) -> None:
    account = await mail_account(store, imap_port=dovecot.port)
    await services.start(watch_debounce_s=2.0)
    await eventually(lambda: connected(redis, 1), within=15)
    await eventually(lambda: _synced_once(store, account.id), within=15)
    before = len(await sync_jobs(redis))
    started = time.monotonic()
    for i in range(50):  # 50 separate APPENDs: 50 separate pushes
        dovecot.append([make_mail(100 + i)])
    spread = time.monotonic() - started
    await eventually(lambda: _count(store, account.id, 50), within=30)
    await asyncio.sleep(2.5)  # a trailing sync, if any, is enqueued by now
    syncs = len(await sync_jobs(redis)) - before
    # one at the first push, then at most one per 2 s window while the pushes go on (one or two when the 50
    # APPENDs take under 2 s; more only on a machine so loaded that they spread over several windows)
    assert 1 <= syncs <= 2 + int(spread / 2.0), (syncs, spread)


async def test_idle_is_refreshed_and_still_reports_mail(
    worker: Worker, services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer, relay: TcpRelay
) -> None:
    account = await mail_account(store, imap_port=relay.port)
    await services.start(watch_idle_refresh_s=0.3)
    await eventually(lambda: connected(redis, 1), within=15)
    await eventually(lambda: _idles(relay, 4), within=10)  # IDLE, DONE, IDLE ... on the same connection
    assert len(relay.opened) <= 2  # the watch and its catch-up sync: refresh is not reconnect
    dovecot.append([make_mail(1)])
    await eventually(lambda: _count(store, account.id, 1), within=20)


async def _idles(relay: TcpRelay, n: int) -> bool:
    return relay.commands["IDLE"] >= n


async def test_a_dropped_connection_recovers(
    worker: Worker, services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer, relay: TcpRelay
) -> None:
    account = await mail_account(store, imap_port=relay.port)
    await services.start()
    await eventually(lambda: connected(redis, 1), within=15)
    [first] = await watches(redis, "t1")
    logins = relay.commands["LOGIN"]
    relay.drop_all()
    await eventually(lambda: _logged_in_again(relay, logins), within=15)
    await eventually(lambda: connected(redis, 1), within=15)
    dovecot.append([make_mail(2)])
    await eventually(lambda: _count(store, account.id, 1), within=20)
    [again] = await watches(redis, "t1")
    assert again.connected_since is not None and first.connected_since is not None
    assert again.connected_since > first.connected_since


async def _logged_in_again(relay: TcpRelay, before: int) -> bool:
    return relay.commands["LOGIN"] > before


async def test_a_silent_connection_is_detected_at_the_idle_refresh(
    worker: Worker, services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer, relay: TcpRelay
) -> None:
    """The server hangs without closing (TCP still answers, keepalive cannot tell): the DONE of the next IDLE
    refresh gets no answer within the account's timeout, and the watch reconnects."""
    account = await mail_account(store, imap_port=relay.port, timeout_s=1.0)
    await services.start(watch_idle_refresh_s=0.5)
    await eventually(lambda: connected(redis, 1), within=15)
    logins = relay.commands["LOGIN"]
    relay.freeze()
    await eventually(lambda: _logged_in_again(relay, logins), within=10)
    await eventually(lambda: connected(redis, 1), within=10)
    dovecot.append([make_mail(4)])
    await eventually(lambda: _count(store, account.id, 1), within=20)


NO_IDLE = "protocol imap {\n  imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID ENABLE UIDPLUS\n}\n"


async def test_a_server_without_idle_is_polled(
    worker: Worker, services: Services, store: SqlStore, redis: Redis
) -> None:
    if not dovecot_available():
        pytest.skip("dovecot-imapd is not installed")
    with DovecotServer(extra_conf=NO_IDLE).start() as server, TcpRelay(server.port) as relay:
        account = await mail_account(store, imap_port=relay.port)
        await services.start(watch_poll_s=0.3)
        await eventually(lambda: connected(redis, 1), within=15)
        [w] = await watches(redis, "t1")
        assert w.mode == "poll"
        server.append([make_mail(3)])
        await eventually(lambda: _count(store, account.id, 1), within=20)
        assert relay.commands["NOOP"] >= 1 and relay.commands["IDLE"] == 0


async def test_refused_password_goes_to_auth_error_once_and_stops_until_new_credentials(
    services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer, relay: TcpRelay
) -> None:
    account = await mail_account(store, imap_port=relay.port, password="wrong-password")
    await services.start(watch_reconcile_s=0.3)
    await eventually(lambda: _watch_state(redis, "auth_error"), within=15)
    stored = await store.get_account("t1", account.id)
    assert stored is not None and stored.auth_state == "auth_error"
    logins = relay.commands["LOGIN"]
    await _idle_for(2.0)  # several reconcile rounds and wake-ups: no new login
    await notify_accounts_changed(redis)
    await _idle_for(0.5)
    assert relay.commands["LOGIN"] == logins == 1
    events = await Events(redis).read(count=100_000)
    assert sum(e["type"] == AUTH_ERROR_EVENT for _, e in events) == 1
    [w] = await watches(redis, "t1")
    assert "wrong-password" not in json.dumps(w.model_dump(mode="json"))
    await store.update_account_secret("t1", account.id, SecretStr(dovecot.password))
    await notify_accounts_changed(redis)
    await eventually(lambda: connected(redis, 1), within=15)


async def _watch_state(redis: Redis, state: str) -> bool:
    ws = await watches(redis)
    return len(ws) == 1 and ws[0].state == state


async def _idle_for(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_one_bad_account_does_not_affect_the_others(
    services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer
) -> None:
    await mail_account(store, imap_port=dovecot.port, password="wrong-password")
    good = await mail_account(store, imap_port=dovecot.port)
    await services.start()

    async def settled() -> bool:
        return sorted(w.state for w in await watches(redis)) == ["auth_error", "connected"]

    await eventually(settled, within=15)
    states = {w.account_id: w.state for w in await watches(redis)}
    assert states[good.id] == "connected"


async def test_adding_and_disabling_an_account_starts_and_stops_its_watch(
    services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer, relay: TcpRelay
) -> None:
    await services.start(watch_reconcile_s=600)  # only the notification can make it act within the test
    account = await mail_account(store, imap_port=relay.port)
    await notify_accounts_changed(redis)
    await eventually(lambda: connected(redis, 1), within=10)
    await store.set_account_active("t1", account.id, False)
    await notify_accounts_changed(redis)
    await eventually(lambda: _no_watches(redis), within=10)
    await eventually(lambda: _no_connections(relay), within=5)


async def _no_watches(redis: Redis) -> bool:
    return not await watches(redis)


async def _no_connections(relay: TcpRelay) -> bool:
    return relay.open_connections == 0


async def test_discovered_folders_are_watched_within_the_account_budget(
    services: Services, store: SqlStore, redis: Redis, dovecot: DovecotServer
) -> None:
    dovecot.command('CREATE "Sent"', 'CREATE "Archive"', 'CREATE "Drafts"')
    account = await mail_account(store, imap_port=dovecot.port)
    await redis.set(f"wt:folders:t1:{account.id}", json.dumps(["INBOX", "Sent", "Archive", "Drafts"]))
    await services.start(watch_max_per_account=3)
    await eventually(lambda: connected(redis, 3), within=15)
    assert sorted(w.mailbox for w in await watches(redis, "t1")) == ["Archive", "INBOX", "Sent"]
