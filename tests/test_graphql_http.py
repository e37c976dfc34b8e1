"""GraphQL over HTTP: the graphql-http audit suite finds nothing to complain about, and the
negotiation rules it does not cover hold too."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from app.settings import Settings
from tests.live import serving
from tests.support import Api

AUDIT_DIR = Path(__file__).parent / "graphql_http"
GRAPHQL_RESPONSE = "application/graphql-response+json"


async def _run(*command: str) -> tuple[int, str, str]:
    # Asynchronously: the server under audit runs on this same event loop.
    process = await asyncio.create_subprocess_exec(
        *command, cwd=AUDIT_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _audit(url: str) -> list[dict[str, Any]]:
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "the GraphQL-over-HTTP audit needs node and npm (Node.js 18+)"
    if not (AUDIT_DIR / "node_modules" / "graphql-http").is_dir():
        # `./run test` installs it first; this covers a bare `pytest` on a clean checkout.
        async with asyncio.timeout(300):
            code, _, err = await _run(npm, "ci", "--no-audit", "--no-fund")
        assert code == 0, err
    async with asyncio.timeout(120):
        code, out, err = await _run(node, "audit.mjs", url)
    assert code == 0, err
    results: list[dict[str, Any]] = json.loads(out)
    return results


async def test_the_graphql_http_audit_reports_no_error_and_no_warning(settings: Settings) -> None:
    async with serving(settings) as live:
        results = await _audit(live.ws_url.replace("ws://", "http://", 1))
    counts = Counter(result["status"] for result in results)
    print(
        f"graphql-http audit: {len(results)} audits, {counts['ok']} ok, {counts['notice']} notice, "
        f"{counts['warn']} warn, {counts['error']} error"
    )
    assert len(results) > 40, "the audit suite did not run"
    complaints = [r for r in results if r["status"] != "ok"]
    assert complaints == []


async def test_the_media_type_follows_the_accept_header(api: Api) -> None:
    async def ask(accept: str | None) -> str:
        headers = {"accept": accept} if accept is not None else {}
        response = await api.client.post("/graphql", json={"query": "{ __typename }"}, headers=headers)
        assert response.status_code == 200
        return response.headers["content-type"]

    assert (await ask(GRAPHQL_RESPONSE)).startswith(GRAPHQL_RESPONSE)
    assert (await ask(f"{GRAPHQL_RESPONSE}, application/json;q=0.9")).startswith(GRAPHQL_RESPONSE)
    assert (await ask(f"application/json, {GRAPHQL_RESPONSE};q=0.5")).startswith("application/json")
    assert (await ask("*/*")).startswith("application/json")
    assert (await ask(f"*/*, {GRAPHQL_RESPONSE};q=0.1")).startswith("application/json")
    refused = await api.client.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"accept": "text/html"}
    )
    assert refused.status_code == 406
    assert refused.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_request_that_could_not_execute_is_4xx_for_graphql_response_clients(api: Api) -> None:
    async def post(query: str, accept: str, variables: dict[str, Any] | None = None) -> Any:
        return await api.client.post(
            "/graphql", json={"query": query, "variables": variables}, headers={"accept": accept}
        )

    coercion = "query($id: ID!) { __typename }"
    for query, variables in (("{", None), ("{ nope }", None), (coercion, {"id": None})):
        modern = await post(query, GRAPHQL_RESPONSE, variables)
        assert modern.status_code == 400, query
        assert "data" not in modern.json() and modern.json()["errors"]
        # A client that names application/json gets 200 and reads the errors from the body.
        legacy = await post(query, "application/json", variables)
        assert legacy.status_code == 200, query
        assert legacy.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_field_error_still_answers_200_with_its_data(api: Api) -> None:
    response = await api.client.post(
        "/graphql",
        json={"query": "{ __typename me { id } }"},
        headers={"accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["data"] == {"__typename": "Query", "me": None}
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_mutations_over_get_are_refused_with_405(api: Api) -> None:
    response = await api.client.get(
        "/graphql", params={"query": "mutation { logout }"}, headers={"accept": GRAPHQL_RESPONSE}
    )
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json()["errors"][0]["message"].startswith("Only queries may be sent with GET")
    named = await api.client.get(
        "/graphql",
        params={"query": "query Q { __typename } mutation M { __typename }", "operationName": "Q"},
    )
    assert named.status_code == 200 and named.json() == {"data": {"__typename": "Query"}}


async def test_malformed_requests_are_4xx_with_a_graphql_error(api: Api) -> None:
    async def post(**kwargs: Any) -> Any:
        response = await api.client.post("/graphql", **kwargs)
        return response.status_code, response.json()["errors"][0]["message"]

    assert await post(content=b"{}", headers={"content-type": "text/plain"}) == (
        415,
        "Send application/json (or multipart/form-data for file uploads)",
    )
    latin = {"content-type": "application/json; charset=iso-8859-1"}
    assert (await post(content=b'{"query": "{ __typename }"}', headers=latin))[0] == 415
    assert (await post(content=b"", headers={"content-type": "application/json"}))[0] == 400
    deep = b"[" * 100_000 + b"]" * 100_000
    assert await post(content=deep, headers={"content-type": "application/json"}) == (
        400,
        "The request body is not valid JSON",
    )
    for bad in ({"query": 1}, {"query": "{ __typename }", "variables": [1]}, {"notquery": "{}"}):
        assert (await post(json=bad))[0] == 400, bad
    assert await post(json={"query": "{ __typename }", "extensions": "x"}) == (
        400,
        "The extensions parameter must be an object or null",
    )
