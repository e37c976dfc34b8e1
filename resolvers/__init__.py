"""Every bindable of the schema; a field without a resolver here fails at boot, not at runtime."""

from __future__ import annotations

from ariadne import SchemaBindable

from resolvers import (
    accounts,
    apikeys,
    audit,
    bellows,
    catalog,
    commands,
    edicts,
    fleets,
    floors,
    ingots,
    robots,
    scalars,
    sepulkas,
    sessions,
    smiths,
    tasks,
    uploads,
)

bindables: list[SchemaBindable] = [
    *scalars.bindables,
    *sessions.bindables,
    *smiths.bindables,
    *accounts.bindables,
    *catalog.bindables,
    *sepulkas.bindables,
    *ingots.bindables,
    *fleets.bindables,
    *robots.bindables,
    *floors.bindables,
    *tasks.bindables,
    *uploads.bindables,
    *edicts.bindables,
    *bellows.bindables,
    *apikeys.bindables,
    *commands.bindables,
    *audit.bindables,
]
