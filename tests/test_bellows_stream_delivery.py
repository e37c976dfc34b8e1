"""A dashboard following a fleet's bellowsStream sees every sample the robots send, in order per
robot, however fast they send: one message may carry many samples (an ingest batch's), none is
left out. A dashboard that needs fewer updates asks for `minIntervalMs`.

Robots post through the HTTP ingest of a real server (uvicorn, tests/live.py), into the API's own
pipeline: the same batches and the same writer as MQTT's."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app.core.channels import channels
from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.test_apikeys import create_key
from tests.wsclient import SubscriptionError, subscribe

BELLOWS = """
subscription($fleetId: ID!, $minIntervalMs: Int) {
  bellowsStream(fleetId: $fleetId, minIntervalMs: $minIntervalMs) {
    metrics { name value timestamp robotId }
    events { type robotId }
  }
}
"""
METRICS = ("CPU_USAGE", "MOTOR_TEMPERATURE")
# The seed holds seq 1..60 of each demo robot.
FIRST_SEQ = 10_000


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings) as running:
        yield running


async def robot_sends(
    live: Live, robot_id: str, key: str, *, hz: int, seconds: float, per_post: int
) -> list[int]:
    """The robot's samples at `hz`, `per_post` of them per HTTP request (as a robot buffering
    between posts, on a connection of its own); the seqs it sent, each with ts = when taken."""
    base = str(live.api.client.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        return await _sends(client, robot_id, key, hz=hz, seconds=seconds, per_post=per_post)


async def _sends(
    client: httpx.AsyncClient, robot_id: str, key: str, *, hz: int, seconds: float, per_post: int
) -> list[int]:
    sent: list[int] = []
    start = datetime.now(UTC)
    started = time.monotonic()
    count = int(hz * seconds)
    for first in range(0, count, per_post):
        items = []
        for n in range(first, min(first + per_post, count)):
            seq = FIRST_SEQ + n
            ts = (start + timedelta(seconds=n / hz)).isoformat()
            metrics = {"CPU_USAGE": float(n), "MOTOR_TEMPERATURE": 40.0 + n / 1000}
            items.append({"eventType": "telemetry", "data": {"seq": seq, "ts": ts, "metrics": metrics}})
            sent.append(seq)
        response = await client.post(
            f"/telemetry/{robot_id}/batch", json={"items": items}, headers={"x-api-key": key}
        )
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == len(items)
        # Keep to the rate: the next post when its samples have been taken.
        await asyncio.sleep(max(0.0, started + (first + per_post) / hz - time.monotonic()))
    return sent


async def test_every_sample_of_two_robots_at_200_hz_reaches_the_dashboard_in_order(live: Live) -> None:
    keys = {robot: (await create_key(live.api, robot))["key"] for robot in (ALPHA, BETA)}
    init = await live.bearer()
    received: dict[str, list[float]] = defaultdict(list)
    messages = 0
    async with subscribe(live.ws_url, BELLOWS, {"fleetId": DEV_FLEET}, init=init) as stream:
        await live.listening(channels.bellows(DEV_FLEET))
        senders = [
            asyncio.create_task(robot_sends(live, robot, key, hz=200, seconds=1.0, per_post=20))
            for robot, key in keys.items()
        ]
        sent = dict(zip(keys, await asyncio.gather(*senders), strict=True))
        expected = sum(len(seqs) for seqs in sent.values()) * len(METRICS)
        got = 0
        while got < expected:
            bellows = (await stream.next(timeout=10))["bellowsStream"]
            messages += 1
            for metric in bellows["metrics"]:
                got += 1
                if metric["name"] == "CPU_USAGE":
                    received[metric["robotId"]].append(metric["value"])
    # 100 % delivered, each once, in the order each robot took them.
    for robot, seqs in sent.items():
        assert received[robot] == [float(seq - FIRST_SEQ) for seq in seqs]
    assert got == expected
    # Several samples share a message: batches, not one message per sample.
    assert messages < expected / len(METRICS)


async def test_a_dashboard_asking_for_a_minimum_interval_gets_at_most_one_sample_per_robot_per_window(
    live: Live,
) -> None:
    key = (await create_key(live.api, ALPHA))["key"]
    init = await live.bearer()
    variables = {"fleetId": DEV_FLEET, "minIntervalMs": 100}
    every = {"fleetId": DEV_FLEET}
    async with (
        subscribe(live.ws_url, BELLOWS, variables, init=init) as thinned,
        subscribe(live.ws_url, BELLOWS, every, init=init) as full,
    ):
        await live.listening(channels.bellows(DEV_FLEET))
        sent = await robot_sends(live, ALPHA, key, hz=200, seconds=0.5, per_post=50)
        all_samples: list[str] = []
        while len(all_samples) < len(sent):
            metrics = (await full.next(timeout=10))["bellowsStream"]["metrics"]
            all_samples += [m["timestamp"] for m in metrics if m["name"] == "CPU_USAGE"]
        kept: list[str] = []
        # The thinned stream got a message for each of the full one's (none is empty of samples
        # here); read until its newest sample matches the full stream's newest.
        while not kept or kept[-1] != all_samples[-1]:
            metrics = (await thinned.next(timeout=10))["bellowsStream"]["metrics"]
            in_message = [m["timestamp"] for m in metrics if m["name"] == "CPU_USAGE"]
            windows = [int(datetime.fromisoformat(ts).timestamp() * 1000 // 100) for ts in in_message]
            assert len(windows) == len(set(windows)), "two samples of one window in one message"
            kept += in_message
    assert 0 < len(kept) < len(all_samples) / 5
    assert kept == sorted(kept)


async def test_a_negative_minimum_interval_is_refused_as_bad_input(live: Live) -> None:
    init = await live.bearer()
    variables: dict[str, Any] = {"fleetId": DEV_FLEET, "minIntervalMs": -1}
    async with subscribe(live.ws_url, BELLOWS, variables, init=init) as stream:
        with pytest.raises(SubscriptionError) as refused:
            await stream.next()
    assert refused.value.codes == ["BAD_USER_INPUT"]
