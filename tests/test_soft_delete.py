"""Deleting marks a row with deleted_at: the row stays (history, audit), but no query, list,
loader or nested field shows it again, and mutations treat it as gone.

Sepulkas and factory floors are deleted through their mutations; fleets, robots, tasks and edicts
have no delete mutation yet, so their rows are marked as an operator's maintenance script would.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.seed_ids import (
    ALPHA,
    ASSEMBLY_FLEET,
    ASSEMBLY_SEPULKA,
    DEV_FLEET,
    DEV_FLOOR,
    DEVBOT_INGOT,
    FACTORY_A,
    FACTORY_SIM,
    PICK_RUN,
    PICK_TASK,
    SPEED_EDICT,
    TEST_UNITS_FLEET,
)
from tests.support import Api


async def ids(api: Api, query: str, variables: dict[str, Any] | None = None) -> list[str]:
    """The ids of the single list field `query` selects."""
    (items,) = (await api.data(query, variables)).values()
    return [item["id"] for item in items]


TABLES = frozenset({"fleets", "robots", "tasks", "edicts", "sepulkas", "factory_floors"})


async def deleted_at(api: Api, table: str, ident: str) -> Any:
    assert table in TABLES
    row = await api.resources.db.fetchrow(f"SELECT deleted_at FROM {table} WHERE id = $1", ident)
    assert row is not None, f"the {table} row {ident} was removed instead of marked"
    return row["deleted_at"]


async def mark_deleted(api: Api, table: str, ident: str) -> None:
    assert table in TABLES
    await api.resources.db.execute(f"UPDATE {table} SET deleted_at = now() WHERE id = $1", ident)


async def test_a_deleted_robot_leaves_every_list_and_nested_field(api: Api) -> None:
    command = await api.data(
        'mutation($r: ID!) { sendRobotCommand(robotId: $r, type: "PING") { id } }', {"r": ALPHA}
    )
    key = await api.data(
        "mutation($r: ID!) { createRobotApiKey(robotId: $r) { apiKey { id } } }", {"r": ALPHA}
    )
    assert ALPHA in await ids(api, "{ robots(limit: 500) { id } }")

    await mark_deleted(api, "robots", ALPHA)

    assert await deleted_at(api, "robots", ALPHA) is not None
    assert ALPHA not in await ids(api, "{ robots(limit: 500) { id } }")
    assert ALPHA not in await ids(api, "query($f: ID) { robots(fleetId: $f) { id } }", {"f": DEV_FLEET})
    assert (await api.data("query($id: ID!) { robot(id: $id) { id } }", {"id": ALPHA}))["robot"] is None
    fleet = await api.data("query($id: ID!) { fleet(id: $id) { robots { id } } }", {"id": DEV_FLEET})
    assert ALPHA not in [r["id"] for r in fleet["fleet"]["robots"]]
    floor = await api.data("query($id: ID!) { factoryFloor(id: $id) { robots { id } } }", {"id": DEV_FLOOR})
    assert floor["factoryFloor"]["robots"] == []
    task = await api.data(
        "query($id: ID!) { task(id: $id) { assignedRobots { id } runs { id } } }", {"id": PICK_TASK}
    )
    assert task["task"] == {"assignedRobots": [], "runs": []}
    assert PICK_RUN not in await ids(api, "{ runs(limit: 500) { id } }")
    assert await ids(api, "query($r: ID) { runs(robotId: $r) { id } }", {"r": ALPHA}) == []
    assert await ids(api, "query($r: ID!) { robotCommands(robotId: $r) { id } }", {"r": ALPHA}) == []
    one = await api.data("query($id: ID!) { robotCommand(id: $id) { id } }", command["sendRobotCommand"])
    assert one["robotCommand"] is None
    assert await ids(api, "query($r: ID!) { robotApiKeys(robotId: $r) { id } }", {"r": ALPHA}) == []
    assert key["createRobotApiKey"]["apiKey"]["id"]

    gone = {"r": ALPHA}
    assert await api.error_codes("query($r: ID!) { robotTelemetry(robotId: $r) { timestamp } }", gone) == [
        "NOT_FOUND"
    ]
    assert await api.error_codes(
        "mutation($r: ID!) { updateRobotStatus(robotId: $r, status: IDLE) { id } }", gone
    ) == ["NOT_FOUND"]
    assert await api.error_codes(
        "mutation($r: ID!, $f: ID!) { assignRobotToFloor(robotId: $r, floorId: $f) { id } }",
        gone | {"f": DEV_FLOOR},
    ) == ["NOT_FOUND"]
    assert await api.error_codes(
        'mutation($r: ID!) { sendRobotCommand(robotId: $r, type: "PING") { id } }', gone
    ) == ["NOT_FOUND"]


async def test_a_deleted_task_leaves_lists_its_fleet_and_its_runs(api: Api) -> None:
    before = await api.data("query($id: ID!) { fleet(id: $id) { activeTask { id } } }", {"id": DEV_FLEET})
    assert before["fleet"]["activeTask"] == {"id": PICK_TASK}

    await mark_deleted(api, "tasks", PICK_TASK)

    assert await deleted_at(api, "tasks", PICK_TASK) is not None
    assert PICK_TASK not in await ids(api, "{ tasks(limit: 500) { id } }")
    assert PICK_TASK not in await ids(
        api, "query($r: ID) { tasks(filter: {assignedRobotId: $r}) { id } }", {"r": ALPHA}
    )
    assert (await api.data("query($id: ID!) { task(id: $id) { id } }", {"id": PICK_TASK}))["task"] is None
    after = await api.data("query($id: ID!) { fleet(id: $id) { activeTask { id } } }", {"id": DEV_FLEET})
    assert after["fleet"]["activeTask"] is None
    assert await ids(api, "query($t: ID) { runs(taskId: $t) { id } }", {"t": PICK_TASK}) == []
    assert PICK_RUN not in await ids(api, "{ runs(limit: 500) { id } }")
    assert await api.error_codes("mutation($t: ID!) { cancelTask(taskId: $t) { id } }", {"t": PICK_TASK}) == [
        "NOT_FOUND"
    ]


async def test_a_deleted_edict_leaves_lists_and_the_constraints_of_fleets_and_sites(api: Api) -> None:
    await mark_deleted(api, "edicts", SPEED_EDICT)

    assert await deleted_at(api, "edicts", SPEED_EDICT) is not None
    assert SPEED_EDICT not in await ids(api, "{ edicts(limit: 500) { id } }")
    assert (await api.data("query($id: ID!) { edict(id: $id) { id } }", {"id": SPEED_EDICT}))["edict"] is None
    fleet = await api.data(
        "query($id: ID!) { fleet(id: $id) { constraints { id } } }", {"id": ASSEMBLY_FLEET}
    )
    assert SPEED_EDICT not in [e["id"] for e in fleet["fleet"]["constraints"]]
    locus = await api.data("query($id: ID!) { locus(id: $id) { constraints { id } } }", {"id": FACTORY_A})
    assert locus["locus"]["constraints"] == []
    assert await api.error_codes(
        "mutation($id: ID!) { deactivateEdict(id: $id) { id } }", {"id": SPEED_EDICT}
    ) == ["NOT_FOUND"]


async def test_a_deleted_fleet_leaves_lists_and_takes_no_more_work(api: Api) -> None:
    await mark_deleted(api, "fleets", TEST_UNITS_FLEET)

    assert await deleted_at(api, "fleets", TEST_UNITS_FLEET) is not None
    assert TEST_UNITS_FLEET not in await ids(api, "{ fleets(limit: 500) { id } }")
    assert await ids(api, "query($l: ID) { fleets(filter: {locusId: $l}) { id } }", {"l": FACTORY_SIM}) == []
    gone = {"f": TEST_UNITS_FLEET}
    assert (await api.data("query($f: ID!) { fleet(id: $f) { id } }", gone))["fleet"] is None
    window = {"start": "2026-11-01T00:00:00Z", "end": "2026-11-02T00:00:00Z"}
    bellows = "query($f: ID!, $w: TimeRange!) { bellows(fleetId: $f, timeRange: $w) { fleetId } }"
    assert await api.error_codes(bellows, gone | {"w": window}) == ["NOT_FOUND"]
    assert await api.error_codes("mutation($f: ID!) { emergencyStop(fleetId: $f) { id } }", gone) == [
        "NOT_FOUND"
    ]
    dispatched = await api.data(
        'mutation($f: ID!) { dispatchTask(fleetId: $f, input: {name: "late", type: CUSTOM}) '
        "{ errors { code } } }",
        gone,
    )
    assert [e["code"] for e in dispatched["dispatchTask"]["errors"]] == ["NOT_FOUND"]
    recalled = await api.data(
        'mutation($f: ID!) { recallFleet(fleetId: $f, toVersion: "1.0.0") { errors { code } } }', gone
    )
    assert [e["code"] for e in recalled["recallFleet"]["errors"]] == ["NOT_FOUND"]


async def test_a_fleet_with_live_robots_cannot_be_deleted(api: Api) -> None:
    """No live robot may point at a hidden fleet: the database refuses, whoever tries."""
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="still has robots"):
        await mark_deleted(api, "fleets", DEV_FLEET)
    assert await deleted_at(api, "fleets", DEV_FLEET) is None
    for robot in await ids(api, "query($f: ID) { robots(fleetId: $f) { id } }", {"f": DEV_FLEET}):
        await mark_deleted(api, "robots", robot)
    await mark_deleted(api, "fleets", DEV_FLEET)
    assert DEV_FLEET not in await ids(api, "{ fleets { id } }")


async def test_a_deleted_sepulka_and_its_ingots_disappear(api: Api) -> None:
    ingot = await api.resources.db.fetchval(
        "INSERT INTO ingots (sepulka_id, version, build_hash, status) "
        "VALUES ($1, '0.1.0', 'build_sd', 'READY') RETURNING id",
        ASSEMBLY_SEPULKA,
    )
    deleted = await api.data(
        "mutation($id: ID!) { deleteSepulka(id: $id) { success errors { code } } }", {"id": ASSEMBLY_SEPULKA}
    )
    assert deleted["deleteSepulka"] == {"success": True, "errors": None}

    assert await deleted_at(api, "sepulkas", ASSEMBLY_SEPULKA) is not None
    assert await api.resources.db.fetchval("SELECT count(*) FROM ingots WHERE id = $1", ingot) == 1
    assert ASSEMBLY_SEPULKA not in await ids(api, "{ sepulkas(limit: 500) { id } }")
    assert (await api.data("query($id: ID!) { sepulka(id: $id) { id } }", {"id": ASSEMBLY_SEPULKA}))[
        "sepulka"
    ] is None
    assert ingot not in await ids(api, "{ ingots(limit: 500) { id } }")
    assert (
        await ids(api, "query($s: ID) { ingots(filter: {sepulkaId: $s}) { id } }", {"s": ASSEMBLY_SEPULKA})
        == []
    )
    assert (await api.data("query($id: ID!) { ingot(id: $id) { id } }", {"id": ingot}))["ingot"] is None
    # Robots keep their current ingot whatever happens to other designs.
    robot = await api.data("query($id: ID!) { robot(id: $id) { currentIngot { id } } }", {"id": ALPHA})
    assert robot["robot"]["currentIngot"] == {"id": DEVBOT_INGOT}
    cast = await api.data(
        "mutation($s: ID!) { castIngot(sepulkaId: $s) { errors { code } } }", {"s": ASSEMBLY_SEPULKA}
    )
    assert [e["code"] for e in cast["castIngot"]["errors"]] == ["NOT_FOUND"]
    again = await api.data(
        "mutation($id: ID!) { deleteSepulka(id: $id) { errors { code } } }", {"id": ASSEMBLY_SEPULKA}
    )
    assert [e["code"] for e in again["deleteSepulka"]["errors"]] == ["NOT_FOUND"]


async def test_a_deleted_floor_disappears_from_lists_and_its_robots(api: Api) -> None:
    assert (await api.data("mutation($id: ID!) { deleteFactoryFloor(id: $id) }", {"id": DEV_FLOOR}))[
        "deleteFactoryFloor"
    ] is True

    assert await deleted_at(api, "factory_floors", DEV_FLOOR) is not None
    assert DEV_FLOOR not in await ids(api, "{ factoryFloors { id } }")
    gone = {"id": DEV_FLOOR}
    assert (await api.data("query($id: ID!) { factoryFloor(id: $id) { id } }", gone))["factoryFloor"] is None
    robot = await api.data("query($id: ID!) { robot(id: $id) { factoryFloor { id } } }", {"id": ALPHA})
    assert robot["robot"]["factoryFloor"] is None
    updated = await api.data(
        'mutation($id: ID!) { updateFactoryFloor(id: $id, input: {name: "x"}) { errors { code } } }', gone
    )
    assert [e["code"] for e in updated["updateFactoryFloor"]["errors"]] == ["NOT_FOUND"]
    assert await api.error_codes("mutation($id: ID!) { deleteFactoryFloor(id: $id) }", gone) == ["NOT_FOUND"]
    assert await api.error_codes(
        "mutation($r: ID!, $f: ID!) { assignRobotToFloor(robotId: $r, floorId: $f) { id } }",
        {"r": ALPHA, "f": DEV_FLOOR},
    ) == ["NOT_FOUND"]
