"""What an operator scrapes from GET /metrics: request and operation latencies, errors by
code, the pool, the bus, open commands, the ingest's counters and the process; every response
carries an X-Request-ID that the logs carry too."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from app.infra import logs
from app.infra.metrics import MAX_OPERATION_NAMES, OperationNames
from app.infra.mqtt import process_client_id
from app.settings import Settings
from tests.servers import RedisServer
from tests.support import Api


def sample(text: str, prefix: str) -> float:
    """The value of the one line starting with `prefix` (labels included)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)]
    assert len(values) == 1, f"{prefix}: {values}"
    return values[0]


async def test_requests_operations_and_errors_are_counted_by_bounded_labels(api: Api) -> None:
    await api.execute("query RobotsPage { robots { id } }")
    await api.execute("query RobotsPage { robots { id } }")
    refused = await api.execute('{ robot(id: "not-an-id") { id } }')
    code = refused["errors"][0]["extensions"]["code"]
    text = (await api.client.get("/metrics")).text
    assert sample(text, 'sepulki_graphql_operation_duration_seconds_count{operation="RobotsPage"}') == 2
    assert sample(text, 'sepulki_graphql_operation_duration_seconds_count{operation="anonymous"}') == 1
    assert sample(text, f'sepulki_graphql_errors_total{{code="{code}"}}') == 1
    # Three operations, plus the sign-in mutations `execute` made for its token.
    graphql_2xx = 'sepulki_http_request_duration_seconds_count{method="POST",route="/graphql",status="2xx"}'
    assert sample(text, graphql_2xx) >= 3
    for family in (
        "process_resident_memory_bytes",
        'sepulki_db_pool_connections{state="in_use"}',
        'sepulki_commands_open{state="QUEUED"}',
        "sepulki_ingest_mqtt_read_pauses_total",
    ):
        assert any(line.startswith(family) for line in text.splitlines()), family


def test_operation_names_past_the_limit_share_one_label() -> None:
    names = OperationNames()
    labels = {names.label(f"Op{i}") for i in range(MAX_OPERATION_NAMES + 50)}
    assert len(labels) == MAX_OPERATION_NAMES + 1 and "other" in labels
    assert names.label("Op1") == "Op1"  # a known name keeps its series
    assert names.label("x" * 500) == "other" and names.label("no spaces!") == "other"
    assert names.label(None) == "anonymous"


async def test_every_response_carries_a_request_id_and_a_client_s_own_is_kept(api: Api) -> None:
    first = await api.client.get("/health/live")
    second = await api.client.get("/health/live")
    assert len(first.headers["x-request-id"]) == 16
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    kept = await api.client.get("/health/live", headers={"x-request-id": "lb-4711.abc"})
    assert kept.headers["x-request-id"] == "lb-4711.abc"
    # Not a plausible id (too long, odd characters): replaced rather than echoed into logs.
    odd = await api.client.get("/health/live", headers={"x-request-id": "a b\\" * 40})
    assert len(odd.headers["x-request-id"]) == 16


def test_json_logs_carry_request_and_robot_ids(caplog: pytest.LogCaptureFixture) -> None:
    formatter = logs.json_formatter()
    record = logging.LogRecord("sepulki.test", logging.WARNING, __file__, 1, "robot %s late", ("r1",), None)
    request_token = logs.request_id.set("req-1")
    robot_token = logs.robot_id.set("robot-1")
    try:
        logs.ContextFilter().filter(record)
    finally:
        logs.request_id.reset(request_token)
        logs.robot_id.reset(robot_token)
    line = json.loads(formatter.format(record))
    assert line["level"] == "WARNING" and line["logger"] == "sepulki.test"
    assert line["message"] == "robot r1 late"
    assert (line["request_id"], line["robot_id"]) == ("req-1", "robot-1")


def test_client_ids_are_unique_per_process_and_role() -> None:
    ids = {
        process_client_id("sepulki-ingest-commands", role) for role in ("api", "worker") for _ in range(50)
    }
    assert len(ids) == 100
    assert all(i.startswith(("sepulki-ingest-commands-api-", "sepulki-ingest-commands-worker-")) for i in ids)


async def test_tracing_is_off_by_default_and_spans_each_operation_when_turned_on(settings: Settings) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    assert Settings().tracing is False
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with Api.running(settings.replace(tracing=True)) as api:
        await api.execute("query RobotsPage { robots { id } }")
    names = [span.name for span in exporter.get_finished_spans()]
    assert "GraphQL RobotsPage" in names and "robots" in names


async def test_open_websockets_their_subscriptions_and_the_bus_lag_are_gauged(settings: Settings) -> None:
    from tests.live import serving
    from tests.seed_ids import DEV_FLEET
    from tests.support import eventually
    from tests.wsclient import connected

    bellows = "subscription($fleetId: ID!) { bellowsStream(fleetId: $fleetId) { metrics { name } } }"
    async with serving(settings) as live:

        async def scraped(prefix: str) -> float:
            return sample((await live.api.client.get("/metrics")).text, prefix)

        assert await scraped("sepulki_websocket_connections ") == 0
        init = await live.bearer()
        async with connected(live.ws_url, init) as first, connected(live.ws_url, init):
            async with first.subscribe(bellows, {"fleetId": DEV_FLEET}):

                async def one_subscription() -> bool:
                    return await scraped("sepulki_websocket_subscriptions ") == 1

                await eventually(one_subscription, what="the subscription gauged")
                assert await scraped("sepulki_websocket_connections ") == 2

            async def none_running() -> bool:
                return await scraped("sepulki_websocket_subscriptions ") == 0

            await eventually(none_running, what="the completed subscription no longer gauged")

        async def all_closed() -> bool:
            return await scraped("sepulki_websocket_connections ") == 0

        await eventually(all_closed, what="the closed sockets no longer gauged")

        # A consumer that stops reading: its queue is the bus's lag in this process.
        events = live.api.resources.events
        async with events.listen("metrics:lagging"):
            for n in range(3):
                await events.publish(["metrics:lagging"], 1_000_000 + n, {"n": n})

            async def three_queued() -> bool:
                return await scraped("sepulki_bus_subscriber_queue_max ") == 3

            await eventually(three_queued, what="the lagging subscriber's queue gauged")
        assert await scraped("sepulki_bus_backlog_messages ") == 0


async def test_events_waiting_for_a_stopped_redis_are_gauged_until_it_is_back(
    settings: Settings, redis_server: RedisServer
) -> None:
    from tests.live import serving
    from tests.support import eventually

    async with serving(settings.replace(broadcast_url=redis_server.url)) as live:

        async def backlog() -> float:
            return sample((await live.api.client.get("/metrics")).text, "sepulki_bus_backlog_messages ")

        assert await backlog() == 0
        await asyncio.to_thread(redis_server.stop)
        try:
            await live.publish(["metrics:backlog"], {"n": 1})
            await live.publish(["metrics:backlog"], {"n": 2})
            assert await backlog() == 2
        finally:
            await asyncio.to_thread(redis_server.start)

        async def flushed() -> bool:
            return await backlog() == 0

        await eventually(flushed, within=15, what="the backlog published once Redis answers")
