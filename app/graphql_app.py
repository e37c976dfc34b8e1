"""The executable schema and the Ariadne ASGI app: caches, limits, errors, explorer."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection
from http import HTTPStatus
from typing import Any

from ariadne import load_schema_from_path, make_executable_schema
from ariadne.asgi import GraphQL
from ariadne.asgi.handlers import GraphQLHTTPHandler, GraphQLTransportWSHandler
from ariadne.explorer import ExplorerGraphiQL, ExplorerHttp405
from ariadne.validation import cost_validator
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    parse,
    specified_rules,
    validate,
)
from graphql.validation import ASTValidationRule, ValidationContext
from starlette.responses import JSONResponse, Response

from app.directives import DIRECTIVES
from app.settings import ROOT, Settings

SCHEMA_DIR = ROOT / "schema"
EXAMPLES = ROOT / "client-examples" / "graphiql-default.graphql"


def build_schema() -> GraphQLSchema:
    from resolvers import bindables

    type_defs = load_schema_from_path(str(SCHEMA_DIR))
    return make_executable_schema(type_defs, *bindables, directives=DIRECTIVES, convert_names_case=True)


class QueryCache:
    """Parse once per distinct query text, validate once per parsed document (LRU-bounded)."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()
        self._errors: dict[int, list[GraphQLError]] = {}

    def parse(self, _context: Any, data: dict[str, Any]) -> DocumentNode:
        query: str = data["query"]
        document = self._documents.get(query)
        if document is None:
            document = parse(query)
            self._documents[query] = document
            if len(self._documents) > self._size:
                _, evicted = self._documents.popitem(last=False)
                self._errors.pop(id(evicted), None)
        else:
            self._documents.move_to_end(query)
        return document

    def validate(
        self,
        schema: GraphQLSchema,
        document_ast: DocumentNode,
        rules: Collection[type[ASTValidationRule]] | None = None,
        max_errors: int | None = None,
        type_info: Any = None,
    ) -> list[GraphQLError]:
        """The specified rules are cached per document; our own limits (cost depends on the
        request's variables) run on every request."""
        chosen = list(rules) if rules is not None else list(specified_rules)
        standard = [rule for rule in chosen if rule in _SPECIFIED]
        extra = [rule for rule in chosen if rule not in _SPECIFIED]
        key = id(document_ast)
        errors = self._errors.get(key)
        if errors is None:
            errors = validate(schema, document_ast, rules=standard, max_errors=max_errors)
            if self._documents.get(_query_of(document_ast)) is document_ast:
                self._errors[key] = errors
        if errors or not extra:
            return errors
        return validate(schema, document_ast, rules=extra, max_errors=max_errors)


def _query_of(document: DocumentNode) -> str:
    return document.loc.source.body if document.loc else ""


_SPECIFIED = frozenset(specified_rules)


def depth_limit_rule(max_depth: int) -> type[ASTValidationRule]:
    class DepthLimit(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self._fragments = {
                d.name.value: d
                for d in context.document.definitions
                if hasattr(d, "selection_set") and not isinstance(d, OperationDefinitionNode)
            }

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            depth = self._depth(node.selection_set, 0, set())
            if depth > max_depth:
                self.report_error(
                    GraphQLError(f"Query depth {depth} exceeds the maximum of {max_depth}", node)
                )

        def _depth(self, selection_set: SelectionSetNode | None, level: int, seen: set[str]) -> int:
            if selection_set is None:
                return level
            deepest = level
            for selection in selection_set.selections:
                if isinstance(selection, FieldNode):
                    if selection.selection_set is not None:
                        deepest = max(deepest, self._depth(selection.selection_set, level + 1, seen))
                elif isinstance(selection, InlineFragmentNode):
                    deepest = max(deepest, self._depth(selection.selection_set, level, seen))
                elif isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    fragment = self._fragments.get(name)
                    if fragment is not None and name not in seen:
                        inner = self._depth(fragment.selection_set, level, seen | {name})
                        deepest = max(deepest, inner)
            return deepest

    return DepthLimit


# Ariadne logs every GraphQL error, user errors included; `error_formatter` already logs the
# unexpected ones with their traceback, so Ariadne's copy is muted.
_SILENT_ARIADNE_LOGGER = logging.getLogger("sepulki.graphql.ariadne")
_SILENT_ARIADNE_LOGGER.addHandler(logging.NullHandler())
_SILENT_ARIADNE_LOGGER.propagate = False


# Lists multiply the cost of what they select by their `limit` argument.
LIST_COST = {"complexity": 1, "multipliers": ["limit"]}


def cost_map(schema: GraphQLSchema) -> dict[str, dict[str, Any]]:
    costs: dict[str, dict[str, Any]] = {}
    for root in ("Query",):
        fields = schema.type_map[root].fields  # type: ignore[union-attr]
        costs[root] = {name: LIST_COST for name, f in fields.items() if "limit" in f.args}
    return costs


class HTTPHandler(GraphQLHTTPHandler):
    """A request that was executed answers 200 even when a field failed (its errors say why);
    only requests that could not run (parse or validation errors) answer 400."""

    async def create_json_response(self, request: Any, result: dict[str, Any], success: bool) -> Response:
        status = HTTPStatus.OK if success or "data" in result else HTTPStatus.BAD_REQUEST
        return JSONResponse(result, status_code=status)


class Explorer(ExplorerGraphiQL):
    """GraphiQL with example operations and a pre-filled Authorization header to edit."""

    def __init__(self) -> None:
        default_query = EXAMPLES.read_text() if EXAMPLES.exists() else "{ __typename }"
        super().__init__(title="Sepulki Hammer GraphiQL", default_query=default_query)
        headers = '{"Authorization": "Bearer <paste session.token from the login mutation>"}'
        self.parsed_html = self.parsed_html.replace(
            "defaultEditorToolsVisibility: true,",
            f"defaultEditorToolsVisibility: true,\n          initialHeaders: '{headers}',\n"
            "          shouldPersistHeaders: true,",
        )


def create_graphql_app(
    settings: Settings,
    schema: GraphQLSchema,
    context_value: Callable[..., Any],
    websocket_handler: GraphQLTransportWSHandler,
    *,
    caches: bool = True,
) -> GraphQL:
    from app.errors import error_formatter

    cache = QueryCache() if caches else None
    depth_rule = depth_limit_rule(settings.max_query_depth)
    costs = cost_map(schema)

    def rules(_context: Any, _document: DocumentNode, data: Any) -> list[type[ASTValidationRule]]:
        variables = data.get("variables") if isinstance(data, dict) else None
        cost_rule = cost_validator(
            maximum_cost=settings.max_query_cost,
            default_cost=1,
            cost_map=costs,
            variables=variables if isinstance(variables, dict) else {},
        )
        return [depth_rule, cost_rule]

    return GraphQL(
        schema,
        context_value=context_value,
        query_parser=cache.parse if cache else None,
        query_validator=cache.validate if cache else None,
        validation_rules=rules,
        debug=settings.debug,
        introspection=not settings.production,
        explorer=Explorer() if not settings.production else ExplorerHttp405(),
        error_formatter=error_formatter,
        logger=_SILENT_ARIADNE_LOGGER,
        http_handler=HTTPHandler(),
        websocket_handler=websocket_handler,
        execute_get_queries=True,
    )
