"""An operator schedules tasks: a cron schedule fires each occurrence exactly once with several
workers running, keeps its next run visible, and goes on after the service restarts; a one-off
fires once and stops. Bad schedules are refused and create nothing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from app.settings import Settings
from app.workers.tasks import task_worker
from tests.seed_ids import TEST_UNITS_FLEET
from tests.support import DEMO, Api, eventually

SCHEDULE = """
mutation($input: ScheduledTaskInput!) {
  scheduleTask(input: $input) { id cron runAt nextRunAt lastRunAt fired active createdBy { email } }
}
"""
SCHEDULES = "query($fleet: ID) { scheduledTasks(fleetId: $fleet) { id nextRunAt fired active } }"
UNSCHEDULE = "mutation($id: ID!) { unscheduleTask(id: $id) { id active nextRunAt } }"


def task_input(**extra: Any) -> dict[str, Any]:
    # The test fleet has no robots, so created tasks stay PENDING where the test can count them.
    return {"fleetId": TEST_UNITS_FLEET, "name": "Sweep", "type": "PATROL", **extra}


async def occurrences(api: Api, schedule_id: str) -> list[datetime]:
    rows = await api.resources.db.fetch(
        "SELECT scheduled_for FROM tasks WHERE scheduled_task_id = $1 ORDER BY scheduled_for", schedule_id
    )
    return [r["scheduled_for"] for r in rows]


@contextlib.asynccontextmanager
async def extra_workers(api: Api, n: int) -> AsyncIterator[None]:
    """More task workers on the same database, as other worker processes would be."""
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(n):
            await stack.enter_async_context(task_worker(api.resources))
        yield


async def test_a_cron_schedule_fires_each_occurrence_once_with_three_workers_and_after_a_restart(
    settings: Settings,
) -> None:
    fast = settings.replace(task_worker_interval_s=0.1)
    async with Api.running(fast) as api:
        created = await api.data(SCHEDULE, {"input": task_input(cron="* * * * * */2")}, as_=DEMO)
        schedule = created["scheduleTask"]
        assert schedule["active"] is True and schedule["createdBy"] == {"email": "demo@sepulki.com"}
        assert datetime.fromisoformat(schedule["nextRunAt"]) > datetime.now(UTC)
        async with extra_workers(api, 2):
            fired = await eventually(lambda: _at_least(api, schedule["id"], 3), 20, "three occurrences")
    # Each occurrence is one task, two seconds apart, and the count matches the schedule's own.
    assert len(set(fired)) == len(fired)
    assert all((b - a) == timedelta(seconds=2) for a, b in zip(fired, fired[1:], strict=False))
    async with Api.running(fast) as api:
        before = len(await occurrences(api, schedule["id"]))
        [listed] = (await api.data(SCHEDULES, {"fleet": TEST_UNITS_FLEET}))["scheduledTasks"]
        assert listed["active"] is True and listed["nextRunAt"] is not None
        after = await eventually(
            lambda: _at_least(api, schedule["id"], before + 1), 20, "fires after restart"
        )
        assert len(set(after)) == len(after)
        stopped = (await api.data(UNSCHEDULE, {"id": schedule["id"]}))["unscheduleTask"]
        assert stopped == {"id": schedule["id"], "active": False, "nextRunAt": None}
        count = len(await occurrences(api, schedule["id"]))
        await asyncio.sleep(2.5)
        assert len(await occurrences(api, schedule["id"])) == count
        fired_count = await api.resources.db.fetchval(
            "SELECT fired FROM scheduled_tasks WHERE id = $1", schedule["id"]
        )
        assert fired_count == count


async def _at_least(api: Api, schedule_id: str, n: int) -> list[datetime] | None:
    found = await occurrences(api, schedule_id)
    return found if len(found) >= n else None


async def test_a_one_off_schedule_fires_once_then_stops(settings: Settings) -> None:
    async with Api.running(settings.replace(task_worker_interval_s=0.1)) as api:
        when = datetime.now(UTC) + timedelta(seconds=1)
        schedule = (await api.data(SCHEDULE, {"input": task_input(runAt=when.isoformat())}))["scheduleTask"]
        assert schedule["cron"] is None and datetime.fromisoformat(schedule["nextRunAt"]) == when
        async with extra_workers(api, 1):
            [fired] = await eventually(lambda: _at_least(api, schedule["id"], 1), 20, "the one-off")
            await asyncio.sleep(0.5)
        assert fired == when
        assert len(await occurrences(api, schedule["id"])) == 1
        [listed] = (await api.data(SCHEDULES, {"fleet": TEST_UNITS_FLEET}))["scheduledTasks"]
        assert listed == {"id": schedule["id"], "nextRunAt": None, "fired": 1, "active": False}
        status = await api.resources.db.fetchval(
            "SELECT status::text FROM tasks WHERE scheduled_task_id = $1", schedule["id"]
        )
        assert status == "PENDING"


async def test_bad_schedules_are_refused_and_create_nothing(api: Api) -> None:
    cases = [
        (task_input(), "cron"),  # neither
        (task_input(cron="* * * * *", runAt=datetime.now(UTC).isoformat()), "cron"),  # both
        (task_input(cron="every tuesday"), "cron"),
        (task_input(cron="61 * * * *"), "cron"),
        (task_input(cron="0 6 * * *", timezone="Mars/Olympus"), "timezone"),
        (task_input(cron="0 6 * * *", name="  "), "name"),
        (task_input(cron="0 6 * * *", fleetId="fleet-1"), "fleetId"),
    ]
    for variables, field in cases:
        body = await api.execute(SCHEDULE, {"input": variables})
        [error] = body["errors"]
        assert (error["extensions"]["code"], error["extensions"].get("field")) == ("BAD_USER_INPUT", field), (
            variables
        )
    unknown = task_input(cron="0 6 * * *", fleetId="40000000-0000-4000-8000-000000000099")
    assert await api.error_codes(SCHEDULE, {"input": unknown}) == ["NOT_FOUND"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM scheduled_tasks") == 0
    assert await api.error_codes(UNSCHEDULE, {"id": "40000000-0000-4000-8000-000000000099"}) == ["NOT_FOUND"]
