"""The application factory: the lifespan opens the process's resources and runs the API role's
components; routes, middleware and the GraphQL app are assembled here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from ariadne.types import Extension
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from app import floors
from app.context import Context, ViewerCache, bearer_token, token_from_init_payload
from app.infra import db, heap
from app.infra.metrics import Metrics
from app.ingest import http as http_ingest
from app.ingest.pipeline import Pipeline
from app.resources import Resources, open_resources
from app.settings import Settings
from app.web import export, sse
from app.web.connection import context_for
from app.web.graphql_app import GRAPHIQL_ASSETS_URL, GRAPHIQL_DIST, build_schema, create_graphql_app
from app.web.http_security import (
    BodySizeLimit,
    PreflightRequired,
    RequestRateLimit,
    SecurityHeaders,
    bearer_guarded,
)
from app.web.metrics import (
    RequestObserver,
    error_counter,
    note_operation,
    tracing_extension,
    websocket_metrics,
)
from app.web.websocket import AuthenticatingWSHandler
from app.workers import Running, run_components
from app.workers.health import Health, health_routes, metrics_endpoint, process_metrics

log = logging.getLogger("sepulki.server")


class ResourcesHolder:
    """Filled by the lifespan; requests read it."""

    resources: Resources | None = None
    running: Running | None = None
    health: Health | None = None
    viewers: ViewerCache | None = None

    def pipeline(self) -> Pipeline | None:
        return self.running.pipeline if self.running is not None else None


def _context_factory(holder: ResourcesHolder) -> Any:
    def get_context(connection: HTTPConnection, _data: Any = None) -> Context:
        # Never raises: an exception here would become an HTTP 500.
        resources = holder.resources
        assert resources is not None, "lifespan has not started"
        if isinstance(connection, WebSocket):
            token = connection.scope.get("sepulki.token")
        else:
            token = bearer_token(connection.headers.get("authorization"))
            note_operation(_data)  # the operation's name for its latency histogram
        context = context_for(resources, connection, token)
        context.viewers = holder.viewers
        return context

    return get_context


async def _on_ws_connect(websocket: WebSocket, payload: Any) -> None:
    # Runs after AuthenticatingWSHandler accepted the token (or found none); the context factory
    # reads it from the scope for every subscribe message of this socket.
    websocket.scope["sepulki.token"] = token_from_init_payload(payload)


def create_app(
    settings: Settings | None = None,
    *,
    query_observers: list[db.QueryObserver] | None = None,
    caches: bool = True,
    owns_process: bool = False,
) -> Starlette:
    """`owns_process`: the app is the only one in its process (`sepulki serve`/`dev`), so what
    its startup built can be frozen out of the garbage collector's passes."""
    settings = settings or Settings.from_env()
    holder = ResourcesHolder()
    schema = build_schema()
    websockets = AuthenticatingWSHandler(lambda: holder.resources, settings, on_connect=_on_ws_connect)
    # One registry per app: several apps in one process (tests, embedded mode) count apart.
    metrics = Metrics()
    metrics.collect_with(lambda: websocket_metrics(websockets.limits))
    extensions: list[type[Extension] | Callable[[], Extension]] = [error_counter(metrics)]
    if settings.tracing:
        extensions.append(tracing_extension())
    graphql = create_graphql_app(
        settings, schema, _context_factory(holder), websockets, caches=caches, extensions=extensions
    )
    uploads_dir = settings.data_dir / "uploads"

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with (
            open_resources(settings, "api", query_observers=query_observers) as resources,
            run_components(resources, "api") as running,
        ):
            holder.resources, holder.running = resources, running
            if settings.viewer_cache_s > 0:
                holder.viewers = ViewerCache(settings.viewer_cache_s)
                watching = asyncio.create_task(holder.viewers.watch(resources.events), name="viewer-cache")
            process_metrics(resources, metrics)
            if running.pipeline is not None:
                metrics.collect_with(running.pipeline.metrics.families)
            publisher = resources.mqtt
            mqtt = [lambda: publisher.is_connected] if publisher is not None else []
            if running.mqtt_ingest is not None:
                consumer = running.mqtt_ingest
                mqtt.append(lambda: consumer.is_connected)
            holder.health = Health(resources, mqtt)
            if owns_process:
                heap.settle()
            log.info("Sepulki Hammer ready: http://%s:%s/graphql", settings.host, settings.port)
            try:
                yield
            finally:
                await holder.health.aclose()
                if holder.viewers is not None:
                    watching.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watching
                holder.resources = holder.running = holder.health = holder.viewers = None

    async def health(_request: Request) -> JSONResponse:
        resources = holder.resources
        if resources is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await resources.db.fetchval("SELECT 1")
        except Exception:  # noqa: BLE001 - not serving: 503, and /health/ready names each dependency
            return JSONResponse({"status": "unavailable", "postgres": "down"}, status_code=503)
        # Redis down degrades the API (limits count per process) but does not stop it: still 200,
        # or every replica sharing that Redis would leave the load balancer at once.
        redis = await resources.limiter.storage_state()
        if redis is None:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "ok" if redis == "ok" else "degraded", "redis": redis})

    uploads_dir.mkdir(parents=True, exist_ok=True)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/health", health),
        *health_routes(lambda: holder.health),
        Route(
            "/metrics",
            bearer_guarded(
                metrics_endpoint(lambda: metrics),
                token=settings.metrics_token,
                production=settings.production,
            ),
        ),
        *http_ingest.routes(lambda: holder.resources, holder.pipeline),
        *sse.routes(),
        *export.routes(lambda: holder.resources),
        Mount("/uploads", StaticFiles(directory=Path(uploads_dir), check_dir=False), name="uploads"),
    ]
    if not settings.production:
        # GraphiQL's bundle (development only, like the explorer page); absent files answer 404.
        routes.append(
            Mount(GRAPHIQL_ASSETS_URL, StaticFiles(directory=GRAPHIQL_DIST, check_dir=False), name="graphiql")
        )
    # Outermost first: every answer, refusals included, carries the security and CORS headers.
    middleware = [
        # Outermost: times every request, refusals included, and gives each its X-Request-ID.
        Middleware(RequestObserver, metrics=metrics),
        Middleware(SecurityHeaders, production=settings.production),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_credentials=True,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "authorization",
                "content-type",
                "x-api-key",
                "apollo-require-preflight",
                "x-apollo-operation-name",
                "last-event-id",
            ],
            max_age=600,
        ),
        Middleware(GZipMiddleware, minimum_size=1024),
        Middleware(
            RequestRateLimit,
            limiter=lambda: holder.resources.limiter if holder.resources else None,
            paths=["/graphql"],
        ),
        Middleware(
            BodySizeLimit,
            limit=settings.max_body_bytes,
            # An upload may carry the largest file a field accepts (blueprints) plus the operation.
            upload_limit=floors.MAX_BLUEPRINT_BYTES + settings.max_body_bytes,
            paths=["/graphql"],
        ),
        # Multipart bodies need a header that forces a CORS preflight (docs/security.md).
        Middleware(PreflightRequired, paths=["/graphql"]),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.resources_holder = holder
    app.state.schema = schema
    # The executor class of subscriptions, with this app's shared results.
    app.state.subscriptions = websockets.executor
    return app
