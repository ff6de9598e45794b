"""`python -m worker demo`: the whole product on one machine, end to end, then a summary.

Starts what is missing: a private Redis (unless REDIS_URL is set), an SMTP sink (aiosmtpd), an IMAP server
with sample mail (pymap), the workers of all four queues and the API with its dashboard, all in this
process except redis-server and pymap. Then, through the public API like a client would: register a mail
account, sync its inbox, analyse the new messages (offline analyzer unless ANTHROPIC_API_KEY is set), send
one email, schedule another a few seconds out, and send one to a recipient the server refuses so it lands in
the dead-letter queue. Everything started is stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from settings import QUEUE_NAMES, Settings, get_settings
from worker.devstack import RedisServer, free_port, port_open, wait_for_port

TENANT = "demo"
USER, PASSWORD = "alice@example.com", "demo-password"
REFUSED = "no-such-user@example.com"
SCHEDULE_IN_S = 3.0
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)

SAMPLE_MAIL: list[tuple[str, str, str]] = [
    (
        "billing@supplier.example.com",
        "Invoice INV-2041 due on Friday",
        "Hello,\n\nplease find invoice INV-2041 for 1,240.00 EUR attached. Payment is due on Friday.\n\nBilling",
    ),
    (
        "bob@partner.example.com",
        "Can we meet on Tuesday about the Q3 roadmap?",
        "Hi Alice,\n\ncould we meet on Tuesday at 10:00 to go through the Q3 roadmap? Please let me know.\n\nBob",
    ),
    (
        "news@weekly.example.com",
        "This week in email: 5 tips for a cleaner inbox",
        "Our weekly newsletter. Unsubscribe at any time.\n\n1. Archive often\n2. Use filters\n3. ...",
    ),
    (
        "security@paypa1-account.example.net",
        "URGENT: verify your account within 24 hours",
        "Your account will be suspended! Verify your password now at http://paypa1-account.example.net/login",
    ),
    (
        "support@customer.example.org",
        "Production outage: our checkout is down",
        "Hi team,\n\nsince 09:12 our checkout returns errors for all customers. This is urgent, please call.\n",
    ),
    (
        "carol@example.com",
        "Thanks for the lovely dinner!",
        "Alice, thank you so much for dinner yesterday, it was wonderful. See you soon!\nCarol",
    ),
]


@dataclass
class Step:
    """One line of the summary."""

    name: str
    ok: bool
    detail: str


@dataclass
class Stack:
    """What the demo started (or found), for the summary and for cleanup."""

    redis_url: str = ""
    redis_note: str = ""
    database_note: str = ""
    smtp_port: int = 0
    imap_port: int = 0
    api_url: str = ""
    received: list[EmailMessage] = field(default_factory=list)


# -- local servers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def local_redis(settings: Settings) -> AsyncIterator[tuple[str, str]]:
    """REDIS_URL if set, else a private redis-server (so the demo never touches someone's data)."""
    if settings.redis_url:
        yield settings.redis_url, "REDIS_URL"
        return
    if shutil.which("redis-server") is None:
        if port_open("127.0.0.1", 6379):
            yield "redis://127.0.0.1:6379/0", "existing Redis on :6379"
            return
        raise RuntimeError("no Redis: install redis-server or set REDIS_URL")
    server = RedisServer().start()
    try:
        yield server.url, f"private redis-server on :{server.port}"
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def local_database(settings: Settings) -> AsyncIterator[tuple[Settings, str]]:
    """DATABASE_URL if set (it must be migrated), else a private SQLite file created for this run and removed
    after it (so the demo never touches the embedded default database)."""
    from worker.cli_store import check_store
    from worker.store.sql.engine import create_engine
    from worker.store.sql.schema import upgrade

    if settings.database_url:
        await check_store(settings)
        yield settings, "DATABASE_URL"
        return
    directory = tempfile.mkdtemp(prefix="worker-demo-")
    try:
        settings = settings.model_copy(update={"database_url": f"sqlite:///{directory}/demo.db"})
        engine = create_engine(settings)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        yield settings, "private SQLite file"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def smtp_sink(received: list[EmailMessage]) -> Any:
    """An aiosmtpd server on a free port that keeps what it receives and refuses REFUSED with 550."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Sink:
        async def handle_RCPT(
            self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
        ) -> str:
            if address.lower() == REFUSED:
                return "550 5.1.1 <no-such-user@example.com>: mailbox does not exist"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            from email import message_from_bytes, policy

            raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
            msg = message_from_bytes(raw, policy=policy.default)
            assert isinstance(msg, EmailMessage)
            received.append(msg)
            return "250 2.0.0 queued"

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def _sample(i: int, sender: str, subject: str, body: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = sender, USER, subject
    msg["Message-ID"] = f"<demo-{i}-{os.getpid()}@example.com>"
    msg["Date"] = format_datetime(dt.datetime.now(dt.UTC) - dt.timedelta(hours=len(SAMPLE_MAIL) - i))
    msg.set_content(body)
    return msg.as_bytes()


async def _append(port: int, messages: list[bytes]) -> None:
    import aioimaplib

    imap = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=10)
    await imap.wait_hello_from_server()
    await imap.login(USER, PASSWORD)
    for raw in messages:
        res = await imap.append(raw, mailbox="INBOX")
        if res.result != "OK":
            raise RuntimeError(f"IMAP APPEND failed: {res}")
    await imap.logout()


@contextlib.asynccontextmanager
async def imap_server() -> AsyncIterator[int]:
    """pymap's in-memory IMAP server on a free port, with the sample mail in INBOX."""
    pymap = Path(sys.executable).with_name("pymap")
    binary = str(pymap) if pymap.exists() else shutil.which("pymap")
    if binary is None:
        raise RuntimeError("pymap is not installed (pip install pymap)")
    port = free_port()
    args = [
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--no-tls",
        "dict",
        "--demo-user",
        USER,
        "--demo-password",
        PASSWORD,
    ]
    proc = await asyncio.create_subprocess_exec(
        binary, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True
    )
    try:
        await asyncio.to_thread(wait_for_port, port, 20)
        await _append(port, [_sample(i, *m) for i, m in enumerate(SAMPLE_MAIL)])
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


# -- the story -----------------------------------------------------------------------------------------


def ok(r: httpx.Response) -> Any:
    """The JSON body of a successful response; an API error becomes its one-line message."""
    if r.is_error:
        try:
            message = r.json().get("message", r.text)
        except ValueError:
            message = r.text
        raise RuntimeError(f"HTTP {r.status_code} from {r.request.method} {r.request.url.path}: {message}")
    return r.json()


class Story:
    """Drives the product through its HTTP API, like a client application would."""

    def __init__(self, api: httpx.AsyncClient, stack: Stack) -> None:
        self.api = api
        self.stack = stack
        self.steps: list[Step] = []
        self.tenant: httpx.AsyncClient | None = None
        self.account_id = ""

    async def step(self, name: str, action: Callable[[], Awaitable[str]]) -> None:
        started = time.monotonic()
        with console.status(f"[bold]{name}[/] …"):
            try:
                detail = await action()
                ok = True
            except Exception as exc:  # the demo reports a failed step and carries on with the others
                detail, ok = f"{type(exc).__name__}: {exc}", False
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        console.print(f"{mark} {name} [dim]({time.monotonic() - started:.1f}s)[/] {detail}")
        self.steps.append(Step(name, ok, detail))

    async def wait_job(self, job_id: str, timeout: float = 30.0, label: str = "") -> dict[str, Any]:
        """Poll the job status endpoint until it finishes; shows its progress while it runs."""
        assert self.tenant is not None
        deadline = time.monotonic() + timeout
        while True:
            job = (await self.tenant.get(f"/v1/jobs/{job_id}")).json()
            if job["state"] in ("complete", "dead", "cancelled"):
                return dict(job)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f}s")
            if label and job.get("progress") is not None:
                console.print(f"  [dim]{label}: {job['state']}, progress {job['progress']}[/]")
            await asyncio.sleep(0.2)

    async def tenant_and_account(self) -> str:
        token = ok(await self.api.post(f"/v1/admin/tenants/{TENANT}/tokens"))["token"]
        self.tenant = httpx.AsyncClient(base_url=self.api.base_url, headers={"Authorization": f"Bearer {token}"})
        account = {
            "email": USER,
            "username": USER,
            "secret": PASSWORD,
            "imap_host": "127.0.0.1",
            "imap_port": self.stack.imap_port,
            "imap_tls": "plain",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.stack.smtp_port,
            "smtp_tls": "plain",
        }
        created = ok(await self.tenant.post(f"/v1/tenants/{TENANT}/accounts", json=account))
        self.account_id = str(created["id"])
        assert "secret" not in created
        return (
            f"tenant '{TENANT}' got an API token; account {USER} registered as {self.account_id} "
            "(secret stored encrypted)"
        )

    async def sync(self) -> str:
        assert self.tenant is not None
        r = await self.tenant.post(
            f"/v1/tenants/{TENANT}/accounts/{self.account_id}/sync", headers={"Idempotency-Key": "demo-sync-1"}
        )
        discovery = await self.wait_job(ok(r)["jobs"][0]["job_id"], label="folder discovery")
        if discovery["state"] != "complete":
            raise RuntimeError(discovery.get("error") or discovery["state"])
        lines = []
        for mailbox, job_id in zip(discovery["result"]["mailboxes"], discovery["result"]["jobs"], strict=True):
            job = await self.wait_job(job_id, label=f"sync of {mailbox}")
            if job["state"] != "complete":
                raise RuntimeError(job.get("error") or job["state"])
            res = job["result"]
            lines.append(f"{mailbox}: {res['fetched']} fetched, {res['new']} new, {res['analyses_requested']} analyses")
        return "; ".join(lines)

    async def analyses(self) -> str:
        """The sync enqueued one analyse_message job per new message: wait for the ai-analysis queue to drain."""
        assert self.tenant is not None
        deadline = time.monotonic() + 60
        while True:
            ov = ok(await self.api.get("/v1/queues"))
            q = next(q for q in ov["queues"] if q["name"] == "ai-analysis")
            if q["waiting"] + q["delayed"] + q["active"] == 0 and q["completed"] + q["dead"] >= len(SAMPLE_MAIL):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{q['completed']} of {len(SAMPLE_MAIL)} analysed")
            await asyncio.sleep(0.3)
        recent = ok(await self.api.get("/v1/queues/ai-analysis/jobs", params={"state": "completed", "limit": 200}))
        jobs = [j for j in recent if j.get("tenant_id") == TENANT]
        table = Table(show_edge=False, pad_edge=False, box=None)
        for col in ("  subject", "category", "urgency", "needs reply"):
            table.add_column(col, overflow="fold")
        analyzers = set()
        for j in jobs:
            msg = (await self.tenant.get(f"/v1/tenants/{TENANT}/messages/{j['payload']['message_id']}")).json()
            a = msg["analysis"]
            analyzers.add(a["analyzer"])
            table.add_row(f"  {msg['subject']}", a["category"], a["urgency"], "yes" if a["needs_reply"] else "no")
        console.print(table)
        return f"{len(jobs)} new messages analysed by the {', '.join(sorted(analyzers))} analyzer, {q['dead']} failed"

    def _mail(self, to: str, subject: str, **extra: Any) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "sender": USER,
            "to": [to],
            "subject": subject,
            "text": f"{subject}\n\n-- sent by the worker demo",
            **extra,
        }

    async def send_now(self) -> str:
        assert self.tenant is not None
        mail = self._mail("bob@partner.example.com", "Re: Tuesday works for me")
        r = ok(
            await self.tenant.post(
                f"/v1/tenants/{TENANT}/outbox", json=mail, headers={"Idempotency-Key": "demo-send-1"}
            )
        )
        again = (
            await self.tenant.post(
                f"/v1/tenants/{TENANT}/outbox", json=mail, headers={"Idempotency-Key": "demo-send-1"}
            )
        ).json()
        job = await self.wait_job(r["job"]["job_id"])
        if job["state"] != "complete":
            raise RuntimeError(job.get("error") or job["state"])
        got = [m for m in self.stack.received if m["Subject"] == mail["subject"]]
        same = "same job" if again["job"]["job_id"] == r["job"]["job_id"] else "A SECOND JOB"
        return (
            f"delivered to the SMTP sink ({len(got)} copy, Message-ID {r['message_id']}); "
            f"a retried POST with the same Idempotency-Key returned the {same}"
        )

    async def schedule(self) -> str:
        assert self.tenant is not None
        mail = self._mail("carol@example.com", "Dinner next week?", delay=SCHEDULE_IN_S)
        r = ok(await self.tenant.post(f"/v1/tenants/{TENANT}/outbox", json=mail))
        planned = dt.datetime.fromisoformat(r["scheduled_at"])
        console.print(
            f"  [dim]scheduled for {planned:%H:%M:%S} UTC (job {r['job']['job_id']} is {r['job']['state']})[/]"
        )
        deadline = time.monotonic() + SCHEDULE_IN_S + 30
        while True:
            item = (await self.tenant.get(f"/v1/tenants/{TENANT}/outbox/{r['outbox_id']}")).json()
            if item["status"] in ("sent", "failed", "bounced", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {item['status']}")
            await asyncio.sleep(0.2)
        if item["status"] != "sent":
            raise RuntimeError(f"{item['status']}: {item['last_error']}")
        sent = dt.datetime.fromisoformat(item["sent_at"])
        return (
            f"scheduled {SCHEDULE_IN_S:g}s out for {planned:%H:%M:%S}, sent at {sent:%H:%M:%S.%f}"[:-3]
            + f" ({(sent - planned).total_seconds():+.2f}s)"
        )

    async def dead_letter(self) -> str:
        assert self.tenant is not None
        mail = self._mail(REFUSED, "This one will bounce")
        r = ok(await self.tenant.post(f"/v1/tenants/{TENANT}/outbox", json=mail))
        job = await self.wait_job(r["job"]["job_id"])
        if job["state"] != "dead":
            raise RuntimeError(f"expected a dead letter, got {job['state']}")
        entry = ok(await self.api.get(f"/v1/dead-letters/{job['job_id']}"))
        return f"the server refused {REFUSED} (550): job {entry['job_id']} dead-lettered, error: {entry['error']}"

    async def overview(self) -> str:
        ov = ok(await self.api.get("/v1/queues"))
        parts = [
            f"{q['name']} {q['completed']} done/{q['dead']} dead" for q in ov["queues"] if q["name"] in QUEUE_NAMES
        ]
        return "; ".join(parts) + f"; {ov['dead_letters']} in the dead-letter queue"


def summary(steps: list[Step], stack: Stack, settings: Settings) -> None:
    table = Table(title="Demo summary", title_justify="left", show_lines=False)
    table.add_column("", width=1)
    table.add_column("step", style="bold", no_wrap=True)
    table.add_column("result", overflow="fold")
    for s in steps:
        table.add_row("[green]✓[/]" if s.ok else "[red]✗[/]", s.name, s.detail)
    console.print()
    console.print(table)
    token = settings.api_admin_token.get_secret_value()
    console.print(
        f"Local stack: Redis {stack.redis_note}, store {stack.database_note}, SMTP sink :{stack.smtp_port}, "
        f"IMAP (pymap) :{stack.imap_port}, workers for {', '.join(QUEUE_NAMES)}, API {stack.api_url}"
    )
    console.print(f"Dashboard:   {stack.api_url}/dashboard#token={token}")
    console.print(f"API docs:    {stack.api_url}/docs     Metrics: {stack.api_url}/metrics")


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_demo(serve_after: bool | None = None, settings: Settings | None = None) -> int:
    """Run the story; 0 when every step worked. ``serve_after``: keep the stack up until Ctrl-C
    (default: when stdout is a terminal)."""
    import worker.jobs  # noqa: F401  (registers the product's jobs)
    from worker.api import create_app
    from worker.api.server import serve
    from worker.runtime import Registry, Worker, registry

    missing = [m for m in ("aiosmtpd", "pymap") if importlib.util.find_spec(m) is None]
    if missing:
        console.print(f"The demo needs {' and '.join(missing)}: pip install -e '.[test]' (or bash .ci/run demo)")
        return 2
    # the demo runs on the development SECRET_KEY unless one is set: it is the explicit dev/demo case
    config: Settings = (settings or get_settings()).model_copy(update={"allow_dev_secret": True})
    main = asyncio.current_task()
    if main is not None:  # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so everything started is stopped
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    if serve_after is None:
        serve_after = sys.stdout.isatty()
    ai = "Claude (ANTHROPIC_API_KEY is set)" if config.anthropic_api_key else "the offline analyzer"
    console.rule("[bold]Email worker demo")
    console.print(f"Sync a mailbox, analyse it with {ai}, send, schedule and dead-letter email — all locally.\n")
    stack = Stack()
    async with contextlib.AsyncExitStack() as stack_cm:
        with console.status("starting Redis, SMTP sink, IMAP server, workers and API …"):
            stack.redis_url, stack.redis_note = await stack_cm.enter_async_context(local_redis(config))
            config, stack.database_note = await stack_cm.enter_async_context(local_database(config))
            stack.smtp_port = stack_cm.enter_context(smtp_sink(stack.received))
            stack.imap_port = await stack_cm.enter_async_context(imap_server())
            jobs = Registry()  # without the periodic schedule: a cron sync would race the story's own sync
            for spec in registry:
                jobs.add(spec)
            workers = Worker(stack.redis_url, queues=list(QUEUE_NAMES), settings=config, registry=jobs)
            await stack_cm.enter_async_context(workers)
            stack.api_url = await stack_cm.enter_async_context(serve(create_app(config, redis_url=stack.redis_url)))
        console.print(
            f"[green]✓[/] local stack up: Redis ({stack.redis_note}), SMTP :{stack.smtp_port}, "
            f"IMAP :{stack.imap_port} with {len(SAMPLE_MAIL)} messages, API {stack.api_url}"
        )
        admin = {"Authorization": f"Bearer {config.api_admin_token.get_secret_value()}"}
        async with httpx.AsyncClient(base_url=stack.api_url, headers=admin, timeout=30) as api:
            story = Story(api, stack)
            await story.step("1. account", story.tenant_and_account)
            await story.step("2. sync mailbox", story.sync)
            await story.step("3. analyse new mail", story.analyses)
            await story.step("4. send now", story.send_now)
            await story.step("5. schedule a send", story.schedule)
            await story.step("6. dead letter", story.dead_letter)
            await story.step("7. queues", story.overview)
            if story.tenant is not None:
                await story.tenant.aclose()
        summary(story.steps, stack, config)
        if serve_after:
            console.print("\nThe stack stays up so you can look around. Press Ctrl-C to stop and clean up.")
            await _until_interrupted()
        with console.status("stopping everything the demo started …"):
            await stack_cm.aclose()
    console.print("Stopped and cleaned up.")
    return 0 if all(s.ok for s in story.steps) else 1
