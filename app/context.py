"""The per-request context: the process's resources, the viewer, the DataLoaders.

A batch function lives beside its SQL in the domain module, is named `<result>_by_<key>`,
takes the pool and the keys, runs one `= ANY($1)` query and returns results in key order;
`Loaders` makes one DataLoader per batch function per request, on first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Coroutine, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from aiodataloader import DataLoader

if TYPE_CHECKING:
    from graphql import GraphQLResolveInfo

from app.core.channels import channels
from app.core.errors import Forbidden, Unauthenticated
from app.core.permissions import Perm, effective_permissions
from app.infra.bus import BACK, LOST, Event, Events, SubscriberOverflow
from app.infra.db import Pool
from app.resources import Resources

VIEWER_SQL = """
SELECT s.id, s.email, s.name, s.role::text AS role, s.permissions, ses.expires_at
FROM smiths s JOIN sessions ses ON ses.smith_id = s.id
WHERE s.id = $1 AND ses.id = $2 AND s.is_active AND s.deleted_at IS NULL
  AND ses.revoked_at IS NULL AND ses.expires_at > now()
"""


log = logging.getLogger("sepulki.context")

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")
# An async function (aiodataloader accepts no other) returning one result per key.
BatchFn = Callable[[Pool, list[Any]], Coroutine[Any, Any, list[Any]]]


class Loaders:
    __slots__ = ("_loaders", "_pool")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._loaders: dict[BatchFn, DataLoader] = {}

    def __call__(self, batch_fn: BatchFn) -> DataLoader:
        loader = self._loaders.get(batch_fn)
        if loader is None:
            loader = DataLoader(partial(batch_fn, self._pool))
            self._loaders[batch_fn] = loader
        return loader

    async def load(self, batch_fn: Callable[[Pool, list[K]], Coroutine[Any, Any, list[T]]], key: K) -> T:
        """The batch function's result for `key`, batched with the other loads of this tick."""
        result: T = await self(batch_fn).load(key)
        return result

    def prime(self, batch_fn: BatchFn, key: Hashable, value: Any) -> None:
        self(batch_fn).prime(key, value)


@dataclass(frozen=True, slots=True)
class Viewer:
    id: str
    email: str
    name: str
    role: str
    permissions: frozenset[Perm]
    session_id: str

    def can(self, perm: Perm) -> bool:
        return perm in self.permissions

    @property
    def is_admin(self) -> bool:
        return self.role == "ADMIN"


_UNSET: Any = object()

# Every viewer cache of this process: a revocation made here reaches them before it is announced.
_caches: weakref.WeakSet[ViewerCache] = weakref.WeakSet()


def forget_sessions(session_ids: Iterable[str]) -> None:
    """Drops these sessions from every viewer cache of this process (app.sessions calls it with
    each revocation it records, before answering)."""
    ids = [str(i) for i in session_ids]
    for cache in list(_caches):
        cache.forget(ids)


class ViewerCache:
    """Verified viewers by access token, each for at most `ttl_s` (and never past its session's
    or its token's expiry), so that a signed-in request does not ask PostgreSQL about its session every time.

    Revocation still takes effect at once: every revocation, logout, password change,
    deactivation and role or permission change is announced on `channels.SESSIONS_REVOKED`
    (the announcement that closes websockets), and the cache drops those sessions when it hears
    it; the process that revoked drops them before it answers (`forget_sessions`). The cache is
    used only while its listener is confirmed subscribed: from a LOST of the event transport (a
    Redis outage, messages possibly missed) until BACK it is emptied and bypassed. A lookup that
    was running in PostgreSQL while a revocation arrived is not stored (`generation`), so a
    session never comes back into the cache from a read older than its revocation. What else a
    viewer carries (name, email) may be up to `ttl_s` old."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Viewer]] = {}
        self._tokens: dict[str, set[str]] = {}  # session id -> cached tokens
        self.generation = 0
        self.trusted = False
        _caches.add(self)

    def get(self, token: str) -> Viewer | None:
        entry = self._entries.get(token) if self.trusted else None
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(token, entry[1].session_id)
            return None
        return entry[1]

    def put(self, token: str, viewer: Viewer, generation: int, expires_in_s: float) -> None:
        """Stores a viewer checked in PostgreSQL at `generation`, for at most `expires_in_s`
        (the sooner of the session's and the token's expiry)."""
        if not self.trusted or generation != self.generation or self.ttl_s <= 0 or expires_in_s <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self.clear()  # rare (that many live tokens within ttl_s): start again
        self._entries[token] = (time.monotonic() + min(self.ttl_s, expires_in_s), viewer)
        self._tokens.setdefault(viewer.session_id, set()).add(token)

    def forget(self, session_ids: Iterable[str]) -> None:
        self.generation += 1
        for session_id in session_ids:
            for token in self._tokens.pop(session_id, ()):
                self._entries.pop(token, None)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._tokens.clear()

    def _drop(self, token: str, session_id: str) -> None:
        self._entries.pop(token, None)
        tokens = self._tokens.get(session_id)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._tokens[session_id]

    async def watch(self, events: Events) -> None:
        """Keeps the cache in step with the revocation announcements; run for the process's life."""
        while True:
            try:
                async with events.listen(channels.SESSIONS_REVOKED) as subscriber:
                    # Subscribed while the transport is down: the queue starts with LOST, taken
                    # below before any other coroutine runs, so the cache is never used then.
                    self.trusted = True
                    async for item in subscriber:
                        if isinstance(item, Event):
                            self.forget(item.data.get("sessionIds") or [])
                        elif item is LOST:
                            self.trusted = False
                            self.clear()
                        elif item is BACK:
                            self.trusted = True
            except SubscriberOverflow:
                log.warning("the viewer cache fell behind the session revocations; emptied")
            except Exception:
                log.exception("the viewer cache's revocation listener failed; restarting it")
                await asyncio.sleep(1.0)
            finally:
                self.trusted = False
                self.clear()


@dataclass(slots=True)
class Context:
    """One request's (or one websocket operation's) view of the service. `client_ip` and
    `user_agent` come from the connection, for the audit trail and rate limits."""

    resources: Resources
    token: str | None
    client_ip: str | None = None
    user_agent: str | None = None
    # The process's cache of verified viewers (HTTP requests of the API); None: ask every time.
    viewers: ViewerCache | None = None
    loaders: Loaders = field(init=False)
    _viewer: Viewer | None = field(default=_UNSET)
    _auth_error: Unauthenticated | None = None

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.resources.db)

    @property
    def db(self) -> Pool:
        return self.resources.db

    @property
    def events(self) -> Events:
        return self.resources.events

    async def viewer(self) -> Viewer | None:
        """The signed-in smith, verified once per request; None when anonymous or invalid."""
        if self._viewer is _UNSET:
            self._viewer = await self._load_viewer()
        return self._viewer

    @property
    def known_viewer(self) -> Viewer | None:
        """The viewer if this request already verified one (no I/O): None when anonymous or
        not verified yet, so None only means "ask `viewer()`"."""
        return None if self._viewer is _UNSET else self._viewer

    async def _load_viewer(self) -> Viewer | None:
        if not self.token:
            return None
        cache = self.viewers
        if cache is not None:
            # The very bytes of a token verified before: its signature holds, and the entry
            # ends no later than the token's `exp`, so the JWT check (a tenth of a signed-in
            # request's time) is skipped too.
            cached = cache.get(self.token)
            if cached is not None:
                return cached
            generation = cache.generation
        try:
            claims = self.resources.tokens.verify(self.token)
        except Unauthenticated as exc:
            self._auth_error = exc
            return None
        row = await self.db.fetchrow(VIEWER_SQL, str(claims.smith_id), claims.session_id)
        if row is None:
            self._auth_error = Unauthenticated("Session expired or revoked")
            return None
        viewer = Viewer(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            role=row["role"],
            permissions=effective_permissions(row["role"], row["permissions"]),
            session_id=claims.session_id,
        )
        if cache is not None:
            now = datetime.now(UTC)
            expires_in = min((row["expires_at"] - now).total_seconds(), claims.expires_at - now.timestamp())
            cache.put(self.token, viewer, generation, expires_in)
        return viewer

    async def require(self, perm: Perm | None = None) -> Viewer:
        viewer = await self.viewer()
        if viewer is None:
            raise self._auth_error or Unauthenticated()
        if perm is not None and not viewer.can(perm):
            raise Forbidden(f"Permission denied: {perm} required")
        return viewer


def bearer_token(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token:
        return token.strip()
    return None


def token_from_init_payload(payload: dict[str, Any] | None) -> str | None:
    """graphql-transport-ws `connection_init`: the web frontend sends `authorization`,
    the SDK `authToken`; `Authorization` is accepted too."""
    if not isinstance(payload, dict):
        return None
    for key in ("authorization", "Authorization"):
        value = payload.get(key)
        if isinstance(value, str):
            return bearer_token(value) or (value.strip() or None)
    value = payload.get("authToken")
    if isinstance(value, str) and value.strip():
        return bearer_token(value) or value.strip()
    return None


# What resolvers receive: graphql-core's info with our Context.
Info: TypeAlias = "GraphQLResolveInfo[Context]"
