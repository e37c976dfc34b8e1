"""Background components and which run in which role.

Rule: imports ingest, simulator, domains, resources, infra and core; never web or resolvers.

A component takes the process's resources and returns an async context manager that runs it
until the block exits; it decides from `resources.settings` whether it runs at all.
`run_components(resources, role)` starts a role's components in order and stops them in reverse,
and yields `Running`: the components others need to reach (HTTP ingest submits to the pipeline,
GET /metrics reads its counters, tests inspect them).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from app.ingest.mqtt import MqttIngest
from app.ingest.pipeline import Pipeline
from app.ingest.service import ingest_component, standalone_ingest
from app.resources import Resources, Role
from app.simulator import Simulator, simulated_robots
from app.workers.commands import Dispatcher, Sweeper, dispatcher, sweeper
from app.workers.housekeeping import (
    broker_account_reconciler,
    dead_letter_retention,
    event_log_retention,
    session_pruning,
)


@dataclass(slots=True)
class Running:
    """The running components of a process, None where a component does not run."""

    pipeline: Pipeline | None = None
    mqtt_ingest: MqttIngest | None = None
    command_sweeper: Sweeper | None = None
    command_dispatcher: Dispatcher | None = None
    simulator: Simulator | None = None


@contextlib.asynccontextmanager
async def run_components(resources: Resources, role: Role) -> AsyncIterator[Running]:
    running = Running()
    async with contextlib.AsyncExitStack() as stack:
        if role in ("api", "worker"):
            running.command_sweeper = await stack.enter_async_context(sweeper(resources))
            running.command_dispatcher = await stack.enter_async_context(dispatcher(resources))
        if role == "api":
            await stack.enter_async_context(event_log_retention(resources))
            await stack.enter_async_context(dead_letter_retention(resources))
            await stack.enter_async_context(session_pruning(resources))
            await stack.enter_async_context(broker_account_reconciler(resources))
            # The pipeline (HTTP ingest uses it) and, with SEPULKI_MQTT_URL, the MQTT consumer.
            running.pipeline, running.mqtt_ingest = await stack.enter_async_context(
                ingest_component(resources)
            )
            # Last: simulated robots publish once everything that consumes their messages runs.
            running.simulator = await stack.enter_async_context(simulated_robots(resources))
        if role == "ingest":
            running.pipeline, running.mqtt_ingest = await stack.enter_async_context(
                standalone_ingest(resources)
            )
        yield running
