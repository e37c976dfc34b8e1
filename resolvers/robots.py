"""Resolvers of schema/robots.graphql: robot queries, derived fields (pose, mobility) and updates."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SubscriptionType

from app import fleets, floors, ingots, maintenance, robot_setup, robot_status, robots
from app.context import Info
from app.core.channels import channels
from app.core.validation import page, parse_id
from app.realtime.streams import Event, resolve_event, resolve_event_id, subscription_source

query = QueryType()
mutation = MutationType()
robot_type = ObjectType("Robot")
subscription = SubscriptionType()


@query.field("robots")
async def resolve_robots(
    _: Any,
    info: Info,
    fleet_id: str | None = None,
    status: str | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    fleet_id = parse_id(fleet_id, "fleetId") if fleet_id is not None else None
    return await robots.list_robots(info.context.db, fleet_id, status, limit, offset)


@query.field("robot")
async def resolve_robot(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(robots.robots_by_id, parse_id(id))


@mutation.field("updateRobotStatus")
async def resolve_update_robot_status(_: Any, info: Info, robot_id: str, status: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await robots.update_status(info.context, viewer, parse_id(robot_id, "robotId"), status)


@mutation.field("updateRobotLocation")
async def resolve_update_robot_location(
    _: Any, info: Info, robot_id: str, coordinates: dict
) -> dict[str, Any]:
    viewer = await info.context.require()
    return await robots.update_location(info.context, viewer, parse_id(robot_id, "robotId"), coordinates)


@mutation.field("updateRobotMobility")
async def resolve_update_robot_mobility(_: Any, info: Info, robot_id: str, is_mobile: bool) -> dict[str, Any]:
    viewer = await info.context.require()
    return await robots.update_mobility(info.context, viewer, parse_id(robot_id, "robotId"), is_mobile)


@mutation.field("registerRobot")
async def resolve_register_robot(_: Any, info: Info, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    ingot = input.get("ingot_id")
    ids = {
        "fleet": parse_id(input["fleet_id"], "input.fleetId"),
        "sepulka": parse_id(input["sepulka_id"], "input.sepulkaId"),
        "ingot": parse_id(ingot, "input.ingotId") if ingot is not None else None,
    }
    return await robot_setup.register(info.context, viewer, input, ids)


@mutation.field("updateRobotFirmware")
async def resolve_update_robot_firmware(_: Any, info: Info, robot_id: str, version: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await robot_setup.update_firmware(info.context, viewer, parse_id(robot_id, "robotId"), version)


@mutation.field("calibrateRobot")
async def resolve_calibrate_robot(_: Any, info: Info, robot_id: str, parameters: Any) -> dict[str, Any]:
    viewer = await info.context.require()
    return await robot_setup.calibrate(info.context, viewer, parse_id(robot_id, "robotId"), parameters)


@robot_type.field("networkStatus")
def resolve_network_status(robot: dict, info: Info) -> dict[str, Any]:
    return robot_status.network_view(robot, info.context.resources.settings.robot_offline_after_s)


@robot_type.field("statusHistory")
async def resolve_status_history(robot: dict, info: Info, limit: int = 20) -> list[dict[str, Any]]:
    size = robot_status.check_size(limit, "limit")
    return await info.context.loaders.load(robot_status.history_by_robot_id, (robot["id"], size))


@robot_type.field("upcomingMaintenance")
async def resolve_upcoming_maintenance(robot: dict, info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(maintenance.open_by_robot_id, robot["id"])


@robot_type.field("nextMaintenance")
async def resolve_next_maintenance(robot: dict, info: Info) -> dict[str, Any] | None:
    upcoming = await info.context.loaders.load(maintenance.open_by_robot_id, robot["id"])
    return upcoming[0] if upcoming else None


@robot_type.field("maintenanceSchedules")
async def resolve_maintenance_schedules(robot: dict, info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(maintenance.schedules_by_robot_id, robot["id"])


@robot_type.field("currentIngot")
async def resolve_current_ingot(robot: dict, info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(ingots.ingots_by_id, robot["current_ingot_id"])


@robot_type.field("factoryFloor")
async def resolve_factory_floor(robot: dict, info: Info) -> dict[str, Any] | None:
    if robot["factory_floor_id"] is None:
        return None
    return await info.context.loaders.load(floors.floors_by_id, robot["factory_floor_id"])


@robot_type.field("pose")
async def resolve_pose(robot: dict, info: Info) -> dict[str, Any] | None:
    # Without a geo-referenced locus a local pose cannot be placed on the globe.
    if not robot["last_pose"]:
        return None
    fleet = await info.context.loaders.load(fleets.fleets_by_id, robot["fleet_id"])
    locus = fleet and await info.context.loaders.load(fleets.loci_by_id, fleet["locus_id"])
    origin = locus and locus["coordinates"]
    if not origin or origin.get("latitude") is None or origin.get("longitude") is None:
        return None
    return robots.pose_view(robot["last_pose"], origin, robot["last_seen"])


@robot_type.field("isMobile")
async def resolve_is_mobile(robot: dict, info: Info) -> bool | None:
    if robot["is_mobile"] is not None:
        return bool(robot["is_mobile"])
    category = await info.context.loaders.load(robots.pattern_category_by_sepulka_id, robot["sepulka_id"])
    return robots.mobility_from_category(category)


# A plain function, not an async generator: a malformed id or `after` is refused at subscribe time.
@subscription.source("robotStatus")
def robot_status_source(
    _: Any, info: Info, robot_id: str | None = None, after: str | None = None
) -> AsyncGenerator[Event, None]:
    if robot_id is None:
        return subscription_source(info, channels.ROBOT_STATUS_ALL, after)
    return subscription_source(info, channels.robot_status(parse_id(robot_id, "robotId")), after)


subscription.set_field("robotStatus", resolve_event)


robot_type.set_field("eventId", resolve_event_id)

bindables = [query, mutation, robot_type, subscription]
