"""A smith casts builds (ingots) of ready designs and rolls a fleet back to an earlier version.

The worker's rounds are slowed down here so that what a mutation queued can be seen before the
worker picks it up; tests/test_builds.py and tests/test_deployments.py watch the worker finish.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from app.settings import Settings
from tests.seed_ids import (
    ADMIN_ID,
    ALPHA,
    ASSEMBLY_FLEET,
    ASSEMBLY_SEPULKA,
    BETA,
    DEMO_ID,
    DEV_FLEET,
    DEVBOT_INGOT,
    DEVBOT_SEPULKA,
    TEST_ID,
    WAREHOUSE_INGOT,
    WAREHOUSE_SEPULKA,
)
from tests.support import DEMO, TEST, Api


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The app with its build worker and deployment tracker idle after their first round."""
    async with Api.running(settings.replace(build_poll_s=60, deployment_poll_s=60)) as running:
        yield running


UNKNOWN = "99999999-0000-4000-8000-000000000000"

INGOTS = """
query($filter: IngotFilter, $limit: Int, $offset: Int) {
  ingots(filter: $filter, limit: $limit, offset: $offset) {
    id sepulkaId version buildHash status buildLogs tempered createdAt
    artifacts { type path size checksum }
  }
}
"""
INGOT = "query($id: ID!) { ingot(id: $id) { id version status temperResults { metrics } } }"
CAST = """
mutation($id: ID!) {
  castIngot(sepulkaId: $id) {
    ingot { id sepulkaId version buildHash status artifacts { path } buildLogs tempered }
    errors { code message field }
  }
}
"""
TEMPER = """
mutation($id: ID!) {
  temperIngot(ingotId: $id, input: {goals: [{metric: "speed", target: "max"}]}) {
    ingot { id } errors { code field }
  }
}
"""
QUENCH = """
mutation($ingot: ID!, $fleet: ID!, $pct: Int) {
  quenchToFleet(ingotId: $ingot, fleetId: $fleet, rolloutPercent: $pct) {
    deployment { id } errors { code field }
  }
}
"""
RECALL = """
mutation($fleet: ID!, $version: String!) {
  recallFleet(fleetId: $fleet, toVersion: $version) {
    deployment { id ingotId fleetId status rolloutPercent createdAt }
    errors { code message field }
  }
}
"""


def codes(body: dict) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors") or []]


async def test_ingots_of_a_sepulka_as_the_reference_tests_query_them(api: Api) -> None:
    ingots = (await api.data(INGOTS, {"filter": {"sepulkaId": DEVBOT_SEPULKA}}, as_=DEMO))["ingots"]
    assert len(ingots) == 1
    ingot = ingots[0]
    assert (ingot["id"], ingot["sepulkaId"], ingot["version"]) == (DEVBOT_INGOT, DEVBOT_SEPULKA, "1.0.0")
    assert ingot["buildHash"] == "build_dev001_abc123"
    assert ingot["status"] == "READY"
    assert ingot["buildLogs"] == ["Build started", "Compiling firmware", "Build complete"]
    assert ingot["artifacts"][0] == {
        "type": "firmware",
        "path": "/artifacts/dev001/firmware.bin",
        "size": 2048576,
        "checksum": "sha256:abc123",
    }


async def test_ingots_filter_by_status_and_page(api: Api) -> None:
    tempered = (await api.data(INGOTS, {"filter": {"status": "TEMPERED"}}))["ingots"]
    assert [(i["id"], i["tempered"]) for i in tempered] == [(WAREHOUSE_INGOT, True)]
    every = [i["id"] for i in (await api.data(INGOTS))["ingots"]]
    assert sorted(every) == [DEVBOT_INGOT, WAREHOUSE_INGOT]
    assert [i["id"] for i in (await api.data(INGOTS, {"limit": 1, "offset": 1}))["ingots"]] == every[1:]
    assert await api.error_codes(INGOTS, {"filter": {"sepulkaId": "abc"}}) == ["BAD_USER_INPUT"]


async def test_ingot_by_id_unknown_and_malformed(api: Api) -> None:
    ingot = (await api.data(INGOT, {"id": WAREHOUSE_INGOT}))["ingot"]
    assert (ingot["version"], ingot["status"], ingot["temperResults"]) == ("1.0.0", "TEMPERED", None)
    assert (await api.data(INGOT, {"id": UNKNOWN}))["ingot"] is None
    assert await api.error_codes(INGOT, {"id": "60000000"}) == ["BAD_USER_INPUT"]


async def test_casting_a_ready_sepulka_queues_the_next_version(api: Api) -> None:
    payload = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}, as_=DEMO))["castIngot"]
    assert payload["errors"] is None
    ingot = payload["ingot"]
    # The sepulka already has ingot 1.0.0, so this build is 1.0.1.
    assert ingot["version"] == "1.0.1"
    assert ingot["sepulkaId"] == WAREHOUSE_SEPULKA
    assert ingot["status"] == "BUILDING"
    assert ingot["artifacts"] == []
    assert ingot["buildLogs"] == ["Build queued"]
    assert ingot["tempered"] is False
    assert re.fullmatch(r"build_\d{13}_[0-9a-z]{9}", ingot["buildHash"])

    db = api.resources.db
    assert (
        await db.fetchval("SELECT status::text FROM sepulkas WHERE id = $1", WAREHOUSE_SEPULKA) == "CASTING"
    )
    row = await db.fetchrow("SELECT * FROM ingots WHERE id = $1", ingot["id"])
    assert (row["version"], row["status"], row["created_by"]) == ("1.0.1", "BUILDING", DEMO_ID)
    # The build is a job for the worker, queued in the same transaction.
    job = await db.fetchrow("SELECT kind, state, created_by FROM build_jobs WHERE ingot_id = $1", ingot["id"])
    assert dict(job) == {"kind": "BUILD", "state": "QUEUED", "created_by": DEMO_ID}
    audit = await db.fetchrow("SELECT * FROM audit_logs WHERE action = 'castIngot'")
    assert (audit["smith_id"], audit["resource_id"]) == (DEMO_ID, ingot["id"])
    assert audit["changes"]["version"] == "1.0.1"
    # A casting sepulka cannot be cast again until its build settles.
    again = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}))["castIngot"]
    assert again["errors"][0]["message"] == "Sepulka must be in CAST_READY status, currently: CASTING"


async def test_casting_a_forging_sepulka_is_refused(api: Api) -> None:
    payload = (await api.data(CAST, {"id": ASSEMBLY_SEPULKA}))["castIngot"]
    assert payload["ingot"] is None
    assert payload["errors"] == [
        {
            "code": "CONFLICT",
            "message": "Sepulka must be in CAST_READY status, currently: FORGING",
            "field": "sepulkaId",
        }
    ]
    db = api.resources.db
    assert await db.fetchval("SELECT count(*) FROM ingots WHERE sepulka_id = $1", ASSEMBLY_SEPULKA) == 0
    assert await db.fetchval("SELECT status::text FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA) == "FORGING"


async def test_casting_a_sepulka_without_alloys_is_refused_as_incomplete(api: Api) -> None:
    db = api.resources.db
    await db.execute("UPDATE sepulkas SET status = 'CAST_READY' WHERE id = $1", ASSEMBLY_SEPULKA)
    await db.execute("DELETE FROM sepulka_alloys WHERE sepulka_id = $1", ASSEMBLY_SEPULKA)
    payload = (await api.data(CAST, {"id": ASSEMBLY_SEPULKA}))["castIngot"]
    assert payload["errors"][0]["message"] == "Sepulka is incomplete"
    assert (
        await db.fetchval("SELECT status::text FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA) == "CAST_READY"
    )


async def test_casting_unknown_malformed_or_without_permission(api: Api) -> None:
    missing = (await api.data(CAST, {"id": UNKNOWN}))["castIngot"]
    assert missing["errors"][0]["code"] == "NOT_FOUND"
    assert await api.error_codes(CAST, {"id": "sepulka-2"}) == ["BAD_USER_INPUT"]
    smith = await api.create_smith("caster@sepulki.com", "SMITH")
    assert await api.error_codes(CAST, {"id": WAREHOUSE_SEPULKA}, as_=smith) == ["FORBIDDEN"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM ingots") == 2


def payload_errors(body: dict, field: str) -> list[tuple[str, str | None]]:
    assert not body.get("errors"), body
    return [(e["code"], e["field"]) for e in body["data"][field]["errors"] or []]


async def test_temper_and_quench_check_their_arguments_and_change_nothing(api: Api) -> None:
    # "speed" is no metric of the tempering model (cycleTime, energyPerCycle, accuracy).
    assert payload_errors(await api.execute(TEMPER, {"id": DEVBOT_INGOT}), "temperIngot") == [
        ("BAD_USER_INPUT", "input.goals")
    ]
    assert payload_errors(await api.execute(TEMPER, {"id": UNKNOWN}), "temperIngot") == [
        ("BAD_USER_INPUT", "input.goals")
    ]
    assert codes(await api.execute(TEMPER, {"id": "x"})) == ["BAD_USER_INPUT"]

    quench = await api.execute(QUENCH, {"ingot": DEVBOT_INGOT, "fleet": UNKNOWN})
    assert payload_errors(quench, "quenchToFleet") == [("NOT_FOUND", None)]
    unknown_ingot = await api.execute(QUENCH, {"ingot": UNKNOWN, "fleet": DEV_FLEET})
    assert payload_errors(unknown_ingot, "quenchToFleet") == [("NOT_FOUND", None)]
    assert codes(await api.execute(QUENCH, {"ingot": "x", "fleet": DEV_FLEET})) == ["BAD_USER_INPUT"]
    over = {"ingot": DEVBOT_INGOT, "fleet": DEV_FLEET, "pct": 150}
    assert payload_errors(await api.execute(QUENCH, over), "quenchToFleet") == [
        ("BAD_USER_INPUT", "rolloutPercent")
    ]
    smith = await api.create_smith("temper@sepulki.com", "OVER_SMITH")
    assert await api.error_codes(TEMPER, {"id": DEVBOT_INGOT}, as_=smith) == ["FORBIDDEN"]
    db = api.resources.db
    assert await db.fetchval("SELECT count(*) FROM deployments") == 0
    assert await db.fetchval("SELECT count(*) FROM build_jobs") == 0
    assert await db.fetchval("SELECT count(*) FROM robot_commands WHERE type = 'UPDATE_INGOT'") == 0
    assert await db.fetchval("SELECT status::text FROM ingots WHERE id = $1", DEVBOT_INGOT) == "READY"


async def _move_dev_fleet_to_new_build(api: Api) -> str:
    db = api.resources.db
    newer = await db.fetchval(
        "INSERT INTO ingots (sepulka_id, version, build_hash, status) "
        "VALUES ($1, '1.0.1', 'build_newer', 'READY') RETURNING id",
        DEVBOT_SEPULKA,
    )
    await db.execute("UPDATE robots SET current_ingot_id = $1 WHERE fleet_id = $2", newer, DEV_FLEET)
    return newer


async def test_recall_sends_every_robot_an_update_and_records_the_deployment(api: Api) -> None:
    newer = await _move_dev_fleet_to_new_build(api)
    payload = (await api.data(RECALL, {"fleet": DEV_FLEET, "version": "1.0.0"}, as_=TEST))["recallFleet"]
    assert payload["errors"] is None
    deployment = payload["deployment"]
    assert deployment["ingotId"] == DEVBOT_INGOT
    assert deployment["fleetId"] == DEV_FLEET
    # In progress until the robots answer (tests/test_deployments.py follows one to the end).
    assert (deployment["status"], deployment["rolloutPercent"]) == ("IN_PROGRESS", 100)

    db = api.resources.db
    sent = await db.fetch(
        "SELECT robot_id, state::text AS state, params FROM robot_commands "
        "WHERE type = 'UPDATE_INGOT' ORDER BY robot_id"
    )
    # Queued in the outbox (no broker here, so nothing sends them).
    assert [(r["robot_id"], r["state"]) for r in sent] == [(ALPHA, "QUEUED"), (BETA, "QUEUED")]
    assert {r["params"]["version"] for r in sent} == {"1.0.0"}
    assert {r["params"]["ingotId"] for r in sent} == {DEVBOT_INGOT}
    # Robots keep their build until they report the new one.
    current = await db.fetch("SELECT current_ingot_id FROM robots WHERE fleet_id = $1", DEV_FLEET)
    assert {r["current_ingot_id"] for r in current} == {newer}
    row = await db.fetchrow("SELECT * FROM deployments WHERE id = $1", deployment["id"])
    assert (row["kind"], row["status"], row["created_by"], row["to_version"]) == (
        "RECALL",
        "IN_PROGRESS",
        TEST_ID,
        "1.0.0",
    )
    assert sorted(row["details"]["robotIds"]) == [ALPHA, BETA]
    assert row["details"]["failedRobotIds"] == []
    targets = await db.fetch(
        "SELECT state FROM deployment_targets WHERE deployment_id = $1", deployment["id"]
    )
    assert [t["state"] for t in targets] == ["PENDING", "PENDING"]
    audit = await db.fetchrow("SELECT * FROM audit_logs WHERE action = 'recallFleet'")
    assert (audit["resource_id"], audit["changes"]["deploymentId"]) == (DEV_FLEET, deployment["id"])
    # One deployment at a time per fleet.
    again = (await api.data(RECALL, {"fleet": DEV_FLEET, "version": "1.0.0"}))["recallFleet"]
    assert [(e["code"], e["field"]) for e in again["errors"]] == [("CONFLICT", "fleetId")]


async def test_recall_is_partial_when_a_robot_has_no_such_version(api: Api) -> None:
    newer = await _move_dev_fleet_to_new_build(api)
    db = api.resources.db
    # A robot of a design that was never built as 1.0.0.
    odd = await db.fetchval(
        "INSERT INTO robots (name, sepulka_id, fleet_id, current_ingot_id) "
        "VALUES ('Odd-One', $1, $2, $3) RETURNING id",
        ASSEMBLY_SEPULKA,
        DEV_FLEET,
        newer,
    )
    payload = (await api.data(RECALL, {"fleet": DEV_FLEET, "version": "1.0.0"}))["recallFleet"]
    assert payload["deployment"]["status"] == "IN_PROGRESS"
    assert len(payload["errors"]) == 1
    error = payload["errors"][0]
    assert (error["code"], error["field"]) == ("NOT_FOUND", "robotId")
    assert "Odd-One" in error["message"] and odd in error["message"]
    assert await db.fetchval("SELECT current_ingot_id FROM robots WHERE id = $1", odd) == newer
    deployment_id = payload["deployment"]["id"]
    details = await db.fetchval("SELECT details FROM deployments WHERE id = $1", deployment_id)
    assert details["failedRobotIds"] == [odd]
    # The odd one is a failed target from the start and gets no command; the others get one.
    targets = {
        r["robot_id"]: (r["state"], r["command_id"] is not None)
        for r in await db.fetch("SELECT * FROM deployment_targets WHERE deployment_id = $1", deployment_id)
    }
    assert targets == {odd: ("FAILED", False), ALPHA: ("PENDING", True), BETA: ("PENDING", True)}


async def test_recall_to_a_version_nobody_has_fails_and_moves_nothing(api: Api) -> None:
    payload = (await api.data(RECALL, {"fleet": DEV_FLEET, "version": "9.9.9"}))["recallFleet"]
    assert payload["deployment"]["status"] == "FAILED"
    assert {e["field"] for e in payload["errors"]} == {"robotId"}
    assert len(payload["errors"]) == 2
    db = api.resources.db
    row = await db.fetchrow("SELECT * FROM deployments WHERE id = $1", payload["deployment"]["id"])
    assert (row["status"], row["created_by"]) == ("FAILED", ADMIN_ID)
    assert row["completed_at"] is not None
    assert await db.fetchval("SELECT count(*) FROM robot_commands WHERE type = 'UPDATE_INGOT'") == 0
    current = await db.fetch("SELECT current_ingot_id FROM robots WHERE fleet_id = $1", DEV_FLEET)
    assert {r["current_ingot_id"] for r in current} == {DEVBOT_INGOT}


async def test_recall_needs_an_existing_fleet_with_robots(api: Api) -> None:
    empty = (await api.data(RECALL, {"fleet": ASSEMBLY_FLEET, "version": "1.0.0"}))["recallFleet"]
    assert empty["deployment"] is None
    assert empty["errors"][0]["field"] == "fleetId"
    missing = (await api.data(RECALL, {"fleet": UNKNOWN, "version": "1.0.0"}))["recallFleet"]
    assert missing["errors"][0]["code"] == "NOT_FOUND"
    assert await api.resources.db.fetchval("SELECT count(*) FROM deployments") == 0
    assert await api.error_codes(RECALL, {"fleet": "fleet-1", "version": "1.0.0"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(RECALL, {"fleet": DEV_FLEET, "version": " "}) == ["BAD_USER_INPUT"]
    smith = await api.create_smith("recaller@sepulki.com", "OVER_SMITH")
    assert await api.error_codes(RECALL, {"fleet": DEV_FLEET, "version": "1.0.0"}, as_=smith) == ["FORBIDDEN"]
