"""Developers point GraphiQL, codegen and client libraries at the development API: the real
introspection queries of graphql-js and graphql-core pass, by a rule of their own (14 deep, past
the depth limit of 12), while an introspection built to multiply its answer is refused, and
production still refuses introspection altogether."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any

import pytest
from graphql import build_client_schema, get_introspection_query

from app.settings import Settings
from app.web.query_limits import (
    MAX_INTROSPECTION_ALIASES,
    MAX_INTROSPECTION_DEPTH,
    MAX_INTROSPECTION_LISTS,
)
from tests.support import ADMIN, ROOT, Api

GRAPHQL_HTTP = ROOT / "tests" / "graphql_http"


def graphql_js_query(type_depth: int = 9) -> str:
    """getIntrospectionQuery of graphql-js (tests/graphql_http/node_modules) with every option on."""
    node = shutil.which("node")
    if node is None or not (GRAPHQL_HTTP / "node_modules" / "graphql").is_dir():
        pytest.skip("node and tests/graphql_http/node_modules (npm ci) are needed")
    script = GRAPHQL_HTTP / "introspection-query.mjs"
    out = subprocess.run(
        [node, str(script), str(type_depth)], cwd=GRAPHQL_HTTP, capture_output=True, text=True, check=True
    )
    query: str = json.loads(out.stdout)
    return query


GRAPHQL_CORE_QUERY = get_introspection_query(
    descriptions=True,
    specified_by_url=True,
    directive_is_repeatable=True,
    schema_description=True,
    input_value_deprecation=True,
    one_of=True,
)


async def introspect(api: Api, query: str) -> dict[str, Any]:
    response = await api.post(query)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body["errors"]
    data: dict[str, Any] = body["data"]
    return data


def refusal(body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(e["extensions"]["code"], e["extensions"].get("introspection")) for e in body["errors"]]


async def test_graphiql_and_codegen_introspect_the_development_api_with_graphql_js(api: Api) -> None:
    query = graphql_js_query()
    assert "isOneOf" in query and "specifiedByURL" in query and "isRepeatable" in query
    data = await introspect(api, query)
    schema = build_client_schema(data)  # type: ignore[arg-type]
    assert schema.query_type is not None and "robots" in schema.query_type.fields
    assert schema.subscription_type is not None and "robotStatus" in schema.subscription_type.fields
    assert {"requires", "authenticated", "selfOr"} <= {d.name for d in schema.directives}


async def test_python_clients_introspect_the_development_api_with_graphql_core(api: Api) -> None:
    data = await introspect(api, GRAPHQL_CORE_QUERY)
    schema = build_client_schema(data)  # type: ignore[arg-type]
    robots = schema.query_type.fields["robots"]  # type: ignore[union-attr]
    assert robots.description is not None and robots.description.endswith("Requires: VIEW_ROBOTS")
    # graphql-core's default options too (what gql sends with fetch_schema_from_transport).
    build_client_schema(await introspect(api, get_introspection_query()))  # type: ignore[arg-type]


async def test_introspection_with_a_deeper_type_depth_passes_up_to_its_own_depth_bound(api: Api) -> None:
    # typeDepth 15 makes the query exactly MAX_INTROSPECTION_DEPTH deep; 16 goes past it.
    build_client_schema(await introspect(api, graphql_js_query(15)))  # type: ignore[arg-type]
    response = await api.post(graphql_js_query(16))
    assert response.status_code == 400
    assert refusal(response.json()) == [
        ("BAD_USER_INPUT", {"limit": "depth", "value": MAX_INTROSPECTION_DEPTH + 1, "maximum": 20})
    ]
    assert response.json()["errors"][0]["message"] == "Introspection depth 21 exceeds the maximum of 20"


async def test_deep_of_type_nesting_is_refused(api: Api) -> None:
    of_type = "name " + "ofType { name " * 30 + "}" * 30
    response = await api.post(f'{{ __type(name: "Robot") {{ {of_type} }} }}')
    assert response.status_code == 400
    [(code, figures)] = refusal(response.json())
    assert code == "BAD_USER_INPUT"
    assert figures == {"limit": "depth", "value": 31, "maximum": MAX_INTROSPECTION_DEPTH}


async def test_fifty_aliased_schemas_are_refused(api: Api) -> None:
    aliases = " ".join(f"s{i}: __schema {{ types {{ name }} }}" for i in range(50))
    response = await api.post(f"{{ {aliases} }}")
    assert response.status_code == 400
    body = response.json()
    assert refusal(body) == [
        ("BAD_USER_INPUT", {"limit": "rootFields", "value": 50, "maximum": 3}),
        ("BAD_USER_INPUT", {"limit": "aliases", "value": 50, "maximum": MAX_INTROSPECTION_ALIASES}),
    ]
    assert body["errors"][0]["message"] == (
        "The introspection operation asks for __schema/__type 50 times; the maximum is 3"
    )


async def test_nested_lists_that_multiply_the_answer_are_refused(api: Api) -> None:
    # Well within the depth bound, but each list inside another multiplies the answer: every
    # type's fields' arguments' types' fields' arguments. graphql-core's own rule counts only
    # fields/interfaces/possibleTypes/inputFields (2 here) and lets it through.
    bomb = "{ __schema { types { fields { args { type { fields { args { type { name } } } } } } } } }"
    response = await api.post(bomb)
    assert response.status_code == 400
    [(code, figures)] = refusal(response.json())
    assert code == "BAD_USER_INPUT"
    assert figures == {"limit": "lists", "value": 5, "maximum": MAX_INTROSPECTION_LISTS}
    assert response.json()["errors"][0]["message"] == (
        "Introspection nests 5 lists (types, fields, args, ...); the maximum is 3"
    )
    # Three lists, as the real queries nest them, pass.
    await introspect(api, "{ __schema { types { fields { args { type { name ofType { name } } } } } } }")


async def test_a_document_mixing_introspection_with_data_gets_the_normal_depth_limit(api: Api) -> None:
    token = await api.token(*ADMIN)
    mixed = GRAPHQL_CORE_QUERY.replace("__schema {", "robots { id } __schema {", 1)
    response = await api.post(mixed, token=token)
    assert response.status_code == 400
    [error] = response.json()["errors"]
    assert error["message"] == "Query depth 14 exceeds the maximum of 12"
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}


async def test_production_still_refuses_the_real_introspection_query(settings: Settings) -> None:
    async with Api.running(settings.replace(env="production", jwt_secret="p" * 40)) as api:
        token = await api.token(*ADMIN)
        response = await api.post(GRAPHQL_CORE_QUERY, token=token)
        assert response.status_code == 400
        errors = response.json()["errors"]
        assert {e["extensions"]["code"] for e in errors} == {"BAD_USER_INPUT"}
        assert any("introspection" in e["message"].lower() for e in errors)


async def test_an_introspection_fragment_bomb_is_measured_quickly_and_refused(api: Api) -> None:
    # Each fragment spreads the next twice: 2^25 aliased __schema fields from 27 lines.
    n = 25
    spreads = "\n".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(n))
    query = f"query {{ ...F0 }}\n{spreads}\nfragment F{n} on Query {{ s: __schema {{ types {{ name }} }} }}"
    started = time.perf_counter()
    response = await api.post(query)
    assert time.perf_counter() - started < 1
    assert response.status_code == 400
    assert [figures["limit"] for _, figures in refusal(response.json())] == ["rootFields", "aliases"]
