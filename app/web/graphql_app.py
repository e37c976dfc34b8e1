"""The executable schema and the Ariadne ASGI app: GraphQL over HTTP, errors, the explorer."""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection
from html import escape
from pathlib import Path
from typing import Any

from ariadne import load_schema_from_path, make_executable_schema
from ariadne.asgi import GraphQL
from ariadne.asgi.handlers import GraphQLHTTPHandler, GraphQLTransportWSHandler
from ariadne.exceptions import HttpError
from ariadne.explorer import ExplorerGraphiQL, ExplorerHttp405
from ariadne.explorer.explorer import Explorer as BaseExplorer
from ariadne.graphql import graphql
from ariadne.types import Extension, GraphQLResult
from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    OperationType,
    get_operation_ast,
    parse,
    print_ast,
)
from graphql.validation import ASTValidationRule
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.settings import ASSETS, Settings
from app.web.directives import DIRECTIVES
from app.web.http_security import (
    GRAPHQL_RESPONSE_JSON,
    JSON,
    Negotiated,
    explorer_csp,
    graphql_error_body,
    graphql_error_response,
    negotiate,
)
from app.web.query_limits import QueryCache, alias_limit_rule, cost_map, cost_rule, depth_limit_rule

SCHEMA_DIR = ASSETS / "schema"
EXAMPLES = ASSETS / "client-examples" / "graphiql-default.graphql"


# The line build_schema appends to a field's description, naming what its directive requires.
PERMISSION_LINE_PREFIX = "Requires: "


def _permission_line(field: GraphQLField) -> str | None:
    """What the field's @requires / @authenticated / @selfOr asks of the caller, as one line."""
    directives = (field.ast_node.directives if field.ast_node else None) or ()
    for directive in directives:
        arguments = {arg.name.value: print_ast(arg.value) for arg in directive.arguments or ()}
        name = directive.name.value
        if name == "requires":
            return f"{PERMISSION_LINE_PREFIX}{arguments.get('permission')}"
        if name == "authenticated":
            return f"{PERMISSION_LINE_PREFIX}signed in"
        if name == "selfOr":
            return f"{PERMISSION_LINE_PREFIX}the smith themself or {arguments.get('permission')}"
    return None


@functools.cache
def build_schema() -> GraphQLSchema:
    """The executable schema; every field with a permission directive says so in its description
    (its last line, `Requires: ...`), so GraphiQL's docs and generated clients show it.

    Built once per process: it holds no per-app state (resolvers reach the app through the
    context), and parsing the SDL costs a few hundred milliseconds."""
    from resolvers import bindables

    type_defs = load_schema_from_path(str(SCHEMA_DIR))
    schema = make_executable_schema(type_defs, *bindables, directives=DIRECTIVES, convert_names_case=True)
    for type_ in schema.type_map.values():
        if isinstance(type_, GraphQLObjectType | GraphQLInterfaceType) and not type_.name.startswith("__"):
            for field in type_.fields.values():
                line = _permission_line(field)
                if line is not None:
                    field.description = f"{field.description}\n\n{line}" if field.description else line
    return schema


# Ariadne logs every GraphQL error, user errors included; `error_formatter` already logs the
# unexpected ones with their traceback, so Ariadne's copy is muted.
_SILENT_ARIADNE_LOGGER = logging.getLogger("sepulki.graphql.ariadne")
_SILENT_ARIADNE_LOGGER.addHandler(logging.NullHandler())
_SILENT_ARIADNE_LOGGER.propagate = False


class _Refused(Exception):
    """A request that is not a well-formed GraphQL-over-HTTP request; answered with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _parameter_problem(data: Any) -> str | None:
    """What makes `data` an invalid GraphQL-over-HTTP request, if anything."""
    if not isinstance(data, dict):
        return "Each operation must be a JSON object with a query"
    query = data.get("query")
    if not isinstance(query, str) or not query.strip():
        return "The query parameter must be a non-empty string"
    for name, kind, types in (
        ("variables", "an object", dict),
        ("operationName", "a string", str),
        ("extensions", "an object", dict),
    ):
        value = data.get(name)
        if value is not None and not isinstance(value, types):
            return f"The {name} parameter must be {kind} or null"
    return None


def _charset(params: str) -> str:
    """The charset parameter of a Content-Type's parameters; JSON is UTF-8 when none is given."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return "utf-8"


def _settle(result: dict[str, Any], negotiated: Negotiated) -> int:
    """The status of one operation's result.

    Execution started when there is data, or a field error (it has a path) that nulled all of
    it; parse, validation and variable coercion errors leave neither. A client that asked for
    application/json gets 200 for every well-formed request (GraphQL over HTTP, legacy clients).
    One asking for application/graphql-response+json gets 400 and no `data` entry when nothing
    executed. One that accepts anything (*/*) gets what this API has always answered: 400 when
    the document did not parse or validate, else 200 (`data: null` after a coercion error)."""
    errors = result.get("errors") or []
    executed = result.get("data") is not None or any(error.get("path") for error in errors)
    if executed or negotiated.legacy:
        return 200
    if negotiated.media_type == GRAPHQL_RESPONSE_JSON:
        result.pop("data", None)
        return 400
    return 200 if "data" in result else 400


class HTTPHandler(GraphQLHTTPHandler):
    """GraphQL over HTTP: application/graphql-response+json or application/json by the Accept
    header; malformed requests 4xx; a request that executed answers 200 even when a field failed
    (its errors say why); one that could not execute answers 400, or 200 to a client that asked
    for application/json; mutations over GET 405; batches (JSON arrays) up to the configured cap."""

    def __init__(
        self, settings: Settings, extensions: list[type[Extension] | Callable[[], Extension]] | None = None
    ) -> None:
        # extensions: app.web.metrics' error counter (no per-field hook, so no resolver is wrapped).
        super().__init__(extensions=extensions)
        self.max_batch = settings.max_batch_operations
        self.hide_suggestions = settings.production

    async def graphql_http_server(self, request: Request) -> Response:
        negotiated = negotiate(request.headers.get("accept"))
        if negotiated is None:
            return graphql_error_response(
                406, f"Accept must allow {GRAPHQL_RESPONSE_JSON} or {JSON}", "BAD_USER_INPUT"
            )
        media = negotiated.media_type
        try:
            data = await self._read(request)
            if isinstance(data, list):
                return await self._batch(request, data, negotiated)
            problem = _parameter_problem(data)
            if problem:
                raise _Refused(400, problem)
            if request.method == "GET" and self._operation_type(data) not in (None, OperationType.QUERY):
                message = "Only queries may be sent with GET; send mutations with POST"
                raise _Refused(405, message, {"allow": "POST"})
        except _Refused as refused:
            return graphql_error_response(
                refused.status, refused.message, "BAD_USER_INPUT", media_type=media, headers=refused.headers
            )
        _, result = await self.execute_graphql_query(request, data)
        return self._respond(result, negotiated, _settle(result, negotiated))

    async def _read(self, request: Request) -> Any:
        if request.method == "GET":
            try:
                return self.extract_data_from_get_request(request)
            except HttpError as error:
                raise _Refused(400, error.message or "Malformed query string") from error
        media, _, params = request.headers.get("content-type", "").partition(";")
        media = media.strip().lower()
        if media == JSON:
            if _charset(params) not in {"utf-8", "utf8"}:
                raise _Refused(415, "JSON request bodies must be UTF-8")
            body = await request.body()
            if not body.strip():
                raise _Refused(400, 'The request body is empty; send {"query": ...}')
            try:
                return json.loads(body)
            except (ValueError, RecursionError) as error:
                raise _Refused(400, "The request body is not valid JSON") from error
        if media == "multipart/form-data":
            try:
                return await self.extract_data_from_multipart_request(request)
            except HttpError as error:
                raise _Refused(400, error.message or "Malformed multipart request") from error
        raise _Refused(415, f"Send {JSON} (or multipart/form-data for file uploads)")

    async def _batch(self, request: Request, operations: list[Any], negotiated: Negotiated) -> Response:
        if self.max_batch <= 1:
            raise _Refused(400, "Batched requests are not accepted: send one operation per request")
        if not operations or len(operations) > self.max_batch:
            raise _Refused(400, f"A batch holds 1 to {self.max_batch} operations, not {len(operations)}")
        results: list[dict[str, Any]] = []
        status = 400
        # One after the other: a batch must not take more of the pool than a single request.
        for operation in operations:
            problem = _parameter_problem(operation)
            if problem:
                results.append(graphql_error_body(problem, "BAD_USER_INPUT"))
                continue
            _, result = await self.execute_graphql_query(request, operation)
            status = min(status, _settle(result, negotiated))
            results.append(result)
        return self._respond(results, negotiated, status)

    def _operation_type(self, data: dict[str, Any]) -> OperationType | None:
        try:
            document = self.query_parser(None, data) if self.query_parser else parse(data["query"])
        except GraphQLError:
            return None  # execution reports the syntax error
        operation = get_operation_ast(document, data.get("operationName"))
        return operation.operation if operation else None

    def _respond(self, result: Any, negotiated: Negotiated, status: int) -> Response:
        return JSONResponse(result, status_code=status, media_type=f"{negotiated.media_type}; charset=utf-8")

    async def execute_graphql_query(
        self,
        request: Any,
        data: Any,
        *,
        context_value: Any = None,
        query_document: DocumentNode | None = None,
    ) -> GraphQLResult:
        """Ariadne's, plus `hide_suggestions` for execution (variable coercion) errors."""
        if context_value is None:
            context_value = await self.get_context_for_request(request, data)
        assert self.schema is not None
        return await graphql(
            self.schema,
            data,
            context_value=context_value,
            root_value=self.root_value,
            query_parser=self.query_parser,
            query_validator=self.query_validator,
            query_document=query_document,
            validation_rules=self.validation_rules,
            require_query=isinstance(request, Request) and request.method == "GET",
            debug=self.debug,
            introspection=self.introspection,
            logger=self.logger,
            error_formatter=self.error_formatter,
            extensions=await self.get_extensions_for_request(request, context_value),
            middleware=await self.get_middleware_for_request(request, context_value),
            middleware_manager_class=self.middleware_manager_class,
            execution_context_class=self.execution_context_class,
            hide_suggestions=self.hide_suggestions,
        )

    async def render_explorer(self, request: Request, explorer: BaseExplorer) -> Response:
        response = await super().render_explorer(request, explorer)
        if isinstance(explorer, Explorer) and response.status_code == 200:
            nonce = getattr(request.state, "graphiql_style_nonce", None)
            response.headers["content-security-policy"] = explorer_csp(request.headers.get("host"), nonce)
        return response


# GraphiQL's assets: an npm project bundled by esbuild (app/web/graphiql/, `npm run build`, which
# `./run dev` and `./run test` do) and served by the development server at GRAPHIQL_ASSETS_URL.
GRAPHIQL_DIR = Path(__file__).parent / "graphiql"
GRAPHIQL_DIST = GRAPHIQL_DIR / "dist"
GRAPHIQL_ASSETS_URL = "/graphiql/assets"
_BUNDLE = ("graphiql.js", "graphiql.css")
_HEADERS_TO_EDIT = {"Authorization": "Bearer <paste session.token from the login mutation>"}

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sepulki Hammer GraphiQL</title>
{head}
</head>
<body>
{body}
</body>
</html>
"""

_MISSING = """<main>
<h1>Sepulki Hammer GraphiQL: the bundle is not built</h1>
<p>GraphiQL's JavaScript and CSS are built from the npm project in <code>app/web/graphiql/</code>
and were not found in <code>{dist}</code>.</p>
<p>From a checkout, <code>./run dev</code> builds them (it installs Node.js with apt when missing).
By hand: <code>cd app/web/graphiql &amp;&amp; npm ci &amp;&amp; npm run build</code>, then reload
this page.</p>
<p>An installed wheel carries no GraphiQL (it is a development tool); the API itself answers
GraphQL requests at this URL with POST or GET.</p>
</main>"""


def _json_in_html(value: Any) -> str:
    # Inside <script type="application/json">: no "</script>" or "<!--" can close it early.
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class Explorer(ExplorerGraphiQL):
    """GraphiQL from the locally built bundle (no CDN) with the example operations and an
    Authorization header to edit; the page runs no inline script, its settings travel in a JSON
    data block, and `explorer_csp` admits scripts and styles from this server only."""

    def __init__(self, dist: Path = GRAPHIQL_DIST) -> None:
        self.dist = dist
        self.default_query = EXAMPLES.read_text() if EXAMPLES.exists() else "{ __typename }"
        self.initial_headers = json.dumps(_HEADERS_TO_EDIT, indent=2)

    def bundle_missing(self) -> bool:
        return not all((self.dist / name).is_file() for name in _BUNDLE)

    def html(self, request: Any) -> str:
        if self.bundle_missing():
            body = _MISSING.format(dist=escape(str(self.dist)))
            return _PAGE.format(head="", body=body)
        # The files' modification times bust the browser cache after a rebuild.
        version = {name: int((self.dist / name).stat().st_mtime) for name in _BUNDLE}
        # A fresh nonce for each page; render_explorer writes the same one into the policy.
        nonce = secrets.token_urlsafe(18)
        request.state.graphiql_style_nonce = nonce
        config = {
            "url": request.url.path,
            "styleNonce": nonce,
            "defaultQuery": self.default_query,
            "initialHeaders": self.initial_headers,
        }
        head = (
            f'<link rel="stylesheet" href="{GRAPHIQL_ASSETS_URL}/graphiql.css?v={version["graphiql.css"]}">\n'
            f'<script defer src="{GRAPHIQL_ASSETS_URL}/graphiql.js?v={version["graphiql.js"]}"></script>'
        )
        body = (
            f'<script type="application/json" id="graphiql-config">{_json_in_html(config)}</script>\n'
            '<div id="graphiql">Loading Sepulki Hammer GraphiQL…</div>'
        )
        return _PAGE.format(head=head, body=body)


def _declares_variables(document: DocumentNode) -> bool:
    return any(getattr(definition, "variable_definitions", None) for definition in document.definitions)


class _LimitsCache:
    """QueryCache.validate caches the specified rules' verdict per document but runs our limits
    (depth, aliases, cost, introspection) on every request: a second full validation pass, a
    fifth of a small query's time (py-spy, bench/RESULTS.md). Their verdict depends only on the
    document and the rule classes, which are the same objects from request to request unless
    the cost depends on the request's variables (`fixed_cost` absent): those run every time."""

    def __init__(self, cache: QueryCache, fixed_cost: type[ASTValidationRule], size: int) -> None:
        self._cache = cache
        self._fixed_cost = fixed_cost
        self._size = size
        self._verdicts: OrderedDict[tuple[Any, ...], tuple[DocumentNode, list[GraphQLError]]] = OrderedDict()

    def validate(
        self,
        schema: GraphQLSchema,
        document_ast: DocumentNode,
        rules: Collection[type[ASTValidationRule]] | None = None,
        max_errors: int | None = None,
        type_info: Any = None,
    ) -> list[GraphQLError]:
        if rules is None or self._size <= 0 or self._fixed_cost not in rules:
            return self._cache.validate(schema, document_ast, rules, max_errors, type_info)
        key = (id(document_ast), tuple(rules), max_errors)
        hit = self._verdicts.get(key)
        # The document itself is kept with its verdict: an id is only unique while it lives.
        if hit is not None and hit[0] is document_ast:
            self._verdicts.move_to_end(key)
            return hit[1]
        errors = self._cache.validate(schema, document_ast, rules, max_errors, type_info)
        source = document_ast.loc.source.body if document_ast.loc else None
        # The documents QueryCache keeps (and so parses once) are the ones worth a verdict.
        if source is not None and len(source) <= QueryCache.MAX_CACHED_CHARS:
            self._verdicts[key] = (document_ast, errors)
            if len(self._verdicts) > self._size:
                self._verdicts.popitem(last=False)
        return errors


def create_graphql_app(
    settings: Settings,
    schema: GraphQLSchema,
    context_value: Callable[..., Any],
    websocket_handler: GraphQLTransportWSHandler,
    *,
    caches: bool = True,
    extensions: list[type[Extension] | Callable[[], Extension]] | None = None,
) -> GraphQL:
    from app.web.errors import make_error_formatter

    cache = QueryCache(
        512 if caches else 0, max_tokens=settings.max_query_tokens, hide_suggestions=settings.production
    )
    limits = [depth_limit_rule(settings.max_query_depth), alias_limit_rule(settings.max_query_aliases)]
    costs = cost_map(schema)
    # The cost of an operation that declares no variables, or is sent without any, does not
    # depend on the request: one rule class for all of them, so their results can be cached.
    fixed_cost = cost_rule(settings.max_query_cost, costs, {})
    validator = _LimitsCache(cache, fixed_cost, 512 if caches else 0)

    def rules(_context: Any, document: DocumentNode, data: Any) -> list[type[ASTValidationRule]]:
        variables = data.get("variables") if isinstance(data, dict) else None
        if not variables or not isinstance(variables, dict) or not _declares_variables(document):
            return [*limits, fixed_cost]
        return [*limits, cost_rule(settings.max_query_cost, costs, variables)]

    return GraphQL(
        schema,
        context_value=context_value,
        query_parser=cache.parse,
        query_validator=validator.validate,
        validation_rules=rules,
        debug=settings.debug,
        introspection=not settings.production,
        explorer=Explorer() if not settings.production else ExplorerHttp405(),
        error_formatter=make_error_formatter(hide_suggestions=settings.production),
        logger=_SILENT_ARIADNE_LOGGER,
        http_handler=HTTPHandler(settings, extensions),
        websocket_handler=websocket_handler,
        execute_get_queries=True,
    )
