"""A client sends numbers JSON cannot store, durations no clock can hold and design parameters of a
megabyte: each is refused as the client's error (BAD_USER_INPUT) and nothing is stored."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.seed_ids import ADMIN_ID, ALPHA, SERVO
from tests.support import Api

UPDATE_PROFILE = "mutation($v: JSON) { updateProfile(input: {preferences: $v}) { errors { code field } } }"
FORGE = (
    'mutation($v: JSON) { forgeSepulka(input: {name: "Probe", parameters: $v, alloyIds: ["'
    + SERVO
    + '"]}) { sepulka { id } errors { code field } } }'
)
SEND_COMMAND = (
    'mutation($v: JSON) { sendRobotCommand(robotId: "' + ALPHA + '", type: "PING", params: $v) { id } }'
)
JSON_ARGUMENTS = {"updateProfile.preferences": UPDATE_PROFILE, "forgeSepulka.parameters": FORGE}
JSON_ARGUMENTS["sendRobotCommand.params"] = SEND_COMMAND

# What Python's json module reads from a request body (and PostgreSQL's jsonb refuses): the
# tokens NaN and Infinity, and a number too large for a double, which reads as infinity.
NON_FINITE = {
    "NaN": '{"a": NaN}',
    "Infinity": '{"a": [1, Infinity]}',
    "-Infinity": '{"a": {"b": -Infinity}}',
    "1e400": '{"a": 1e400}',
}


async def post_raw(api: Api, query: str, variables: str) -> httpx.Response:
    """A request body written by hand: httpx would not write 1e400, and NaN only on request."""
    token = await api.token("admin@sepulki.com", "admin123")
    body = '{"query": ' + json.dumps(query) + ', "variables": {"v": ' + variables + "}}"
    return await api.client.post(
        "/graphql",
        content=body.encode(),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )


def all_codes(body: dict[str, Any]) -> list[str]:
    """Error codes of the response and of the payloads' `errors` fields."""
    codes = [e["extensions"]["code"] for e in body.get("errors") or []]
    data = body.get("data") or {}
    return codes + [e["code"] for v in data.values() if isinstance(v, dict) for e in v.get("errors") or []]


async def stored_json(api: Api) -> tuple[Any, ...]:
    db = api.resources.db
    return (
        await db.fetchval("SELECT preferences FROM smiths WHERE id = $1", ADMIN_ID),
        await db.fetchval("SELECT count(*) FROM sepulkas"),
        await db.fetchval("SELECT count(*) FROM robot_commands"),
    )


@pytest.mark.parametrize("value", list(NON_FINITE.values()), ids=list(NON_FINITE))
@pytest.mark.parametrize("query", list(JSON_ARGUMENTS.values()), ids=list(JSON_ARGUMENTS))
async def test_a_non_finite_number_in_a_json_variable_is_a_user_error(
    api: Api, query: str, value: str
) -> None:
    before = await stored_json(api)
    response = await post_raw(api, query, value)
    assert response.status_code == 200, response.text
    body = response.json()
    assert all_codes(body) == ["BAD_USER_INPUT"], body
    assert "finite" in body["errors"][0]["message"], body
    assert await stored_json(api) == before


@pytest.mark.parametrize("literal", ["1e400", "[1, -1e400]", "{a: {b: [2.5e999]}}"])
@pytest.mark.parametrize("name", list(JSON_ARGUMENTS))
async def test_an_overflowing_number_in_a_json_literal_is_a_user_error(
    api: Api, name: str, literal: str
) -> None:
    before = await stored_json(api)
    value = literal if literal.startswith("{") else "{a: " + literal + "}"
    query = JSON_ARGUMENTS[name].replace("mutation($v: JSON) ", "mutation ").replace("$v", value)
    response = await api.post(query, token=await api.token("admin@sepulki.com", "admin123"))
    # An invalid literal fails validation: the document is refused unexecuted (400).
    assert response.status_code == 400, response.text
    assert all_codes(response.json()) == ["BAD_USER_INPUT"], response.text
    assert await stored_json(api) == before


@pytest.mark.parametrize("name", list(JSON_ARGUMENTS))
async def test_non_finite_numbers_inside_a_json_string_are_a_user_error(api: Api, name: str) -> None:
    # A JSON string holding JSON (a common client mistake) is parsed: the same rule applies inside.
    body = await api.execute(JSON_ARGUMENTS[name], {"v": '{"a": [NaN, 1e400]}'})
    assert all_codes(body) == ["BAD_USER_INPUT"], body


async def test_json_text_nested_too_deeply_to_parse_is_a_user_error(api: Api) -> None:
    body = await api.execute(UPDATE_PROFILE, {"v": "[" * 100_000})
    assert all_codes(body) == ["BAD_USER_INPUT"], body


async def test_finite_numbers_in_json_are_stored_as_sent(api: Api) -> None:
    preferences = {"zoom": 1.5, "tiny": 1e-300, "count": 10**30, "nested": [{"x": -0.25}]}
    body = await api.execute(UPDATE_PROFILE, {"v": preferences})
    assert body["data"]["updateProfile"]["errors"] is None, body
    stored = await api.resources.db.fetchval("SELECT preferences FROM smiths WHERE id = $1", ADMIN_ID)
    assert stored == preferences


ROBOT_TELEMETRY = (
    'query($r: String) { robotTelemetry(robotId: "' + ALPHA + '", timeRange: $r) { timestamp } }'
)


@pytest.mark.parametrize(
    "time_range",
    [
        "99999999999999999999d",  # overflowed timedelta: OverflowError in the parser
        "9" * 5000 + "s",  # past Python's int-from-text limit: ValueError in the parser
        "00000000000000000000000000000001h",
        "1h\n",  # `$` of a regex also matches before a final newline
        "\u0663h",  # ARABIC-INDIC DIGIT THREE: \d matches it, int() reads it
        "32d",
        "0s",
    ],
)
async def test_an_unreasonable_telemetry_time_range_is_a_user_error(api: Api, time_range: str) -> None:
    body = await api.execute(ROBOT_TELEMETRY, {"r": time_range})
    assert all_codes(body) == ["BAD_USER_INPUT"], body
    assert body["errors"][0]["extensions"]["field"] == "timeRange"


async def test_reasonable_telemetry_time_ranges_are_served(api: Api) -> None:
    for time_range in ["1s", "90m", "24h", "31d", None]:
        data = await api.data(ROBOT_TELEMETRY, {"r": time_range})
        assert isinstance(data["robotTelemetry"], list)


async def test_design_parameters_of_900_kb_are_refused_and_nothing_is_forged(api: Api) -> None:
    before = await api.resources.db.fetchval("SELECT count(*) FROM sepulkas")
    parameters = {f"p{i}": "x" * 900 for i in range(1000)}  # ~ 900 KB, under the request body limit
    body = await api.execute(FORGE, {"v": parameters})
    assert body["data"]["forgeSepulka"]["sepulka"] is None
    assert body["data"]["forgeSepulka"]["errors"] == [{"code": "BAD_USER_INPUT", "field": "parameters"}]
    assert await api.resources.db.fetchval("SELECT count(*) FROM sepulkas") == before


async def test_design_parameters_within_the_cap_are_forged(api: Api) -> None:
    parameters = {f"p{i}": "x" * 900 for i in range(60)}  # ~ 55 KB
    body = await api.execute(FORGE, {"v": parameters})
    assert body["data"]["forgeSepulka"]["errors"] is None, body
    sepulka_id = body["data"]["forgeSepulka"]["sepulka"]["id"]
    stored = await api.resources.db.fetchval("SELECT parameters FROM sepulkas WHERE id = $1", sepulka_id)
    assert stored == parameters
