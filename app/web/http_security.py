"""HTTP-level protection of the API: security headers, the request body limit, the per-IP
request rate limit, the preflight rule of multipart requests, the bearer token of /metrics, and
GraphQL-shaped answers for requests refused before GraphQL runs."""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import RateLimited
from app.infra.ratelimit import RateLimiter

log = logging.getLogger("sepulki.http")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"

# API answers are data, never documents: nothing may load, run or frame them.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HSTS = "max-age=31536000; includeSubDomains"
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def explorer_csp(host: str | None, style_nonce: str | None = None) -> str:
    """The development GraphiQL page's policy: its one script and one stylesheet come from this
    server (`/graphiql/assets/`), never a CDN, and no inline script runs; the one <style> element
    GraphiQL adds at run time carries the page's `style_nonce` (no 'unsafe-inline'); its fonts are
    data: URLs inside the stylesheet; it talks only to this server, over HTTP and over websockets
    to the same host (`'self'` admits same-host ws: in CSP 3; the explicit ws:/wss: source covers
    browsers that predate it). A Host header that is not a plain host[:port] is left out rather
    than written into the policy."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.fullmatch(host) else ""
    styles = f" 'nonce-{style_nonce}'" if style_nonce else ""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            f"style-src 'self'{styles}",
            "font-src 'self' data:",
            "img-src 'self' data: blob:",
            f"connect-src 'self'{sockets}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


BASE_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Negotiated:
    """The media type of the answer. `legacy`: the client named application/json (or sent no
    Accept), so every well-formed request answers 200 as GraphQL-over-HTTP asks for such clients;
    otherwise a request that could not execute answers 4xx."""

    media_type: str
    legacy: bool


def negotiate(accept: str | None) -> Negotiated | None:
    """Picks application/graphql-response+json or application/json from an Accept header by
    quality (RFC 9110: the most specific range decides a type's quality); None when the client
    accepts neither. On a tie the type the client named wins, the newer one when it named both,
    and application/json for a bare wildcard, which older clients send."""
    if accept is None or not accept.strip():
        return Negotiated(JSON, legacy=True)
    ranges: dict[str, float] = {}
    for part in accept.split(","):
        media, _, params = part.partition(";")
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.strip().lower()
        ranges[media] = max(quality, ranges.get(media, 0.0))

    def quality_of(media: str) -> tuple[float, bool]:
        for candidate in (media, "application/*", "*/*"):
            if candidate in ranges:
                return ranges[candidate], candidate == media
        return 0.0, False

    graphql_q, graphql_named = quality_of(GRAPHQL_RESPONSE_JSON)
    json_q, json_named = quality_of(JSON)
    if graphql_q <= 0 and json_q <= 0:
        return None
    if graphql_q > json_q or (graphql_q == json_q and graphql_named):
        return Negotiated(GRAPHQL_RESPONSE_JSON, legacy=False)
    return Negotiated(JSON, legacy=json_named)


def _media_type_for(scope: Scope) -> str:
    chosen = negotiate(Headers(scope=scope).get("accept"))
    return chosen.media_type if chosen else JSON


def graphql_error_body(message: str, code: str, **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}


def graphql_error_response(
    status: int,
    message: str,
    code: str,
    *,
    media_type: str = JSON,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """`{"errors": [{message, extensions: {code, ...}}]}` for a request refused before execution."""
    body = graphql_error_body(message, code, **extensions)
    return Response(
        json.dumps(body, separators=(",", ":")).encode(),
        status_code=status,
        media_type=f"{media_type}; charset=utf-8",
        headers=headers,
    )


class SecurityHeaders:
    """Adds the security headers to every HTTP response; a response that set its own
    Content-Security-Policy (the development explorer page) keeps it."""

    def __init__(self, app: ASGIApp, *, production: bool) -> None:
        self.app = app
        self.headers = dict(BASE_HEADERS)
        if production:
            # Production sits behind TLS; development runs on plain http://localhost.
            self.headers["strict-transport-security"] = HSTS
        # Raw ASGI pairs built once: one pass over the response's headers per request (replacing
        # any of the same name, as `MutableHeaders[name] = value` would) instead of one per header.
        self._names = frozenset(name.encode("latin-1") for name in self.headers)
        self._raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in self.headers.items()]
        self._csp = (b"content-security-policy", API_CSP.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = self._names
                kept = []
                has_csp = False
                for pair in message.get("headers", ()):
                    name = bytes(pair[0]).lower()
                    if name not in names:
                        kept.append(pair)
                        has_csp = has_csp or name == b"content-security-policy"
                kept.extend(self._raw)
                if not has_csp:
                    kept.append(self._csp)
                message["headers"] = kept
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _BodyTooLarge(Exception):
    """Raised from `receive` once the streamed body passes the limit; never a ValueError, so no
    body parser mistakes it for malformed input."""


class BodySizeLimit:
    """Refuses bodies over `limit` bytes on `paths` with 413 (multipart uploads: `upload_limit`):
    a declared Content-Length before anything is read, a chunked body as soon as its running
    total passes the limit."""

    def __init__(self, app: ASGIApp, *, limit: int, upload_limit: int, paths: Collection[str]) -> None:
        self.app = app
        self.json_limit = limit
        self.upload_limit = upload_limit
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").lower().startswith("multipart/")
        limit = self.upload_limit if multipart else self.json_limit
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = graphql_error_response(
            413,
            f"Request body larger than {limit} bytes",
            "PAYLOAD_TOO_LARGE",
            media_type=_media_type_for(scope),
            headers={"connection": "close"},
        )
        await response(scope, receive, send)


class RequestRateLimit:
    """Counts every HTTP request to `paths` per client IP under the limiter's `request_ip` rule;
    past it answers 429 with Retry-After. CORS preflights are not counted."""

    def __init__(
        self, app: ASGIApp, *, limiter: Callable[[], RateLimiter | None], paths: Collection[str]
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.limiter()
        if (
            limiter is None
            or scope["type"] != "http"
            or scope["path"] not in self.paths
            or scope["method"] == "OPTIONS"
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        ip = client[0] if client else "unknown"
        try:
            await limiter.hit("request_ip", ip, "Too many requests from this address; retry later")
        except RateLimited as exc:
            response = graphql_error_response(
                429,
                exc.message,
                exc.code,
                media_type=_media_type_for(scope),
                headers={"retry-after": str(exc.retry_after)},
                retryAfter=exc.retry_after,
            )
            await response(scope, receive, send)
            return
        except Exception as exc:
            # A coarse abuse guard must not take the API down with its storage (Redis): fail open.
            log.warning("request rate limit unavailable, request let through: %r", exc)
        await self.app(scope, receive, send)


# Headers no browser sends cross-origin without a CORS preflight (none is CORS-safelisted), which
# the allow-list then refuses for foreign origins: a request carrying one of them, non-empty,
# cannot come from another site's <form>. The first two are what Apollo clients send.
PREFLIGHT_HEADERS = ("apollo-require-preflight", "x-apollo-operation-name", "authorization")
PREFLIGHT_MESSAGE = (
    "multipart/form-data requests must carry a non-empty Apollo-Require-Preflight header (or "
    "X-Apollo-Operation-Name, or Authorization): without one a request could come from another "
    "site's form (CSRF)"
)


class PreflightRequired:
    """Refuses a multipart/form-data POST to `paths` that carries none of PREFLIGHT_HEADERS with
    400 (`BAD_USER_INPUT`), before its body is read: a browser sends such a body cross-site
    without asking first, so GraphQL would otherwise run another site's mutations. JSON bodies
    already force a preflight; text/plain and form-encoded bodies are refused (415) by the handler."""

    def __init__(self, app: ASGIApp, *, paths: Collection[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        media = headers.get("content-type", "").partition(";")[0].strip().lower()
        if media != "multipart/form-data" or any(headers.get(name, "").strip() for name in PREFLIGHT_HEADERS):
            await self.app(scope, receive, send)
            return
        response = graphql_error_response(
            400, PREFLIGHT_MESSAGE, "BAD_USER_INPUT", media_type=_media_type_for(scope)
        )
        await response(scope, receive, send)


Endpoint = Callable[[Request], Awaitable[Response]]


def bearer_guarded(endpoint: Endpoint, *, token: str | None, production: bool) -> Endpoint:
    """`endpoint` (GET /metrics) behind `Authorization: Bearer <token>` when a token is set
    (anything else: 401); without a token open outside production and 404 in production, where
    counters must not be public on the API's port."""

    async def guarded(request: Request) -> Response:
        if token is None:
            if production:
                return PlainTextResponse("Not Found", status_code=404)
            return await endpoint(request)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return PlainTextResponse(
                "Unauthorized", status_code=401, headers={"www-authenticate": 'Bearer realm="metrics"'}
            )
        return await endpoint(request)

    return guarded
