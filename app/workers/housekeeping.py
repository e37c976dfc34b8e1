"""Periodic jobs every API replica runs: event-log and dead-letter retention, pruning of ended
sessions, and the reconciliation of robots' broker accounts with their API keys. Each is
idempotent, so replicas need no lock between them."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from app import apikeys, sessions
from app.core.errors import Unavailable
from app.infra import eventlog
from app.infra.db import periodically
from app.ingest.writer import prune_dead_letters
from app.resources import Resources

log = logging.getLogger("sepulki.housekeeping")


@contextlib.asynccontextmanager
async def _retention(
    what: str, keep_s: int, every_s: float, prune: Callable[[int], Awaitable[int]]
) -> AsyncIterator[None]:
    """Deletes `what` older than `keep_s` seconds every `every_s` (0 keeps them forever)."""
    if keep_s <= 0:
        yield
        return

    async def prune_once() -> None:
        deleted = await prune(keep_s)
        if deleted:
            log.info("pruned %d %s older than %ds", deleted, what, keep_s)

    async with periodically(f"{what} pruning", every_s, prune_once):
        yield


def event_log_retention(resources: Resources, every_s: float = 60.0) -> AbstractAsyncContextManager[None]:
    """Prunes the event log every minute (SEPULKI_EVENT_RETENTION_S; 0 keeps it forever)."""
    keep_s = resources.settings.event_retention_s
    return _retention("events", keep_s, every_s, lambda keep: eventlog.prune(resources.db, keep))


def dead_letter_retention(resources: Resources, every_s: float = 3600.0) -> AbstractAsyncContextManager[None]:
    """Prunes dead letters hourly (SEPULKI_DEAD_LETTER_RETENTION_S; 0 keeps them forever)."""
    keep_s = resources.settings.dead_letter_retention_s
    return _retention("dead letters", keep_s, every_s, lambda keep: prune_dead_letters(resources.db, keep))


@contextlib.asynccontextmanager
async def session_pruning(resources: Resources, every_s: float = 3600.0) -> AsyncIterator[None]:
    """Prunes long-ended sessions and spent reset tokens hourly."""

    async def prune_once() -> None:
        deleted = await sessions.prune(resources.db)
        if any(deleted):
            log.info("pruned %d ended sessions and %d spent reset tokens", *deleted)

    async with periodically("session pruning", every_s, prune_once):
        yield


@contextlib.asynccontextmanager
async def broker_account_reconciler(resources: Resources, every_s: float = 60.0) -> AsyncIterator[None]:
    """Every minute, when SEPULKI_MQTT_ADMIN_URL is set: deletes robots' broker accounts of
    unusable keys and binds live accounts to their robot's client id (both are idempotent)."""
    admin_url = resources.settings.mqtt_admin_url
    if not admin_url:
        yield
        return

    async def once() -> None:
        try:
            await apikeys.reconcile_broker_accounts(resources.db, admin_url)
        except Unavailable as exc:
            log.warning("robot MQTT account reconcile skipped: %s", exc)

    async with periodically("robot MQTT account reconcile", every_s, once):
        yield
