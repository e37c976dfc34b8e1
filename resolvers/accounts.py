"""Sign-up, password reset and change, profiles, and admin controls over smiths."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType, SchemaBindable

from app import accounts, smith_admin
from app.context import Info
from app.core.errors import payload
from app.core.validation import page
from app.smiths import smiths_by_id

query = QueryType()
mutation = MutationType()
invitation_type = ObjectType("Invitation")


@query.field("smiths")
async def resolve_smiths(
    _: Any, info: Info, limit: int | None = None, offset: int | None = None
) -> list[dict[str, Any]]:
    limit, offset = page(limit, offset)
    return await smith_admin.list_smiths(info.context.db, limit, offset)


@mutation.field("register")
async def resolve_register(_: Any, info: Info, input: dict) -> dict[str, Any]:
    return await accounts.register(info.context, input)


@mutation.field("resetPassword")
async def resolve_reset_password(_: Any, info: Info, email: str) -> bool:
    return await accounts.reset_password(info.context, email)


@mutation.field("confirmPasswordReset")
async def resolve_confirm_password_reset(_: Any, info: Info, token: str, new_password: str) -> dict[str, Any]:
    work = accounts.confirm_password_reset(info.context, token, new_password)
    return await payload("smith", work)


@mutation.field("updateProfile")
async def resolve_update_profile(_: Any, info: Info, input: dict) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("smith", accounts.update_profile(info.context, viewer, input))


@mutation.field("changePassword")
async def resolve_change_password(_: Any, info: Info, old: str, new: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("smith", accounts.change_password(info.context, viewer, old, new))


@mutation.field("inviteSmith")
async def resolve_invite_smith(_: Any, info: Info, email: str, role: str = "SMITH") -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("invitation", accounts.invite(info.context, viewer, email, role))


@mutation.field("updateSmithRole")
async def resolve_update_smith_role(_: Any, info: Info, smith_id: str, role: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("smith", smith_admin.update_role(info.context, viewer, smith_id, role))


@mutation.field("deactivateSmith")
async def resolve_deactivate_smith(_: Any, info: Info, smith_id: str) -> dict[str, Any]:
    viewer = await info.context.require()
    return await payload("smith", smith_admin.deactivate(info.context, viewer, smith_id))


@invitation_type.field("invitedBy")
async def resolve_invited_by(invitation: dict, info: Info) -> dict[str, Any] | None:
    if invitation["invited_by"] is None:
        return None
    return await info.context.loaders.load(smiths_by_id, invitation["invited_by"])


bindables: list[SchemaBindable] = [query, mutation, invitation_type]
