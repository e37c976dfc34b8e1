"""API hardening: what a client may ask for (cost, depth, aliases, tokens, body size, batches,
request rate), what it learns about the schema in production, and the headers every answer carries."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from graphql import GraphQLError, parse, validate
from graphql import build_schema as build_sdl_schema

from app.settings import Settings
from app.web.errors import make_error_formatter
from app.web.graphql_app import build_schema
from app.web.http_security import API_CSP, PREFLIGHT_MESSAGE
from app.web.query_limits import alias_limit_rule, cost_map, cost_rule, depth_limit_rule
from tests.live import serving
from tests.support import ADMIN, LOGIN, Api


def cost_of(schema: Any, query: str, variables: dict[str, Any] | None = None) -> int:
    """The cost the validator computes (a budget of 0 makes it report the actual figure)."""
    [error] = validate(schema, parse(query), [cost_rule(0, cost_map(schema), variables or {})])
    return int(re.search(r"Actual cost is (\d+)", error.message)[1])  # type: ignore[index]


def codes(response: httpx.Response) -> list[str]:
    return [e["extensions"]["code"] for e in response.json()["errors"]]


async def running(settings: Settings, **changes: Any) -> AsyncIterator[Api]:
    async with Api.running(settings.replace(**changes)) as api:
        yield api


def test_lists_cost_their_page_at_every_level() -> None:
    schema = build_schema()
    # A list asked without `limit` costs the page it gets (50); `limit` counts at most 500.
    assert cost_of(schema, "{ loci { id } }") == 50 + 1
    assert cost_of(schema, "{ loci(limit: 600) { id } }") == 500 + 1
    # A nested list costs one per item of its parent: 10 fleets, then up to 10 robot lists.
    assert cost_of(schema, "{ fleets(limit: 10) { robots { id } } }") == 10 + 10 + 1
    # A nested list with a page argument multiplies by it, from variables too.
    nested = build_sdl_schema(
        "type Query { fleets(limit: Int): [Fleet!]! }"
        " type Fleet { robots(first: Int): [Robot!]! } type Robot { id: ID }"
    )
    assert cost_of(nested, "{ fleets(limit: 10) { robots(first: 20) { id } } }") == 10 + 200 + 1
    query = "query($n: Int) { fleets(limit: $n) { robots(first: 20) { id } } }"
    assert cost_of(nested, query, {"n": 3}) == 3 + 60 + 1


async def test_a_costly_nested_query_is_refused_where_its_root_alone_would_pass(settings: Settings) -> None:
    async for api in running(settings, max_query_cost=1000):
        token = await api.token(*ADMIN)
        assert (await api.post("{ fleets(limit: 400) { id name } }", token=token)).status_code == 200
        nested = await api.post("{ fleets(limit: 400) { robots { id } constraints { id } } }", token=token)
        assert nested.status_code == 400
        [error] = nested.json()["errors"]
        assert error["message"] == "The query exceeds the maximum cost of 1000. Actual cost is 1202"
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert error["extensions"]["cost"] == {"requestedQueryCost": 1202, "maximumAvailable": 1000}


async def test_graphiqls_whole_document_runs_the_chosen_operation_priced_with_its_own_defaults(
    settings: Settings,
) -> None:
    # GraphiQL sends every operation of its editor with each run: the others may need variables
    # this run does not send, and their prices must not add up to the chosen one's.
    document = """
    query Pick($id: ID!) { robot(id: $id) { id } }
    query Paged($n: Int = 400) { fleets(limit: $n) { id } }
    query Big { fleets(limit: 400) { id name } }
    """
    async for api in running(settings, max_query_cost=600):
        token = await api.token(*ADMIN)
        headers = {"authorization": f"Bearer {token}"}
        for name in ("Paged", "Big"):
            response = await api.client.post(
                "/graphql", json={"query": document, "operationName": name}, headers=headers
            )
            assert response.status_code == 200, response.json()
            assert "errors" not in response.json()
        # A default is priced like a sent value: 400 fleets, each with its robots, is too dear.
        costly = "query Deep($n: Int = 400) { fleets(limit: $n) { robots { id } } }"
        response = await api.client.post("/graphql", json={"query": costly}, headers=headers)
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "cost" in response.json()["errors"][0]["message"]


def test_a_fragment_bomb_is_measured_quickly_and_refused() -> None:
    # Each fragment spreads the next twice: 2^25 aliased fields from a document of 60 lines.
    n = 25
    spreads = "\n".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(n))
    query = f"query {{ ...F0 }}\n{spreads}\nfragment F{n} on Query {{ a: me {{ id }} }}"
    schema = build_schema()
    rules = [depth_limit_rule(12), alias_limit_rule(30), cost_rule(5000, cost_map(schema), {})]
    started = time.perf_counter()
    errors = validate(schema, parse(query), rules)
    assert time.perf_counter() - started < 1
    assert [e.message for e in errors] == [
        "The operation uses 33554432 aliases; the maximum is 30",
        "The query exceeds the maximum cost of 5000. Actual cost is 67108864",
    ]


async def test_too_many_aliases_are_refused(api: Api) -> None:
    thirty = " ".join(f"a{i}: __typename" for i in range(30))
    assert (await api.post("{ " + thirty + " }")).status_code == 200
    response = await api.post("{ " + thirty + " one_more: __typename }")
    assert response.status_code == 400
    assert response.json()["errors"][0]["message"] == "The operation uses 31 aliases; the maximum is 30"
    assert codes(response) == ["BAD_USER_INPUT"]


async def test_documents_past_the_token_limit_are_refused_before_validation(settings: Settings) -> None:
    async for api in running(settings, max_query_tokens=50):
        assert (await api.post("{ " + "__typename " * 40 + "}")).status_code == 200
        for query in ("{ " + "__typename " * 60 + "}", "# note\n" * 60 + "{ __typename }"):
            response = await api.post(query)
            assert response.status_code == 400
            assert "Parsing aborted" in response.json()["errors"][0]["message"]
            assert codes(response) == ["BAD_USER_INPUT"]


async def test_bodies_past_the_limit_are_refused_with_413(settings: Settings) -> None:
    async for api in running(settings, max_body_bytes=1000):
        small = await api.client.post(
            "/graphql", json={"query": "{ __typename }", "variables": {"pad": "x" * 800}}
        )
        assert small.status_code == 200
        big = await api.client.post(
            "/graphql", json={"query": "{ __typename }", "variables": {"pad": "x" * 2000}}
        )
        assert big.status_code == 413
        assert big.json()["errors"][0] == {
            "message": "Request body larger than 1000 bytes",
            "extensions": {"code": "PAYLOAD_TOO_LARGE"},
        }

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"query": "{ __typename }", "variables": {"pad": "'
            for _ in range(100):
                yield b"x" * 100
            yield b'"}}'

        # No Content-Length: the body streams in chunks and is cut off once past the limit.
        chunked = await api.client.post(
            "/graphql", content=chunks(), headers={"content-type": "application/json"}
        )
        assert chunked.status_code == 413
        assert codes(chunked) == ["PAYLOAD_TOO_LARGE"]


async def test_a_declared_huge_body_is_refused_before_any_of_it_is_sent(settings: Settings) -> None:
    async with serving(settings) as live:
        host, port = live.ws_url.removeprefix("ws://").split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 413")


async def test_batches_are_refused_unless_enabled_and_then_capped(settings: Settings) -> None:
    operation = {"query": "{ __typename }"}
    async for api in running(settings):
        response = await api.client.post("/graphql", json=[operation])
        assert response.status_code == 400
        assert response.json()["errors"][0]["message"] == (
            "Batched requests are not accepted: send one operation per request"
        )
    async for api in running(settings, max_batch_operations=3):
        pair = await api.client.post("/graphql", json=[operation, {"query": "{ me { id } }"}])
        assert pair.status_code == 200
        first, second = pair.json()
        assert first == {"data": {"__typename": "Query"}}
        assert second["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        with_a_bad_one = await api.client.post("/graphql", json=[operation, {"query": 1}])
        assert (
            with_a_bad_one.json()[1]["errors"][0]["message"]
            == "The query parameter must be a non-empty string"
        )
        too_many = await api.client.post("/graphql", json=[operation] * 4)
        assert too_many.status_code == 400
        assert too_many.json()["errors"][0]["message"] == "A batch holds 1 to 3 operations, not 4"


async def test_development_offers_introspection_and_suggestions(api: Api) -> None:
    schema = await api.post("{ __schema { queryType { name } } }")
    assert schema.json() == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
    typo = await api.post("{ fleeets { id } }")
    assert "Did you mean" in typo.json()["errors"][0]["message"]


async def test_production_hides_the_schema_and_suggestions(settings: Settings) -> None:
    async for api in running(settings, env="production", jwt_secret="p" * 40):
        token = await api.token(*ADMIN)
        introspection = await api.post('{ __type(name: "Robot") { fields { name } } }', token=token)
        assert introspection.status_code == 400
        assert codes(introspection) == ["BAD_USER_INPUT"]
        typo = await api.post("{ fleeets { id } }", token=token)
        assert typo.json()["errors"][0]["message"] == "Cannot query field 'fleeets' on type 'Query'."
        enum = await api.post(
            "query($s: RobotStatus) { robots(status: $s) { id } }", {"s": "IDEL"}, token=token
        )
        message = enum.json()["errors"][0]["message"]
        assert "IDEL" in message and "Did you mean" not in message
        assert (await api.post("{ __typename }")).json() == {"data": {"__typename": "Query"}}


def test_production_errors_carry_no_suggestion_on_any_path() -> None:
    # Subscriptions over websockets format their errors with the same formatter.
    error = GraphQLError(
        "Value 'IDEL' does not exist in 'RobotStatus' enum. Did you mean the enum value 'IDLE'?"
    )
    assert make_error_formatter(hide_suggestions=True)(error, False)["message"] == (
        "Value 'IDEL' does not exist in 'RobotStatus' enum."
    )
    assert "Did you mean" in make_error_formatter(hide_suggestions=False)(error, False)["message"]


async def test_each_address_gets_its_request_budget_then_429(settings: Settings) -> None:
    async for api in running(settings, request_rate_limit_ip="3/minute"):
        for _ in range(3):
            assert (await api.post("{ __typename }")).status_code == 200
        # A CORS preflight and other endpoints do not spend the budget.
        await api.client.options(
            "/graphql", headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"}
        )
        assert (await api.client.get("/health")).status_code == 200
        refused = await api.client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"origin": "http://localhost:3000"}
        )
        assert refused.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 60
        assert refused.json() == {
            "errors": [
                {
                    "message": "Too many requests from this address; retry later",
                    "extensions": {"code": "RATE_LIMITED", "retryAfter": retry_after},
                }
            ]
        }
        # The web frontend can read the refusal (CORS headers are on it).
        assert refused.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = httpx.ASGITransport(app=api.app, client=("198.51.100.7", 4000))
        async with httpx.AsyncClient(transport=other, base_url="http://testserver") as elsewhere:
            response = await elsewhere.post("/graphql", json={"query": "{ __typename }"})
            assert response.status_code == 200


def assert_security_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]


async def test_every_answer_carries_the_security_headers(api: Api) -> None:
    answers = [
        await api.post("{ __typename }"),
        await api.post("{ nope }"),
        await api.client.get("/health"),
        await api.client.get("/nowhere"),
        await api.client.post("/graphql", content=b"x", headers={"content-type": "text/plain"}),
    ]
    for response in answers:
        assert_security_headers(response)
        assert response.headers["content-security-policy"] == API_CSP
        # Development runs on plain http://localhost: no HSTS there.
        assert "strict-transport-security" not in response.headers


async def test_the_graphiql_page_may_load_its_assets_and_nothing_else(api: Api) -> None:
    page = await api.client.get("/graphql", headers={"accept": "text/html", "host": "127.0.0.1:4000"})
    assert page.status_code == 200
    assert_security_headers(page)
    policy = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    # Scripts and styles only from this server: no CDN, no inline script, no eval.
    assert policy["script-src"] == "'self'"
    nonce = re.fullmatch(r"'self' 'nonce-([A-Za-z0-9_-]{20,})'", policy["style-src"])
    assert nonce, policy["style-src"]
    assert f'"styleNonce": "{nonce.group(1)}"' in page.text  # the one runtime <style> GraphiQL adds
    assert policy["connect-src"] == "'self' ws://127.0.0.1:4000 wss://127.0.0.1:4000"
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert "http" not in page.headers["content-security-policy"] and "esm.sh" not in page.text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page.text, flags=re.DOTALL)
    # The bundle, and a JSON data block (never executed) with the page's settings.
    assert [attributes for attributes, _ in scripts] == [
        scripts[0][0],
        ' type="application/json" id="graphiql-config"',
    ]
    assert 'src="/graphiql/assets/graphiql.js' in scripts[0][0] and scripts[0][1] == ""
    again = await api.client.get("/graphql", headers={"accept": "text/html"})
    assert nonce.group(1) not in again.headers["content-security-policy"]  # a fresh nonce per page
    # A Host header that could smuggle directives stays out of the policy.
    forged = await api.client.get("/graphql", headers={"accept": "text/html", "host": "x; script-src *"})
    assert "script-src *" not in forged.headers["content-security-policy"]


async def test_production_answers_demand_https(settings: Settings) -> None:
    async for api in running(settings, env="production", jwt_secret="p" * 40):
        response = await api.post("{ __typename }")
        assert_security_headers(response)
        assert response.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


async def test_cors_admits_the_configured_origins_only(settings: Settings) -> None:
    async for api in running(settings, cors_origins=("https://fleet.example.com",)):
        allowed = await api.client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"origin": "https://fleet.example.com"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://fleet.example.com"
        assert allowed.headers["access-control-allow-credentials"] == "true"
        refused = await api.client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"origin": "http://localhost:3000"}
        )
        assert "access-control-allow-origin" not in refused.headers
        preflight = await api.client.options(
            "/graphql",
            headers={"origin": "http://localhost:3000", "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers


async def test_answers_over_1_kb_are_gzipped(api: Api) -> None:
    large = await api.client.post(
        "/graphql",
        json={"query": "{ __schema { types { name description } } }"},
        headers={"accept-encoding": "gzip"},
    )
    assert len(large.content) > 1024
    assert large.headers["content-encoding"] == "gzip"
    small = await api.client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"accept-encoding": "gzip"}
    )
    assert "content-encoding" not in small.headers


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
CREATE_FLOOR = (
    "mutation($input: FactoryFloorInput!, $file: Upload!) { createFactoryFloor(input: $input, "
    "blueprintFile: $file) { factoryFloor { id blueprintUrl } errors { code } } }"
)


async def multipart(
    api: Api, query: str, variables: dict[str, Any], headers: dict[str, str], upload: str | None = None
) -> httpx.Response:
    """A GraphQL multipart request as a browser form could send it, plus `headers`."""
    operations = json.dumps({"query": query, "variables": variables})
    mapping = {"0": [f"variables.{upload}"]} if upload else {}
    files = {"0": ("hall.png", PNG, "image/png")} if upload else {"x": ("", b"", "text/plain")}
    return await api.client.post(
        "/graphql", data={"operations": operations, "map": json.dumps(mapping)}, files=files, headers=headers
    )


async def test_a_multipart_request_a_foreign_form_could_send_runs_nothing(api: Api) -> None:
    db = api.resources.db
    credentials = {"email": ADMIN[0], "password": ADMIN[1]}
    before = (
        await db.fetchval("SELECT count(*) FROM audit_logs"),
        await db.fetchval("SELECT count(*) FROM sessions"),
    )
    for headers in ({}, {"apollo-require-preflight": ""}, {"x-apollo-operation-name": " "}):
        refused = await multipart(api, LOGIN, credentials, {"origin": "https://evil.example", **headers})
        assert refused.status_code == 400
        [error] = refused.json()["errors"]
        assert error == {"message": PREFLIGHT_MESSAGE, "extensions": {"code": "BAD_USER_INPUT"}}
    # Nothing ran: no login was audited, no session opened.
    assert (
        await db.fetchval("SELECT count(*) FROM audit_logs"),
        await db.fetchval("SELECT count(*) FROM sessions"),
    ) == before
    # A header no foreign page can send without a preflight lets the same request run.
    for headers in ({"apollo-require-preflight": "true"}, {"x-apollo-operation-name": "Login"}):
        ran = await multipart(api, LOGIN, credentials, headers)
        assert ran.status_code == 200
        assert ran.json()["data"]["login"]["session"]["token"]
    assert await db.fetchval("SELECT count(*) FROM sessions") == before[1] + 2


async def test_form_and_text_bodies_stay_refused_with_415(api: Api) -> None:
    for content_type, body in (
        ("text/plain", json.dumps({"query": "mutation { logout }"})),
        ("application/x-www-form-urlencoded", "query=mutation+%7B+logout+%7D"),
    ):
        for extra in ({}, {"apollo-require-preflight": "true"}):
            response = await api.client.post(
                "/graphql", content=body, headers={"content-type": content_type, **extra}
            )
            assert response.status_code == 415
            assert codes(response) == ["BAD_USER_INPUT"]


async def test_the_web_frontend_still_uploads_a_blueprint_from_its_origin(api: Api) -> None:
    origin = "http://localhost:3000"
    asked = ["apollo-require-preflight", "authorization", "x-apollo-operation-name"]
    preflight = await api.client.options(
        "/graphql",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": ", ".join(asked),
        },
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower().split(", ")
    assert set(asked) <= set(allowed)
    hall = {"name": "Upload hall", "widthMeters": 20, "heightMeters": 10, "scaleFactor": 5}
    token = await api.token(*ADMIN)
    # apollo-upload-client with `Apollo-Require-Preflight: true`, and a bearer token alone (it
    # forces the preflight just the same).
    for headers in ({"apollo-require-preflight": "true"}, {}):
        response = await multipart(
            api,
            CREATE_FLOOR,
            {"input": hall, "file": None},
            {"origin": origin, "authorization": f"Bearer {token}", **headers},
            upload="file",
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == origin
        payload = response.json()["data"]["createFactoryFloor"]
        assert payload["errors"] is None and payload["factoryFloor"]["blueprintUrl"].endswith(".png")
