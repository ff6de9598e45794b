"""A local fake of the Anthropic Messages API: a real HTTP server on 127.0.0.1 speaking the wire format.

The real SDK talks to it through `base_url`. Each POST /v1/messages takes the next scripted `Reply` (or the
default: a valid analysis) and is recorded, so tests can inspect what the analyzer sent.

    with FakeAnthropic() as api:
        api.script(Reply.error(429, "rate_limit_error", retry_after="7"), Reply.success())
        ...  # AsyncAnthropic(api_key="test", base_url=api.base_url, max_retries=0)
        api.requests[0].body["messages"]
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.support.http import LocalHTTPServer

DEFAULT_OUTPUT: dict[str, Any] = {
    "category": "work",
    "urgency": "normal",
    "summary": "A colleague shares a status update.",
    "action_items": [],
    "sentiment": "neutral",
    "language": "en",
    "needs_reply": False,
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass
class RecordedRequest:
    """One request as the server saw it (header names lower-cased; `at` = time.monotonic() on arrival)."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)

    def user_text(self) -> str:
        """All text of the user turns, joined."""
        parts: list[str] = []
        for message in self.body.get("messages", []):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            else:
                parts.extend(block.get("text", "") for block in content if block.get("type") == "text")
        return "\n".join(parts)

    def system_text(self) -> str:
        """The system prompt as one string."""
        system = self.body.get("system", "")
        if isinstance(system, str):
            return system
        return "\n".join(block.get("text", "") for block in system)


def approx_tokens(text: str) -> int:
    """The fake's token count: one token per 4 characters, rounded up (real tokenizers differ)."""
    return math.ceil(len(text) / 4)


@dataclass
class Reply:
    """One scripted response. `body=None` with status 200 means: a valid message built from the request."""

    status: int = 200
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    output: str | None = None
    stop_reason: str = "end_turn"
    stop_details: dict[str, Any] | None = None
    usage: tuple[int, int] | None = None

    @classmethod
    def success(
        cls,
        output: dict[str, Any] | str | None = None,
        *,
        usage: tuple[int, int] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """A 200 end_turn message whose text is `output` (a dict is JSON-encoded; default DEFAULT_OUTPUT)."""
        text = output if isinstance(output, str) else json.dumps(DEFAULT_OUTPUT if output is None else output)
        return cls(output=text, usage=usage, delay=delay)

    @classmethod
    def error(
        cls,
        status: int,
        error_type: str | None = None,
        message: str = "scripted error",
        *,
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """An API error in the documented format: {"type": "error", "error": {"type", "message"}}."""
        kind = error_type or _ERROR_TYPES.get(status, "api_error")
        extra = dict(headers or {})
        if retry_after is not None:
            extra["retry-after"] = retry_after
        body = {"type": "error", "error": {"type": kind, "message": message}}
        return cls(status=status, body=body, headers=extra)

    @classmethod
    def refusal(cls) -> Reply:
        """A 200 message stopped by the safety classifier (stop_reason "refusal", no usable text)."""
        details = {"type": "refusal", "category": None, "explanation": None}
        return cls(output="", stop_reason="refusal", stop_details=details)

    @classmethod
    def truncated(cls) -> Reply:
        """A 200 message cut off at max_tokens: half a JSON document."""
        text = json.dumps(DEFAULT_OUTPUT)
        return cls(output=text[: len(text) // 2], stop_reason="max_tokens")

    @classmethod
    def raw(cls, body: bytes, *, status: int = 200, content_type: str = "application/json") -> Reply:
        """Exactly these bytes, e.g. a broken body."""
        return cls(status=status, body=body, headers={"content-type": content_type})

    @classmethod
    def hang(cls, seconds: float = 30.0) -> Reply:
        """Answer (a valid message) only after `seconds`: a client with a shorter timeout gives up first."""
        return cls.success(delay=seconds)


class FakeAnthropic(LocalHTTPServer):
    """The server; start/stop it or use it as a context manager. Thread-safe."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()

    def script(self, *replies: Reply) -> None:
        """Queue responses for the next requests, in order; afterwards the default success applies."""
        with self._lock:
            self._script.extend(replies)

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._script)

    thread_name = "fake-anthropic"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        return Handler

    def _next(self, request: RecordedRequest) -> tuple[Reply, str]:
        with self._lock:
            self.requests.append(request)
            request_id = f"req_fake_{len(self.requests):04d}"
            reply = self._script.popleft() if self._script else Reply.success()
        return reply, request_id


def _validate(request: RecordedRequest) -> Reply | None:
    """The checks the real API makes that matter here; an error reply when the request is invalid."""
    if request.method != "POST" or request.path.split("?")[0] != "/v1/messages":
        return Reply.error(404, message=f"Not found: {request.method} {request.path}")
    auth = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if not auth:
        return Reply.error(401, message="x-api-key header is required")
    if "anthropic-version" not in request.headers:
        return Reply.error(400, message="anthropic-version header is required")
    body = request.body
    if not isinstance(body, dict):
        return Reply.error(400, message="request body must be a JSON object")
    for key, kind in (("model", str), ("max_tokens", int), ("messages", list)):
        if not isinstance(body.get(key), kind):
            return Reply.error(400, message=f"{key}: Field required")
    schema = ((body.get("output_config") or {}).get("format") or {}).get("schema")
    if schema is not None and not _closed_objects(schema):
        return Reply.error(400, message="output_config.format.schema: objects must set additionalProperties: false")
    return None


def _closed_objects(schema: Any) -> bool:
    """Every object in the schema sets additionalProperties: false (a structured-outputs requirement)."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and schema.get("additionalProperties") is not False:
            return False
        return all(_closed_objects(v) for v in schema.values())
    if isinstance(schema, list):
        return all(_closed_objects(v) for v in schema)
    return True


def _message_body(request: RecordedRequest, reply: Reply, request_id: str) -> dict[str, Any]:
    text = reply.output if reply.output is not None else json.dumps(DEFAULT_OUTPUT)
    if reply.usage is not None:
        input_tokens, output_tokens = reply.usage
    else:
        input_tokens = approx_tokens(request.system_text()) + approx_tokens(request.user_text())
        output_tokens = max(1, approx_tokens(text))
    return {
        "id": f"msg_{request_id}",
        "type": "message",
        "role": "assistant",
        "model": request.body.get("model", "unknown"),
        "content": [{"type": "text", "text": text}] if text else [],
        "stop_reason": reply.stop_reason,
        "stop_details": reply.stop_details,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeAnthropic
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        fake = self.server_fake
        reply, request_id = fake._next(request)
        invalid = _validate(request)
        if invalid is not None:
            reply = invalid
        if reply.delay and fake._stopping.wait(reply.delay):
            return  # server stopping
        if isinstance(reply.body, bytes):
            payload = reply.body
        else:
            data = reply.body if reply.body is not None else _message_body(request, reply, request_id)
            payload = json.dumps(data).encode()
        headers = {"content-type": "application/json", "request-id": request_id, **reply.headers}
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client timed out and left
