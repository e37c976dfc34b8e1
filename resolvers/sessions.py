"""Resolvers of sign-in and sessions: login, refreshToken, logout, mySessions, revokeSession."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, QueryType

from app import sessions
from app.context import Info

query = QueryType()
mutation = MutationType()


@query.field("mySessions")
async def resolve_my_sessions(_: Any, info: Info) -> list[dict[str, Any]]:
    viewer = await info.context.require()
    return await sessions.my_sessions(info.context, viewer)


@mutation.field("login")
async def resolve_login(_: Any, info: Info, credentials: dict) -> dict[str, Any]:
    return await sessions.login(info.context, credentials["email"], credentials["password"])


@mutation.field("refreshToken")
async def resolve_refresh_token(_: Any, info: Info, refresh_token: str) -> dict[str, Any]:
    return await sessions.refresh(info.context, refresh_token)


@mutation.field("logout")
async def resolve_logout(_: Any, info: Info) -> bool:
    viewer = await info.context.require()
    return await sessions.logout(info.context, viewer)


@mutation.field("revokeSession")
async def resolve_revoke_session(_: Any, info: Info, id: str) -> bool:
    viewer = await info.context.require()
    return await sessions.revoke(info.context, viewer, id)


bindables = [query, mutation]
