"""Background components the lifespan starts after the database and the event bus, in order.

Each entry takes the services and returns an async context manager that runs the component
until the application stops (MQTT ingest, command dispatcher, timeouts, simulator...). A component
decides from `services.settings` whether it runs at all.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from app import broker, broker_accounts, commands, eventlog, sessions, simulator
from app.context import Services
from app.ingest.service import ingest_component

Component = Callable[[Services], AbstractAsyncContextManager[Any]]

COMPONENTS: list[Component] = [
    # First: the dev broker must listen before anything connects to it.
    broker.embedded_broker,
    commands.sweeper,
    commands.dispatcher,
    eventlog.retention,
    sessions.housekeeping,
    broker_accounts.reconciler,
    # The ingest pipeline (HTTP ingest uses it) and, with SEPULKI_MQTT_URL, the MQTT consumer.
    ingest_component,
    # Last: simulated robots publish once everything that consumes their messages runs.
    simulator.simulated_robots,
]
