"""The hub's gate: the token and the body limits, enforced before any route reads a request body.

Why middleware and not a FastAPI dependency: FastAPI reads and parses the whole body *before* it
solves a route's dependencies, so a token dependency let a client without the token make the hub
hold a 200 MB body in memory before its 401. ``TokenGuard`` is pure ASGI and answers from the
headers alone. The body limit is Starlette's ``RequestBodyLimitMiddleware``: it counts the bytes
the server hands over (chunked bodies included; ``Content-Length`` only fails fast); ``BodyLimits``
picks the upload limit for the upload route and the smaller JSON limit for every other path.

``check_token`` is the start-up refusal: a hub with an empty token answered 403 to everything, and
a short token on an address other machines reach is guessable.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ai_influencer.settings import Settings

COOKIE = "hub_token"
MIN_TOKEN_CHARS = 16
UNAUTHORIZED = "missing or wrong hub token (enter it in the hub token box)"
MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


class HubConfigError(ValueError):
    """The hub cannot start as configured; the message says which setting to change."""


def is_loopback(host: str) -> bool:
    """Only this machine can reach the address (a host name other than localhost counts as reachable)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_token(settings: Settings, bind: str) -> str:
    """The hub token, or ``HubConfigError`` if a hub bound to ``bind`` must not start with it."""
    if settings.hub_token is None:
        raise HubConfigError(f"no hub token: set INFLUENCER_HUB_TOKEN to 16+ characters (e.g. from {MAKE_ONE})")
    token = settings.hub_token.get_secret_value()
    if not token.strip():
        raise HubConfigError(
            "INFLUENCER_HUB_TOKEN is empty, so every hub route would refuse every request: "
            f"set it to 16+ characters (e.g. from {MAKE_ONE}) or unset it to get a token for this start"
        )
    if token != token.strip():
        raise HubConfigError("INFLUENCER_HUB_TOKEN starts or ends with whitespace, which an HTTP header cannot carry")
    if len(token) < MIN_TOKEN_CHARS and not is_loopback(bind):
        raise HubConfigError(
            f"INFLUENCER_HUB_TOKEN has {len(token)} characters: a hub bound to {bind} is reachable from other "
            f"machines and needs {MIN_TOKEN_CHARS} or more (e.g. from {MAKE_ONE})"
        )
    return token


def sent_token(conn: HTTPConnection) -> str:
    """The token from the header; for reads (GET, HEAD) also from the session cookie.

    State-changing calls never take the cookie: another site can make a browser send it, so a
    cookie alone must not spend money.
    """
    sent = conn.headers.get("x-hub-token") or ""
    auth = conn.headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        sent = auth[7:].strip()
    if not sent and conn.scope.get("method") in ("GET", "HEAD"):
        sent = conn.cookies.get(COOKIE) or ""
    return sent


def route_path(scope: Scope) -> str:
    """The path the router matches (without a proxy's root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class TokenGuard:
    """Every path except the open ones (page shells, static files, API docs) needs the hub token.

    Secure by default: a new route is guarded without anyone remembering to. The answer comes
    from the headers alone; the body is never read for a refused request.
    """

    def __init__(self, app: ASGIApp, *, token: str, open_paths: frozenset[str], open_prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.token = token.encode()
        self.open_paths = open_paths
        self.open_prefixes = open_prefixes

    def is_open(self, scope: Scope) -> bool:
        path = route_path(scope)
        return (path.rstrip("/") or "/") in self.open_paths or path.startswith(self.open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.is_open(scope):
            await self.app(scope, receive, send)
            return
        if secrets.compare_digest(sent_token(HTTPConnection(scope)).encode(), self.token):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        response = JSONResponse({"detail": UNAUTHORIZED}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


LIMIT_SETTING = "hub.body_limit_setting"  # scope key: the setting that raises this request's body limit


def too_large(limit: int, setting: str) -> str:
    return f"request body larger than {limit / 2**20:g} MB ({setting})"


@dataclass(frozen=True)
class BodyLimit:
    size: int
    setting: str


class BodyLimits:
    """Starlette's ``RequestBodyLimitMiddleware``, its limit chosen by path: uploads get a larger one.

    Chosen here rather than on the route because FastAPI has no per-route body limit, and a route
    runs only after this middleware has decided how much of the body may be read. A declared
    ``Content-Length`` over the limit is answered at once, naming the setting (Starlette would
    answer it too, but in plain text without saying what to change).
    """

    def __init__(self, app: ASGIApp, *, default: BodyLimit, by_path: dict[str, BodyLimit]) -> None:
        self.default = (default, RequestBodyLimitMiddleware(app, max_body_size=default.size))
        self.by_path = {p: (lim, RequestBodyLimitMiddleware(app, max_body_size=lim.size)) for p, lim in by_path.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.default[1](scope, receive, send)
            return
        limit, limited = self.by_path.get(route_path(scope), self.default)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit.size:
            await JSONResponse({"detail": too_large(limit.size, limit.setting)}, status_code=413)(scope, receive, send)
            return
        scope[LIMIT_SETTING] = limit.setting
        await limited(scope, receive, send)
