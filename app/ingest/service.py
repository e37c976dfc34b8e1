"""Where ingest runs: as a component of the API process, or as the `sepulki ingest` worker.

In the API the pipeline always runs (HTTP ingest submits to `services.components["pipeline"]`);
the MQTT consumer joins it when `SEPULKI_MQTT_URL` is set and `SEPULKI_INGEST_IN_API` is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from broadcaster import Broadcast

from app import db
from app.context import Services
from app.ingest.metrics import serving_metrics
from app.ingest.mqtt import MqttIngest
from app.ingest.pipeline import Pipeline
from app.pubsub import Events
from app.settings import Settings

log = logging.getLogger("sepulki.ingest")


@contextlib.asynccontextmanager
async def ingest_component(services: Services) -> AsyncIterator[None]:
    settings = services.settings
    async with Pipeline(services.db, services.events, settings) as pipeline:
        services.components["pipeline"] = pipeline
        services.components["ingest_metrics"] = pipeline.metrics
        try:
            if settings.mqtt_url and settings.ingest_in_api:
                async with MqttIngest(settings, pipeline) as consumer:
                    services.components["mqtt_ingest"] = consumer
                    yield
            else:
                yield
        finally:
            for name in ("mqtt_ingest", "pipeline", "ingest_metrics"):
                services.components.pop(name, None)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """The standalone MQTT ingest worker, until SIGTERM/SIGINT (or `stop`)."""
    if not settings.database_url or not settings.mqtt_url:
        raise ValueError("SEPULKI_DATABASE_URL and SEPULKI_MQTT_URL are required for `sepulki ingest`")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if settings.migrate_on_start:
        await db.migrate(settings.database_url)
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        async with Broadcast(settings.broadcast_url) as broadcast:
            events = Events(broadcast)
            try:
                async with Pipeline(pool, events, settings) as pipeline:
                    metrics = serving_metrics(pipeline.metrics, settings.host, settings.metrics_port)
                    async with metrics, MqttIngest(settings, pipeline):
                        log.info(
                            "sepulki ingest: consuming %s as %s", settings.mqtt_url, settings.mqtt_client_id
                        )
                        await stop.wait()
                        log.info("sepulki ingest: stopping")
                    m = pipeline.metrics
                    log.info(
                        "sepulki ingest: stored %d, duplicates %d, rejected %d",
                        m.total("stored"),
                        m.total("duplicate"),
                        m.total("rejected"),
                    )
            finally:
                await events.aclose()
    finally:
        await pool.close()
