"""A smith uploads a program or a route file for a robot or a fleet, over real multipart HTTP.

Each story sends a GraphQL multipart request (graphql-multipart-request-spec) with httpx to the
app served by uvicorn on a loopback port: the file lands in the storage with its sha256, a CUSTOM
task is created for the robots, a route is read into waypoints. Files over the size limit, of
another type or unreadable get BAD_USER_INPUT in `errors`, and nothing is stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from app.settings import Settings
from tests.live import Live, serving
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, MISSING_ROBOT, TEST_UNITS_FLEET, WAREHOUSE_FLEET
from tests.support import ADMIN, DEMO

UPLOAD_PROGRAM = """
mutation($file: Upload!, $robotId: ID, $fleetId: ID) {
  uploadProgram(file: $file, robotId: $robotId, fleetId: $fleetId) {
    success taskId fileId fileName robots { id } errors { code message field }
  }
}
"""
UPLOAD_ROUTE = """
mutation($file: Upload!, $robotId: ID, $fleetId: ID) {
  uploadRoute(file: $file, robotId: $robotId, fleetId: $fleetId) {
    success taskId fileId fileName robots { id }
    route { id name createdAt waypoints { id sequence position { latitude longitude altitude }
            orientation { w } actions { id type parameters duration } } }
    errors { code message field }
  }
}
"""
ROUTE_JSON = {
    "name": "Aisle 3 loop",
    "waypoints": [
        {"position": {"latitude": 52.52, "longitude": 13.40}, "actions": [{"type": "SCAN", "duration": 5}]},
        {
            "position": {"latitude": 52.521, "longitude": 13.401, "altitude": 2.5},
            "orientation": {"x": 0, "y": 0, "z": 0, "w": 1},
        },
    ],
}
GPX = b"""<?xml version="1.0" encoding="UTF-8"?>
<gpx version="1.1" creator="test" xmlns="http://www.topografix.com/GPX/1/1">
  <rte><name>Yard patrol</name>
    <rtept lat="48.1" lon="11.5"><ele>520</ele></rtept>
    <rtept lat="48.2" lon="11.6"></rtept>
  </rte>
</gpx>
"""
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<gpx version="1.1"><wpt lat="1" lon="1"><name>&lol2;</name></wpt></gpx>
"""


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    async with serving(settings.replace(upload_max_bytes=4096)) as running:
        yield running


async def upload(
    live: Live, query: str, name: str, content: bytes, who: tuple[str, str] | None = ADMIN, **variables: Any
) -> dict[str, Any]:
    headers = await live.bearer(who) if who else {"apollo-require-preflight": "true"}
    operations = {"query": query, "variables": {"file": None, **variables}}
    response = await live.api.client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": (name, content, "application/octet-stream")},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_files(settings: Settings) -> list[Path]:
    root = settings.data_dir / "storage"
    return [p for p in root.rglob("*") if p.is_file() and ("programs" in p.parts or "routes" in p.parts)]


async def test_a_program_uploaded_for_a_robot_is_stored_and_becomes_its_task(
    live: Live, settings: Settings
) -> None:
    before = len(stored_files(settings))
    program = json.dumps({"steps": [{"move": [1, 2]}, {"grip": True}]}).encode()
    body = await upload(live, UPLOAD_PROGRAM, "pick routine.json", program, robotId=ALPHA)
    result = body["data"]["uploadProgram"]
    assert result["errors"] is None and result["success"] is True
    assert result["fileName"] == "pick routine.json"
    assert [r["id"] for r in result["robots"]] == [ALPHA]

    db = live.api.resources.db
    task = await db.fetchrow("SELECT * FROM tasks WHERE id = $1", result["taskId"])
    assert (task["type"], task["status"], task["fleet_id"], task["name"]) == (
        "CUSTOM",
        "PENDING",
        DEV_FLEET,
        "Program: pick routine.json",
    )
    params = task["parameters"]
    assert (params["fileId"], params["uploadType"], params["size"]) == (
        result["fileId"],
        "program",
        len(program),
    )
    assert params["sha256"] == hashlib.sha256(program).hexdigest()
    assigned = await db.fetch("SELECT robot_id FROM task_robots WHERE task_id = $1", result["taskId"])
    assert [r["robot_id"] for r in assigned] == [ALPHA]
    row = await db.fetchrow("SELECT * FROM uploaded_files WHERE id = $1", result["fileId"])
    assert (row["kind"], row["task_id"], row["size"]) == ("PROGRAM", result["taskId"], len(program))
    assert params["fileUrl"] == f"storage://{row['storage_key']}"
    assert await live.api.resources.storage.get(row["storage_key"]) == program
    assert len(stored_files(settings)) == before + 1
    audit = await db.fetchrow("SELECT * FROM audit_logs WHERE action = 'uploadProgram'")
    assert audit["resource_id"] == result["taskId"]


async def test_a_route_for_a_fleet_is_read_into_waypoints_for_every_robot_not_offline(live: Live) -> None:
    db = live.api.resources.db
    await db.execute("UPDATE robots SET status = 'OFFLINE' WHERE id = $1", BETA)
    body = await upload(live, UPLOAD_ROUTE, "aisle.json", json.dumps(ROUTE_JSON).encode(), fleetId=DEV_FLEET)
    result = body["data"]["uploadRoute"]
    assert result["errors"] is None
    assert [r["id"] for r in result["robots"]] == [ALPHA]
    route = result["route"]
    assert route["name"] == "Aisle 3 loop"
    first, second = route["waypoints"]
    assert (first["sequence"], first["position"]) == (
        0,
        {"latitude": 52.52, "longitude": 13.4, "altitude": None},
    )
    assert first["actions"][0]["type"] == "SCAN" and first["actions"][0]["duration"] == 5
    assert second["orientation"] == {"w": 1.0}
    task = await db.fetchrow("SELECT parameters FROM tasks WHERE id = $1", result["taskId"])
    assert task["parameters"]["routeId"] == route["id"]
    assert task["parameters"]["uploadType"] == "route"


async def test_gpx_and_yaml_routes_are_understood(live: Live) -> None:
    gpx = (await upload(live, UPLOAD_ROUTE, "yard.gpx", GPX, robotId=ALPHA))["data"]["uploadRoute"]
    assert gpx["errors"] is None
    assert gpx["route"]["name"] == "Yard patrol"
    assert [w["position"] for w in gpx["route"]["waypoints"]] == [
        {"latitude": 48.1, "longitude": 11.5, "altitude": 520.0},
        {"latitude": 48.2, "longitude": 11.6, "altitude": None},
    ]
    yaml_route = b"waypoints:\n  - position: {latitude: 1.5, longitude: 2.5}\n"
    from_yaml = (await upload(live, UPLOAD_ROUTE, "short.yaml", yaml_route, fleetId=WAREHOUSE_FLEET))["data"]
    assert from_yaml["uploadRoute"]["route"]["name"] == "short"
    assert len(from_yaml["uploadRoute"]["robots"]) == 2


async def test_files_too_large_of_another_type_or_unreadable_are_refused_and_nothing_is_stored(
    live: Live, settings: Settings
) -> None:
    db = live.api.resources.db
    tasks_before = await db.fetchval("SELECT count(*) FROM tasks")
    files_before = stored_files(settings)
    cases = [
        (UPLOAD_PROGRAM, "big.json", b"{" + b" " * 5000 + b"}", "file must be at most 4096 bytes"),
        (UPLOAD_PROGRAM, "tool.exe", b"MZ", "Unsupported file type .exe; use .json, .yaml, .yml"),
        (UPLOAD_PROGRAM, "route.gpx", GPX, "Unsupported file type .gpx; use .json, .yaml, .yml"),
        (UPLOAD_PROGRAM, "broken.json", b'{"a": ', "invalid JSON"),
        (UPLOAD_PROGRAM, "list.json", b"[1, 2]", "a program must be a JSON object or a YAML mapping"),
        (UPLOAD_PROGRAM, "empty.json", b"", "file is empty"),
        (UPLOAD_ROUTE, "nowhere.json", b'{"waypoints": []}', "the route has no waypoints"),
        (
            UPLOAD_ROUTE,
            "pole.json",
            b'{"waypoints": [{"position": {"latitude": 91, "longitude": 0}}]}',
            "waypoints[0].position.latitude must be between -90 and 90",
        ),
        (UPLOAD_ROUTE, "laughs.gpx", BILLION_LAUGHS, "invalid GPX"),
        (UPLOAD_ROUTE, "bad.yaml", b"waypoints: [unclosed", "invalid YAML"),
    ]
    for query, name, content, message in cases:
        field = "uploadProgram" if query is UPLOAD_PROGRAM else "uploadRoute"
        result = (await upload(live, query, name, content, robotId=ALPHA))["data"][field]
        assert result["success"] is False, name
        (error,) = result["errors"]
        assert (error["code"], error["field"]) == ("BAD_USER_INPUT", "file"), (name, error)
        assert error["message"].startswith(message), (name, error)
    assert await db.fetchval("SELECT count(*) FROM tasks") == tasks_before
    assert await db.fetchval("SELECT count(*) FROM uploaded_files") == 0
    assert stored_files(settings) == files_before


async def test_targets_must_exist_and_have_a_robot_online(live: Live) -> None:
    program = b'{"steps": []}'
    missing = (await upload(live, UPLOAD_PROGRAM, "p.json", program, robotId=MISSING_ROBOT))["data"]
    assert [(e["code"], e["field"]) for e in missing["uploadProgram"]["errors"]] == [("NOT_FOUND", None)]
    empty = (await upload(live, UPLOAD_PROGRAM, "p.json", program, fleetId=TEST_UNITS_FLEET))["data"]
    assert [(e["code"], e["field"]) for e in empty["uploadProgram"]["errors"]] == [
        ("BAD_USER_INPUT", "fleetId")
    ]
    elsewhere = await upload(live, UPLOAD_PROGRAM, "p.json", program, robotId=ALPHA, fleetId=WAREHOUSE_FLEET)
    assert elsewhere["data"]["uploadProgram"]["errors"][0]["field"] == "robotId"
    assert await live.api.resources.db.fetchval("SELECT count(*) FROM uploaded_files") == 0


def codes(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(e["extensions"]["code"], e["extensions"].get("field")) for e in body["errors"]]


async def test_upload_needs_a_well_formed_target(live: Live) -> None:
    program = b"{}"
    assert codes(await upload(live, UPLOAD_PROGRAM, "p.json", program)) == [("BAD_USER_INPUT", "robotId")]
    assert codes(await upload(live, UPLOAD_PROGRAM, "p.json", program, robotId="bot-7")) == [
        ("BAD_USER_INPUT", "robotId")
    ]
    assert codes(await upload(live, UPLOAD_ROUTE, "r.json", program, fleetId="fleet")) == [
        ("BAD_USER_INPUT", "fleetId")
    ]


async def test_plain_json_request_without_a_file_is_an_error(live: Live) -> None:
    token = await live.api.token(*ADMIN)
    response = await live.api.post(UPLOAD_PROGRAM, {"file": None, "robotId": ALPHA}, token=token)
    # Rejected while validating the document (`Upload!` got null), before anything runs.
    assert response.status_code == 400
    body = response.json()
    assert body.get("data") is None
    assert "Upload!" in body["errors"][0]["message"]
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]


async def test_anonymous_upload_is_unauthenticated_and_a_smith_may_upload(live: Live) -> None:
    anonymous = await upload(live, UPLOAD_PROGRAM, "prog.json", b"{}", who=None, robotId=ALPHA)
    assert codes(anonymous) == [("UNAUTHENTICATED", None)]
    # CREATE_TASK is a smith's permission.
    smith = await upload(live, UPLOAD_PROGRAM, "prog.json", b"{}", who=DEMO, robotId=ALPHA)
    assert smith["data"]["uploadProgram"]["success"] is True
