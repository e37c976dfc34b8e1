"""Health and metrics of every role: the dependency checks behind `/health/ready`, the
Prometheus registry of a process, and the small HTTP server of `sepulki ingest` and `sepulki
worker` (GET /health/live, /health/ready, /health, /metrics on SEPULKI_METRICS_PORT).

- live: the process answers (its event loop turns); never checks a dependency, so an outage of
  PostgreSQL does not make an orchestrator restart every replica at once.
- ready: 200 when every dependency the role uses answers, else 503; the body names each one's
  state (`ok`, `down`, or `unused` where the role or the configuration does not need it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app.infra.metrics import CONTENT_TYPE, Metrics, bus_lag_metrics, pool_metrics
from app.resources import Resources

log = logging.getLogger("sepulki.health")

CHECK_TIMEOUT_S = 2.0
OPEN_COMMAND_STATES = ("QUEUED", "SENT", "RECEIVED")
COMMAND_STATES_SQL = """
SELECT state::text AS state, count(*) AS n FROM robot_commands
 WHERE state IN ('QUEUED', 'SENT', 'RECEIVED') GROUP BY state
"""


class Health:
    """The dependency checks of one process. `mqtt` lists what says whether its MQTT clients are
    connected (publisher, ingest consumer); empty when the role uses no broker."""

    def __init__(self, resources: Resources, mqtt: Iterable[Callable[[], bool]] = ()) -> None:
        self._resources = resources
        self._mqtt = list(mqtt)
        url = resources.settings.broadcast_url
        self._redis = (
            aioredis.from_url(url, socket_timeout=CHECK_TIMEOUT_S, socket_connect_timeout=CHECK_TIMEOUT_S)
            if url.startswith(("redis://", "rediss://", "unix://"))
            else None
        )

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _postgres(self) -> str:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._resources.db.fetchval("SELECT 1")
        except Exception:  # noqa: BLE001 - any failure means "not ready"; the state says which
            return "down"
        return "ok"

    async def _redis_state(self) -> str:
        if self._redis is None:
            return "unused"
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await self._redis.ping()  # type: ignore[misc]  # redis-py types ping as bool | Awaitable
        except Exception:  # noqa: BLE001
            return "down"
        return "ok"

    def _mqtt_state(self) -> str:
        if not self._mqtt:
            return "unused"
        return "ok" if all(connected() for connected in self._mqtt) else "down"

    async def checks(self) -> dict[str, str]:
        postgres, redis_state = await asyncio.gather(self._postgres(), self._redis_state())
        return {"postgres": postgres, "redis": redis_state, "mqtt": self._mqtt_state()}

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        checks = await self.checks()
        ready = all(state in ("ok", "unused") for state in checks.values())
        return ready, {"status": "ready" if ready else "unavailable", "checks": checks}


def process_metrics(resources: Resources, into: Metrics | None = None) -> Metrics:
    """The registry of a role (`into`, or a new one) with the pool, the event bus and the open
    commands collected at scrape time."""
    metrics = into if into is not None else Metrics()
    metrics.collect_with(lambda: pool_metrics(resources.db))
    metrics.collect_with(lambda: _bus_metrics(resources))
    states: dict[str, int] = {}

    async def refresh_commands() -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                rows = await resources.db.fetch(COMMAND_STATES_SQL)
            states.clear()
            states.update({row["state"]: int(row["n"]) for row in rows})

    def commands() -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sepulki_commands_open", "Robot commands not yet settled, by state.", labels=["state"]
        )
        for state in OPEN_COMMAND_STATES:
            family.add_metric([state], states.get(state, 0))
        yield family

    metrics.refresh_with(refresh_commands)
    metrics.collect_with(commands)
    return metrics


def _bus_metrics(resources: Resources) -> list[Metric]:
    """Event bus deliveries and failures (app.infra.bus `Events.stats`)."""
    family = CounterMetricFamily(
        "sepulki_bus_events",
        "Event bus messages by outcome (published, delivered, overflowed, publish_failed, ...).",
        labels=["outcome"],
    )
    for outcome, n in sorted(resources.events.stats.items()):
        family.add_metric([outcome], n)
    return [family, *bus_lag_metrics(resources.events)]


def health_routes(
    health: Callable[[], Health | None], metrics: Callable[[], Metrics | None] | None = None
) -> list[Route]:
    """GET /health/live, /health/ready and (with `metrics`) /metrics, for any process's server."""

    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def ready(_request: Request) -> Response:
        current = health()
        if current is None:
            return JSONResponse({"status": "starting", "checks": {}}, status_code=503)
        ok, body = await current.ready()
        return JSONResponse(body, status_code=200 if ok else 503)

    routes = [Route("/health/live", live), Route("/health/ready", ready)]
    if metrics is not None:
        routes.append(Route("/metrics", metrics_endpoint(metrics)))
    return routes


def metrics_endpoint(metrics: Callable[[], Metrics | None]) -> Callable[[Request], Any]:
    """GET /metrics: the Prometheus text format of the current registry."""

    async def render(_request: Request) -> Response:
        current = metrics()
        body = await current.render() if current is not None else b""
        return Response(body, media_type=CONTENT_TYPE)

    return render


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers: the role's process owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_health(
    resources: Resources, role: str, mqtt: Iterable[Callable[[], bool]], collect: Iterable[Any] = ()
) -> AsyncIterator[Health]:
    """The HTTP server of `sepulki ingest`/`worker` on SEPULKI_HOST:SEPULKI_METRICS_PORT while
    inside (0: none). `collect`: more scrape-time builders (the ingest's counters).

    A port already taken is logged and skipped: the role's job is its work, not this server."""
    settings = resources.settings
    health = Health(resources, mqtt)
    metrics = process_metrics(resources)
    for build in collect:
        metrics.collect_with(build)
    try:
        if settings.metrics_port <= 0:
            yield health
            return
        try:
            sock = socket.create_server((settings.host, settings.metrics_port), reuse_port=False)
        except OSError as exc:
            log.warning("%s health and metrics not served on port %s: %s", role, settings.metrics_port, exc)
            yield health
            return

        async def legacy(_request: Request) -> Response:
            # The earlier GET /health of `sepulki ingest`: "ok" while the process runs.
            return PlainTextResponse("ok")

        app = Starlette(routes=[*health_routes(lambda: health, lambda: metrics), Route("/health", legacy)])
        server = _QuietServer(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"{role}-health")
        log.info(
            "%s health and metrics at http://%s:%s/health/ready", role, settings.host, settings.metrics_port
        )
        try:
            yield health
        finally:
            server.should_exit = True
            await task
            sock.close()
    finally:
        await health.aclose()
