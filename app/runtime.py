"""Background components the lifespan starts after the database and the event bus, in order.

Each entry takes the services and returns an async context manager that runs the component
until the application stops (MQTT ingest, command dispatcher, timeouts, simulator...). A component
decides from `services.settings` whether it runs at all.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from app.context import Services

Component = Callable[[Services], AbstractAsyncContextManager[Any]]

COMPONENTS: list[Component] = []
