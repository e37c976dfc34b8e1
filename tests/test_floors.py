"""Operators upload floor plans, place robots on them and retire floors."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.seed_ids import ALPHA, BETA, DEV_FLOOR
from tests.support import ADMIN, Api

MISSING = "b0000000-0000-4000-8000-0000000000ff"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64

FLOOR_FIELDS = """
id name description blueprintUrl blueprintType widthMeters heightMeters scaleFactor originX originY
createdAt createdBy { email } robots { id name }
"""
CREATE = f"""
mutation($input: FactoryFloorInput!, $file: Upload!) {{
  createFactoryFloor(input: $input, blueprintFile: $file) {{
    factoryFloor {{ {FLOOR_FIELDS} }} errors {{ code message field }}
  }}
}}
"""
UPDATE = f"""
mutation($id: ID!, $input: UpdateFactoryFloorInput, $file: Upload) {{
  updateFactoryFloor(id: $id, input: $input, blueprintFile: $file) {{
    factoryFloor {{ {FLOOR_FIELDS} }} errors {{ code message field }}
  }}
}}
"""
FLOOR = f"query($id: ID!) {{ factoryFloor(id: $id) {{ {FLOOR_FIELDS} }} }}"
DELETE = "mutation($id: ID!) { deleteFactoryFloor(id: $id) }"
ASSIGN = """
mutation($robot: ID!, $floor: ID!, $position: FloorPositionInput) {
  assignRobotToFloor(robotId: $robot, floorId: $floor, position: $position) {
    id factoryFloor { id } floorPositionX floorPositionY floorPositionTheta floorRotationDegrees
  }
}
"""
MOVE = """
mutation($robot: ID!, $position: FloorPositionInput!) {
  updateRobotFloorPosition(robotId: $robot, position: $position) { id floorPositionX floorPositionY }
}
"""
HALL = {
    "name": "Assembly Hall",
    "description": "Hall B",
    "widthMeters": 60.0,
    "heightMeters": 30.0,
    "scaleFactor": 10.0,
}


async def upload(
    api: Api,
    query: str,
    variables: dict[str, Any],
    file: tuple[str, bytes, str] | None,
    credentials: tuple[str, str] = ADMIN,
) -> dict[str, Any]:
    """A GraphQL multipart request (operations, map, and the file as part "0")."""
    operations = json.dumps({"query": query, "variables": {**variables, "file": None}})
    files = {"0": file} if file else {"dummy": ("", b"", "application/octet-stream")}
    mapping = {"0": ["variables.file"]} if file else {}
    response: httpx.Response = await api.client.post(
        "/graphql",
        data={"operations": operations, "map": json.dumps(mapping)},
        files=files,
        headers={"authorization": f"Bearer {await api.token(*credentials)}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def blueprint_files(api: Api) -> set[str]:
    """Stored blueprints; the uploads directory outlives a test, so compare before and after."""
    return {p.name for p in (api.resources.uploads_dir / "blueprints").glob("*")}


async def create_hall(api: Api) -> dict[str, Any]:
    body = await upload(api, CREATE, {"input": HALL}, ("hall.png", PNG, "image/png"))
    payload = body["data"]["createFactoryFloor"]
    assert payload["errors"] is None, payload
    floor: dict[str, Any] = payload["factoryFloor"]
    return floor


async def test_operator_creates_a_floor_with_an_uploaded_blueprint(api: Api) -> None:
    floor = await create_hall(api)
    assert floor["blueprintUrl"] == f"/uploads/blueprints/{floor['id']}.png"
    assert floor["blueprintType"] == "IMAGE"
    assert (floor["name"], floor["widthMeters"], floor["heightMeters"]) == ("Assembly Hall", 60.0, 30.0)
    assert (floor["originX"], floor["originY"], floor["robots"]) == (0.0, 0.0, [])
    assert floor["createdBy"] == {"email": ADMIN[0]}
    stored = api.resources.uploads_dir / "blueprints" / f"{floor['id']}.png"
    assert stored.read_bytes() == PNG
    served = await api.client.get(floor["blueprintUrl"])
    assert served.status_code == 200 and served.content == PNG
    db = api.resources.db
    row = await db.fetchrow(
        "SELECT name, blueprint_type::text, created_by FROM factory_floors WHERE id = $1", floor["id"]
    )
    assert (row["name"], row["blueprint_type"]) == ("Assembly Hall", "IMAGE")
    assert row["created_by"] == "00000000-0000-4000-8000-000000000001"
    assert (
        await db.fetchval("SELECT action FROM audit_logs WHERE resource_id = $1", floor["id"])
        == "createFactoryFloor"
    )


async def test_unsupported_blueprints_and_bad_dimensions_are_payload_errors(api: Api) -> None:
    before = blueprint_files(api)
    exe = await upload(api, CREATE, {"input": HALL}, ("plan.exe", b"MZ", "application/octet-stream"))
    assert exe["data"]["createFactoryFloor"]["factoryFloor"] is None
    [error] = exe["data"]["createFactoryFloor"]["errors"]
    assert (error["code"], error["field"]) == ("BAD_USER_INPUT", "blueprintFile")
    flat = await upload(
        api, CREATE, {"input": {**HALL, "widthMeters": 0}}, ("plan.pdf", b"%PDF-1.7", "application/pdf")
    )
    [error] = flat["data"]["createFactoryFloor"]["errors"]
    assert (error["code"], error["field"]) == ("BAD_USER_INPUT", "widthMeters")
    tiny = await upload(
        api, CREATE, {"input": {**HALL, "scaleFactor": -1}}, ("plan.dxf", b"0", "image/vnd.dxf")
    )
    assert tiny["data"]["createFactoryFloor"]["errors"][0]["field"] == "scaleFactor"
    assert await api.resources.db.fetchval("SELECT count(*) FROM factory_floors") == 1
    assert blueprint_files(api) == before


async def test_blueprints_over_20_mb_are_refused(api: Api) -> None:
    before = blueprint_files(api)
    huge = b"\x00" * (20 * 1024 * 1024 + 1)
    body = await upload(api, CREATE, {"input": HALL}, ("huge.png", huge, "image/png"))
    [error] = body["data"]["createFactoryFloor"]["errors"]
    assert (error["field"], error["message"]) == ("blueprintFile", "blueprintFile must be at most 20 MB")
    assert await api.resources.db.fetchval("SELECT count(*) FROM factory_floors") == 1
    assert blueprint_files(api) == before


async def test_partial_update_changes_only_what_is_given_and_can_swap_the_blueprint(api: Api) -> None:
    floor = await create_hall(api)
    old_file = api.resources.uploads_dir / "blueprints" / f"{floor['id']}.png"
    body = await upload(
        api,
        UPDATE,
        {"id": floor["id"], "input": {"name": "Hall B2"}},
        ("plan.PDF", b"%PDF-1.7", "application/pdf"),
    )
    updated = body["data"]["updateFactoryFloor"]
    assert updated["errors"] is None
    assert updated["factoryFloor"]["name"] == "Hall B2"
    assert updated["factoryFloor"]["description"] == "Hall B"
    assert updated["factoryFloor"]["widthMeters"] == 60.0
    assert updated["factoryFloor"]["blueprintType"] == "PDF"
    assert updated["factoryFloor"]["blueprintUrl"] == f"/uploads/blueprints/{floor['id']}.pdf"
    assert (api.resources.uploads_dir / "blueprints" / f"{floor['id']}.pdf").read_bytes() == b"%PDF-1.7"
    assert not old_file.exists()
    plain = await api.data(UPDATE, {"id": floor["id"], "input": {"heightMeters": 45, "description": None}})
    row = await api.resources.db.fetchrow("SELECT * FROM factory_floors WHERE id = $1", floor["id"])
    assert plain["updateFactoryFloor"]["factoryFloor"]["heightMeters"] == 45.0
    assert (row["name"], row["height_meters"], row["description"]) == ("Hall B2", 45.0, None)
    assert row["blueprint_type"] == "PDF"


async def test_updating_an_unknown_or_with_bad_values_is_a_payload_error(api: Api) -> None:
    unknown = await api.data(UPDATE, {"id": MISSING, "input": {"name": "x"}})
    assert unknown["updateFactoryFloor"]["errors"][0]["code"] == "NOT_FOUND"
    negative = await api.data(UPDATE, {"id": DEV_FLOOR, "input": {"heightMeters": -3}})
    assert negative["updateFactoryFloor"]["errors"][0]["field"] == "heightMeters"
    malformed = await api.data(UPDATE, {"id": "floor-1", "input": {}})
    assert malformed["updateFactoryFloor"]["errors"][0]["code"] == "BAD_USER_INPUT"
    assert (
        await api.resources.db.fetchval("SELECT height_meters FROM factory_floors WHERE id = $1", DEV_FLOOR)
        == 25
    )


async def test_floors_list_their_robots_and_creator(api: Api) -> None:
    floors = (await api.data(f"{{ factoryFloors {{ {FLOOR_FIELDS} }} }}"))["factoryFloors"]
    assert [f["name"] for f in floors] == ["Dev Lab Floor"]
    assert floors[0]["robots"] == [{"id": ALPHA, "name": "DevBot-Alpha"}]
    assert floors[0]["createdBy"] == {"email": ADMIN[0]}
    assert (await api.data(FLOOR, {"id": MISSING}))["factoryFloor"] is None
    assert await api.error_codes(FLOOR, {"id": "x"}) == ["BAD_USER_INPUT"]


async def test_deleting_a_floor_hides_it_and_unplaces_its_robots(api: Api) -> None:
    assert (await api.data(DELETE, {"id": DEV_FLOOR}))["deleteFactoryFloor"] is True
    db = api.resources.db
    robot = await db.fetchrow("SELECT * FROM robots WHERE id = $1", ALPHA)
    assert robot["factory_floor_id"] is None
    assert (robot["floor_position_x"], robot["floor_position_y"], robot["floor_position_theta"]) == (
        None,
        None,
        None,
    )
    assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM factory_floors WHERE id = $1", DEV_FLOOR)
    assert (await api.data(FLOOR, {"id": DEV_FLOOR}))["factoryFloor"] is None
    assert (await api.data("{ factoryFloors { id } }"))["factoryFloors"] == []
    assert await api.error_codes(DELETE, {"id": DEV_FLOOR}) == ["NOT_FOUND"]
    assert (
        await db.fetchval("SELECT action FROM audit_logs WHERE resource_id = $1", DEV_FLOOR)
        == "deleteFactoryFloor"
    )


async def test_a_plain_smith_may_not_delete_a_floor(api: Api) -> None:
    smith = await api.create_smith("x@sepulki.com", "SMITH")
    assert await api.error_codes(DELETE, {"id": DEV_FLOOR}, as_=smith) == ["FORBIDDEN"]
    assert (
        await api.resources.db.fetchval("SELECT deleted_at FROM factory_floors WHERE id = $1", DEV_FLOOR)
        is None
    )


async def test_a_robot_is_placed_at_the_floor_centre_unless_told_where(api: Api) -> None:
    centred = (await api.data(ASSIGN, {"robot": BETA, "floor": DEV_FLOOR}))["assignRobotToFloor"]
    assert centred["factoryFloor"] == {"id": DEV_FLOOR}
    assert (centred["floorPositionX"], centred["floorPositionY"]) == (20.0, 12.5)
    position = {"positionX": 40, "positionY": 0, "positionTheta": 1.57, "rotationDegrees": 90}
    placed = (await api.data(ASSIGN, {"robot": BETA, "floor": DEV_FLOOR, "position": position}))[
        "assignRobotToFloor"
    ]
    assert (placed["floorPositionX"], placed["floorPositionTheta"], placed["floorRotationDegrees"]) == (
        40.0,
        1.57,
        90.0,
    )
    row = await api.resources.db.fetchrow("SELECT * FROM robots WHERE id = $1", BETA)
    assert (row["factory_floor_id"], row["floor_position_x"], row["floor_position_y"]) == (
        DEV_FLOOR,
        40.0,
        0.0,
    )


async def test_a_position_outside_the_floor_is_rejected(api: Api) -> None:
    outside = {"robot": BETA, "floor": DEV_FLOOR, "position": {"positionX": 40.5, "positionY": 3}}
    body = await api.execute(ASSIGN, outside)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "position.positionX"}
    below = {"robot": ALPHA, "position": {"positionX": 3, "positionY": -0.1}}
    assert await api.error_codes(MOVE, below) == ["BAD_USER_INPUT"]
    row = await api.resources.db.fetchrow("SELECT * FROM robots WHERE id = $1", ALPHA)
    assert (row["floor_position_x"], row["floor_position_y"]) == (12.5, 8.0)
    assert await api.resources.db.fetchval("SELECT factory_floor_id FROM robots WHERE id = $1", BETA) is None
    unknown = {"robot": BETA, "floor": MISSING}
    assert await api.error_codes(ASSIGN, unknown) == ["NOT_FOUND"]


async def test_moving_a_robot_on_its_floor_requires_it_to_be_on_one(api: Api) -> None:
    body = await api.execute(MOVE, {"robot": BETA, "position": {"positionX": 1, "positionY": 1}})
    assert body["errors"][0]["message"] == "Robot is not assigned to a factory floor"
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    moved = await api.data(MOVE, {"robot": ALPHA, "position": {"positionX": 30, "positionY": 20}})
    assert moved["updateRobotFloorPosition"] == {"id": ALPHA, "floorPositionX": 30.0, "floorPositionY": 20.0}
    row = await api.resources.db.fetchrow("SELECT * FROM robots WHERE id = $1", ALPHA)
    assert (row["floor_position_x"], row["floor_position_y"], row["factory_floor_id"]) == (
        30.0,
        20.0,
        DEV_FLOOR,
    )
    audit = await api.resources.db.fetchval(
        "SELECT count(*) FROM audit_logs WHERE resource_id = $1 AND action = 'updateRobotFloorPosition'",
        ALPHA,
    )
    assert audit == 1
