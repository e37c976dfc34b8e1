"""Program and route uploads: argument checks, then an explicit NOT_IMPLEMENTED answer.

Storing files and turning them into tasks is not built yet; answering a typed error keeps clients
from mistaking a stub for success (the reference pretended to accept them).
"""

from __future__ import annotations

from typing import Any

from app.core.errors import Invalid, NotImplementedYet
from app.core.validation import parse_id


def _check_target(robot_id: str | None, fleet_id: str | None) -> None:
    if robot_id is None and fleet_id is None:
        raise Invalid("robotId or fleetId is required", field="robotId")
    if robot_id is not None:
        parse_id(robot_id, "robotId")
    if fleet_id is not None:
        parse_id(fleet_id, "fleetId")


async def upload_program(robot_id: str | None, fleet_id: str | None, upload: Any) -> dict[str, Any]:
    _check_target(robot_id, fleet_id)
    raise NotImplementedYet("uploadProgram is not implemented yet")


async def upload_route(robot_id: str | None, fleet_id: str | None, upload: Any) -> dict[str, Any]:
    _check_target(robot_id, fleet_id)
    raise NotImplementedYet("uploadRoute is not implemented yet")
