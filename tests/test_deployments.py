"""An admin quenches a fresh build to half a fleet, watches the robots report it, and recalls.

The full loop runs for real: Mosquitto, the app's ingest and command dispatcher, simulated robots
(app.simulator) that honour UPDATE_INGOT, the build worker and the deployment tracker, all with
short intervals. Bad input gets typed errors and changes nothing (docs/builds.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app import commands
from app.settings import Settings
from app.simulator import SimConfig, Simulator
from app.simulator.robots import SimRobot
from tests.seed_ids import (
    ALPHA,
    ASSEMBLY_FLEET,
    BETA,
    DEV_FLEET,
    DEVBOT_INGOT,
    WAREHOUSE_BOT_01,
    WAREHOUSE_BOT_02,
    WAREHOUSE_FLEET,
    WAREHOUSE_INGOT,
    WAREHOUSE_SEPULKA,
)
from tests.servers import MosquittoServer
from tests.support import Api, eventually, request_work, with_broker

CAST = "mutation($id: ID!) { castIngot(sepulkaId: $id) { ingot { id } errors { code } } }"
INGOT_STATUS = "query($id: ID!) { ingot(id: $id) { status version } }"
QUENCH = """
mutation($ingot: ID!, $fleet: ID!, $pct: Int) {
  quenchToFleet(ingotId: $ingot, fleetId: $fleet, rolloutPercent: $pct) {
    deployment { id status rolloutPercent kind toVersion }
    errors { code message field }
  }
}
"""
RECALL = """
mutation($fleet: ID!, $version: String!) {
  recallFleet(fleetId: $fleet, toVersion: $version) { deployment { id status kind } errors { code field } }
}
"""
DEPLOYMENT = """
query($id: ID!) {
  deployment(id: $id) {
    id status kind rolloutPercent toVersion completedAt
    ingot { version } fleet { id }
    targets {
      robot { id name } state reportedVersion detail
      fromIngot { version } toIngot { version }
      command { type state detail }
    }
  }
}
"""
ROBOT_INGOTS = """
query($fleet: ID!) { fleet(id: $fleet) { robots { id currentIngot { id version } } } }
"""
DEPLOYMENTS = """
query($fleet: ID, $ingot: ID, $first: Int, $after: String) {
  deployments(fleetId: $fleet, ingotId: $ingot, first: $first, after: $after) {
    edges { cursor node { id kind status } }
    pageInfo { hasNextPage hasPreviousPage endCursor }
  }
}
"""


@contextlib.asynccontextmanager
async def fleet_loop(
    settings: Settings, mosquitto: MosquittoServer, failure_rate: float = 0.0
) -> AsyncIterator[Api]:
    """The app on Mosquitto with fast workers, and the warehouse robots simulated on it."""
    configured = with_broker(settings, mosquitto, build_poll_s=0.05, deployment_poll_s=0.05)
    robots = [
        SimRobot(robot_id, f"W{n}", WAREHOUSE_FLEET, "IDLE", 80.0, None)
        for n, robot_id in enumerate((WAREHOUSE_BOT_01, WAREHOUSE_BOT_02))
    ]
    config = SimConfig(
        mqtt_url=mosquitto.url, protocol=5, hz=0.5, seed=7, ack_delay_s=0.05, update_failure_rate=failure_rate
    )
    async with Api.running(configured) as api, Simulator(robots, config):
        yield api


@pytest.fixture
async def dev(settings: Settings, mosquitto: MosquittoServer) -> AsyncIterator[Api]:
    async with fleet_loop(settings, mosquitto) as api:
        yield api


async def deployment(api: Api, deployment_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await api.data(DEPLOYMENT, {"id": deployment_id}))["deployment"]
    return found


async def finished(api: Api, deployment_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await deployment(api, deployment_id)
        return found if found["status"] != "IN_PROGRESS" else None

    try:
        result: dict[str, Any] = await eventually(
            check, within=60, what=f"deployment {deployment_id} to finish"
        )
    except AssertionError:
        rows = await api.resources.db.fetch("SELECT robot_id, type, state, detail FROM robot_commands")
        raise AssertionError([dict(r) for r in rows]) from None
    return result


async def robot_versions(api: Api, fleet_id: str) -> dict[str, str]:
    robots = (await api.data(ROBOT_INGOTS, {"fleet": fleet_id}))["fleet"]["robots"]
    return {r["id"]: r["currentIngot"]["version"] for r in robots}


async def built(api: Api) -> str:
    ingot_id: str = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}))["castIngot"]["ingot"]["id"]

    async def ready() -> bool:
        return (await api.data(INGOT_STATUS, {"id": ingot_id}))["ingot"]["status"] == "READY"

    await eventually(ready, within=60, what="the build")
    return ingot_id


async def test_quench_at_half_the_fleet_updates_one_robot_and_recall_rolls_it_back(dev: Api) -> None:
    """Given the warehouse fleet on 1.0.0 and a fresh build 1.0.1, quenching at 50 % sends one
    robot UPDATE_INGOT; it acks, reports 1.0.1, the deployment completes, the build is DEPLOYED.
    Recalling the fleet to 1.0.0 sends both robots the old build and both end up on it."""
    api = dev
    ingot_id = await built(api)
    quench = (await api.data(QUENCH, {"ingot": ingot_id, "fleet": WAREHOUSE_FLEET, "pct": 50}))[
        "quenchToFleet"
    ]
    assert quench["errors"] is None
    started = quench["deployment"]
    assert (started["status"], started["rolloutPercent"], started["kind"], started["toVersion"]) == (
        "IN_PROGRESS",
        50,
        "QUENCH",
        "1.0.1",
    )

    done = await finished(api, started["id"])
    assert done["status"] == "COMPLETED" and done["completedAt"]
    (target,) = done["targets"]
    assert target["state"] == "SUCCEEDED" and target["reportedVersion"] == "1.0.1"
    assert (target["fromIngot"]["version"], target["toIngot"]["version"]) == ("1.0.0", "1.0.1")
    assert target["command"] == {"type": "UPDATE_INGOT", "state": "SUCCEEDED", "detail": "1.0.1"}
    versions = await robot_versions(api, WAREHOUSE_FLEET)
    assert sorted(versions.values()) == ["1.0.0", "1.0.1"]
    assert versions[target["robot"]["id"]] == "1.0.1"
    assert (await api.data(INGOT_STATUS, {"id": ingot_id}))["ingot"]["status"] == "DEPLOYED"

    recall = (await api.data(RECALL, {"fleet": WAREHOUSE_FLEET, "version": "1.0.0"}))["recallFleet"]
    assert recall["errors"] is None and recall["deployment"]["kind"] == "RECALL"
    rolled_back = await finished(api, recall["deployment"]["id"])
    assert rolled_back["status"] == "COMPLETED"
    assert {t["robot"]["id"] for t in rolled_back["targets"]} == {WAREHOUSE_BOT_01, WAREHOUSE_BOT_02}
    assert {t["reportedVersion"] for t in rolled_back["targets"]} == {"1.0.0"}
    assert await robot_versions(api, WAREHOUSE_FLEET) == {
        WAREHOUSE_BOT_01: "1.0.0",
        WAREHOUSE_BOT_02: "1.0.0",
    }
    robots = await api.resources.db.fetch(
        "SELECT current_ingot_id FROM robots WHERE fleet_id = $1", WAREHOUSE_FLEET
    )
    assert {r["current_ingot_id"] for r in robots} == {WAREHOUSE_INGOT}

    # Both deployments, newest first, per fleet and per ingot, paged with cursors.
    page = (await api.data(DEPLOYMENTS, {"fleet": WAREHOUSE_FLEET, "first": 1}))["deployments"]
    assert [e["node"]["kind"] for e in page["edges"]] == ["RECALL"]
    assert page["pageInfo"]["hasNextPage"] is True
    rest = (
        await api.data(
            DEPLOYMENTS, {"fleet": WAREHOUSE_FLEET, "first": 1, "after": page["pageInfo"]["endCursor"]}
        )
    )["deployments"]
    assert [e["node"]["id"] for e in rest["edges"]] == [started["id"]]
    assert rest["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": True,
        "endCursor": rest["edges"][0]["cursor"],
    }
    of_ingot = (await api.data(DEPLOYMENTS, {"ingot": ingot_id}))["deployments"]
    assert [e["node"]["id"] for e in of_ingot["edges"]] == [started["id"]]


async def test_robots_that_fail_the_install_fail_the_deployment_and_keep_their_build(
    settings: Settings, mosquitto: MosquittoServer
) -> None:
    async with fleet_loop(settings, mosquitto, failure_rate=1.0) as api:
        ingot_id = await built(api)
        quench = (await api.data(QUENCH, {"ingot": ingot_id, "fleet": WAREHOUSE_FLEET}))["quenchToFleet"]
        done = await finished(api, quench["deployment"]["id"])
        assert done["status"] == "FAILED"
        assert {t["state"] for t in done["targets"]} == {"FAILED"}
        assert all(t["detail"].startswith("command FAILED: installing 1.0.1 failed") for t in done["targets"])
        assert set((await robot_versions(api, WAREHOUSE_FLEET)).values()) == {"1.0.0"}
        assert (await api.data(INGOT_STATUS, {"id": ingot_id}))["ingot"]["status"] == "READY"


async def test_a_robot_reporting_another_version_is_a_failed_target(settings: Settings) -> None:
    """Without a broker: the robot's acks are applied as the ingest would, one reports 9.9.9."""
    async with Api.running(settings.replace(deployment_poll_s=0.05)) as api:
        db = api.resources.db
        await db.execute(
            "INSERT INTO ingots (sepulka_id, version, build_hash, status) "
            "SELECT sepulka_id, '1.0.1', 'build_other', 'READY' FROM ingots WHERE id = $1",
            DEVBOT_INGOT,
        )
        newer = await db.fetchval("SELECT id FROM ingots WHERE build_hash = 'build_other'")
        quench = (await api.data(QUENCH, {"ingot": newer, "fleet": DEV_FLEET}))["quenchToFleet"]
        sent = await db.fetch("SELECT id, robot_id FROM robot_commands WHERE type = 'UPDATE_INGOT'")
        reports = {ALPHA: "1.0.1", BETA: "9.9.9"}
        async with db.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE robot_commands SET state = 'SENT', sent_at = now() WHERE type = 'UPDATE_INGOT'"
            )
            acks = [
                {
                    "robot_id": c["robot_id"],
                    "command_id": c["id"],
                    "state": "SUCCEEDED",
                    "detail": reports[c["robot_id"]],
                }
                for c in sent
            ]
            await commands.apply_acks(conn, acks)
        done = await finished(api, quench["deployment"]["id"])
        assert done["status"] == "PARTIAL"
        by_robot = {t["robot"]["id"]: t for t in done["targets"]}
        assert by_robot[ALPHA]["state"] == "SUCCEEDED"
        assert (by_robot[BETA]["state"], by_robot[BETA]["detail"]) == (
            "FAILED",
            "robot reports version 9.9.9, expected 1.0.1",
        )
        assert await robot_versions(api, DEV_FLEET) == {ALPHA: "1.0.1", BETA: "1.0.0"}


async def test_bad_quench_requests_get_typed_errors_and_send_nothing(api: Api) -> None:
    db = api.resources.db

    async def errors(variables: dict[str, Any]) -> list[tuple[str, str | None]]:
        payload = (await api.data(QUENCH, variables))["quenchToFleet"]
        assert payload["deployment"] is None
        return [(e["code"], e["field"]) for e in payload["errors"]]

    base = {"ingot": WAREHOUSE_INGOT, "fleet": WAREHOUSE_FLEET}
    assert await errors({**base, "pct": 0}) == [("BAD_USER_INPUT", "rolloutPercent")]
    assert await errors({**base, "pct": 101}) == [("BAD_USER_INPUT", "rolloutPercent")]
    # No robot of the warehouse design in the dev fleet, and none at all in the assembly fleet.
    assert await errors({**base, "fleet": DEV_FLEET}) == [("BAD_USER_INPUT", "fleetId")]
    assert await errors({**base, "fleet": ASSEMBLY_FLEET}) == [("BAD_USER_INPUT", "fleetId")]
    await db.execute("UPDATE ingots SET status = 'BUILDING' WHERE id = $1", WAREHOUSE_INGOT)
    assert await errors(base) == [("CONFLICT", "ingotId")]
    assert await api.error_codes(QUENCH, {**base, "fleet": "warehouse"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(DEPLOYMENTS, {"after": "not-a-cursor"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(DEPLOYMENTS, {"first": 0}) == ["BAD_USER_INPUT"]
    assert await db.fetchval("SELECT count(*) FROM deployments") == 0
    assert await db.fetchval("SELECT count(*) FROM robot_commands") == 0
    # One deployment at a time per fleet.
    await db.execute("UPDATE ingots SET status = 'READY' WHERE id = $1", WAREHOUSE_INGOT)
    first = (await api.data(QUENCH, base))["quenchToFleet"]
    assert first["errors"] is None
    assert await errors(base) == [("CONFLICT", "fleetId")]
    assert await db.fetchval("SELECT count(*) FROM robot_commands") == 2


FLEET_DEPLOYMENTS = """
{
  fleets(limit: 10) {
    id
    deployments(first: 2) {
      edges { node { id ingot { version } targets { robot { name } toIngot { version } command { state } } } }
    }
  }
  ingots(limit: 10) { id deployments(first: 2) { edges { node { id fleet { name } } } } }
}
"""


async def test_deployments_of_many_fleets_cost_the_same_statements_as_of_one(api: Api) -> None:
    db = api.resources.db

    async def statements() -> int:
        with api.count_statements() as seen:
            await api.data(FLEET_DEPLOYMENTS)
        return len(request_work(seen))

    await api.data(QUENCH, {"ingot": WAREHOUSE_INGOT, "fleet": WAREHOUSE_FLEET})
    one = await statements()
    await api.data(QUENCH, {"ingot": DEVBOT_INGOT, "fleet": DEV_FLEET})
    # More fleets with deployments and targets.
    for n in range(5):
        fleet = await db.fetchval(
            "INSERT INTO fleets (name, locus_id) "
            "SELECT 'Extra ' || $1::text, locus_id FROM fleets WHERE id = $2 RETURNING id",
            str(n),
            DEV_FLEET,
        )
        await db.execute(
            "INSERT INTO robots (name, sepulka_id, fleet_id, current_ingot_id) "
            "SELECT 'Extra-' || $1::text, sepulka_id, $2, id FROM ingots WHERE id = $3",
            str(n),
            fleet,
            DEVBOT_INGOT,
        )
        await api.data(QUENCH, {"ingot": DEVBOT_INGOT, "fleet": fleet})
    assert await statements() == one
