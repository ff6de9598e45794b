"""Serve the app with uvicorn inside a running event loop (used by the demo and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI

from worker.devstack import free_port


class _Server(uvicorn.Server):
    """Leaves signal handling to the host program (the demo, the test runner)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: FastAPI, host: str = "127.0.0.1", port: int | None = None) -> AsyncIterator[str]:
    """Start uvicorn as a task, yield its base URL once it accepts connections, stop it on exit."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=1, access_log=False
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        await task
