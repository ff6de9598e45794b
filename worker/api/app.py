"""The FastAPI app: services created in the lifespan, routers, error handlers, the dashboard's static files."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from redis.exceptions import RedisError

import worker.jobs  # noqa: F401  (registers the product's jobs)
from settings import Settings, dev_secret_refusal, get_settings
from worker import metrics
from worker.api import errors, jobs, journal, mail, messages, oauth, ops, outbox, watches
from worker.api.deps import Services, index_tenant_jobs
from worker.api.limits import BodyLimit
from worker.runtime import Client, DeadLetters, create_pool, registry
from worker.runtime.connection import connect, redis_address
from worker.runtime.outage import Outage
from worker.runtime.pipe import Pipe
from worker.runtime.spec import Registry
from worker.store import StoreUnavailable, prepare_store

STATIC = Path(__file__).resolve().parent.parent / "static"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class ApiConfig:
    """What ``create_app`` was given; the lifespan reads it from ``app.state.worker_config``."""

    settings: Settings | None = None
    redis_url: str | None = None
    registry: Registry = registry


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Refuse the development SECRET_KEY (unless ALLOW_DEV_SECRET); create the store (schema checked), Redis
    client, runtime Client and arq pool; run the metric samplers; close everything on exit.

    Usable as the lifespan of your own app: routes can then depend on ``worker.api.get_client``.
    """
    cfg: ApiConfig = getattr(app.state, "worker_config", None) or ApiConfig()
    settings = cfg.settings or get_settings()
    if (refusal := dev_secret_refusal(settings)) is not None:
        raise RuntimeError(refusal)
    url = redis_address(settings, cfg.redis_url) or DEFAULT_REDIS_URL
    store = await prepare_store(settings)
    redis: Redis = connect(url)  # no I/O yet: the API starts while Redis is down (/ready says 503 until it answers)
    pipe = Pipe.for_client(redis)  # concurrent enqueues from request handlers share one pipelined connection
    client = Client(redis, settings, cfg.registry, pipe=pipe)
    svc = Services(
        settings=settings,
        registry=cfg.registry,
        redis=redis,
        client=client,
        arq=await create_pool(url),
        store=store,
        dead_letters=DeadLetters(redis, client),
        queues=metrics.known_queues(settings, cfg.registry),
    )
    observer = metrics.EventObserver(redis, svc.metrics)
    outage = Outage()  # one warning per Redis outage for all background tasks
    tasks = [
        asyncio.create_task(observer.run(outage), name="api:event-observer"),
        asyncio.create_task(metrics.sample_forever(redis, svc.queues, outage=outage), name="api:throughput"),
        asyncio.create_task(index_tenant_jobs(redis, outage), name="api:tenant-jobs"),
    ]
    app.state.services = svc
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        app.state.services = None
        await svc.arq.aclose()
        if pipe is not None:
            await pipe.aclose()
        await redis.aclose()
        await store.aclose()


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    """The database (or Redis) is down or overloaded: 503 with a retry hint, never a traceback."""
    delay = max(1, round(exc.delay)) if isinstance(exc, StoreUnavailable) else 2
    what = "the database" if isinstance(exc, StoreUnavailable) else "Redis"
    body = {"message": f"{what} is unavailable; retry later", "detail": []}
    return JSONResponse(body, 503, {"Retry-After": str(delay)})


def create_app(
    settings: Settings | None = None, *, redis_url: str | None = None, registry: Registry = registry
) -> FastAPI:
    """A complete app: REST API under /v1, SSE feed, /health, /ready, /metrics and the dashboard."""
    app = FastAPI(
        title="Email worker",
        version="1",
        lifespan=lifespan,
        description="Jobs, queues, dead letters and live events of the email product's workers.",
    )
    app.state.worker_config = ApiConfig(settings, redis_url, registry)
    errors.install(app)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(RedisError, _store_unavailable)  # an outage: 503 like the store's, no traceback
    app.include_router(ops.probes)
    app.include_router(jobs.router)
    app.include_router(mail.router)
    app.include_router(messages.router)
    app.include_router(oauth.router)
    app.include_router(outbox.router)
    app.include_router(outbox.admin)
    app.include_router(ops.router)
    app.include_router(watches.router)
    app.include_router(journal.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, limit=(settings or get_settings()).api_max_body_bytes)
    errors.declare_errors(app)  # on every route, whichever router added it

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    return app


app = create_app()
