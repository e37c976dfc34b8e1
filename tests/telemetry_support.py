"""What the telemetry stories share: messages sent through the running ingest pipeline, as a
robot's MQTT or HTTP messages arrive, and a quiet minute of the seed to put them in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.ingest.messages import Outcome, RawMessage
from tests.support import Api


async def send(api: Api, robot_id: str, kind: str, *bodies: dict[str, Any]) -> list[str]:
    """Submits the messages (`telemetry`, `status` or `events`) in one go; their outcomes."""
    topic = {"telemetry": "telemetry", "status": "status", "events": "events"}[kind]
    items = [
        RawMessage("http", f"robots/{robot_id}/{topic}", robot_id, kind, orjson.dumps(body))
        for body in bodies
    ]
    outcomes: list[Outcome] = await api.components.pipeline.submit(items)
    return [o.status for o in outcomes]


def quiet_minute(hours_ago: float = 3) -> datetime:
    """The start of a minute the development seed left empty (between its week of history, which
    ends 25 hours ago, and its last hour)."""
    at = datetime.now(UTC) - timedelta(hours=hours_ago)
    return at.replace(second=0, microsecond=0)


def iso(at: datetime) -> str:
    return at.isoformat()
