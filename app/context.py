"""The per-request context: services from the lifespan, the viewer, the loaders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import HTTPConnection

from app.db import Pool
from app.errors import Forbidden, Unauthenticated
from app.loaders import Loaders
from app.mail import Mailer
from app.permissions import Perm, effective_permissions
from app.pubsub import Events
from app.ratelimit import RateLimiter
from app.security import Passwords, Tokens
from app.settings import Settings

VIEWER_SQL = """
SELECT s.id, s.email, s.name, s.role::text AS role, s.permissions
FROM smiths s JOIN sessions ses ON ses.smith_id = s.id
WHERE s.id = $1 AND ses.id = $2 AND s.is_active AND s.deleted_at IS NULL
  AND ses.revoked_at IS NULL AND ses.expires_at > now()
"""


@dataclass(slots=True)
class Services:
    """Long-lived resources, created once in the lifespan."""

    settings: Settings
    db: Pool
    events: Events
    passwords: Passwords
    tokens: Tokens
    uploads_dir: Path
    mailer: Mailer
    limiter: RateLimiter
    # What background components publish for others, e.g. "pipeline" (the ingest pipeline).
    components: dict[str, Any] = field(default_factory=dict)


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
    services: Services
    connection: HTTPConnection | None
    token: str | None
    loaders: Loaders
    _viewer: Viewer | None = field(default=_UNSET)
    _auth_error: Unauthenticated | None = None

    @property
    def db(self) -> Pool:
        return self.services.db

    @property
    def events(self) -> Events:
        return self.services.events

    @property
    def client_ip(self) -> str | None:
        client = self.connection.client if self.connection is not None else None
        return client.host if client else None

    @property
    def user_agent(self) -> str | None:
        return self.connection.headers.get("user-agent") if self.connection is not None else None

    async def viewer(self) -> Viewer | None:
        """The signed-in smith, verified once per request; None when anonymous or invalid."""
        if self._viewer is _UNSET:
            self._viewer = await self._load_viewer()
        return self._viewer

    async def _load_viewer(self) -> Viewer | None:
        if not self.token:
            return None
        try:
            claims = self.services.tokens.verify(self.token)
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
