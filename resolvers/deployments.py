"""Resolvers of schema/deployments.graphql: deployment queries, their targets, and the
`deployments` connections of Fleet and Ingot (one statement per page shape, whatever the parents)."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType, QueryType, SchemaBindable

from app import commands, deployments, fleets, ingots, robots
from app.context import Info
from app.core.validation import parse_id

query = QueryType()
deployment = ObjectType("Deployment")
target = ObjectType("DeploymentTarget")
ingot = ObjectType("Ingot")
fleet = ObjectType("Fleet")


@query.field("deployments")
async def resolve_deployments(
    _: Any,
    info: Info,
    fleet_id: str | None = None,
    ingot_id: str | None = None,
    first: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    fleet_id = parse_id(fleet_id, "fleetId") if fleet_id is not None else None
    ingot_id = parse_id(ingot_id, "ingotId") if ingot_id is not None else None
    return await deployments.list_page(info.context.db, fleet_id, ingot_id, first, after)


@query.field("deployment")
async def resolve_deployment(_: Any, info: Info, id: str) -> dict[str, Any] | None:
    return await info.context.loaders.load(deployments.deployments_by_id, parse_id(id))


def _page_key(parent: dict[str, Any], first: int | None, after: str | None) -> deployments.PageKey:
    # Checked here, before batching: one bad cursor must not fail the other parents' pages.
    size = deployments.page_size(first)
    deployments.decode_cursor(after)
    return (parent["id"], size, after)


@fleet.field("deployments")
async def resolve_fleet_deployments(
    row: dict[str, Any], info: Info, first: int | None = None, after: str | None = None
) -> dict[str, Any]:
    return await info.context.loaders.load(deployments.pages_by_fleet, _page_key(row, first, after))


@ingot.field("deployments")
async def resolve_ingot_deployments(
    row: dict[str, Any], info: Info, first: int | None = None, after: str | None = None
) -> dict[str, Any]:
    return await info.context.loaders.load(deployments.pages_by_ingot, _page_key(row, first, after))


@deployment.field("ingot")
async def resolve_ingot(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(ingots.ingots_by_id, row["ingot_id"])


@deployment.field("fleet")
async def resolve_fleet(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(fleets.fleets_by_id, row["fleet_id"])


@deployment.field("targets")
async def resolve_targets(row: dict[str, Any], info: Info) -> list[dict[str, Any]]:
    return await info.context.loaders.load(deployments.targets_by_deployment_id, row["id"])


@target.field("robot")
async def resolve_robot(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await info.context.loaders.load(robots.robots_by_id, row["robot_id"])


@target.field("fromIngot")
async def resolve_from_ingot(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    if row["from_ingot_id"] is None:
        return None
    return await info.context.loaders.load(ingots.ingots_by_id, row["from_ingot_id"])


@target.field("toIngot")
async def resolve_to_ingot(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    if row["to_ingot_id"] is None:
        return None
    return await info.context.loaders.load(ingots.ingots_by_id, row["to_ingot_id"])


@target.field("command")
async def resolve_command(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    if row["command_id"] is None:
        return None
    return await info.context.loaders.load(commands.commands_by_id, row["command_id"])


bindables: list[SchemaBindable] = [query, deployment, target, ingot, fleet]
