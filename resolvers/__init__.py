"""Every bindable of the schema; a field without a resolver here fails at boot, not at runtime."""

from __future__ import annotations

from ariadne import SchemaBindable

from resolvers import scalars, smiths

bindables: list[SchemaBindable] = [
    *scalars.bindables,
    *smiths.bindables,
]
