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
from app.workers.builds import BuildWorker, build_worker
from app.workers.commands import Dispatcher, Sweeper, dispatcher, sweeper
from app.workers.deployments import DeploymentTracker, deployment_tracker
from app.workers.health import serving_health
from app.workers.housekeeping import (
    broker_account_reconciler,
    dead_letter_retention,
    event_log_retention,
    session_pruning,
)
from app.workers.liveness import Liveness, liveness
from app.workers.notify import Notifier, notifier
from app.workers.tasks import TaskWorker, task_worker
from app.workers.telemetry import TelemetryUpkeep, telemetry_upkeep


@dataclass(slots=True)
class Running:
    """The running components of a process, None where a component does not run."""

    pipeline: Pipeline | None = None
    mqtt_ingest: MqttIngest | None = None
    command_sweeper: Sweeper | None = None
    command_dispatcher: Dispatcher | None = None
    task_worker: TaskWorker | None = None
    telemetry: TelemetryUpkeep | None = None
    build_worker: BuildWorker | None = None
    deployment_tracker: DeploymentTracker | None = None
    notifier: Notifier | None = None
    simulator: Simulator | None = None
    liveness: Liveness | None = None


@contextlib.asynccontextmanager
async def run_components(resources: Resources, role: Role) -> AsyncIterator[Running]:
    running = Running()
    async with contextlib.AsyncExitStack() as stack:
        if role in ("api", "worker"):
            running.command_sweeper = await stack.enter_async_context(sweeper(resources))
            running.command_dispatcher = await stack.enter_async_context(dispatcher(resources))
            running.task_worker = await stack.enter_async_context(task_worker(resources))
            running.liveness = await stack.enter_async_context(liveness(resources))
            if role == "worker" or resources.settings.notify_in_api:
                running.notifier = await stack.enter_async_context(notifier(resources))
            running.telemetry = await stack.enter_async_context(telemetry_upkeep(resources))
            running.build_worker = await stack.enter_async_context(build_worker(resources))
            running.deployment_tracker = await stack.enter_async_context(deployment_tracker(resources))
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
            pipeline, consumer = await stack.enter_async_context(standalone_ingest(resources))
            running.pipeline, running.mqtt_ingest = pipeline, consumer
            await stack.enter_async_context(
                serving_health(resources, role, [lambda: consumer.is_connected], [pipeline.metrics.families])
            )
        if role == "worker":
            publisher = resources.mqtt
            await stack.enter_async_context(
                serving_health(resources, role, [lambda: publisher.is_connected] if publisher else [])
            )
        yield running
