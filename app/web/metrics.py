"""Per-request observation at a cost of microseconds: a pure ASGI middleware (no
BaseHTTPMiddleware, no task per request) that times HTTP requests by route, gives each a request
id (`X-Request-ID`, kept from the client when well formed) for the logs, and times GraphQL
operations by their bounded name; an Ariadne extension without a `resolve` hook (so no
field is wrapped) counts GraphQL errors by code.
"""

from __future__ import annotations

import contextvars
import itertools
import os
import re
import time
from collections.abc import Iterable
from typing import Any

from ariadne.types import Extension
from graphql import GraphQLError
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.errors import DomainError
from app.infra import logs
from app.infra.metrics import Metrics
from app.web.ws_limits import SocketLimits

# Routes labelled as themselves; any other path is "other" (bounded cardinality).
ROUTES = ("/graphql", "/health", "/health/live", "/health/ready", "/metrics", "/sse")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class _Request:
    __slots__ = ("operation",)

    def __init__(self) -> None:
        self.operation: str | None = None


_current: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("sepulki_request", default=None)


def note_operation(data: Any) -> None:
    """Called by the GraphQL context factory with the request's data: its operation name."""
    current = _current.get()
    if current is None:
        return
    if isinstance(data, dict):
        current.operation = data.get("operationName") or _first_operation_name(data.get("query"))
    elif isinstance(data, list):
        current.operation = "batch"


_NAMED = re.compile(r"^\s*(?:query|mutation|subscription)\s+([A-Za-z_][A-Za-z0-9_]*)")


def _first_operation_name(query: Any) -> str | None:
    if not isinstance(query, str):
        return None
    match = _NAMED.match(query)
    return match[1] if match else None


def _route(path: str) -> str:
    if path in ROUTES:
        return path
    for prefix in ("/ingest", "/sse", "/uploads"):
        if path.startswith(prefix):
            return prefix
    return "other"


class RequestObserver:
    """Times every HTTP request and names it with a request id (header X-Request-ID)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Labelled children cached (prometheus-client's labels() takes a lock and ~4 µs).
        self._children: dict[tuple[str, str, str], Any] = {}
        self._operations: dict[str, Any] = {}
        # Request ids: a random per-app prefix and a counter, unique without a syscall each.
        self._id_prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        if given is not None and _REQUEST_ID.match(given):
            request_id = given
        else:
            request_id = f"{self._id_prefix}{next(self._ids):08x}"
        header = (b"x-request-id", request_id.encode())
        status = 500
        request = _Request()
        token = _current.set(request)
        id_token = logs.request_id.set(request_id)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            _current.reset(token)
            logs.request_id.reset(id_token)
            logs.access(
                scope["method"],
                scope["path"],
                scope.get("query_string", b""),
                status,
                elapsed,
                scope.get("client"),
                request_id,
            )
            route = _route(scope["path"])
            key = (scope["method"], route, f"{status // 100}xx")
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.metrics.http_seconds.labels(*key)
            child.observe(elapsed)
            if route == "/graphql":
                operation = self.metrics.operations.label(request.operation)
                timer = self._operations.get(operation)
                if timer is None:
                    timer = self._operations[operation] = self.metrics.graphql_seconds.labels(operation)
                timer.observe(elapsed)


def error_counter(metrics: Metrics) -> type[Extension]:
    """An Ariadne extension class counting errors by `extensions.code` (INTERNAL_SERVER_ERROR
    when a resolver raised something else)."""

    class ErrorCodes(Extension):
        # No per-field hook: graphql-core then wraps no resolver for this extension.
        resolve = None  # type: ignore[assignment]

        def has_errors(self, errors: list[GraphQLError], context: Any) -> None:
            for error in errors:
                # The code the error formatter (app.web.errors) gives the client.
                original = error.original_error
                code = (error.extensions or {}).get("code")
                if isinstance(original, DomainError):
                    code = original.code
                elif not isinstance(code, str):
                    code = "INTERNAL_SERVER_ERROR" if original is not None else "GRAPHQL_VALIDATION_FAILED"
                metrics.graphql_errors.labels(str(code)[:40]).inc()

    return ErrorCodes


def tracing_extension() -> Any:
    """Ariadne's OpenTelemetry extension (SEPULKI_TRACING): a root span per operation, named
    after it, and a span per resolver, through the global tracer provider. Needs the `tracing`
    extra; refused with a clear message without it."""
    try:
        from ariadne.contrib.tracing.opentelemetry import opentelemetry_extension
    except ImportError as exc:  # the optional dependency is missing
        raise RuntimeError(
            "SEPULKI_TRACING=true needs OpenTelemetry: pip install 'sepulki[tracing]'"
        ) from exc

    def root_span_name(_context: Any) -> str:
        current = _current.get()
        name = current.operation if current is not None else None
        return f"GraphQL {name}" if name else "GraphQL Operation"

    return opentelemetry_extension(root_span_name=root_span_name)


def websocket_metrics(limits: SocketLimits) -> Iterable[Metric]:
    """Open websockets and running subscriptions of this process, from the handler's counters
    (app.web.ws_limits), read at scrape time."""
    yield GaugeMetricFamily(
        "sepulki_websocket_connections", "Open websocket connections.", value=limits.sockets
    )
    yield GaugeMetricFamily(
        "sepulki_websocket_subscriptions", "Subscriptions running on websockets.", value=limits.subscriptions
    )
