"""Events published after commit, on broadcaster channels (Redis in production, memory in dev)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from broadcaster import Broadcast


class channels:  # noqa: N801 - a namespace of channel names
    ROBOT_STATUS_ALL = "robot-status:*"
    TASKS_ALL = "tasks:*"
    BREACHES = "breaches"

    @staticmethod
    def robot_status(robot_id: str) -> str:
        return f"robot-status:{robot_id}"

    @staticmethod
    def tasks(fleet_id: str) -> str:
        return f"tasks:{fleet_id}"

    @staticmethod
    def bellows(fleet_id: str) -> str:
        return f"bellows:{fleet_id}"


def _default(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class Events:
    """JSON messages on named channels; publish only what is committed."""

    def __init__(self, broadcast: Broadcast) -> None:
        self._broadcast = broadcast

    async def publish(self, channel: str, payload: dict[str, Any]) -> None:
        await self._broadcast.publish(channel=channel, message=json.dumps(payload, default=_default))

    async def publish_many(self, channel_names: list[str], payload: dict[str, Any]) -> None:
        message = json.dumps(payload, default=_default)
        for name in channel_names:
            await self._broadcast.publish(channel=name, message=message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        async with self._broadcast.subscribe(channel=channel) as subscriber:

            async def messages() -> AsyncIterator[dict[str, Any]]:
                async for event in subscriber:
                    yield json.loads(event.message)

            yield messages()
