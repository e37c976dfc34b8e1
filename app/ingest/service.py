"""Where ingest runs: as a component of the API process, or as the `sepulki ingest` worker.

In the API the pipeline always runs (HTTP ingest submits to it); the MQTT consumer joins it when
`SEPULKI_MQTT_URL` is set and `SEPULKI_INGEST_IN_API` is true. The standalone worker always
consumes MQTT; its health and counters are served by `app.workers.health` on SEPULKI_METRICS_PORT.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from app.ingest.mqtt import MqttIngest
from app.ingest.pipeline import Pipeline
from app.ingest.rules import RuleEngine
from app.resources import Resources

log = logging.getLogger("sepulki.ingest")


@contextlib.asynccontextmanager
async def _rule_engine(resources: Resources) -> AsyncIterator[RuleEngine]:
    """Active edicts evaluated on every committed batch; stopped after the pipeline, so the last
    batches' samples are still evaluated."""
    engine = RuleEngine(resources.db, resources.events, resources.settings)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def _pipeline(resources: Resources, rules: RuleEngine) -> Pipeline:
    return Pipeline(resources.db, resources.events, resources.settings, after_commit=rules.offer)


@contextlib.asynccontextmanager
async def ingest_component(resources: Resources) -> AsyncIterator[tuple[Pipeline, MqttIngest | None]]:
    """Component of the API: the pipeline, and the MQTT consumer where settings ask for it."""
    settings = resources.settings
    async with _rule_engine(resources) as rules, _pipeline(resources, rules) as pipeline:
        if settings.mqtt_url and settings.ingest_in_api:
            async with MqttIngest(settings, pipeline) as consumer:
                yield pipeline, consumer
        else:
            yield pipeline, None


@contextlib.asynccontextmanager
async def standalone_ingest(resources: Resources) -> AsyncIterator[tuple[Pipeline, MqttIngest]]:
    """Component of `sepulki ingest`: the pipeline and the MQTT consumer."""
    settings = resources.settings
    async with _rule_engine(resources) as rules, _pipeline(resources, rules) as pipeline:
        async with MqttIngest(settings, pipeline) as consumer:
            log.info("sepulki ingest: consuming %s as %s", settings.mqtt_url, settings.mqtt_client_id)
            yield pipeline, consumer
            log.info("sepulki ingest: stopping")
        m = pipeline.metrics
        log.info(
            "sepulki ingest: stored %d, duplicates %d, rejected %d",
            m.total("stored"),
            m.total("duplicate"),
            m.total("rejected"),
        )
