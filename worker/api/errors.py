"""One error shape for every 4xx: ``{"message": "...", "detail": [...]}``; inputs are never echoed back
(a failed validation must not return the submitted secret)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException


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
        out.append({"loc": loc, "msg": str(e.get("msg", "")), "type": str(e.get("type", "value_error"))})
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
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        return JSONResponse({"message": msg, "detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(InvalidInput, on_invalid)
    app.add_exception_handler(StarletteHTTPException, on_http)
