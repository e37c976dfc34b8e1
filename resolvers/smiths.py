"""Login, sessions and the signed-in smith."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, QueryType
from graphql import GraphQLResolveInfo

from app import sessions, smiths

query = QueryType()
mutation = MutationType()


@query.field("me")
async def resolve_me(_: Any, info: GraphQLResolveInfo) -> dict[str, Any] | None:
    viewer = await info.context.require()
    return await smiths.me(info.context, viewer)


@query.field("mySessions")
async def resolve_my_sessions(_: Any, info: GraphQLResolveInfo) -> list[dict[str, Any]]:
    viewer = await info.context.require()
    return await sessions.my_sessions(info.context, viewer)


@mutation.field("login")
async def resolve_login(_: Any, info: GraphQLResolveInfo, credentials: dict) -> dict[str, Any]:
    return await sessions.login(info.context, credentials["email"], credentials["password"])


@mutation.field("refreshToken")
async def resolve_refresh_token(_: Any, info: GraphQLResolveInfo, refresh_token: str) -> dict[str, Any]:
    return await sessions.refresh(info.context, refresh_token)


@mutation.field("logout")
async def resolve_logout(_: Any, info: GraphQLResolveInfo) -> bool:
    viewer = await info.context.require()
    return await sessions.logout(info.context, viewer)


@mutation.field("revokeSession")
async def resolve_revoke_session(_: Any, info: GraphQLResolveInfo, id: str) -> bool:
    viewer = await info.context.require()
    return await sessions.revoke(info.context, viewer, id)


bindables = [query, mutation]
