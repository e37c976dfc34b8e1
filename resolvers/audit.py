"""Resolvers of schema/audit.graphql: the audit trail as a Relay connection."""

from __future__ import annotations

from typing import Any

from ariadne import ObjectType, QueryType, SchemaBindable

from app import audit
from app.context import Info
from app.smiths import smiths_by_id

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
    if row["smith_id"] is None:
        return None
    smith: dict[str, Any] | None = await info.context.loaders.load(smiths_by_id, row["smith_id"])
    return smith


bindables: list[SchemaBindable] = [query, audit_log]
