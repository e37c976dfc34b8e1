"""Property-based fuzzing of the GraphQL endpoint: hypothesis-graphql writes queries and
mutations from our own SDL, with arbitrary argument values, and posts them to the in-process app
as an admin and as an anonymous caller. Whatever they ask, the server answers: no HTTP 500 and no
INTERNAL_SERVER_ERROR, only typed errors (BAD_USER_INPUT, NOT_FOUND, ...).

The run is bounded and derandomized (the same documents on every run), so it is a regression
test; a longer exploratory run only needs a larger SEPULKI_FUZZ_EXAMPLES.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import graphql
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import from_schema, nodes

from app.settings import Settings
from app.web.graphql_app import build_schema
from tests.seed_ids import (
    ALPHA,
    ARM_PATTERN,
    DEMO_ID,
    DEV_FLEET,
    DEV_FLOOR,
    DEV_ID,
    DEV_LAB,
    DEVBOT_INGOT,
    DEVBOT_SEPULKA,
    GEARBOX_TASK,
    PICK_RUN,
    SERVO,
    SPEED_EDICT,
    TEST_UNITS_FLEET,
    WAREHOUSE_BOT_01,
    WAREHOUSE_SEPULKA,
)
from tests.support import Api
from tests.test_authorization_matrix import INSERT_SESSION, declared, generous, private_database

EXAMPLES = int(os.environ.get("SEPULKI_FUZZ_EXAMPLES", "0")) or None
ADMIN_EXAMPLES = EXAMPLES or 180
ANONYMOUS_EXAMPLES = EXAMPLES or 70

SCHEMA = build_schema()
# Ids of the seed data, so that generated calls reach rows and not only "not found" answers.
SEED_IDS = [
    DEV_ID,  # dev smith
    DEMO_ID,  # demo smith
    ARM_PATTERN,  # pattern
    SERVO,  # alloy
    DEV_LAB,  # locus
    DEV_FLEET,  # fleet with robots
    TEST_UNITS_FLEET,  # empty fleet
    DEVBOT_SEPULKA,  # sepulka with robots
    WAREHOUSE_SEPULKA,  # CAST_READY sepulka
    DEVBOT_INGOT,  # ingot
    ALPHA,  # robot
    WAREHOUSE_BOT_01,  # robot
    GEARBOX_TASK,  # open task
    PICK_RUN,  # run
    SPEED_EDICT,  # edict
    DEV_FLOOR,  # factory floor
]
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


def _value_node(value: Any) -> graphql.ValueNode:
    if value is None:
        return graphql.NullValueNode()
    if isinstance(value, bool):
        return graphql.BooleanValueNode(value=value)
    if isinstance(value, int):
        return nodes.Int(value)
    if isinstance(value, float):
        return nodes.Float(value)
    if isinstance(value, str):
        return nodes.String(value)
    if isinstance(value, list):
        return nodes.List([_value_node(v) for v in value])
    fields = [
        graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=_value_node(v))
        for k, v in value.items()
    ]
    return nodes.Object(fields)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(NAMES, children, max_size=4),
    max_leaves=12,
)
CUSTOM_SCALARS = {
    "ID": st.one_of(
        st.sampled_from(SEED_IDS), st.uuids().map(str), st.text(max_size=40), st.integers().map(str)
    ).map(nodes.String),
    "JSON": JSON_VALUES.map(_value_node),
    "DateTime": st.one_of(
        st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
        st.datetimes().map(lambda d: d.isoformat()),  # no offset: refused
        st.text(max_size=30),
    ).map(nodes.String),
    # Files only travel in multipart requests; in a JSON document the argument can only be null.
    "Upload": st.just(graphql.NullValueNode()),
}


def _needs_upload(field: graphql.GraphQLField) -> bool:
    return any(
        isinstance(a.type, graphql.GraphQLNonNull) and graphql.get_named_type(a.type).name == "Upload"
        for a in field.args.values()
    )


def _fields(anonymous: bool) -> list[str]:
    roots = (SCHEMA.query_type, SCHEMA.mutation_type)
    return [
        name
        for root in roots
        if root is not None
        for name, field in root.fields.items()
        if not _needs_upload(field) and (not anonymous or declared(field).kind == "open")
    ]


def documents(anonymous: bool) -> st.SearchStrategy[str]:
    return from_schema(SCHEMA, fields=_fields(anonymous), custom_scalars=CUSTOM_SCALARS)


class Target:
    """The app on a private database, with a fuzzing admin and a fresh session per call (a
    generated logout or password change must not turn the rest of the run anonymous)."""

    def __init__(self, api: Api, admin: dict[str, Any]) -> None:
        self.api = api
        self.admin = admin
        self.cases: dict[str, int] = {"admin": 0, "anonymous": 0}
        self.statuses: dict[str, dict[int, int]] = {"admin": {}, "anonymous": {}}

    async def token(self) -> str:
        session_id = await self.api.resources.db.fetchval(
            INSERT_SESSION, self.admin["id"], secrets.token_hex(32)
        )
        token, _ = self.api.resources.tokens.issue(self.admin, session_id)
        return token

    async def post(self, document: str, as_admin: bool) -> None:
        mode = "admin" if as_admin else "anonymous"
        self.cases[mode] += 1
        token = await self.token() if as_admin else None
        response = await self.api.post(document, token=token)
        statuses = self.statuses[mode]
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"HTTP {response.status_code} for\n{document}\n{response.text}"
        # 400: a document over a limit (depth, cost) or with an invalid literal, refused unexecuted.
        assert response.status_code in (200, 400), response.text
        body = response.json()
        crashes = [
            e
            for e in body.get("errors") or []
            if e.get("extensions", {}).get("code") == "INTERNAL_SERVER_ERROR"
        ]
        assert not crashes, f"crash for\n{document}\n{crashes}"


@pytest.fixture(scope="module")
async def target(postgres_url: str, template_url: str, base_settings: Settings) -> AsyncIterator[Target]:
    # Module scope: one database and app for the whole run, so no function-scoped fixture is
    # shared between Hypothesis examples (each example gets its own session instead).
    template = template_url.rpartition("/")[2]
    async with private_database(postgres_url, template, "fuzz") as url:
        async with Api.running(generous(base_settings, url)) as api:
            email = f"fuzzer-{uuid.uuid4().hex[:8]}@sepulki.com"
            await api.create_smith(email, "ADMIN")
            admin = await api.resources.db.fetchrow(
                "SELECT id, email, role::text AS role FROM smiths WHERE email = $1", email
            )
            yield Target(api, dict(admin))


async def _fuzz(target: Target, anonymous: bool, examples: int) -> None:
    """Hypothesis drives the examples from a worker thread; each document is posted on the
    test's event loop, which stays free to serve the app in the meantime."""
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        # Shrinking a failure would replay it many times; the failing document is reported as is.
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(document=documents(anonymous))
    def run(document: str) -> None:
        asyncio.run_coroutine_threadsafe(target.post(document, not anonymous), loop).result(timeout=60)

    await asyncio.to_thread(run)


async def test_generated_documents_never_crash_the_server_for_an_admin(target: Target) -> None:
    await _fuzz(target, anonymous=False, examples=ADMIN_EXAMPLES)
    assert target.cases["admin"] == ADMIN_EXAMPLES
    print(f"fuzz (admin): {target.cases['admin']} documents, HTTP statuses {target.statuses['admin']}")


async def test_generated_documents_never_crash_the_server_for_an_anonymous_caller(target: Target) -> None:
    await _fuzz(target, anonymous=True, examples=ANONYMOUS_EXAMPLES)
    assert target.cases["anonymous"] == ANONYMOUS_EXAMPLES
    cases, statuses = target.cases["anonymous"], target.statuses["anonymous"]
    print(f"fuzz (anonymous): {cases} documents, HTTP statuses {statuses}")


# Text PostgreSQL cannot store: NUL characters, in plain arguments and inside JSON. Each must be
# refused as the client's error wherever it lands (found by a 6,000-document run of the fuzzer
# and by following its first find through every text and JSON argument). `~` marks the NUL.
ALLOY = f'"{SERVO}"'
EDICT = 'name: "n", type: SAFETY, severity: INFO, rules: {condition: {type: "t", operator: "AND", rules: []}'
NUL_DOCUMENTS = {
    "resetPassword": 'mutation { resetPassword(email: "~") }',
    "login": 'mutation { login(credentials: {email: "~", password: "x"}) { errors { code } } }',
    "inviteSmith": 'mutation { inviteSmith(email: "a~@b.co") { errors { code } } }',
    "updateProfile": 'mutation { updateProfile(input: {preferences: {a: "~"}}) { errors { code } } }',
    "addEdict.description": "mutation { addEdict(input: {"
    + EDICT
    + ', actions: []}, description: "~"}) { id } }',
    "addEdict.rules": (
        'mutation { addEdict(input: {name: "n", type: SAFETY, severity: INFO, '
        'rules: {condition: {type: "t", operator: "AND", rules: ["~"]}, actions: []}}) { id } }'
    ),
    "updateEdict.appliesTo": (
        'mutation { updateEdict(id: "a0000000-0000-4000-8000-000000000001", input: {'
        + EDICT
        + ', actions: []}, appliesTo: {fleets: ["~"]}}) { id } }'
    ),
    "forgeSepulka.name": 'mutation { forgeSepulka(input: {name: "~", alloyIds: ['
    + ALLOY
    + "]}) { errors { code } } }",
    "forgeSepulka.description": (
        'mutation { forgeSepulka(input: {name: "n", description: "~", alloyIds: [' + ALLOY + "]}) "
        "{ errors { code } } }"
    ),
    "forgeSepulka.parameters": (
        'mutation { forgeSepulka(input: {name: "n", parameters: {a: "~"}, alloyIds: [' + ALLOY + "]}) "
        "{ errors { code } } }"
    ),
    "sendRobotCommand.params": (
        'mutation { sendRobotCommand(robotId: "70000000-0000-4000-8000-000000000001", type: "PING", '
        'params: {a: "~"}) { id } }'
    ),
    "dispatchTask.description": (
        'mutation { dispatchTask(fleetId: "40000000-0000-4000-8000-000000000002", '
        'input: {name: "n", description: "~", type: CUSTOM}) { errors { code } } }'
    ),
    "createRobotApiKey.name": (
        'mutation { createRobotApiKey(robotId: "70000000-0000-4000-8000-000000000001", name: "a~") '
        "{ errors { code } } }"
    ),
    "updateFactoryFloor.description": (
        'mutation { updateFactoryFloor(id: "b0000000-0000-4000-8000-000000000001", '
        'input: {description: "~"}) { errors { code } } }'
    ),
    "alloys.tags": '{ alloys(filter: {tags: ["~"]}) { id } }',
    "sepulkas.tags": '{ sepulkas(filter: {tags: ["~"]}) { id } }',
    "auditLogs.action": '{ auditLogs(filter: {action: "~"}) { edges { cursor } } }',
}


@pytest.mark.parametrize("document", list(NUL_DOCUMENTS.values()), ids=list(NUL_DOCUMENTS))
async def test_text_postgresql_cannot_store_is_a_user_error(target: Target, document: str) -> None:
    response = await target.api.post(document.replace("~", "\\u0000"), token=await target.token())
    assert response.status_code == 200, response.text
    body = response.json()
    codes = [e["extensions"]["code"] for e in body.get("errors") or []]
    data = body.get("data") or {}
    payload_codes = [e["code"] for v in data.values() if isinstance(v, dict) for e in v.get("errors") or []]
    assert codes + payload_codes == ["BAD_USER_INPUT"], body
