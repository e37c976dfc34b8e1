"""What the alerting stories share: settings with short intervals, a robot that sends telemetry
through the real ingest pipeline, and a real HTTP server that receives webhook calls."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import uvicorn

from app.ingest.messages import RawMessage
from app.settings import Settings
from tests.servers import free_port
from tests.support import Api

# Short intervals: the evaluator reloads edicts at every round, deliveries retry within a second.
FAST = {
    "edict_reload_s": 0.01,
    "edict_missing_check_s": 0.2,
    "notify_poll_s": 0.1,
    "notify_backoff_s": 0.1,
    "notify_backoff_max_s": 0.5,
    "notify_lease_s": 1.0,
    "webhook_timeout_s": 2.0,
}

ALERTS = """
query($filter: AlertFilter, $first: Int, $after: String) {
  alerts(filter: $filter, first: $first, after: $after) {
    edges { cursor node {
      id edictId robotId fleetId severity state message occurrences firstAt lastAt
      acknowledgedBy resolvedBy resolvedAt resolutionNote
      edict { name }
      breaches { id message alertId commands { id type state } }
    } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
ADD_EDICT = "mutation($input: EdictInput!) { addEdict(input: $input) { id active } }"
DEACTIVATE = "mutation($id: ID!) { deactivateEdict(id: $id) { id } }"


def fast(settings: Settings, **changes: Any) -> Settings:
    return settings.replace(**(FAST | changes))


_seq = itertools.count(10_000)


class Robot:
    """A robot posting telemetry through the app's ingest pipeline (as MQTT and HTTP do)."""

    def __init__(self, api: Api, robot_id: str) -> None:
        self.api = api
        self.id = robot_id
        self.clock = datetime.now(UTC) - timedelta(minutes=5)

    async def send(self, *, step_s: float = 1.0, **fields: Any) -> None:
        """One sample, `step_s` after the previous one (robot time)."""
        self.clock += timedelta(seconds=step_s)
        data = {"seq": next(_seq), "ts": self.clock.isoformat()} | fields
        raw = RawMessage("http", f"robots/{self.id}/telemetry", self.id, "telemetry", orjson.dumps(data))
        (outcome,) = await self.api.components.pipeline.submit([raw])
        assert outcome.status == "stored", outcome

    async def battery(self, *levels: float) -> None:
        for level in levels:
            await self.send(batteryLevel=level)


async def edict(api: Api, name: str, rules: dict[str, Any], **fields: Any) -> str:
    body = {"name": name, "type": "OPERATIONAL", "rules": rules, "severity": "WARNING"} | fields
    edict_id: str = (await api.data(ADD_EDICT, {"input": body}))["addEdict"]["id"]
    return edict_id


def battery_rules(threshold: float = 20, **extra: Any) -> dict[str, Any]:
    return {
        "condition": {
            "type": "metric",
            "operator": "AND",
            "rules": [{"metric": "battery_level", "op": "lt", "value": threshold}],
        },
        "actions": [{"type": "ALERT"}],
    } | extra


async def rows(api: Api, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await api.resources.db.fetch(sql, *args)]


async def settled(api: Api, sql: str, *args: Any, within: float = 3.0) -> Any:
    """The value of `sql` once it has stopped changing for a moment (the evaluator is done)."""
    deadline = time.monotonic() + within
    last = await api.resources.db.fetchval(sql, *args)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        now = await api.resources.db.fetchval(sql, *args)
        if now == last:
            return now
        last = now
    return last


@dataclass
class Call:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A real HTTP endpoint on a loopback port that records webhook calls and answers with
    `statuses` in turn (200 once they run out); `hang` calls are never answered."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    hang: int = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.calls.append(Call(headers, body))
        if self.hang > 0:
            self.hang -= 1
            await asyncio.sleep(3600)
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def bodies(self) -> list[dict[str, Any]]:
        return [orjson.loads(c.body) for c in self.calls]


@contextlib.asynccontextmanager
async def receiving(**kwargs: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**kwargs)
    port = free_port()
    receiver.url = f"http://127.0.0.1:{port}/hooks/sepulki"
    server = uvicorn.Server(uvicorn.Config(receiver, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "receiver did not start"
        await asyncio.sleep(0.02)
    try:
        yield receiver
    finally:
        server.should_exit = True
        server.force_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 5)
