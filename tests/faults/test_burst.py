"""A burst of ten times the steady rate, more than the ingest writes per second: the ingest
stops reading its socket (TCP backpressure; the broker queues the rest), so its memory stays
within a bound set by its window and its pipeline, not by the burst, and once the burst ends it
drains the broker's queue with every message stored once."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import asyncpg
import httpx

from tests.faults.harness import (
    CLEAR_HISTORY,
    MESSAGES,
    Outcome,
    Robots,
    running_ingest,
    stored,
    until_stored,
)
from tests.servers import MosquittoServer

STEADY_RATE = 200  # messages/s: four robots at 50 Hz
BATCH = 200
# What the ingest may hold beyond its steady footprint: its MQTT window (4 batches in flight,
# app/ingest/mqtt.py) and its pipeline's 10 pending batches (app/ingest/pipeline.py), 4,800
# small messages of a few KiB of Python objects each (~20 MiB), plus the allocator's slack.
# A process buffering the burst instead grows with it: SEPULKI_FAULT_MESSAGES=50000 sends a
# burst of 250,000 messages, which unread would be several hundred MiB.
GROWTH_BOUND_MIB = 64


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match[1]) / 1024


async def read_pauses(port: int) -> float:
    async with httpx.AsyncClient(timeout=15) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    match = re.search(r"^sepulki_ingest_mqtt_read_pauses_total (\S+)$", text, re.M)
    assert match is not None, text[-2000:]
    return float(match[1])


async def test_a_burst_ten_times_the_steady_rate_keeps_the_ingest_s_memory_bounded_and_drains_without_loss(
    database_url: str, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    steady = MESSAGES // 4
    burst = MESSAGES * 5
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(mosquitto.url)
    peak: dict[str, float] = {}
    phase = "steady"

    async def sample(pid: int) -> None:
        while True:
            peak[phase] = max(peak.get(phase, 0.0), rss_mib(pid))
            await asyncio.sleep(0.02)

    try:
        async with running_ingest(
            database_url, mosquitto.url, tmp_path, ingest_batch_size=str(BATCH)
        ) as ingest:
            assert ingest.process is not None
            sampler = asyncio.create_task(sample(ingest.process.pid))
            await robots.connect()
            # The steady stream: STEADY_RATE messages a second, in tenths of a second.
            started = time.monotonic()
            while robots.sent < steady:
                await robots.publish(min(STEADY_RATE // 10, steady - robots.sent))
                await asyncio.sleep(max(0.0, started + robots.sent / STEADY_RATE - time.monotonic()))
            await until_stored(conn, robots.sent, within=30)
            pauses_before = await read_pauses(ingest.port)
            phase = "burst"
            burst_started = time.monotonic()
            await robots.publish(burst)  # as fast as the robots' connections go
            burst_rate = burst / (time.monotonic() - burst_started)
            drain = await until_stored(conn, robots.sent, within=120)
            drained = time.monotonic() - burst_started
            sampler.cancel()
            pauses = await read_pauses(ingest.port) - pauses_before
            count, duplicated = await stored(conn)
        growth = peak["burst"] - peak["steady"]
        print(
            f"\nburst: {burst} messages at {burst_rate:.0f} msg/s "
            f"({burst_rate / STEADY_RATE:.0f}x the steady {STEADY_RATE} msg/s); "
            f"ingest RSS steady peak {peak['steady']:.1f} MiB, burst peak "
            f"{peak['burst']:.1f} MiB (+{growth:.1f}); socket reads paused {pauses:.0f} times; "
            f"drained {drain:.2f}s after the last publish, {drained:.2f}s after the burst began"
        )
        assert burst_rate >= 10 * STEADY_RATE, burst_rate
        # Over capacity: the ingest had to stop reading (the broker held the backlog).
        assert pauses > 0
        assert growth < GROWTH_BOUND_MIB, peak
        outcome = Outcome(
            f"burst of {burst} at {burst_rate:.0f} msg/s, ingest RSS +{growth:.1f} MiB",
            robots.sent,
            count,
            duplicated,
            drain,
        )
        outcome.report()
        assert outcome.stored == outcome.sent == steady + burst and outcome.duplicated == 0
    finally:
        await robots.disconnect()
        await conn.close()
