"""Every bindable of the schema; a field without a resolver here fails at boot, not at runtime."""

from __future__ import annotations

from ariadne import SchemaBindable

from resolvers import (
    accounts,
    alerts,
    analytics,
    apikeys,
    audit,
    bellows,
    catalog,
    commands,
    deployments,
    edicts,
    fleets,
    floors,
    ingots,
    maintenance,
    notifications,
    robot_status,
    robots,
    scalars,
    sepulkas,
    sessions,
    smiths,
    tasks,
    uploads,
    webhooks,
)

bindables: list[SchemaBindable] = [
    *scalars.bindables,
    *sessions.bindables,
    *smiths.bindables,
    *accounts.bindables,
    *catalog.bindables,
    *sepulkas.bindables,
    *ingots.bindables,
    *deployments.bindables,
    *fleets.bindables,
    *robots.bindables,
    *robot_status.bindables,
    *maintenance.bindables,
    *floors.bindables,
    *tasks.bindables,
    *uploads.bindables,
    *edicts.bindables,
    *bellows.bindables,
    *analytics.bindables,
    *apikeys.bindables,
    *commands.bindables,
    *audit.bindables,
    *alerts.bindables,
    *notifications.bindables,
    *webhooks.bindables,
]
