"""An admin readies a design, casts it and tempers the build; the worker does the building.

Stories over the real app (PostgreSQL, the build worker of the api role, the local storage):
castIngot queues a job, the worker turns the ingot READY with checksummed artifacts and a log,
and the sepulka follows (docs/builds.md). Bad input gets typed errors and changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app import builds
from app.settings import Settings
from app.workers.builds import BuildWorker
from tests.seed_ids import (
    ASSEMBLY_SEPULKA,
    DEVBOT_INGOT,
    DEVBOT_SEPULKA,
    GRIPPER,
    SERVO,
    TEST_ID,
    WAREHOUSE_SEPULKA,
)
from tests.support import DEMO, Api, eventually

CAST = """
mutation($id: ID!) { castIngot(sepulkaId: $id) { ingot { id version status } errors { code message field } } }
"""
INGOT = """
query($id: ID!) {
  ingot(id: $id) {
    id version status buildLogs tempered
    artifacts { type path size checksum }
    temperResults { metrics improvements recommendations optimizedParameters }
  }
}
"""
SEPULKA_STATUS = "query($id: ID!) { sepulka(id: $id) { status ingots { version status } } }"
UPDATE = """
mutation($id: ID!, $input: UpdateSepulkaInput!) {
  updateSepulka(id: $id, input: $input) {
    sepulka { id name status parameters alloys { id } }
    errors { code field }
  }
}
"""
READY = """
mutation($id: ID!) { markSepulkaCastReady(id: $id) { sepulka { status } errors { code message field } } }
"""
TEMPER = """
mutation($id: ID!, $input: TemperInput!) {
  temperIngot(ingotId: $id, input: $input) { ingot { id status } results { metrics } errors { code field } }
}
"""


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    """The app with a build worker polling every 50 ms."""
    async with Api.running(settings.replace(build_poll_s=0.05)) as running:
        yield running


async def ingot(api: Api, ingot_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await api.data(INGOT, {"id": ingot_id}))["ingot"]
    return result


async def settled(api: Api, ingot_id: str, *statuses: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        found = await ingot(api, ingot_id)
        return found if found["status"] in statuses else None

    result: dict[str, Any] = await eventually(check, within=60, what=f"ingot {ingot_id} in {statuses}")
    return result


async def test_a_cast_ingot_is_built_by_the_worker_into_checksummed_artifacts_with_a_log(api: Api) -> None:
    """Given the CAST_READY WarehouseWorker-Demo, when its creator casts it, the worker builds
    1.0.1: manifest, URDF and firmware stored with their sha256, a timestamped log, the ingot
    READY and the sepulka READY."""
    payload = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}, as_=DEMO))["castIngot"]
    assert payload["errors"] is None
    assert payload["ingot"]["status"] == "BUILDING"

    built = await settled(api, payload["ingot"]["id"], "READY", "BUILD_FAILED")
    assert built["status"] == "READY"
    assert [a["type"] for a in built["artifacts"]] == ["manifest", "urdf", "firmware"]
    storage = api.resources.storage
    for artifact in built["artifacts"]:
        data = await storage.get(artifact["path"])
        assert artifact["checksum"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
        assert artifact["size"] == len(data) > 0
    manifest = (await storage.get(built["artifacts"][0]["path"])).decode()
    assert '"version": "1.0.1"' in manifest and "WarehouseWorker-Demo" in manifest
    assert built["buildLogs"][0] == "Build queued"
    assert built["buildLogs"][-1].endswith("Build complete")
    assert any("firmware.bin" in line and "sha256:" in line for line in built["buildLogs"])
    sepulka = (await api.data(SEPULKA_STATUS, {"id": WAREHOUSE_SEPULKA}))["sepulka"]
    assert sepulka["status"] == "READY"
    job = await api.resources.db.fetchrow(
        "SELECT state, attempts FROM build_jobs WHERE ingot_id = $1", built["id"]
    )
    assert (job["state"], job["attempts"]) == ("SUCCEEDED", 1)


async def test_a_design_outside_its_patterns_ranges_fails_to_build_and_says_why(api: Api) -> None:
    db = api.resources.db
    # Mobile Base's maxSpeed is 0.1..3.0; a value set before the pattern tightened its range.
    await db.execute("UPDATE sepulkas SET parameters = '{\"maxSpeed\": 9}' WHERE id = $1", WAREHOUSE_SEPULKA)
    payload = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}))["castIngot"]
    failed = await settled(api, payload["ingot"]["id"], "READY", "BUILD_FAILED")
    assert failed["status"] == "BUILD_FAILED"
    assert failed["artifacts"] == []
    assert "Build failed: parameter maxSpeed=9 is outside 0.1..3.0" in failed["buildLogs"][-1]
    assert (await api.data(SEPULKA_STATUS, {"id": WAREHOUSE_SEPULKA}))["sepulka"]["status"] == "CAST_FAILED"


async def test_an_edited_design_is_forged_again_then_readied_and_cast(api: Api) -> None:
    """Editing a READY design returns it to FORGING; marking it ready checks it; a cast builds it."""
    edited = (
        await api.data(UPDATE, {"id": DEVBOT_SEPULKA, "input": {"parameters": {"reach": 2.0, "payload": 20}}})
    )["updateSepulka"]
    assert edited["errors"] is None
    assert (edited["sepulka"]["status"], edited["sepulka"]["parameters"]["reach"]) == ("FORGING", 2.0)
    refused = (await api.data(CAST, {"id": DEVBOT_SEPULKA}))["castIngot"]
    assert refused["errors"][0]["code"] == "CONFLICT"

    ready = (await api.data(READY, {"id": DEVBOT_SEPULKA}))["markSepulkaCastReady"]
    assert ready == {"sepulka": {"status": "CAST_READY"}, "errors": None}
    cast = (await api.data(CAST, {"id": DEVBOT_SEPULKA}))["castIngot"]
    assert cast["ingot"]["version"] == "1.0.1"
    built = await settled(api, cast["ingot"]["id"], "READY", "BUILD_FAILED")
    assert built["status"] == "READY"
    # A design being cast cannot be edited; once built it can.
    db = api.resources.db
    assert await db.fetchval("SELECT status::text FROM sepulkas WHERE id = $1", DEVBOT_SEPULKA) == "READY"
    audit = await db.fetch("SELECT action FROM audit_logs WHERE resource_id = $1 ORDER BY id", DEVBOT_SEPULKA)
    assert [a["action"] for a in audit] == ["updateSepulka", "markSepulkaCastReady"]


async def test_bad_edits_and_incomplete_designs_get_typed_errors_and_change_nothing(api: Api) -> None:
    db = api.resources.db
    alloys_sql = "SELECT alloy_id FROM sepulka_alloys WHERE sepulka_id = $1 ORDER BY alloy_id"
    before = dict(await db.fetchrow("SELECT * FROM sepulkas WHERE id = $1", DEVBOT_SEPULKA))
    alloys_before = await db.fetch(alloys_sql, DEVBOT_SEPULKA)

    async def update_errors(input: dict[str, Any]) -> list[tuple[str, str]]:
        payload = (await api.data(UPDATE, {"id": DEVBOT_SEPULKA, "input": input}))["updateSepulka"]
        return [(e["code"], e["field"]) for e in payload["errors"]]

    assert await update_errors({"name": " "}) == [("BAD_USER_INPUT", "name")]
    assert await update_errors({"alloyIds": []}) == [("BAD_USER_INPUT", "alloyIds")]
    assert await update_errors({"alloyIds": ["20000000-0000-4000-8000-0000000000ff"]}) == [
        ("NOT_FOUND", "alloyIds")
    ]
    assert await update_errors({"parameters": [1, 2]}) == [("BAD_USER_INPUT", "parameters")]
    assert await api.error_codes(UPDATE, {"id": "nope", "input": {}}) == ["BAD_USER_INPUT"]
    # AssemblyBot-Test (by test@) is not the admin's, but an ADMIN may edit any design; an
    # over-smith holds no EDIT_SEPULKA.
    smith = await api.create_smith("editor@sepulki.com", "OVER_SMITH")
    assert await api.error_codes(UPDATE, {"id": ASSEMBLY_SEPULKA, "input": {"name": "x"}}, as_=smith) == [
        "FORBIDDEN"
    ]
    after = dict(await db.fetchrow("SELECT * FROM sepulkas WHERE id = $1", DEVBOT_SEPULKA))
    assert after == before
    assert await db.fetch(alloys_sql, DEVBOT_SEPULKA) == alloys_before
    assert await db.fetchval("SELECT count(*) FROM audit_logs WHERE action = 'updateSepulka'") == 0

    # Readiness repeats the build's checks: out-of-range parameters are refused, nothing moves.
    await db.execute("UPDATE sepulkas SET parameters = '{\"reach\": 7}' WHERE id = $1", ASSEMBLY_SEPULKA)
    refused = (await api.data(READY, {"id": ASSEMBLY_SEPULKA}))["markSepulkaCastReady"]
    assert refused["errors"] == [
        {"code": "BAD_USER_INPUT", "message": "parameter reach=7 is outside 0.5..3.0", "field": "parameters"}
    ]
    await db.execute("DELETE FROM sepulka_alloys WHERE sepulka_id = $1", ASSEMBLY_SEPULKA)
    empty = (await api.data(READY, {"id": ASSEMBLY_SEPULKA}))["markSepulkaCastReady"]
    assert [(e["code"], e["field"]) for e in empty["errors"]] == [("BAD_USER_INPUT", "alloyIds")]
    assert await db.fetchval("SELECT status::text FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA) == "FORGING"
    await db.execute("UPDATE sepulkas SET status = 'CASTING' WHERE id = $1", DEVBOT_SEPULKA)
    assert await update_errors({"name": "Renamed"}) == [("CONFLICT", "id")]


async def test_tempering_searches_the_patterns_ranges_and_records_the_results(api: Api) -> None:
    """DevBot-001's READY build, tempered for short cycles within an energy budget: the worker
    records metrics, improvements, recommendations and parameters inside the pattern's ranges."""
    goals = {
        "goals": [
            {"metric": "cycleTime", "target": "MINIMIZE", "weight": 2},
            {"metric": "accuracy", "target": "maximize"},
        ],
        "constraints": {"energyPerCycle": {"max": 25}},
    }
    payload = await api.data(
        TEMPER, {"id": DEVBOT_INGOT, "input": goals}, as_=("test@sepulki.com", "test123")
    )
    started = payload["temperIngot"]
    assert started["errors"] is None and started["results"] is None
    assert started["ingot"]["status"] == "TEMPERING"

    tempered = await settled(api, DEVBOT_INGOT, "TEMPERED", "TEMPER_FAILED")
    assert (tempered["status"], tempered["tempered"]) == ("TEMPERED", True)
    results = tempered["temperResults"]
    assert results["metrics"]["energyPerCycle"] <= 25
    assert results["improvements"]["cycleTime"]["after"] <= results["improvements"]["cycleTime"]["before"]
    chosen = results["optimizedParameters"]
    assert 0.5 <= chosen["reach"] <= 3.0 and 1 <= chosen["payload"] <= 50
    assert results["recommendations"]
    assert "Tempering complete" in tempered["buildLogs"][-1]
    audit = await api.resources.db.fetchrow("SELECT * FROM audit_logs WHERE action = 'temperIngot'")
    assert (audit["smith_id"], audit["resource_id"]) == (TEST_ID, DEVBOT_INGOT)


async def test_tempering_that_no_parameters_can_satisfy_fails_and_keeps_the_old_results(api: Api) -> None:
    goals = {
        "goals": [{"metric": "accuracy", "target": "MAXIMIZE"}],
        "constraints": {"accuracy": {"min": 100}},
    }
    await api.data(TEMPER, {"id": DEVBOT_INGOT, "input": goals})
    failed = await settled(api, DEVBOT_INGOT, "TEMPERED", "TEMPER_FAILED")
    assert (failed["status"], failed["tempered"], failed["temperResults"]) == ("TEMPER_FAILED", False, None)
    assert "no parameters within the pattern's ranges satisfy" in failed["buildLogs"][-1]


async def test_bad_temper_requests_get_typed_errors_and_queue_nothing(api: Api) -> None:
    db = api.resources.db

    async def errors(ingot_id: str, input: dict[str, Any]) -> list[tuple[str, str | None]]:
        payload = (await api.data(TEMPER, {"id": ingot_id, "input": input}))["temperIngot"]
        return [(e["code"], e["field"]) for e in payload["errors"] or []]

    minimize = [{"metric": "cycleTime", "target": "MINIMIZE"}]
    assert await errors(DEVBOT_INGOT, {"goals": []}) == [("BAD_USER_INPUT", "input.goals")]
    assert await errors(DEVBOT_INGOT, {"goals": [{"metric": "cycleTime", "target": "soon"}]}) == [
        ("BAD_USER_INPUT", "input.goals")
    ]
    assert await errors(DEVBOT_INGOT, {"goals": [{**minimize[0], "weight": -1}]}) == [
        ("BAD_USER_INPUT", "weight")
    ]
    assert await errors(DEVBOT_INGOT, {"goals": minimize, "constraints": {"fun": {"max": 1}}}) == [
        ("BAD_USER_INPUT", "input.constraints")
    ]
    assert await errors("60000000-0000-4000-8000-0000000000ff", {"goals": minimize}) == [("NOT_FOUND", None)]
    await db.execute("UPDATE ingots SET status = 'BUILDING' WHERE id = $1", DEVBOT_INGOT)
    assert await errors(DEVBOT_INGOT, {"goals": minimize}) == [("CONFLICT", "ingotId")]
    assert await db.fetchval("SELECT count(*) FROM build_jobs") == 0
    assert await db.fetchval("SELECT status::text FROM ingots WHERE id = $1", DEVBOT_INGOT) == "BUILDING"


async def test_two_workers_share_a_queue_without_running_any_job_twice(settings: Settings) -> None:
    """Six casts, two workers claiming at once: every job runs exactly once (SKIP LOCKED)."""
    async with Api.running(settings.replace(build_poll_s=60)) as api:
        db = api.resources.db
        ids = []
        for n in range(6):
            sepulka = await db.fetchval(
                "INSERT INTO sepulkas (name, pattern_id, status, created_by) "
                "SELECT 'Batch ' || $1::text, pattern_id, 'CAST_READY', created_by "
                "FROM sepulkas WHERE id = $2 "
                "RETURNING id",
                str(n),
                WAREHOUSE_SEPULKA,
            )
            await db.execute(
                "INSERT INTO sepulka_alloys (sepulka_id, alloy_id) VALUES ($1, $2), ($1, $3)",
                sepulka,
                SERVO,
                GRIPPER,
            )
            ids.append((await api.data(CAST, {"id": sepulka}))["castIngot"]["ingot"]["id"])
        first, second = BuildWorker(api.resources), BuildWorker(api.resources)
        await asyncio.gather(first.once(), second.once(), first.once(), second.once())
        await first.conn.close()
        await second.conn.close()
        assert first.finished + second.finished == 6
        jobs = await db.fetch("SELECT state, attempts FROM build_jobs WHERE ingot_id = ANY($1::uuid[])", ids)
        assert [(j["state"], j["attempts"]) for j in jobs] == [("SUCCEEDED", 1)] * 6
        statuses = await db.fetch("SELECT status::text AS s FROM ingots WHERE id = ANY($1::uuid[])", ids)
        assert {r["s"] for r in statuses} == {"READY"}


async def test_a_job_whose_worker_died_runs_again_and_gives_up_after_the_attempt_limit(
    settings: Settings,
) -> None:
    async with Api.running(settings.replace(build_poll_s=60, build_max_attempts=2, build_lease_s=1)) as api:
        db = api.resources.db
        cast = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}))["castIngot"]["ingot"]
        # A worker claimed the job and died: its lease runs out.
        async with db.acquire() as conn:
            (claimed,) = await builds.claim(conn, 1, 10)
        assert claimed["attempts"] == 1
        await db.execute("UPDATE build_jobs SET lease_until = now() - interval '1 second'")
        worker = BuildWorker(api.resources)
        assert await worker.once() == 1  # run again, second attempt, and built
        assert (await ingot(api, cast["id"]))["status"] == "READY"
        # The dead worker's late finish changes nothing: it no longer holds the lease.
        assert await builds.run_build(db, api.resources.storage, claimed) is False

        await db.execute("UPDATE sepulkas SET status = 'CAST_READY' WHERE id = $1", WAREHOUSE_SEPULKA)
        again = (await api.data(CAST, {"id": WAREHOUSE_SEPULKA}))["castIngot"]["ingot"]
        for _ in range(2):
            async with db.acquire() as conn:
                await builds.claim(conn, 1, 10)
            await db.execute(
                "UPDATE build_jobs SET lease_until = now() - interval '1 second' WHERE state = 'RUNNING'"
            )
        await worker.once()  # third claim: over the limit of 2
        await worker.conn.close()
        gave_up = await ingot(api, again["id"])
        assert gave_up["status"] == "BUILD_FAILED"
        assert gave_up["buildLogs"][-1].endswith("Gave up after 2 interrupted runs")
        assert (
            await db.fetchval("SELECT status::text FROM sepulkas WHERE id = $1", WAREHOUSE_SEPULKA)
            == "CAST_FAILED"
        )
