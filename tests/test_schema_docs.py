"""The schema is an artifact tools read: `sepulki schema` prints it, docs/schema.graphql is that
output checked in, every field shows the permission it needs, and the SDL is documented."""

from __future__ import annotations

import subprocess
import sys

from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    specified_scalar_types,
)
from graphql import (
    build_schema as build_sdl_schema,
)

from app.web.graphql_app import PERMISSION_LINE_PREFIX, build_schema
from tests.support import ROOT

CHECKED_IN = ROOT / "docs" / "schema.graphql"
REGENERATE = ".venv/bin/python -m app.cli schema > docs/schema.graphql"
ROOT_COVERAGE = 1.0
OVERALL_COVERAGE = 0.95


def sepulki_schema() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "schema"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout


def human_text(description: str | None) -> str:
    """The description without the permission line build_schema appends."""
    text = (description or "").strip()
    paragraphs = text.split("\n\n")
    if paragraphs and paragraphs[-1].startswith(PERMISSION_LINE_PREFIX):
        paragraphs.pop()
    return "\n\n".join(paragraphs).strip()


def described(schema: GraphQLSchema) -> dict[str, str | None]:
    """Every documentable element (types, fields, arguments, enum values, input fields), by
    coordinate (`Type`, `Type.field`, `Type.field(arg:)`, `Enum.VALUE`), with its human text."""
    elements: dict[str, str | None] = {}
    for name, type_ in schema.type_map.items():
        if name.startswith("__") or name in specified_scalar_types:
            continue
        elements[name] = human_text(type_.description) or None
        if isinstance(type_, GraphQLObjectType | GraphQLInterfaceType):
            for field_name, field in type_.fields.items():
                elements[f"{name}.{field_name}"] = human_text(field.description) or None
                for arg_name, arg in field.args.items():
                    elements[f"{name}.{field_name}({arg_name}:)"] = human_text(arg.description) or None
        elif isinstance(type_, GraphQLEnumType):
            for value_name, value in type_.values.items():
                elements[f"{name}.{value_name}"] = human_text(value.description) or None
        elif isinstance(type_, GraphQLInputObjectType):
            for field_name, input_field in type_.fields.items():
                elements[f"{name}.{field_name}"] = human_text(input_field.description) or None
    return elements


def coverage(elements: dict[str, str | None]) -> tuple[float, list[str]]:
    missing = sorted(name for name, text in elements.items() if not text)
    return (1 - len(missing) / len(elements) if elements else 1.0), missing


def test_the_checked_in_schema_is_what_sepulki_schema_prints() -> None:
    printed = sepulki_schema()
    assert printed.startswith('"""') or printed.startswith("directive") or printed.startswith("type")
    assert "directive @requires(" in printed and "type Query" in printed
    stale = not CHECKED_IN.exists() or CHECKED_IN.read_text() != printed
    assert not stale, f"docs/schema.graphql is stale: regenerate it with `{REGENERATE}`"


def test_the_printed_schema_is_the_served_one_and_tools_can_read_it() -> None:
    client_schema = build_sdl_schema(sepulki_schema())
    served = build_schema()
    assert set(client_schema.type_map) == set(served.type_map)
    for root in ("query_type", "mutation_type", "subscription_type"):
        assert set(getattr(client_schema, root).fields) == set(getattr(served, root).fields)


def test_every_guarded_field_names_its_permission_in_its_description() -> None:
    schema = build_schema()
    robots = schema.query_type.fields["robots"]  # type: ignore[union-attr]
    assert robots.description is not None and robots.description.endswith("\n\nRequires: VIEW_ROBOTS")
    me = schema.query_type.fields["me"]  # type: ignore[union-attr]
    assert me.description is not None and me.description.endswith("Requires: signed in")
    email = schema.get_type("Smith").fields["email"]  # type: ignore[union-attr]
    assert email.description is not None
    assert email.description.endswith("Requires: the smith themself or MANAGE_SMITHS")
    # Every field carrying a directive says so, and the line comes from that directive.
    for type_ in schema.type_map.values():
        if not isinstance(type_, GraphQLObjectType | GraphQLInterfaceType) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            directives = {d.name.value for d in (field.ast_node.directives if field.ast_node else None) or ()}
            lines = (field.description or "").split("\n")
            says = lines[-1].startswith(PERMISSION_LINE_PREFIX)
            guarded = bool(directives & {"requires", "authenticated", "selfOr"})
            assert says == guarded, f"{type_.name}.{name}: directives {directives}, description {lines[-1]!r}"


def test_every_root_field_and_nearly_everything_else_is_documented() -> None:
    elements = described(build_schema())
    # Root fields themselves (`Query.robots`), not their arguments.
    roots = {
        name: text
        for name, text in elements.items()
        if name.split(".")[0] in ROOT_TYPES and "." in name and "(" not in name
    }
    root_share, root_missing = coverage(roots)
    overall, missing = coverage(elements)
    report = (
        f"root fields documented: {root_share:.1%} (missing {len(root_missing)}: {root_missing[:20]}); "
        f"overall: {overall:.1%} of {len(elements)} (missing {len(missing)}, e.g. {missing[:20]})"
    )
    print(report)
    assert root_share >= ROOT_COVERAGE and overall >= OVERALL_COVERAGE, report


ROOT_TYPES = {"Query", "Mutation", "Subscription"}


def test_a_permission_line_alone_does_not_count_as_a_description() -> None:
    schema = build_sdl_schema('"Root." type Query { "Fleets." fleets: Int, robots: Int }')
    schema.query_type.fields["robots"].description = "Requires: VIEW_ROBOTS"  # type: ignore[union-attr]
    schema.query_type.fields["fleets"].description = "Fleets.\n\nRequires: VIEW_FLEET"  # type: ignore[union-attr]
    share, missing = coverage(described(schema))
    assert missing == ["Query.robots"]
    assert round(share, 6) == round(2 / 3, 6)
