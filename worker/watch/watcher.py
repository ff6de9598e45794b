"""One watched mailbox: connect (rate limited per host), log in, EXAMINE, IDLE (or poll), turn pushes into syncs.

A watcher runs while its process holds the watch's lease and is cancelled when the lease goes (release,
rebalance, lost lease, shutdown): cancelling closes the connection at once. Its lifecycle:

- the account is read from the store before every connection (new credentials are picked up); an inactive or
  removed account waits for the fleet to drop the watch;
- refused credentials put the account in `auth_error` (one event, on the ok -> error transition) and the watcher
  stops connecting until the account's auth_state is ok again (new secret or OAuth grant): it re-reads the
  account when the fleet is notified of account changes and every `watch_reconcile_s`;
- any other failure is retried with per-watch exponential backoff with jitter (reset once a connection has held
  for BACKOFF_RESET_S), every attempt taking a token of the host's fleet-wide connect rate;
- connected: a sync is triggered at once when the mailbox moved since the last stored sync (UIDNEXT/UIDVALIDITY),
  then every EXISTS / EXPUNGE / FETCH / VANISHED pushed during IDLE (re-issued every `watch_idle_refresh_s`) or
  reported by NOOP polling (servers without IDLE) pokes the debounced trigger.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from settings import Settings
from worker.jobs.deps import imap_config
from worker.mail.oauth import TokenManager, TokenRevoked, TokenUnavailable, mark_auth_error
from worker.mail.oauth_providers import PROVIDERS
from worker.mail.smtp import TlsMode
from worker.runtime import Client
from worker.store import Account, SqlStore
from worker.watch.client import WatchAuthError, WatchClient, WatchError, WatchTokenRejected
from worker.watch.lease import Leases
from worker.watch.limits import Backoff, HostRate
from worker.watch.trigger import Debouncer, SyncTrigger

log = logging.getLogger(__name__)
BACKOFF_RESET_S = 30.0


@dataclass
class WatchContext:
    """What every watcher of one process shares."""

    redis: Redis
    store: SqlStore
    client: Client
    settings: Settings
    leases: Leases
    host_rate: HostRate
    owner: str
    _tokens: TokenManager | None = field(default=None, repr=False)

    def tokens(self) -> TokenManager:
        if self._tokens is None:
            s = self.settings
            self._tokens = TokenManager(
                self.redis,
                self.store,
                s.secret_key,
                margin_s=s.oauth_refresh_margin_s,
                http_timeout_s=s.oauth_http_timeout_s,
                events_maxlen=s.events_maxlen,
            )
        return self._tokens


@dataclass(frozen=True)
class WatchSpec:
    """Which mailbox a watch is on."""

    wid: str
    tenant_id: str
    account_id: str
    mailbox: str


class Watcher:
    """Keeps one mailbox watched while its lease is held."""

    def __init__(self, ctx: WatchContext, spec: WatchSpec, lease: str) -> None:
        self.ctx = ctx
        self.spec = spec
        self.lease = lease
        self.state = "starting"
        self.wake = asyncio.Event()  # set by the fleet when accounts changed (re-read an auth_error account)
        s = ctx.settings
        self.backoff = Backoff(s.watch_backoff_base_s, s.watch_backoff_cap_s)
        self.trigger = SyncTrigger(ctx.redis, ctx.client, spec.wid, spec.tenant_id, spec.account_id, spec.mailbox)
        self.debounce = Debouncer(self._fire, s.watch_debounce_s)
        self._first_change: float | None = None
        self._conn: WatchClient | None = None

    # -- state -----------------------------------------------------------------------------------

    async def _set(self, state: str, **extra: str) -> None:
        self.state = state
        fields = {
            "tenant": self.spec.tenant_id,
            "account": self.spec.account_id,
            "mailbox": self.spec.mailbox,
            "owner": self.ctx.owner,
            "state": state,
            "updated_at": f"{time.time():.3f}",
            **extra,
        }
        try:
            await self.ctx.leases.write_state(self.spec.wid, self.lease, self.spec.tenant_id, fields)
        except (RedisError, OSError) as exc:
            log.debug("watch state not written: %s", exc)

    # -- changes ---------------------------------------------------------------------------------

    def on_change(self, kind: str) -> None:
        """A push (or NOOP report) said the mailbox changed."""
        if self._first_change is None:
            self._first_change = time.time()
        self.debounce.poke()

    async def _fire(self) -> None:
        first, self._first_change = self._first_change, None
        if first is not None:
            await self.trigger.mark(first)
            await self._set("connected", last_event=f"{first:.3f}")
        await self.trigger()

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch until cancelled."""
        try:
            while True:
                try:
                    await self._round()
                except Exception as exc:  # the store away, a bug: never let the watch die with its lease held
                    log.warning("watch %s: %s: %s", self.spec.wid, type(exc).__name__, exc)
                    delay = self.backoff.next_delay()
                    await self._set("backing_off", last_error=f"{type(exc).__name__}"[:300], retry_in=f"{delay:.1f}")
                    await asyncio.sleep(delay)
        finally:
            self.debounce.cancel()
            if self._conn is not None:
                self._conn.close()

    async def _round(self) -> None:
        """Read the account, then wait (inactive, auth_error) or connect and watch until the connection ends."""
        account = await self.ctx.store.get_account(self.spec.tenant_id, self.spec.account_id)
        if account is None or not account.active:
            await self._set("inactive")
            await self._wait_for_change()
        elif account.auth_state != "ok":
            await self._set("auth_error", last_error=(account.auth_error or "credentials refused")[:300])
            await self._wait_for_change()
        else:
            await self._connect_and_watch(account)

    async def _wait_for_change(self) -> None:
        self.wake.clear()
        try:
            async with asyncio.timeout(self.ctx.settings.watch_reconcile_s):
                await self.wake.wait()
        except TimeoutError:
            pass

    async def _connect_and_watch(self, account: Account) -> None:
        started = time.monotonic()
        try:
            await self._set("connecting")
            await self.ctx.host_rate.take(account.imap_host)
            conn = self._conn = await self._open(account)
            selected = await conn.examine(self.spec.mailbox)
            mode = "idle" if conn.has("IDLE") else "poll"
            await self._set("connected", mode=mode, connected_since=f"{time.time():.3f}", last_error="")
            await self._catch_up(selected.uidvalidity, selected.uidnext)
            await self._watch(conn, mode)
        except WatchAuthError as exc:
            await self._auth_failed(str(exc))
        except (WatchError, TokenUnavailable, RedisError, OSError, ValueError) as exc:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if time.monotonic() - started >= BACKOFF_RESET_S:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            await self._set("backing_off", last_error=f"{type(exc).__name__}: {exc}"[:300], retry_in=f"{delay:.1f}")
            await asyncio.sleep(delay)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _open(self, account: Account) -> WatchClient:
        config = imap_config(account)  # ValueError for a TLS mode the account may not use
        tls: ssl.SSLContext | None = None
        if config.tls_mode is TlsMode.IMPLICIT:
            tls = config.ssl_context or ssl.create_default_context()
        conn = await WatchClient.connect(
            config.host, config.port, tls=tls, timeout=config.timeout, keepalive_s=self.ctx.settings.watch_keepalive_s
        )
        try:
            if account.auth_type == "oauth2":
                await self._oauth(conn, account)
            else:
                await conn.login(config.username, config.password.get_secret_value())
        except BaseException:
            conn.close()
            raise
        return conn

    async def _oauth(self, conn: WatchClient, account: Account) -> None:
        grant = await self.ctx.store.get_oauth_grant(account.tenant_id, account.id)
        mechanisms = PROVIDERS[grant.provider if grant is not None else "generic"].sasl
        tokens = self.ctx.tokens()
        rejected = None
        while True:
            try:
                token = await tokens.access_token(account.tenant_id, account.id, rejected=rejected)
            except TokenRevoked as exc:  # the token manager has put the account in auth_error
                raise WatchAuthError(str(exc)) from None
            try:
                await conn.authenticate(mechanisms, account.username, token.token.get_secret_value(), account.imap_host)
                return
            except WatchTokenRejected:
                if token.refreshed or rejected is not None:
                    raise
                rejected = token  # a cached token refused (expired or revoked early): refresh once

    async def _auth_failed(self, reason: str) -> None:
        s = self.ctx.settings
        await mark_auth_error(
            self.ctx.redis,
            self.ctx.store,
            self.spec.tenant_id,
            self.spec.account_id,
            f"IMAP watch: {reason}"[:500],
            events_maxlen=s.events_maxlen,
        )
        await self._set("auth_error", last_error=reason[:300])

    async def _catch_up(self, uidvalidity: int | None, uidnext: int | None) -> None:
        """Sync once if mail moved while nobody watched (or was never synced)."""
        known = await self.ctx.store.get_sync_state(self.spec.tenant_id, self.spec.account_id, self.spec.mailbox)
        if known.uidvalidity != uidvalidity or known.uidnext != uidnext:
            await self.trigger()

    async def _watch(self, conn: WatchClient, mode: str) -> None:
        s = self.ctx.settings
        if mode == "idle":
            while True:
                await conn.idle(s.watch_idle_refresh_s, self.on_change)
        while True:
            await conn.noop(self.on_change)
            await asyncio.sleep(s.watch_poll_s)
