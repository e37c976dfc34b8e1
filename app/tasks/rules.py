"""The task and run lifecycles as data, who moved a task (an `Actor`), and the robot score.

    task: PENDING -> ASSIGNED -> IN_PROGRESS -> COMPLETED | FAILED; CANCELLED from any open state
          ASSIGNED | IN_PROGRESS -> ASSIGNED   (reassigned to another robot)
          ASSIGNED | IN_PROGRESS -> PENDING    (requeued: its run failed and is retried, it was
                                                preempted, or its robot went OFFLINE)
          ASSIGNED -> FAILED                   (its last allowed run failed before starting)
    run:  PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED; PENDING -> FAILED | CANCELLED

Anything else is a CONFLICT and changes nothing (docs/tasks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.core.errors import Conflict

OPEN = ("PENDING", "ASSIGNED", "IN_PROGRESS")
ENDED = ("COMPLETED", "FAILED", "CANCELLED")
OPEN_RUN = ("PENDING", "RUNNING")

TASK_TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"PENDING"}),
    "PENDING": frozenset({"ASSIGNED", "CANCELLED"}),
    "ASSIGNED": frozenset({"IN_PROGRESS", "ASSIGNED", "PENDING", "FAILED", "CANCELLED"}),
    "IN_PROGRESS": frozenset({"COMPLETED", "FAILED", "ASSIGNED", "PENDING", "CANCELLED"}),
}
RUN_TRANSITIONS: dict[str, frozenset[str]] = {
    "PENDING": frozenset({"RUNNING", "FAILED", "CANCELLED"}),
    "RUNNING": frozenset({"COMPLETED", "FAILED", "CANCELLED"}),
}

# Robot reports on robots/{id}/events that move runs (docs/mqtt-contract.md).
PROGRESS = "TASK_PROGRESS"
COMPLETED = "TASK_COMPLETED"
FAILED = "TASK_FAILED"
REPORTS = (PROGRESS, COMPLETED, FAILED)

# Robot score weights (docs/tasks.md): among eligible robots IDLE ones come first; then
# battery and health raise the score, recent load and distance to the task's location lower it.
W_BATTERY, W_HEALTH, W_LOAD, W_DISTANCE = 0.4, 0.3, 0.1, 0.2
LOAD_CAP = 10  # runs in the last hour at which the load term is full
DISTANCE_CAP_M = 50.0  # metres at which the distance term is full


def check_task(current: str | None, to: str) -> None:
    if to not in TASK_TRANSITIONS.get(current, frozenset()):
        if current in ENDED:
            raise Conflict(f"Task is already {current}")
        raise Conflict(f"A {current} task cannot become {to}")


def check_run(current: str, to: str) -> None:
    if to not in RUN_TRANSITIONS.get(current, frozenset()):
        raise Conflict(f"A {current} run cannot become {to}")


def target_location(parameters: Any) -> tuple[float | None, float | None]:
    """The task's floor location `parameters.location {x, y}` (metres), when it names one."""
    location = parameters.get("location") if isinstance(parameters, dict) else None
    if not isinstance(location, dict):
        return None, None
    x, y = location.get("x"), location.get("y")
    if (
        isinstance(x, int | float)
        and isinstance(y, int | float)
        and not isinstance(x, bool)
        and not isinstance(y, bool)
    ):
        return float(x), float(y)
    return None, None


@dataclass(frozen=True, slots=True)
class Actor:
    """Who moved a task: a smith (through a mutation), a robot (its acks and reports) or the
    system (dispatcher, scheduler, timeouts)."""

    type: str
    smith_id: str | None = None
    robot_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None


SYSTEM = Actor("SYSTEM")


def robot_actor(robot_id: str) -> Actor:
    return Actor("ROBOT", robot_id=robot_id)
