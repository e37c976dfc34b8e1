"""Test helpers: an in-process client for the app, with the SQL statements it ran."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from app.context import VIEWER_SQL
from app.settings import Settings
from app.web.app import create_app
from tests.servers import MosquittoServer

# The checkout: where subprocesses of the tests run from and docs/ is read.
ROOT = Path(__file__).resolve().parent.parent

ADMIN = ("admin@sepulki.com", "admin123")
DEV = ("dev@sepulki.com", "dev123")
DEMO = ("demo@sepulki.com", "demo123")
TEST = ("test@sepulki.com", "test123")

LOGIN = """
mutation Login($email: String!, $password: String!) {
  login(credentials: {email: $email, password: $password}) {
    session { token refreshToken smithId expiresAt role permissions }
    smith { id email role }
    errors { code message }
  }
}
"""


class GraphQLErrors(AssertionError):
    pass


class Api:
    def __init__(self, app: Any, client: httpx.AsyncClient, statements: list[str]) -> None:
        self.app = app
        self.client = client
        self.statements = statements
        self._tokens: dict[tuple[str, str], str] = {}

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings, **app_kwargs: Any) -> AsyncIterator[Api]:
        statements: list[str] = []
        app = create_app(settings, query_observers=[statements.append], **app_kwargs)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield cls(app, c, statements)

    @property
    def resources(self) -> Any:
        return self.app.state.resources_holder.resources

    @property
    def components(self) -> Any:
        """The API's running components (app.workers.Running)."""
        return self.app.state.resources_holder.running

    async def post(
        self, query: str, variables: dict[str, Any] | None = None, *, token: str | None = None
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return await self.client.post(
            "/graphql", json={"query": query, "variables": variables or {}}, headers=headers
        )

    async def execute(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        as_: tuple[str, str] | None = ADMIN,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The full response body (`data` and `errors`)."""
        if token is None and as_ is not None:
            token = await self.token(*as_)
        response = await self.post(query, variables, token=token)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def data(
        self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """`data` of a response that must have no errors."""
        body = await self.execute(query, variables, **kwargs)
        if body.get("errors"):
            raise GraphQLErrors(body["errors"])
        data: dict[str, Any] = body["data"]
        return data

    async def error_codes(
        self, query: str, variables: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[str]:
        body = await self.execute(query, variables, **kwargs)
        return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]

    async def token(self, email: str, password: str) -> str:
        key = (email, password)
        if key not in self._tokens:
            body = await self.execute(LOGIN, {"email": email, "password": password}, as_=None)
            session = body["data"]["login"]["session"]
            assert session, body
            self._tokens[key] = session["token"]
        return self._tokens[key]

    async def create_smith(
        self, email: str, role: str, password: str = "pw-for-tests", permissions: list[str] | None = None
    ) -> tuple[str, str]:
        """A smith with exactly the role's permissions (unless `permissions` adds some)."""
        resources = self.resources
        await resources.db.execute(
            "INSERT INTO smiths (email, name, password_hash, role, permissions) "
            "VALUES ($1, $2, $3, $4::smith_role, $5)",
            email,
            email.split("@")[0],
            await resources.passwords.hash(password),
            role,
            permissions or [],
        )
        return (email, password)

    @contextlib.contextmanager
    def count_statements(self) -> Any:
        """Collects the SQL statements run inside the block."""
        start = len(self.statements)
        collected: list[str] = []
        yield collected
        collected.extend(self.statements[start:])


# What a request costs besides its own work: asyncpg's housekeeping (type introspection, JIT
# toggling, pool reset) and the viewer's session check, which is once per request at most and
# skipped while the viewer is cached, so a count that includes it depends on timing.
_NOT_THE_REQUESTS_WORK = ("pg_catalog", "pg_type", "typeinfo_tree", "'jit'", "pg_advisory_unlock_all")


def request_work(statements: list[str]) -> list[str]:
    """The statements that answer the query itself: no driver upkeep, no viewer check."""
    return [
        s for s in statements if s != VIEWER_SQL and not any(marker in s for marker in _NOT_THE_REQUESTS_WORK)
    ]


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 5, what: str = "") -> Any:
    """The first truthy result of `check`, polled until `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {within}s: {what}"
        await asyncio.sleep(0.05)


def with_broker(settings: Settings, mosquitto: MosquittoServer, **changes: Any) -> Settings:
    # Own client ids per test: the broker must not mistake this app for the previous test's.
    client_id = f"sepulki-test-{uuid.uuid4().hex[:8]}"
    return settings.replace(mqtt_url=mosquitto.url, mqtt_client_id=client_id, **changes)
