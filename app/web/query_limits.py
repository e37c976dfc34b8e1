"""What a GraphQL document may ask: parse and validation caches, and the depth, alias and cost
limits that run on every request.

An introspection operation (a query whose root selections are only `__schema`, `__type` and
`__typename`) is judged by bounds of its own instead of the depth, alias and cost limits: the
introspection queries of graphql-js and graphql-core are 14 deep, and the cost map knows no
introspection type. Its bounds (depth, nested lists, aliases, root fields) keep it from
multiplying its answer; a document that mixes it with other fields gets the normal limits."""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from collections.abc import Collection
from typing import Any, TypedDict

from ariadne.validation.query_cost import CostValidator
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    Node,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    Undefined,
    get_named_type,
    get_nullable_type,
    is_composite_type,
    is_list_type,
    parse,
    specified_rules,
    type_from_ast,
    validate,
    value_from_ast,
)
from graphql.validation import ASTValidationContext, ASTValidationRule, ValidationContext

from app.core.validation import DEFAULT_LIMIT, MAX_LIMIT


class _ValidateOptions(TypedDict):
    max_errors: int | None
    hide_suggestions: bool


class QueryCache:
    """Parse once per distinct query text, validate once per parsed document (LRU-bounded).
    Also where the token limit and the suggestion switch apply, so every parse goes through it;
    `size=0` turns the caching off."""

    # Longer texts are parsed every time: the cache must not hold hundreds of 1 MiB strings.
    MAX_CACHED_CHARS = 64 * 1024

    def __init__(
        self, size: int = 512, *, max_tokens: int | None = None, hide_suggestions: bool = False
    ) -> None:
        self._size = size
        self._max_tokens = max_tokens
        self._hide_suggestions = hide_suggestions
        self._documents: OrderedDict[str, DocumentNode] = OrderedDict()
        self._errors: dict[int, list[GraphQLError]] = {}

    def parse(self, _context: Any, data: dict[str, Any]) -> DocumentNode:
        query: str = data["query"]
        document = self._documents.get(query)
        if document is not None:
            self._documents.move_to_end(query)
            return document
        # Comments are not lexical tokens: they get the same bound on their own.
        document = parse(query, max_lexical_tokens=self._max_tokens, max_comments=self._max_tokens)
        if self._size > 0 and len(query) <= self.MAX_CACHED_CHARS:
            self._documents[query] = document
            if len(self._documents) > self._size:
                _, evicted = self._documents.popitem(last=False)
                self._errors.pop(id(evicted), None)
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
        options: _ValidateOptions = {"max_errors": max_errors, "hide_suggestions": self._hide_suggestions}
        key = id(document_ast)
        errors = self._errors.get(key)
        if errors is None:
            errors = validate(schema, document_ast, rules=standard, **options)
            if self._documents.get(_query_of(document_ast)) is document_ast:
                self._errors[key] = errors
        if errors or not extra:
            return errors
        return validate(schema, document_ast, rules=extra, **options)


def _query_of(document: DocumentNode) -> str:
    return document.loc.source.body if document.loc else ""


_SPECIFIED = frozenset(specified_rules)


class _FragmentMeasure(ASTValidationRule):
    """Measures each operation through its fragments, each fragment once (a spread repeated at
    every level must not make validation itself exponential)."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self.validation_context = context
        self._fragments = {
            d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self._measured: dict[str, int] = {}

    @abstractmethod
    def measure_field(self, field: FieldNode, inner: int) -> int:
        """A field's value, given `inner`, the value of what it selects."""

    @abstractmethod
    def combine(self, values: list[int]) -> int:
        """The value of a selection set from those of its selections."""

    def measure(self, selection_set: SelectionSetNode | None, visiting: frozenset[str] = frozenset()) -> int:
        if selection_set is None:
            return 0
        values = []
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                values.append(self.measure_field(selection, self.measure(selection.selection_set, visiting)))
            elif isinstance(selection, InlineFragmentNode):
                values.append(self.measure(selection.selection_set, visiting))
            elif isinstance(selection, FragmentSpreadNode):
                values.append(self._fragment(selection.name.value, visiting))
        return self.combine(values)

    def _fragment(self, name: str, visiting: frozenset[str]) -> int:
        if name in self._measured:
            return self._measured[name]
        fragment = self._fragments.get(name)
        if fragment is None or name in visiting:
            return 0  # unknown or cyclic: the specified rules report those
        value = self.measure(fragment.selection_set, visiting | {name})
        self._measured[name] = value
        return value


INTROSPECTION_ROOTS = frozenset({"__schema", "__type"})
# The list fields of the introspection types: each one nested in another multiplies the answer.
INTROSPECTION_LISTS = frozenset(
    {"types", "directives", "fields", "args", "interfaces", "possibleTypes", "enumValues", "inputFields"}
)
# Fixed, not settings: introspection's shape is the spec's, and production refuses it anyway.
# graphql-js's and graphql-core's queries: depth 14 (typeDepth 9), lists types > fields > args,
# one __schema, no alias. A depth of 20 leaves room for a typeDepth of 15.
MAX_INTROSPECTION_DEPTH = 20
MAX_INTROSPECTION_LISTS = 3
MAX_INTROSPECTION_ROOT_FIELDS = 3
MAX_INTROSPECTION_ALIASES = 3


def _root_selections(
    selection_set: SelectionSetNode,
    fragments: dict[str, FragmentDefinitionNode],
    memo: dict[str, tuple[int, bool]],
    visiting: frozenset[str] = frozenset(),
) -> tuple[int, bool]:
    """How many `__schema`/`__type` fields the root selections hold, and whether they hold any
    other field than those and `__typename`; through fragments, each fragment summed once (a
    spread repeated at every level must not make this exponential)."""
    roots, other = 0, False
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            roots += name in INTROSPECTION_ROOTS
            other = other or name not in INTROSPECTION_ROOTS | {"__typename"}
            continue
        if isinstance(selection, InlineFragmentNode):
            inner = _root_selections(selection.selection_set, fragments, memo, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if name in memo:
                inner = memo[name]
            elif fragment is None or name in visiting:
                continue  # unknown or cyclic: the specified rules report those
            else:
                inside = visiting | {name}
                inner = memo[name] = _root_selections(fragment.selection_set, fragments, memo, inside)
        else:  # pragma: no cover - no other kind of selection exists
            continue
        roots, other = roots + inner[0], other or inner[1]
    return roots, other


def introspection_roots(context: ASTValidationContext, node: OperationDefinitionNode) -> int | None:
    """How many `__schema`/`__type` fields an introspection operation asks for (its root
    selections, through fragments, are only those and `__typename`); None for any other operation."""
    if node.operation is not OperationType.QUERY:
        return None
    fragments = {
        d.name.value: d for d in context.document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    roots, other = _root_selections(node.selection_set, fragments, {})
    return roots if roots and not other else None


def _introspection_refusal(message: str, node: Node, limit: str, value: int, maximum: int) -> GraphQLError:
    figures = {"limit": limit, "value": value, "maximum": maximum}
    extensions = {"code": "BAD_USER_INPUT", "introspection": figures}
    return GraphQLError(message, node, extensions=extensions)


def _introspection_errors(
    context: ValidationContext, node: OperationDefinitionNode, roots: int, depth: int
) -> list[GraphQLError]:
    lists = _ListNesting(context).measure(node.selection_set)
    aliases = _AliasCount(context).measure(node.selection_set)
    return [
        _introspection_refusal(message.format(value, maximum), node, limit, value, maximum)
        for limit, value, maximum, message in (
            ("depth", depth, MAX_INTROSPECTION_DEPTH, "Introspection depth {} exceeds the maximum of {}"),
            (
                "lists",
                lists,
                MAX_INTROSPECTION_LISTS,
                "Introspection nests {} lists (types, fields, args, ...); the maximum is {}",
            ),
            (
                "rootFields",
                roots,
                MAX_INTROSPECTION_ROOT_FIELDS,
                "The introspection operation asks for __schema/__type {} times; the maximum is {}",
            ),
            (
                "aliases",
                aliases,
                MAX_INTROSPECTION_ALIASES,
                "The introspection operation uses {} aliases; the maximum is {}",
            ),
        )
        if value > maximum
    ]


class _ListNesting(_FragmentMeasure):
    def measure_field(self, field: FieldNode, inner: int) -> int:
        nested = field.selection_set is not None and field.name.value in INTROSPECTION_LISTS
        return inner + 1 if nested else inner

    def combine(self, values: list[int]) -> int:
        return max(values, default=0)


class _AliasCount(_FragmentMeasure):
    def measure_field(self, field: FieldNode, inner: int) -> int:
        return inner + (1 if field.alias is not None else 0)

    def combine(self, values: list[int]) -> int:
        return sum(values)


def depth_limit_rule(max_depth: int) -> type[ASTValidationRule]:
    """The depth limit; an introspection operation gets the introspection bounds instead."""

    class DepthLimit(_FragmentMeasure):
        def measure_field(self, field: FieldNode, inner: int) -> int:
            return inner + 1 if field.selection_set is not None else 0

        def combine(self, values: list[int]) -> int:
            return max(values, default=0)

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            roots = introspection_roots(self.context, node)
            if roots is not None:
                depth = self.measure(node.selection_set)
                for error in _introspection_errors(self.validation_context, node, roots, depth):
                    self.report_error(error)
                return
            depth = self.measure(node.selection_set)
            if depth > max_depth:
                self.report_error(
                    GraphQLError(f"Query depth {depth} exceeds the maximum of {max_depth}", node)
                )

    return DepthLimit


def alias_limit_rule(max_aliases: int) -> type[ASTValidationRule]:
    """Aliases let one small document ask for the same costly field many times over."""

    class AliasLimit(_AliasCount):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            if introspection_roots(self.context, node) is not None:
                return  # bounded by the introspection rule (in the depth limit)
            aliases = self.measure(node.selection_set)
            if aliases > max_aliases:
                self.report_error(
                    GraphQLError(f"The operation uses {aliases} aliases; the maximum is {max_aliases}", node)
                )

    return AliasLimit


PAGE_ARGUMENTS = ("limit", "first")


def cost_map(schema: GraphQLSchema) -> dict[str, dict[str, Any]]:
    """Ariadne `cost_map` for every object type: a list of objects costs one per item its parents
    may return, and a list with a page argument (`limit`, `first`) multiplies the cost of what
    it selects by its page size, at any depth."""
    costs: dict[str, dict[str, Any]] = {}
    for name, type_ in schema.type_map.items():
        if name.startswith("__") or not isinstance(type_, GraphQLObjectType):
            continue
        fields: dict[str, Any] = {}
        for field_name, field in type_.fields.items():
            pages = [arg for arg in PAGE_ARGUMENTS if arg in field.args]
            if pages:
                fields[field_name] = {"complexity": 1, "multipliers": pages}
            elif is_list_type(get_nullable_type(field.type)) and is_composite_type(
                get_named_type(field.type)
            ):
                fields[field_name] = {"complexity": 1}
        if fields:
            costs[name] = fields
    return costs


class PagedCost(CostValidator):
    """Ariadne's cost analysis, counting the page a list will actually serve: DEFAULT_LIMIT when
    the page argument is omitted, at most MAX_LIMIT for `limit` (app.validation.page)."""

    def get_multipliers_from_string(self, multipliers: list[str], field_args: dict) -> list[int]:
        args = dict(field_args)
        for name in multipliers:
            if args.get(name) is None:
                args[name] = DEFAULT_LIMIT
        if isinstance(args.get("limit"), int):
            args["limit"] = min(args["limit"], MAX_LIMIT)
        return super().get_multipliers_from_string(multipliers, args)


def _with_defaults(
    schema: GraphQLSchema, operation: OperationDefinitionNode, variables: dict[str, Any]
) -> dict[str, Any] | None:
    """The request's variables plus the operation's declared defaults; None when a required
    variable is missing, since that operation cannot run (execution says so) and has no price."""
    values = dict(variables)
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        if name in values:
            continue
        if definition.default_value is not None:
            declared = type_from_ast(schema, definition.type)
            value = value_from_ast(definition.default_value, declared) if declared else Undefined  # type: ignore[arg-type]
            if value is not Undefined:
                values[name] = value
        elif isinstance(definition.type, NonNullTypeNode):
            return None
    return values


def cost_rule(
    maximum: int, costs: dict[str, dict[str, Any]], variables: dict[str, Any]
) -> type[ASTValidationRule]:
    class QueryCost(PagedCost):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context, maximum, default_cost=1, variables=variables, cost_map=costs)

        def enter_operation_definition(self, node: OperationDefinitionNode, *args: Any) -> None:
            if introspection_roots(self.context, node) is not None:
                return
            operation_variables = _with_defaults(self.context.schema, node, variables)
            if operation_variables is None:
                return
            # Each operation is priced alone, with its own variables' defaults: a document of
            # many operations (GraphiQL sends its whole editor) runs only one of them.
            self.variables = operation_variables
            self.cost = 0
            super().enter_operation_definition(node, *args)

    return QueryCost
