"""Error answers that never echo more than a short excerpt of what the client sent.

FastAPI's default 422 handler returns each error's ``input``, and a missing field's input is the
whole body: a 200 MB prompt came back as a 200 MB answer. Here the input is cut to an excerpt,
the list of errors is capped, long string details are shortened, and a 413 names the limit and the
setting that raises it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.responses import JSONResponse, Response

from interfaces.hub.guard import LIMIT_SETTING, too_large

EXCERPT_CHARS = 80
DETAIL_CHARS = 500
MAX_ERRORS = 20


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """``value`` itself (made JSON-able) when short, else its first ``limit`` characters and its length."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes | bytearray):  # a body that was not JSON
        value = bytes(value).decode("utf-8", "replace")
    if not isinstance(value, str):
        value = jsonable_encoder(value, custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")})
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def shorten(detail: Any, limit: int = DETAIL_CHARS) -> Any:
    """A detail with every string in it at most ``limit`` characters (an error may quote a bad value)."""
    if isinstance(detail, str):
        return detail if len(detail) <= limit else f"{detail[:limit]}… ({len(detail)} characters)"
    if isinstance(detail, dict):
        return {k: shorten(v, limit) for k, v in detail.items()}
    if isinstance(detail, list | tuple):
        return [shorten(v, limit) for v in detail[:MAX_ERRORS]]
    return detail


async def validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    detail: list[dict[str, Any]] = []
    for e in errors[:MAX_ERRORS]:
        item = {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": shorten(e.get("msg", ""))}
        item["input"] = excerpt(e.get("input"))
        if e.get("ctx"):  # e.g. the JSON parser's reason, a max_length: small, but may quote a value
            item["ctx"] = {k: excerpt(v if isinstance(v, str | int | float) else str(v)) for k, v in e["ctx"].items()}
        detail.append(item)
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "more", "loc": [], "msg": f"{len(errors) - MAX_ERRORS} more errors", "input": None})
    return JSONResponse({"detail": detail}, status_code=422)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail: Any = exc.detail
    limit, setting = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY), request.scope.get(LIMIT_SETTING)
    if exc.status_code == 413 and isinstance(limit, int) and setting:  # Starlette's "Content Too Large"
        detail = too_large(limit, setting)
    return await http_exception_handler(request, StarletteHTTPException(exc.status_code, shorten(detail), exc.headers))


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
