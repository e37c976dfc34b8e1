"""Every query, mutation and subscription, called by a smith of each role and by an anonymous
caller, answers what its SDL directive declares.

The SDL is the one table: `@requires(permission:)` / `@authenticated` on a root field is what
app/directives.py enforces and what this test reads back from the built schema, with the role
permissions of app/permissions.py. A field added to the schema is covered without editing this
file. Smiths hold exactly their role's permissions (no individual grants); each case signs in
with a session of its own, so a case that logs out or revokes sessions cannot disturb the next.

Below the root fields, every field that yields a Smith is reached through one document per
private Smith field (`@selfOr`): the other smith's email, role, ... only for MANAGE_SMITHS.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from inspect import isawaitable
from typing import Any

import pytest
from graphql import (
    ExecutionResult,
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    Undefined,
    get_named_type,
    parse,
    subscribe,
)

from app.context import Context
from app.core.permissions import ROLE_PERMISSIONS, Perm, Role
from app.settings import Settings
from app.web.errors import error_formatter
from app.web.graphql_app import build_schema
from tests.seed_ids import ADMIN_ID, ALPHA, DEV_FLEET, PICK_TASK
from tests.support import ROOT, Api
from tests.template import SeededTemplate, with_db

ANONYMOUS = "ANONYMOUS"
CALLERS = (ANONYMOUS, Role.SMITH.value, Role.OVER_SMITH.value, Role.ADMIN.value)
DENIED = {"UNAUTHENTICATED", "FORBIDDEN"}
# Fields without a directive whose resolver nevertheless demands a signed-in caller. Kept empty
# on purpose: such a field belongs in the SDL table with @authenticated.
SIGN_IN_REQUIRED_BY_RESOLVER: dict[str, str] = {}

SCHEMA = build_schema()


@dataclass(frozen=True)
class Declared:
    """What a root field's directive asks of the caller."""

    kind: str  # "requires", "authenticated" or "open"
    permission: Perm | None = None


def declared(field: GraphQLField) -> Declared:
    for directive in (field.ast_node.directives or ()) if field.ast_node else ():
        if directive.name.value == "requires":
            (argument,) = directive.arguments
            return Declared("requires", Perm(argument.value.value))  # type: ignore[attr-defined]
        if directive.name.value == "authenticated":
            return Declared("authenticated")
    return Declared("open")


def root_fields(schema: GraphQLSchema) -> list[tuple[str, str, GraphQLField]]:
    roots = (schema.query_type, schema.mutation_type, schema.subscription_type)
    return [(root.name, name, field) for root in roots if root for name, field in root.fields.items()]


FIELDS = root_fields(SCHEMA)
CASES = [(root, name, caller) for root, name, _ in FIELDS for caller in CALLERS]


def expected(declaration: Declared, caller: str, qualified: str) -> str | None:
    """The denial code the caller must get, or None when it must not be denied."""
    if declaration.kind == "open":
        return (
            "UNAUTHENTICATED" if caller == ANONYMOUS and qualified in SIGN_IN_REQUIRED_BY_RESOLVER else None
        )
    if caller == ANONYMOUS:
        return "UNAUTHENTICATED"
    if declaration.kind == "requires" and declaration.permission not in ROLE_PERMISSIONS[Role(caller)]:
        return "FORBIDDEN"
    return None


# --- minimal valid operations ------------------------------------------------------------------


def sample(type_: GraphQLInputType) -> Any:
    """A small valid value of an input type: required input fields only, one list item."""
    if isinstance(type_, GraphQLNonNull):
        return sample(type_.of_type)
    if isinstance(type_, GraphQLList):
        return [sample(type_.of_type)]
    if isinstance(type_, GraphQLEnumType):
        return next(iter(type_.values))
    if isinstance(type_, GraphQLInputObjectType):
        return {
            name: sample(field.type)
            for name, field in type_.fields.items()
            if isinstance(field.type, GraphQLNonNull) and field.default_value is Undefined
        }
    assert isinstance(type_, GraphQLScalarType)
    scalars: dict[str, Any] = {
        "ID": str(uuid.uuid4()),
        "String": "x",
        "Int": 1,
        "Float": 1.0,
        "Boolean": True,
        "JSON": {},
        "DateTime": datetime.now(UTC).isoformat(),
        "Upload": None,  # sent as a multipart file part
    }
    return scalars[type_.name]


def selection(field: GraphQLField) -> str:
    """Nothing for a leaf, `__typename` for an object: the root resolver runs, nothing nested."""
    return " { __typename }" if isinstance(get_named_type(field.type), GraphQLObjectType) else ""


@dataclass
class Operation:
    document: str
    variables: dict[str, Any]
    uploads: list[str]  # variable names of Upload arguments


def operation(root: str, name: str, field: GraphQLField) -> Operation:
    """Required arguments only, as variables; optional ones take their defaults."""
    required = {arg: a for arg, a in field.args.items() if isinstance(a.type, GraphQLNonNull)}
    definitions = ", ".join(f"${arg}: {a.type}" for arg, a in required.items())
    arguments = ", ".join(f"{arg}: ${arg}" for arg in required)
    head = f"{root.lower()}({definitions})" if definitions else root.lower()
    call = f"{name}({arguments})" if arguments else name
    variables = {arg: sample(a.type) for arg, a in required.items()}
    uploads = [arg for arg, a in required.items() if get_named_type(a.type).name == "Upload"]
    return Operation(f"{head} {{ {call}{selection(field)} }}", variables, uploads)


# --- callers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def private_database(postgres_url: str, template: SeededTemplate) -> AsyncIterator[str]:
    """A copy of the seeded template database for one test module, dropped afterwards."""
    name = await template.copy()
    try:
        yield with_db(postgres_url, name)
    finally:
        await template.drop(name)


def generous(settings: Settings, database_url: str) -> Settings:
    """Limits that hundreds of calls from one address do not reach: rate limiting has its own tests."""
    return settings.replace(
        database_url=database_url,
        login_rate_limit_ip="100000/minute",
        login_rate_limit_account="100000/minute",
        mail_rate_limit_ip="100000/minute",
        mail_rate_limit_account="100000/minute",
        request_rate_limit_ip="100000/minute",
    )


INSERT_SESSION = """
INSERT INTO sessions (smith_id, refresh_token_hash, ip_address, user_agent, expires_at)
VALUES ($1, $2, '127.0.0.1', 'authorization-matrix', now() + interval '1 day')
RETURNING id
"""


class Callers:
    """One smith per role, and a fresh session (access token) for every call."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.smiths: dict[str, dict[str, Any]] = {}

    async def create(self, label: str) -> None:
        for role in Role:
            email = f"{label}-{role.value.lower()}@sepulki.com"
            await self.api.create_smith(email, role.value)
            row = await self.api.resources.db.fetchrow(
                "SELECT id, email, role::text AS role FROM smiths WHERE email = $1", email
            )
            self.smiths[role.value] = dict(row)

    async def token(self, caller: str) -> str | None:
        if caller == ANONYMOUS:
            return None
        smith = self.smiths[caller]
        session_id = await self.api.resources.db.fetchval(INSERT_SESSION, smith["id"], secrets.token_hex(32))
        token, _ = self.api.resources.tokens.issue(smith, session_id)
        return token


@pytest.fixture(scope="module")
async def callers(
    postgres_url: str, template: SeededTemplate, base_settings: Settings
) -> AsyncIterator[Callers]:
    async with private_database(postgres_url, template) as url:
        async with Api.running(generous(base_settings, url)) as api:
            running = Callers(api)
            await running.create("matrix")
            yield running


def codes(errors: list[dict[str, Any]] | None) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in errors or []]


async def call_http(api: Api, op: Operation, token: str | None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    if op.uploads:
        # graphql-multipart-request-spec: one small file per Upload argument.
        mapping = {str(i): [f"variables.{arg}"] for i, arg in enumerate(op.uploads)}
        files = {str(i): ("matrix.png", b"\x89PNG\r\n\x1a\n", "image/png") for i in range(len(op.uploads))}
        operations = json.dumps({"query": op.document, "variables": op.variables})
        response = await api.client.post(
            "/graphql",
            data={"operations": operations, "map": json.dumps(mapping)},
            files=files,
            # As apollo-upload-client sends it (anonymous callers have no Authorization to force
            # the CORS preflight multipart requests need).
            headers={**headers, "apollo-require-preflight": "true"},
        )
    else:
        response = await api.post(op.document, op.variables, token=token)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    # Executed, not refused as an invalid document: the directive really had its say.
    assert "data" in body, body
    return body


async def call_subscription(api: Api, op: Operation, token: str | None) -> list[dict[str, Any]]:
    """Subscribes through the app's executable schema with a request context, as the websocket
    handler does; the guard runs before the source stream is created."""
    resources = api.resources
    context = Context(resources, token)
    result = subscribe(
        api.app.state.schema, parse(op.document), context_value=context, variable_values=op.variables
    )
    if isawaitable(result):
        result = await result
    if isinstance(result, ExecutionResult):
        return [error_formatter(e) for e in result.errors or []]
    await result.aclose()  # type: ignore[union-attr]
    return []


@pytest.mark.parametrize(
    ("root", "name", "caller"), CASES, ids=[f"{root}.{name}-{caller}" for root, name, caller in CASES]
)
async def test_caller_gets_what_the_sdl_declares(callers: Callers, root: str, name: str, caller: str) -> None:
    field = SCHEMA.type_map[root].fields[name]  # type: ignore[union-attr]
    declaration = declared(field)
    op = operation(root, name, field)
    token = await callers.token(caller)
    if root == "Subscription":
        errors = await call_subscription(callers.api, op, token)
    else:
        errors = (await call_http(callers.api, op, token)).get("errors")
    got = set(codes(errors)) & DENIED
    want = expected(declaration, caller, f"{root}.{name}")
    if want is None:
        assert not got, f"{caller} was refused {root}.{name} ({declaration}): {errors}"
    else:
        assert got == {want}, f"{caller} on {root}.{name} ({declaration}) wanted {want}: {errors}"


def test_matrix_covers_every_root_field_for_each_role_and_anonymous() -> None:
    fields = len(FIELDS)
    assert len(CASES) == fields * 4
    assert {name for _, name, _ in FIELDS} >= {"auditLogs", "me", "login", "robotStatus"}
    for qualified in SIGN_IN_REQUIRED_BY_RESOLVER:
        root, _, name = qualified.partition(".")
        field = SCHEMA.type_map[root].fields[name]  # type: ignore[union-attr]
        assert declared(field).kind == "open", f"{qualified} has a directive now: drop the exception"
    guarded = sum(declared(f).kind != "open" for _, _, f in FIELDS)
    print(f"authorization matrix: {fields} root fields x 4 callers = {len(CASES)} cases ({guarded} guarded)")


def test_the_documented_role_table_matches_the_code() -> None:
    doc = (ROOT / "docs" / "authorization.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| (yes|-) \| (yes|-) \| (yes|-) \|$", doc, re.MULTILINE)
    documented = {Perm(p): tuple(cell == "yes" for cell in cells) for p, *cells in rows}
    actual = {p: tuple(p in ROLE_PERMISSIONS[r] for r in Role) for p in Perm}
    assert documented == actual


# --- a smith's private fields, on every path that yields a Smith --------------------------------

# Any signed-in smith sees these of any smith; the others only the smith themself or a holder of
# MANAGE_SMITHS (`@selfOr(permission: MANAGE_SMITHS)` in schema/smiths.graphql).
PUBLIC_SMITH_FIELDS = {"id", "name"}
SMITH_FIELDS = list(SCHEMA.type_map["Smith"].fields)  # type: ignore[attr-defined]
# One document per field that yields a Smith, reaching rows of the seed's admin and dev (none of
# the matrix callers; rows the callers' own mutations created may come along): `%s` is the Smith
# field asked for, besides its id.
NESTED: dict[str, tuple[str, str]] = {
    "FactoryFloor.createdBy": ("factoryFloors", "{ factoryFloors { createdBy { id %s } } }"),
    "Task.createdBy": ("tasks", "{ tasks { createdBy { id %s } } }"),
    "Sepulka.createdBy": ("sepulkas", "{ sepulkas { createdBy { id %s } } }"),
    "RobotCommand.issuedBy": (
        "robotCommands",
        f'{{ robotCommands(robotId: "{ALPHA}") {{ issuedBy {{ id %s }} }} }}',
    ),
    "RobotStatusChange.actor": (
        "robotStatusHistory",
        f'{{ robotStatusHistory(robotId: "{ALPHA}") {{ edges {{ node {{ actor {{ id %s }} }} }} }} }}',
    ),
    "TaskTransition.smith": (
        "task",
        f'{{ task(id: "{PICK_TASK}") {{ transitions {{ edges {{ node {{ smith {{ id %s }} }} }} }} }} }}',
    ),
    "ScheduledTask.createdBy": ("scheduledTasks", "{ scheduledTasks { createdBy { id %s } } }"),
    "Alert.acknowledger": ("alerts", "{ alerts { edges { node { acknowledger { id %s } } } } }"),
    "Alert.resolver": ("alerts", "{ alerts { edges { node { resolver { id %s } } } } }"),
    "AuditLog.smith": (
        "auditLogs",
        f'{{ auditLogs(first: 5, filter: {{smithId: "{ADMIN_ID}"}}) '
        "{ edges { node { smith { id %s } } } } }",
    ),
}
# Fields that yield only the caller's own Smith (signed in, or just proven by password, invitation,
# refresh or reset token) or are reached only by holders of MANAGE_SMITHS.
OWN_OR_MANAGED = {
    "Query.me",
    "AuthPayload.smith",
    "SmithPayload.smith",
    "Query.smiths",
    "Invitation.invitedBy",
}
NESTED_CASES = [(path, field, caller) for path in NESTED for field in SMITH_FIELDS for caller in CALLERS]


@pytest.fixture(scope="module")
async def authored(callers: Callers) -> Callers:
    """A command, an audit row, a robot status change and an alert handled by the seed's admin,
    besides the seed's floors, tasks, sepulkas."""
    db = callers.api.resources.db
    await db.execute(
        "INSERT INTO robot_commands (robot_id, type, issued_by, expires_at) "
        "VALUES ($1, 'PING', $2, now() + interval '1 hour')",
        ALPHA,
        ADMIN_ID,
    )
    await db.execute(
        "INSERT INTO audit_logs (smith_id, action, resource_type) VALUES ($1, 'login', 'SmithSession')",
        ADMIN_ID,
    )
    await db.execute(
        "INSERT INTO task_transitions (task_id, from_status, to_status, actor_type, smith_id) "
        "VALUES ($1, 'ASSIGNED', 'IN_PROGRESS', 'SMITH', $2)",
        PICK_TASK,
        ADMIN_ID,
    )
    await db.execute(
        "INSERT INTO scheduled_tasks (fleet_id, name, type, cron, next_run_at, created_by) "
        "VALUES ($1, 'Nightly', 'PATROL', '0 2 * * *', now() + interval '1 day', $2)",
        DEV_FLEET,
        ADMIN_ID,
    )
    await db.execute(
        "INSERT INTO robot_status_changes (robot_id, from_status, to_status, cause, actor_id) "
        "VALUES ($1, 'WORKING', 'CHARGING', 'OPERATOR', $2)",
        ALPHA,
        ADMIN_ID,
    )
    await db.execute(
        "INSERT INTO alerts (edict_id, robot_id, fleet_id, severity, message, first_at, last_at, state, "
        "acknowledged_by, acknowledged_at, resolved_by, resolved_at) "
        "SELECT id, $1, $2, 'WARNING', 'battery low', now(), now(), 'RESOLVED', $3, now(), $3, now() "
        "FROM edicts ORDER BY id LIMIT 1",
        ALPHA,
        DEV_FLEET,
        ADMIN_ID,
    )
    return callers


def found(value: Any, key: str) -> list[Any]:
    """Every value under `key` anywhere in a response's data."""
    if isinstance(value, dict):
        return [v for k, v in value.items() if k == key] + [x for v in value.values() for x in found(v, key)]
    if isinstance(value, list):
        return [x for v in value for x in found(v, key)]
    return []


@pytest.mark.parametrize(
    ("path", "field", "caller"), NESTED_CASES, ids=[f"{p}.{f}-{c}" for p, f, c in NESTED_CASES]
)
async def test_a_smith_reached_through_another_entity_shows_private_fields_only_to_managers(
    authored: Callers, path: str, field: str, caller: str
) -> None:
    root, document = NESTED[path]
    body = await call_http(authored.api, Operation(document % field, {}, []), await authored.token(caller))
    me = authored.smiths[caller]["id"] if caller != ANONYMOUS else None
    smiths = [s for s in found(body.get("data"), path.rpartition(".")[2]) if s is not None]
    errors = body.get("errors") or []
    denied = [e for e in errors if e.get("extensions", {}).get("code") in DENIED]
    want = expected(declared(SCHEMA.query_type.fields[root]), caller, f"Query.{root}")  # type: ignore[union-attr]
    if want is not None:  # refused at the root field already
        assert {e["extensions"]["code"] for e in denied} == {want}, errors
        return
    if field not in PUBLIC_SMITH_FIELDS and Perm.MANAGE_SMITHS not in ROLE_PERMISSIONS[Role(caller)]:
        assert denied, f"{caller} read {path}.{field} of another smith: {body}"
        assert {e["extensions"]["code"] for e in denied} == {"FORBIDDEN"}, errors
        # Refused at the private field itself, not at the entity that led there.
        assert {e["path"][-1] for e in denied} == {field}, errors
        # A nullable field is null; a non-null one takes its smith with it. Only one's own shows.
        assert all(s[field] is None for s in smiths if s["id"] != me), body
    else:
        assert not denied, f"{caller} was refused {path}.{field}: {errors}"
        assert any(s["id"] != me for s in smiths), f"no other smith reached through {path}: {body}"


def test_every_field_that_yields_a_smith_is_in_the_nested_matrix_or_yields_only_ones_own() -> None:
    yielding = {
        f"{type_.name}.{name}"
        for type_ in SCHEMA.type_map.values()
        if isinstance(type_, GraphQLObjectType) and not type_.name.startswith("__")
        for name, field in type_.fields.items()
        if get_named_type(field.type).name == "Smith"
    }
    assert yielding == set(NESTED) | OWN_OR_MANAGED, "add a path to NESTED (or to OWN_OR_MANAGED, with why)"


def test_only_the_id_and_name_of_a_smith_are_public() -> None:
    smith = SCHEMA.type_map["Smith"]
    unguarded = {
        name
        for name, field in smith.fields.items()  # type: ignore[attr-defined]
        if not any(d.name.value == "selfOr" for d in (field.ast_node and field.ast_node.directives or ()))
    }
    assert unguarded == PUBLIC_SMITH_FIELDS
