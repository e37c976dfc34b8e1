"""The application factory: the lifespan owns the database, the event bus and the services."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from broadcaster import Broadcast
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from app import db, floors, heap, http_ingest, runtime, seed, sse
from app.context import Context, Services, bearer_token, token_from_init_payload
from app.embedded import EmbeddedPostgres
from app.graphql_app import build_schema, create_graphql_app
from app.http_security import BodySizeLimit, RequestRateLimit, SecurityHeaders
from app.ingest.metrics import metrics_endpoint
from app.loaders import Loaders
from app.mail import create_mailer
from app.pubsub import Events
from app.ratelimit import RateLimiter
from app.realtime import AuthenticatingWSHandler
from app.security import Passwords, Tokens
from app.settings import Settings

log = logging.getLogger("sepulki.server")


class ServicesHolder:
    """Filled by the lifespan; the GraphQL app reads it per request."""

    services: Services | None = None


def _context_factory(holder: ServicesHolder) -> Any:
    def get_context(connection: HTTPConnection, _data: Any = None) -> Context:
        # Never raises: an exception here would become an HTTP 500.
        services = holder.services
        assert services is not None, "lifespan has not started"
        if isinstance(connection, WebSocket):
            token = connection.scope.get("sepulki.token")
        else:
            token = bearer_token(connection.headers.get("authorization"))
        return Context(services, connection, token, Loaders(services.db))

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
    holder = ServicesHolder()
    schema = build_schema()
    graphql = create_graphql_app(
        settings,
        schema,
        _context_factory(holder),
        AuthenticatingWSHandler(lambda: holder.services, on_connect=_on_ws_connect),
        caches=caches,
    )
    uploads_dir = settings.data_dir / "uploads"

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            dsn = settings.database_url
            if dsn is None:
                embedded = EmbeddedPostgres(settings.data_dir)
                dsn = await embedded.start()
                stack.push_async_callback(embedded.stop)
            if settings.migrate_on_start:
                await db.migrate(dsn)
            passwords = Passwords(settings)
            if settings.seed_on_start:
                await seed.load(dsn, passwords)
            pool = await db.create_pool(
                dsn,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                observers=query_observers,
            )
            stack.push_async_callback(pool.close)
            broadcast = Broadcast(settings.broadcast_url)
            await stack.enter_async_context(broadcast)
            uploads_dir.mkdir(parents=True, exist_ok=True)
            holder.services = Services(
                # Components that open their own connections need the embedded server's DSN too.
                settings=replace(settings, database_url=dsn),
                db=pool,
                events=Events(broadcast),
                passwords=passwords,
                tokens=Tokens(settings),
                uploads_dir=uploads_dir,
                mailer=create_mailer(settings),
                limiter=RateLimiter(settings),
            )
            for component in runtime.COMPONENTS:
                await stack.enter_async_context(component(holder.services))
            if owns_process:
                heap.settle()
            log.info("Sepulki Hammer ready: http://%s:%s/graphql", settings.host, settings.port)
            try:
                yield
            finally:
                holder.services = None

    async def health(_request: Request) -> JSONResponse:
        services = holder.services
        if services is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        await services.db.fetchval("SELECT 1")
        return JSONResponse({"status": "ok"})

    uploads_dir.mkdir(parents=True, exist_ok=True)
    routes = [
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        Route("/health", health),
        Route("/metrics", metrics_endpoint(lambda: holder.services)),
        *http_ingest.routes(),
        *sse.routes(),
        Mount("/uploads", StaticFiles(directory=Path(uploads_dir), check_dir=False), name="uploads"),
    ]
    # Outermost first: every answer, refusals included, carries the security and CORS headers.
    middleware = [
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
                "last-event-id",
            ],
            max_age=600,
        ),
        Middleware(GZipMiddleware, minimum_size=1024),
        Middleware(
            RequestRateLimit,
            limiter=lambda: holder.services.limiter if holder.services else None,
            paths=["/graphql"],
        ),
        Middleware(
            BodySizeLimit,
            limit=settings.max_body_bytes,
            # An upload may carry the largest file a field accepts (blueprints) plus the operation.
            upload_limit=floors.MAX_BLUEPRINT_BYTES + settings.max_body_bytes,
            paths=["/graphql"],
        ),
    ]
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.services_holder = holder
    app.state.schema = schema
    return app
