"""Tasks and runs: a queue per fleet, a lifecycle every change of which is checked, logged,
audited and streamed, robots' reports applied to runs, and schedules that create tasks.

- `rules`: the lifecycles as data, actors, the robot score's weights
- `lifecycle`: moving a task or run on a connection (transitions log, audit, events)
- `queue`: the queue and the choice of robot (SKIP LOCKED; URGENT preempts LOW)
- `reactor`: command acks, TASK_* reports, robots gone OFFLINE, timeouts -> runs and tasks
- `schedules`: one-off and cron schedules, fired exactly once
- `queries` and `mutations`: what the GraphQL API reads and does (docs/tasks.md)
"""

from __future__ import annotations

from app.tasks.mutations import cancel, clone, dispatch, reassign, update_priority
from app.tasks.queries import (
    analytics,
    get_task,
    history,
    list_runs,
    list_tasks,
    robots_by_task_id,
    runs_by_task_id,
    tasks_by_id,
    transitions_by_task_page,
    transitions_page,
)
from app.tasks.schedules import list_schedules, schedule, schedules_by_id, unschedule

__all__ = [
    "analytics",
    "cancel",
    "clone",
    "dispatch",
    "get_task",
    "history",
    "list_runs",
    "list_schedules",
    "list_tasks",
    "reassign",
    "robots_by_task_id",
    "runs_by_task_id",
    "schedule",
    "schedules_by_id",
    "tasks_by_id",
    "transitions_by_task_page",
    "transitions_page",
    "unschedule",
    "update_priority",
]
