"""The per-request context: the process's resources, the viewer, the DataLoaders.

A batch function lives beside its SQL in the domain module, is named `<result>_by_<key>`,
takes the pool and the keys, runs one `= ANY($1)` query and returns results in key order;
`Loaders` makes one DataLoader per batch function per request, on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from aiodataloader import DataLoader

if TYPE_CHECKING:
    from graphql import GraphQLResolveInfo

from app.core.errors import Forbidden, Unauthenticated
from app.core.permissions import Perm, effective_permissions
from app.infra.bus import Events
from app.infra.db import Pool
from app.resources import Resources

VIEWER_SQL = """
SELECT s.id, s.email, s.name, s.role::text AS role, s.permissions
FROM smiths s JOIN sessions ses ON ses.smith_id = s.id
WHERE s.id = $1 AND ses.id = $2 AND s.is_active AND s.deleted_at IS NULL
  AND ses.revoked_at IS NULL AND ses.expires_at > now()
"""


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


@dataclass(slots=True)
class Context:
    """One request's (or one websocket operation's) view of the service. `client_ip` and
    `user_agent` come from the connection, for the audit trail and rate limits."""

    resources: Resources
    token: str | None
    client_ip: str | None = None
    user_agent: str | None = None
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
        try:
            claims = self.resources.tokens.verify(self.token)
        except Unauthenticated as exc:
            self._auth_error = exc
            return None
        row = await self.db.fetchrow(VIEWER_SQL, str(claims.smith_id), claims.session_id)
        if row is None:
            self._auth_error = Unauthenticated("Session expired or revoked")
            return None
        return Viewer(
            id=row["id"],
            email=row["email"],
            name=row["name"],
            role=row["role"],
            permissions=effective_permissions(row["role"], row["permissions"]),
            session_id=claims.session_id,
        )

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
