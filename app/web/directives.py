"""Enforcement of the SDL's `@requires(permission:)`, `@authenticated` and `@selfOr(permission:)`
directives."""

from __future__ import annotations

from collections.abc import Callable
from inspect import isawaitable
from typing import Any

from ariadne import SchemaDirectiveVisitor
from graphql import GraphQLField, GraphQLObjectType, GraphQLResolveInfo, default_field_resolver

from app.core.errors import Forbidden
from app.core.permissions import Perm
from app.realtime.shared import PER_VIEWER
from app.smiths import may_see_private_fields


def _guard(field: GraphQLField, perm: Perm | None) -> GraphQLField:
    subscribe = field.subscribe
    if subscribe is None:
        resolve: Callable[..., Any] = field.resolve or default_field_resolver

        async def guarded_resolve(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
            await info.context.require(perm)
            result = resolve(obj, info, **kwargs)
            return await result if isawaitable(result) else result

        field.resolve = guarded_resolve
    else:
        # A subscription field is checked once, when its stream is created: its resolver only
        # ever runs on that stream's events, and a socket whose session is revoked or whose role
        # changes is closed (app.realtime). Unguarded, an event's execution stays synchronous,
        # so one result serves every socket sharing it without a task per event.

        async def guarded_subscribe(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
            # Checked before the source stream starts, so a refusal is a plain GraphQL error.
            await info.context.require(perm)
            result = subscribe(obj, info, **kwargs)
            return await result if isawaitable(result) else result

        field.subscribe = guarded_subscribe
    return field


class RequiresDirective(SchemaDirectiveVisitor):
    def visit_field_definition(
        self, field: GraphQLField, object_type: GraphQLObjectType | Any
    ) -> GraphQLField:
        return _guard(field, Perm(self.args["permission"]))


class AuthenticatedDirective(SchemaDirectiveVisitor):
    def visit_field_definition(
        self, field: GraphQLField, object_type: GraphQLObjectType | Any
    ) -> GraphQLField:
        return _guard(field, None)


def _self_or(field: GraphQLField, type_name: str, field_name: str, perm: Perm) -> GraphQLField:
    """A private field of Smith: the smith themself or a holder of `perm`; anyone else gets
    FORBIDDEN on this field alone (graphql nulls the nearest nullable parent of a non-null one)."""
    resolve: Callable[..., Any] = field.resolve or default_field_resolver
    refusal = f"{type_name}.{field_name} is private: only the smith themself or a holder of {perm} may see it"

    async def checked_later(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        viewer = await info.context.require()
        if not may_see_private_fields(obj, viewer, perm):
            raise Forbidden(refusal)
        result = resolve(obj, info, **kwargs)
        return await result if isawaitable(result) else result

    def guarded_resolve(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        # Synchronous when the viewer is known (every guarded root field verified it already),
        # so a page of smiths or a shared subscription result costs no task per field.
        viewer = info.context.known_viewer
        if may_see_private_fields(obj, viewer, perm):
            return resolve(obj, info, **kwargs)
        if viewer is not None:
            raise Forbidden(refusal)
        return checked_later(obj, info, **kwargs)

    field.resolve = guarded_resolve
    # Its answer depends on who asks: subscriptions must not share it between viewers.
    field.extensions = {**field.extensions, PER_VIEWER: perm}
    return field


class SelfOrDirective(SchemaDirectiveVisitor):
    def visit_field_definition(
        self, field: GraphQLField, object_type: GraphQLObjectType | Any
    ) -> GraphQLField:
        return _self_or(field, object_type.name, self.name_of(field), Perm(self.args["permission"]))

    @staticmethod
    def name_of(field: GraphQLField) -> str:
        return field.ast_node.name.value if field.ast_node is not None else "field"


# ariadne declares SchemaVisitor a Protocol whose visit_* stubs return nothing, so mypy deems every
# visitor that implements only some of them abstract; ariadne calls only the ones a visitor defines.
DIRECTIVES: dict[str, type[SchemaDirectiveVisitor]] = {
    "requires": RequiresDirective,  # type: ignore[type-abstract]
    "authenticated": AuthenticatedDirective,  # type: ignore[type-abstract]
    "selfOr": SelfOrDirective,  # type: ignore[type-abstract]
}
