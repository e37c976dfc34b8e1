"""The development GraphiQL works with no internet: its assets come from this server (bundled from
npm by app/web/graphiql/), a real Chromium signs in, queries, subscribes and sees a live robot event
without one request leaving the machine; its default operations cover every domain and run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    parse,
    print_ast,
    validate,
)
from starlette.requests import Request

from app.settings import Settings
from app.web.graphql_app import EXAMPLES, GRAPHIQL_DIR, SCHEMA_DIR, Explorer, build_schema
from tests.processes import start_dev
from tests.servers import free_port
from tests.support import Api

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = Path(__file__).parent / "browser"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")


def _npm(*args: str, cwd: Path) -> None:
    npm = shutil.which("npm")
    assert npm, "the GraphiQL bundle and the browser test need npm (Node.js 18+): ./run test installs it"
    done = subprocess.run([npm, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def _ensure_tools() -> None:
    """`./run test` builds the bundle and installs playwright-core first; this covers a bare
    `pytest` on a clean checkout."""
    assert CHROMIUM.exists(), "the browser test needs Debian's chromium: ./run test installs it with apt"
    if not (GRAPHIQL_DIR / "dist" / "graphiql.js").is_file():
        _npm("ci", "--no-audit", "--no-fund", cwd=GRAPHIQL_DIR)
        _npm("run", "build", cwd=GRAPHIQL_DIR)
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        _npm("ci", "--no-audit", "--no-fund", cwd=BROWSER_DIR)


def test_a_developer_signs_in_queries_and_subscribes_in_graphiql_with_no_request_leaving_the_machine(
    tmp_path: Path,
) -> None:
    _ensure_tools()
    node = shutil.which("node")
    assert node
    port = free_port()
    log = tmp_path / "dev.log"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "graphiql.png"
    screenshot.unlink(missing_ok=True)
    dev = start_dev(tmp_path / "data", port, log)
    try:
        done = subprocess.run(
            [node, "graphiql.mjs", f"http://127.0.0.1:{port}/graphql", str(screenshot)],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        dev.send_signal(signal.SIGINT)
        dev.wait(timeout=60)
    print(f"GraphiQL screenshot: {screenshot}")
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n{done.stdout[-3000:]}\n{log.read_text()[-2000:]}"
    seen: dict[str, Any] = json.loads(done.stdout)

    # Nothing but this server was asked for anything; the page's policy refused nothing.
    assert seen["blocked"] == []
    assert all(f"//127.0.0.1:{port}/" in request for request in seen["requests"]), seen["requests"]
    assert sorted(set(seen["assets"])) == ["/graphiql/assets/graphiql.css", "/graphiql/assets/graphiql.js"]
    assert seen["cspViolations"] == [] and seen["consoleErrors"] == []
    # The headers editor opened with the Authorization header to fill in.
    assert json.loads(seen["initialHeaders"]) == {
        "Authorization": "Bearer <paste session.token from the login mutation>"
    }
    # Login's token, pasted into the headers editor, authorized the query and the websocket.
    assert seen["token"] and seen["token"].count(".") == 2
    assert "Dev Fleet Alpha" in seen["fleets"]
    assert seen["connectionInit"] == {"authorization": f"Bearer {seen['token']}"}
    # A simulated robot's live status arrived over graphql-transport-ws.
    assert seen["event"]["id"].startswith("70000000-") and seen["event"]["status"]
    # The documentation explorer read the schema; the history kept the operations run.
    assert "Root Types" in seen["docs"] and "subscription: Subscription" in seen["docs"]
    assert {"Login", "Fleets"} <= set(seen["history"])
    assert screenshot.stat().st_size > 10_000


async def test_graphiqls_bundle_is_served_by_this_server_and_not_in_production(
    api: Api, settings: Settings
) -> None:
    _ensure_tools()
    script = await api.client.get("/graphiql/assets/graphiql.js")
    assert script.status_code == 200, "build it: cd app/web/graphiql && npm ci && npm run build"
    assert "javascript" in script.headers["content-type"] and len(script.content) > 100_000
    style = await api.client.get("/graphiql/assets/graphiql.css")
    assert style.status_code == 200 and style.headers["content-type"].startswith("text/css")
    assert (await api.client.get("/graphiql/assets/../package.json")).status_code == 404
    async with Api.running(settings.replace(env="production", jwt_secret="p" * 40)) as prod:
        assert (await prod.client.get("/graphiql/assets/graphiql.js")).status_code == 404


def _request(path: str = "/graphql") -> Request:
    return Request({"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""})


def test_without_its_bundle_the_graphiql_page_says_how_to_build_it(tmp_path: Path) -> None:
    page = Explorer(dist=tmp_path / "dist").html(_request())
    assert "the bundle is not built" in page
    assert "npm ci &amp;&amp; npm run build" in page and "./run dev" in page
    assert "<script" not in page and "Loading" not in page


def test_the_graphiql_page_carries_its_settings_as_data_that_cannot_close_its_script_element(
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ("graphiql.js", "graphiql.css"):
        (dist / name).write_text("/* built */")
    explorer = Explorer(dist=dist)
    explorer.default_query = "# </script><script>alert(1)</script>\n{ __typename }"
    request = _request()
    page = explorer.html(request)
    assert page.count("<script") == 2  # the bundle and the JSON data block
    assert '<script defer src="/graphiql/assets/graphiql.js?v=' in page
    block = page.split('<script type="application/json" id="graphiql-config">')[1].split("</script>")[0]
    config = json.loads(block)
    assert config["defaultQuery"] == explorer.default_query
    assert config["styleNonce"] == request.state.graphiql_style_nonce
    assert (
        config["styleNonce"]
        != json.loads(explorer.html(_request()).split('id="graphiql-config">')[1].split("</script>")[0])[
            "styleNonce"
        ]
    )


def _operations() -> list[OperationDefinitionNode]:
    document = parse(EXAMPLES.read_text())
    return [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]


def _root_fields(operation: OperationDefinitionNode) -> set[str]:
    return {selection.name.value for selection in operation.selection_set.selections}  # type: ignore[attr-defined]


def _takes_a_file(schema: GraphQLSchema, name: str) -> bool:
    for root in (schema.query_type, schema.mutation_type, schema.subscription_type):
        field = root.fields.get(name) if root else None
        if field is not None:
            return any("Upload" in str(arg.type) for arg in field.args.values())
    return False


def test_graphiqls_default_operations_are_valid_and_cover_every_domain_with_resumable_subscriptions() -> None:
    schema = build_schema()
    document = parse(EXAMPLES.read_text())
    assert validate(schema, document) == []
    operations = _operations()
    assert len({op.name.value for op in operations if op.name}) == len(operations)  # the ▶ menu names them
    used = set().union(*(_root_fields(op) for op in operations))
    for sdl in sorted(SCHEMA_DIR.glob("*.graphql")):
        roots = set()
        for definition in parse(sdl.read_text()).definitions:
            name = getattr(definition, "name", None)
            if name is not None and name.value in {"Query", "Mutation", "Subscription"}:
                roots |= {field.name.value for field in getattr(definition, "fields", None) or ()}
        # A domain whose every field takes a file (uploads) has its example as a curl comment:
        # GraphiQL sends no multipart requests.
        roots -= {name for name in roots if _takes_a_file(schema, name)}
        if roots:
            assert roots & used, f"no GraphiQL example for the {sdl.stem} domain ({sorted(roots)})"
    subscriptions = [op for op in operations if op.operation is OperationType.SUBSCRIPTION]
    assert {"robotStatus"} <= set().union(*(_root_fields(op) for op in subscriptions))
    assert all("after: $after" in print_ast(op) for op in subscriptions)


async def test_graphiqls_default_queries_answer_an_admin_without_errors(api: Api) -> None:
    for operation in _operations():
        if operation.operation is not OperationType.QUERY:
            continue
        body = await api.execute(print_ast(DocumentNode(definitions=(operation,))))
        assert "errors" not in body, (operation.name and operation.name.value, body["errors"])
        assert all(value is not None for value in body["data"].values())
