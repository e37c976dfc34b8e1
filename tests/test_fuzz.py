"""Property-based fuzzing of the GraphQL endpoint: hypothesis-graphql writes queries and
mutations from our own SDL, with arbitrary argument values, and posts them to the in-process app
as an admin and as an anonymous caller. Whatever they ask, the server answers: no HTTP 500 and no
INTERNAL_SERVER_ERROR, only typed errors (BAD_USER_INPUT, NOT_FOUND, ...).

JSON arguments get finite values, numbers that overflow a double (`1e400` reads as infinity) and
the NaN and Infinity a document cannot write but a JSON body can (sent as variables); duration
arguments (`robotTelemetry.timeRange`) get durations in and out of range, overflowing and odd ones.

The run is bounded and derandomized (the same documents on every run), so it is a regression
test; a longer exploratory run only needs a larger SEPULKI_FUZZ_EXAMPLES.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
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
from tests.template import SeededTemplate
from tests.test_authorization_matrix import INSERT_SESSION, declared, generous, private_database

EXAMPLES = int(os.environ.get("SEPULKI_FUZZ_EXAMPLES", "0")) or None
ADMIN_EXAMPLES = EXAMPLES or 180
ANONYMOUS_EXAMPLES = EXAMPLES or 70
JSON_AND_DURATION_EXAMPLES = EXAMPLES or 150

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


def _object_node(fields: dict[str, graphql.ValueNode]) -> graphql.ObjectValueNode:
    return nodes.Object(
        [graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=v) for k, v in fields.items()]
    )


FINITE_JSON = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
).map(_value_node)
# Numbers past a double: floats Python reads as ±infinity, and integers of 300 to 6,000 digits
# (past int()'s 4,300-digit limit graphql-core reads them as a float: infinity).
OVERFLOWING_NUMBERS = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1e309", "2.5E+999", "-0.1e99999"]).map(
        lambda v: graphql.FloatValueNode(value=v)
    ),
    st.integers(min_value=300, max_value=6000).map(lambda n: graphql.IntValueNode(value="9" * n)),
)
# What a document cannot write, so the document names a variable and `Target.post` sends its
# value in a body written by hand (Python's json module reads NaN, Infinity and 1e400 = inf).
JSON_VARIABLES = {
    "jsonNaN": "NaN",
    "jsonInfinity": "Infinity",
    "jsonMinusInfinity": "-Infinity",
    "jsonOverflow": "1e400",
    "jsonNestedNaN": '{"a": [1, {"b": NaN}]}',
    "jsonTextInfinity": '"[1, Infinity]"',  # a JSON string holding JSON is parsed too
    "jsonTextTooDeep": json.dumps("[" * 100_000),  # ... and may nest past the parser's depth
    "jsonFinite": '{"a": 1.5, "b": [1, "x"]}',
}
JSON_VARIABLE_NODES = st.sampled_from(sorted(JSON_VARIABLES)).map(
    lambda name: graphql.VariableNode(name=graphql.NameNode(value=name))
)
JSON_TREES = st.recursive(
    FINITE_JSON | OVERFLOWING_NUMBERS | JSON_VARIABLE_NODES,
    lambda children: (
        st.lists(children, max_size=4).map(nodes.List)
        | st.dictionaries(NAMES, children, max_size=4).map(_object_node)
    ),
    max_leaves=12,
)
UNSTORABLE = OVERFLOWING_NUMBERS | JSON_VARIABLE_NODES
JSON_NODES = st.one_of(
    JSON_TREES,
    # Most JSON arguments must be objects: an object holding one unstorable number gets past that.
    st.dictionaries(NAMES, UNSTORABLE, min_size=1, max_size=2).map(_object_node),
    JSON_VARIABLE_NODES,
)
UNITS = st.sampled_from("smhdwy")
DURATIONS = st.one_of(
    st.from_regex(r"[0-9]{1,3}[smhd]", fullmatch=True),  # the accepted form, in and out of 1s..31d
    st.builds("{}{}".format, st.integers(min_value=0, max_value=10**30), UNITS),  # overflowing
    st.builds(lambda n, unit: "9" * n + unit, st.integers(min_value=10, max_value=6000), UNITS),
    st.builds(  # other scripts' digits (Python's \d and int() accept them)
        "{}{}".format, st.text(st.characters(categories=["Nd"]), min_size=1, max_size=3), UNITS
    ),
    st.from_regex(r"\s{0,2}-?[0-9]{1,3}\.?[0-9]?\s?[smhdSMHD]?\s{0,2}", fullmatch=True),
    st.text(max_size=20),
).map(nodes.String)
CUSTOM_SCALARS = {
    "ID": st.one_of(
        st.sampled_from(SEED_IDS), st.uuids().map(str), st.text(max_size=40), st.integers().map(str)
    ).map(nodes.String),
    "JSON": JSON_NODES,
    # String arguments that hold a duration, retyped as this scalar in FUZZ_SCHEMA (below).
    "Duration": DURATIONS,
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


# A String argument whose name says it holds a duration ("15m", "1h", "7d").
DURATION_ARGUMENT = re.compile(r"(?i)(range|duration|window|period|interval)$")


def _duration_schema(schema: graphql.GraphQLSchema) -> tuple[graphql.GraphQLSchema, list[str]]:
    """The schema, to generate from, with every duration String argument (and input field) typed
    as the scalar Duration, so that it gets duration-like values; and the root fields' arguments
    so retyped, as `Type.field.argument`."""

    class Retype(graphql.Visitor):
        def enter_input_value_definition(self, node: Any, *_args: Any) -> Any:
            inner = node.type.type if isinstance(node.type, graphql.NonNullTypeNode) else node.type
            if (
                isinstance(inner, graphql.NamedTypeNode)
                and inner.name.value == "String"
                and DURATION_ARGUMENT.search(node.name.value)
            ):
                duration: Any = graphql.NamedTypeNode(name=graphql.NameNode(value="Duration"))
                if isinstance(node.type, graphql.NonNullTypeNode):
                    duration = graphql.NonNullTypeNode(type=duration)
                return graphql.InputValueDefinitionNode(
                    name=node.name,
                    type=duration,
                    default_value=node.default_value,
                    directives=node.directives,
                    description=node.description,
                )
            return None

    document = graphql.visit(graphql.parse(graphql.print_schema(schema)), Retype())
    scalar = graphql.ScalarTypeDefinitionNode(name=graphql.NameNode(value="Duration"), directives=())
    document = graphql.DocumentNode(definitions=(*document.definitions, scalar))
    built = graphql.build_ast_schema(document)
    paths = [
        f"{root.name}.{name}.{arg}"
        for root in (built.query_type, built.mutation_type)
        if root is not None
        for name, field in root.fields.items()
        for arg, argument in field.args.items()
        if graphql.get_named_type(argument.type).name == "Duration"
    ]
    return built, paths


FUZZ_SCHEMA, DURATION_ARGUMENTS = _duration_schema(SCHEMA)


def _takes(field: graphql.GraphQLField, scalars: set[str]) -> bool:
    """Whether one of the field's arguments, or a field of its input objects, is one of these."""
    seen: set[str] = set()
    pending = [graphql.get_named_type(a.type) for a in field.args.values()]
    while pending:
        named = pending.pop()
        if named.name in scalars:
            return True
        if isinstance(named, graphql.GraphQLInputObjectType) and named.name not in seen:
            seen.add(named.name)
            pending.extend(graphql.get_named_type(f.type) for f in named.fields.values())
    return False


# The served schema's root fields (their @requires declarations), by root type and name.
SERVED_FIELDS = {
    (root.name, name): field
    for root in (SCHEMA.query_type, SCHEMA.mutation_type)
    if root is not None
    for name, field in root.fields.items()
}


def _fields(anonymous: bool, taking: set[str] | None = None) -> list[str]:
    roots = (FUZZ_SCHEMA.query_type, FUZZ_SCHEMA.mutation_type)
    return [
        name
        for root in roots
        if root is not None
        for name, field in root.fields.items()
        if not _needs_upload(field)
        and (not anonymous or declared(SERVED_FIELDS[root.name, name]).kind == "open")
        and (taking is None or _takes(field, taking))
    ]


def documents(anonymous: bool, taking: set[str] | None = None) -> st.SearchStrategy[str]:
    return from_schema(FUZZ_SCHEMA, fields=_fields(anonymous, taking), custom_scalars=CUSTOM_SCALARS)


def asks_with_a_duration(document: str) -> bool:
    """Whether the document gives one of DURATION_ARGUMENTS a value."""
    wanted = {tuple(path.split(".")[1:]) for path in DURATION_ARGUMENTS}
    try:
        tree = graphql.parse(document)
    except graphql.GraphQLError:
        return False
    found = False

    class Find(graphql.Visitor):
        def enter_field(self, node: graphql.FieldNode, *_args: Any) -> None:
            nonlocal found
            found = found or any((node.name.value, a.name.value) in wanted for a in node.arguments or ())

    graphql.visit(tree, Find())
    return found


def with_variables(document: str) -> tuple[str, str | None]:
    """The document with the JSON variables it names declared (`JSON!`), and the `variables`
    object of the request as JSON text (None when it names none)."""
    try:
        tree = graphql.parse(document)
    except graphql.GraphQLError:
        return document, None
    used: set[str] = set()

    class Collect(graphql.Visitor):
        def enter_variable(self, node: graphql.VariableNode, *_args: Any) -> None:
            used.add(node.name.value)

    graphql.visit(tree, Collect())
    names = sorted(used & JSON_VARIABLES.keys())
    if not names:
        return document, None
    json_type = graphql.NonNullTypeNode(type=graphql.NamedTypeNode(name=graphql.NameNode(value="JSON")))
    declared_variables = tuple(
        graphql.VariableDefinitionNode(
            variable=graphql.VariableNode(name=graphql.NameNode(value=name)), type=json_type
        )
        for name in names
    )
    tree = graphql.DocumentNode(
        definitions=tuple(
            dataclasses.replace(d, variable_definitions=declared_variables)
            if isinstance(d, graphql.OperationDefinitionNode)
            else d
            for d in tree.definitions
        )
    )
    variables = "{" + ", ".join(f"{json.dumps(name)}: {JSON_VARIABLES[name]}" for name in names) + "}"
    return graphql.print_ast(tree), variables


class Target:
    """The app on a private database, with a fuzzing admin and a fresh session per call (a
    generated logout or password change must not turn the rest of the run anonymous)."""

    def __init__(self, api: Api, admin: dict[str, Any]) -> None:
        self.api = api
        self.admin = admin
        self.cases: dict[str, int] = {"admin": 0, "anonymous": 0}
        self.statuses: dict[str, dict[int, int]] = {"admin": {}, "anonymous": {}}
        # Documents that sent JSON variables (NaN, Infinity, ...), and that asked with a duration.
        self.with_variables = 0
        self.with_durations = 0

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
        document, variables = with_variables(document)
        if variables is None:
            response = await self.api.post(document, token=token)
        else:
            self.with_variables += 1
            headers = {"content-type": "application/json"}
            if token:
                headers["authorization"] = f"Bearer {token}"
            body = '{"query": ' + json.dumps(document) + ', "variables": ' + variables + "}"
            response = await self.api.client.post("/graphql", content=body.encode(), headers=headers)
        if asks_with_a_duration(document):
            self.with_durations += 1
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
async def target(
    postgres_url: str, template: SeededTemplate, base_settings: Settings
) -> AsyncIterator[Target]:
    # Module scope: one database and app for the whole run, so no function-scoped fixture is
    # shared between Hypothesis examples (each example gets its own session instead).
    async with private_database(postgres_url, template) as url:
        async with Api.running(generous(base_settings, url)) as api:
            email = f"fuzzer-{uuid.uuid4().hex[:8]}@sepulki.com"
            await api.create_smith(email, "ADMIN")
            admin = await api.resources.db.fetchrow(
                "SELECT id, email, role::text AS role FROM smiths WHERE email = $1", email
            )
            yield Target(api, dict(admin))


async def _fuzz(target: Target, anonymous: bool, examples: int, taking: set[str] | None = None) -> None:
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
    @given(document=documents(anonymous, taking))
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


async def test_generated_json_and_duration_arguments_never_crash_the_server(target: Target) -> None:
    """Only the fields that take a JSON or duration argument (directly or in an input object),
    so that each gets many of the values above."""
    assert "Query.robotTelemetry.timeRange" in DURATION_ARGUMENTS
    fields = _fields(anonymous=False, taking={"JSON", "Duration"})
    assert {"updateProfile", "forgeSepulka", "sendRobotCommand", "robotTelemetry"} <= set(fields)
    cases, variables, durations = target.cases["admin"], target.with_variables, target.with_durations
    await _fuzz(target, anonymous=False, examples=JSON_AND_DURATION_EXAMPLES, taking={"JSON", "Duration"})
    cases = target.cases["admin"] - cases
    variables = target.with_variables - variables
    durations = target.with_durations - durations
    assert cases == JSON_AND_DURATION_EXAMPLES
    # The generation reaches what it is for: NaN & co. as variables, and durations.
    assert variables > 0 and durations > 0, (variables, durations)
    print(
        f"fuzz (JSON, durations): {cases} documents, {variables} with JSON variables, {durations} durations"
    )


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
