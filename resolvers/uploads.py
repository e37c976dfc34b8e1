"""Resolvers of schema/uploads.graphql: uploadProgram and uploadRoute (multipart file uploads)."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType

from app import uploads
from app.context import Info

mutation = MutationType()


@mutation.field("uploadProgram")
async def resolve_upload_program(
    _: Any, info: Info, file: Any, robot_id: str | None = None, fleet_id: str | None = None
) -> dict[str, Any]:
    robot_id, fleet_id = uploads.check_target(robot_id, fleet_id)
    viewer = await info.context.require()
    return await uploads.upload_program(info.context, viewer, robot_id, fleet_id, file)


@mutation.field("uploadRoute")
async def resolve_upload_route(
    _: Any, info: Info, file: Any, robot_id: str | None = None, fleet_id: str | None = None
) -> dict[str, Any]:
    robot_id, fleet_id = uploads.check_target(robot_id, fleet_id)
    viewer = await info.context.require()
    return await uploads.upload_route(info.context, viewer, robot_id, fleet_id, file)


bindables = [mutation]
