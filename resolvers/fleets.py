"""Resolvers of schema/fleets.graphql (to be written)."""

from __future__ import annotations

from ariadne import SchemaBindable

bindables: list[SchemaBindable] = []
