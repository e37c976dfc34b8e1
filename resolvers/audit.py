"""Resolvers of schema/audit.graphql: the audit trail as a Relay connection."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType, QueryType, SchemaBindable

from app import audit, smiths
from app.context import Info

query = QueryType()
audit_log = ObjectType("AuditLog")


@query.field("auditLogs")
async def resolve_audit_logs(
    _: Any,
    info: Info,
    first: int | None = None,
    after: str | None = None,
    filter: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return await audit.connection(info.context.db, first, after, filter)


@audit_log.field("smith")
async def resolve_smith(row: dict[str, Any], info: Info) -> dict[str, Any] | None:
    return await smiths.smith_or_none(info.context, row["smith_id"])


bindables: list[SchemaBindable] = [query, audit_log]
