"""Ingest counters, and their rendering in the Prometheus text exposition format (GET /metrics).

Plain integers updated on the event loop (no locks needed); one `IngestMetrics` per pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("sepulki.ingest.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class IngestMetrics:
    def __init__(self) -> None:
        # (source, kind, outcome) -> messages
        self.messages: Counter[tuple[str, str, str]] = Counter()
        # reason -> messages sent to dead_letters
        self.rejected: Counter[str] = Counter()
        self.batches = 0
        self.batch_items = 0
        self.batch_seconds = 0.0
        self.batch_retries = 0
        self.batch_failures = 0
        self.events_published = 0
        self.publish_failures = 0
        self.robot_cache_refreshes = 0
        self.mqtt_connects = 0
        self.mqtt_disconnects = 0
        self.mqtt_read_pauses = 0
        # Callables read at render time (queue depths).
        self.gauges: dict[str, Callable[[], float]] = {}

    def count(self, source: str, kind: str, outcome: str, reason: str | None = None) -> None:
        self.messages[(source, kind, outcome)] += 1
        if reason is not None:
            self.rejected[reason] += 1

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_, _, o), n in self.messages.items() if outcome is None or o == outcome)

    def render(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{label_text}}} {value}" if label_text else f"{name} {value}")

        family(
            "sepulki_ingest_messages_total",
            "counter",
            "Robot messages by source, kind and outcome (stored, duplicate, rejected).",
            [({"source": s, "kind": k, "outcome": o}, n) for (s, k, o), n in sorted(self.messages.items())],
        )
        family(
            "sepulki_ingest_dead_letters_total",
            "counter",
            "Messages written to dead_letters, by reason.",
            [({"reason": r}, n) for r, n in sorted(self.rejected.items())],
        )
        family("sepulki_ingest_batches_total", "counter", "Committed batches.", [({}, self.batches)])
        family(
            "sepulki_ingest_batch_items_total",
            "counter",
            "Messages in committed batches.",
            [({}, self.batch_items)],
        )
        family(
            "sepulki_ingest_batch_seconds_total",
            "counter",
            "Time spent writing and committing batches.",
            [({}, round(self.batch_seconds, 6))],
        )
        family(
            "sepulki_ingest_batch_retries_total",
            "counter",
            "Batch transactions retried after a transient database error.",
            [({}, self.batch_retries)],
        )
        family(
            "sepulki_ingest_batch_failures_total",
            "counter",
            "Batches given up on (messages left unacknowledged, the broker redelivers them).",
            [({}, self.batch_failures)],
        )
        family(
            "sepulki_ingest_events_published_total",
            "counter",
            "Events published after commit (bellows, robot status, command updates).",
            [({}, self.events_published)],
        )
        family(
            "sepulki_ingest_publish_failures_total",
            "counter",
            "Publishes that failed after commit (subscribers catch up from the event log).",
            [({}, self.publish_failures)],
        )
        family(
            "sepulki_ingest_robot_cache_refreshes_total",
            "counter",
            "Reloads of the known-robot cache.",
            [({}, self.robot_cache_refreshes)],
        )
        family(
            "sepulki_ingest_mqtt_connects_total",
            "counter",
            "MQTT (re)connections.",
            [({}, self.mqtt_connects)],
        )
        family(
            "sepulki_ingest_mqtt_disconnects_total",
            "counter",
            "MQTT disconnections.",
            [({}, self.mqtt_disconnects)],
        )
        for name, read in sorted(self.gauges.items()):
            family(
                f"sepulki_ingest_{name}", "gauge", name.replace("_", " ").capitalize() + ".", [({}, read())]
            )
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_endpoint(current: Callable[[], IngestMetrics | None]) -> Callable[[Request], Any]:
    """GET /metrics of the API process: the counters of its pipeline (HTTP ingest, and MQTT
    ingest when it runs in the API)."""

    async def endpoint(_request: Request) -> Response:
        metrics = current()
        body = metrics.render() if metrics is not None else ""
        return PlainTextResponse(body, media_type=CONTENT_TYPE)

    return endpoint


class _WorkerServer(uvicorn.Server):
    """uvicorn without its signal handlers: the ingest worker owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving_metrics(metrics: IngestMetrics, host: str, port: int) -> AsyncIterator[None]:
    """GET /metrics (and /health) of a standalone `sepulki ingest` on host:port, while inside.

    A port already taken is logged and skipped: the worker's job is storing messages, not this."""
    if port <= 0:
        yield
        return
    try:
        sock = socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        log.warning("ingest metrics not served on %s:%s: %s", host, port, exc)
        yield
        return

    async def render(_request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    async def health(_request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/metrics", render), Route("/health", health)])
    server = _WorkerServer(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="ingest-metrics")
    log.info("ingest metrics at http://%s:%s/metrics", host, port)
    try:
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()
