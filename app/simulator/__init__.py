"""The robot simulator: `sepulki simulate` and the simulated robots of `sepulki dev`.

`physics` is the robot's body (pure functions), `messages` its side of the MQTT contract,
`robots` picks (or registers) the database rows it plays, `runner` puts each robot on MQTT.
This module owns the two ways to run it: the `simulated_robots` lifespan component (dev) and
`simulate()` (the CLI command, against any broker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta

from app import apikeys
from app.infra import db
from app.resources import Resources
from app.simulator.robots import NoRobots, SimRobot, by_ids, pick
from app.simulator.runner import BrokerUnreachable, SimConfig, Simulator, Stats

__all__ = [
    "BrokerUnreachable",
    "NoRobots",
    "Plan",
    "SimConfig",
    "SimRobot",
    "Simulator",
    "Stats",
    "simulate",
    "simulated_robots",
]

log = logging.getLogger("sepulki.simulator")

# `sepulki dev`: one message per robot per second, an hour of battery per real minute.
DEV_HZ = 1.0
DEV_TIME_SCALE = 60.0
# `sepulki simulate` leaves alone robots seen this recently: something else is driving them.
LIVE_WINDOW_S = 30.0


@contextlib.asynccontextmanager
async def simulated_robots(resources: Resources) -> AsyncIterator[Simulator | None]:
    """`settings.simulate_robots` robots on the embedded broker, in the dev process only: the
    seeded robots first, so GraphiQL's subscriptions show live data out of the box."""
    settings = resources.settings
    if not (settings.embedded_broker and settings.mqtt_url and settings.simulate_robots > 0):
        yield None
        return
    try:
        robots = await pick(resources.db, settings.simulate_robots)
    except NoRobots as exc:  # an empty database (no seed): dev still serves, without robots
        log.warning("no simulated robots: %s", exc)
        yield None
        return
    config = SimConfig(
        mqtt_url=settings.mqtt_url,
        protocol=settings.mqtt_protocol,
        hz=DEV_HZ,
        time_scale=DEV_TIME_SCALE,
        # Stopping dev is not the robots powering down: each resumes from its row next start.
        offline_on_exit=False,
        task_duration_s=settings.simulate_task_duration_s,
        task_failure_rate=settings.simulate_task_failure_rate,
        update_failure_rate=settings.simulate_update_failure_rate,
    )
    async with Simulator(robots, config) as simulator:
        yield simulator


SIMULATOR_KEY_NAME = "sepulki simulate"
# Revoked when the run ends; expiring anyway covers a run that was killed.
SIMULATOR_KEY_LIFETIME = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Plan:
    """What `sepulki simulate` was asked to do."""

    database_url: str
    robots: int
    robot_ids: list[str]
    fleet_id: str | None
    duration_s: float | None
    register: bool = True
    # The service manages the broker's robot accounts (SEPULKI_MQTT_ADMIN_URL): the simulated
    # robots get keys of their own for the run, revoked when it ends.
    admin_url: str | None = None


async def simulate(plan: Plan, config: SimConfig, stats: Stats | None = None) -> Stats:
    """Runs until `duration_s` passes (or forever) and returns what was sent (into `stats`, when
    given, so a caller can watch the counters while it runs)."""
    pool = await db.create_pool(plan.database_url, min_size=1, max_size=2)
    try:
        if plan.robot_ids:
            robots = await by_ids(pool, plan.robot_ids)
        else:
            robots = await pick(
                pool, plan.robots, plan.fleet_id, register=plan.register, skip_live_s=LIVE_WINDOW_S
            )
        issued: dict[str, tuple[str, str]] = {}
        if plan.admin_url:
            issued = await apikeys.issue_for_service(
                pool, plan.admin_url, [r.id for r in robots], SIMULATOR_KEY_NAME, SIMULATOR_KEY_LIFETIME
            )
            config = replace(config, credentials=issued)
        try:
            async with Simulator(robots, config, stats or Stats()) as simulator:
                try:
                    if plan.duration_s is None:
                        await asyncio.Event().wait()
                    else:
                        await asyncio.sleep(plan.duration_s)
                finally:
                    log.info("simulator sent %s", simulator.stats.as_dict())
        finally:
            if issued:
                await apikeys.revoke_for_service(pool, plan.admin_url, [p for p, _ in issued.values()])
    finally:
        await pool.close()
    return simulator.stats
