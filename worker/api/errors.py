"""One error shape for every 4xx (and 503): ``{"message": "...", "detail": [{"loc", "msg", "type"}, ...]}``
(``detail`` is empty for errors that are not about one input); inputs are never echoed back (a failed validation
must not return the submitted secret). ``declare_errors`` puts that shape and the status codes each route can
answer into the OpenAPI schema, for every route of the app (added by any router)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from worker.runtime.bounded import MAX_REPR, clip
from worker.runtime.errors import InvalidData


class ErrorItem(BaseModel):
    """One invalid input: where (``loc``, e.g. ``["payload", "n"]``), what is wrong, the error type."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    message: str = Field(description="what went wrong, in one line")
    detail: list[ErrorItem] = Field(default_factory=list, description="one item per invalid input; may be empty")


DESCRIPTIONS = {
    400: "Bad request: a body that cannot be read (JSON that is not UTF-8), an unknown or used OAuth state",
    401: "Missing, invalid or revoked bearer token",
    403: "The token may not do this (admin only, or another tenant's)",
    404: "No such resource (or not visible to this token)",
    409: "The resource is in a state that does not allow this",
    413: "Request body larger than API_MAX_BODY_BYTES",
    422: "Invalid input; nothing was written",
    503: "Redis or the database is unavailable; retry later",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries with the standard error body, for extra codes a route declares itself."""
    ref = {"$ref": "#/components/schemas/ErrorBody"}
    return {c: {"description": DESCRIPTIONS[c], "content": {"application/json": {"schema": ref}}} for c in codes}


class InvalidInput(Exception):
    """Raised by routes for input that passed the request schema but not a deeper check (422)."""

    def __init__(self, errors: Sequence[dict[str, Any]]) -> None:
        super().__init__("invalid input")
        self.errors = list(errors)

    @classmethod
    def from_validation(cls, exc: ValidationError, *prefix: str | int) -> InvalidInput:
        return cls([{**e, "loc": (*prefix, *e["loc"])} for e in exc.errors()])

    @classmethod
    def message(cls, loc: Sequence[str | int], msg: str) -> InvalidInput:
        return cls([{"loc": tuple(loc), "msg": msg, "type": "value_error"}])


def _clean(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = list(e.get("loc", ()))
        if loc[:1] == ["body"]:
            loc = loc[1:]
        msg, kind = clip(str(e.get("msg", "")), 500), clip(str(e.get("type", "value_error")), MAX_REPR)
        where = [x if isinstance(x, int) else clip(str(x), MAX_REPR) for x in loc]
        out.append({"loc": where, "msg": msg, "type": kind})
    return out


def _message(errors: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(str(x) for x in e['loc']) or '(body)'}: {e['msg']}" for e in errors[:5]]
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more


def validation_response(errors: Sequence[Any]) -> JSONResponse:
    cleaned = _clean(errors)
    return JSONResponse({"message": _message(cleaned), "detail": cleaned}, status_code=422)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""

    async def on_request_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_response(exc.errors())

    async def on_invalid(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InvalidInput)
        return validation_response(exc.errors)

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        msg = clip(exc.detail, 500) if isinstance(exc.detail, str) else "error"
        return JSONResponse({"message": msg, "detail": []}, status_code=exc.status_code, headers=exc.headers)

    async def on_invalid_data(_: Request, exc: Exception) -> JSONResponse:
        """An id or value the store refuses (e.g. a malformed account id in a query): the caller's input."""
        return JSONResponse({"message": clip(str(exc), 500), "detail": []}, status_code=422)

    app.add_exception_handler(InvalidData, on_invalid_data)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(InvalidInput, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)


def standard_codes(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The error codes an operation can answer, from what it takes: every /v1 route 404, 422 and 503; 401/403
    when it takes a token; 409 and 413 for the methods with a body, 400 when it reads one; other routes 422 for
    their parameters and 503 for the probes that ask Redis."""
    codes = {422} if operation.get("parameters") or operation.get("requestBody") else set()
    if operation.get("requestBody"):
        codes.add(400)
    if path.startswith("/v1/"):
        codes |= {404, 422, 503}
        if operation.get("security"):
            codes |= {401, 403}
        if method.upper() not in ("GET", "HEAD", "OPTIONS"):
            codes |= {409, 413}
    elif path in ("/ready", "/metrics"):
        codes.add(503)
    return codes


def declare_errors(app: FastAPI) -> None:
    """Generate the OpenAPI schema with the standard error responses (``standard_codes``, the ``ErrorBody``
    shape, FastAPI's own 422 shape replaced) on every operation of the app, whichever router added it.
    A route may declare more codes itself (``responses=error_responses(400)``)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()
        if fresh or "ErrorBody" not in schema.get("components", {}).get("schemas", {}):
            for path, operations in schema.get("paths", {}).items():
                for method, op in operations.items():
                    responses = op.setdefault("responses", {})
                    for code, spec in error_responses(*standard_codes(path, method, op)).items():
                        if code == 422 or str(code) not in responses:
                            responses[str(code)] = spec
            body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            components.update(body.pop("$defs", {}))
            components["ErrorBody"] = body
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
