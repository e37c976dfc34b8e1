"""Enforcement of the SDL's `@requires(permission:)` and `@authenticated` directives."""

from __future__ import annotations

from collections.abc import Callable
from inspect import isawaitable
from typing import Any

from ariadne import SchemaDirectiveVisitor
from graphql import GraphQLField, GraphQLObjectType, GraphQLResolveInfo, default_field_resolver

from app.core.permissions import Perm


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


# ariadne declares SchemaVisitor a Protocol whose visit_* stubs return nothing, so mypy deems every
# visitor that implements only some of them abstract; ariadne calls only the ones a visitor defines.
DIRECTIVES: dict[str, type[SchemaDirectiveVisitor]] = {
    "requires": RequiresDirective,  # type: ignore[type-abstract]
    "authenticated": AuthenticatedDirective,  # type: ignore[type-abstract]
}
