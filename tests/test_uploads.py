"""A smith uploading a program or route is told plainly that uploads are not available yet."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.seed_ids import ALPHA, DEV_FLEET
from tests.support import ADMIN, Api

UPLOAD_PROGRAM = """
mutation($file: Upload!, $robotId: ID, $fleetId: ID) {
  uploadProgram(file: $file, robotId: $robotId, fleetId: $fleetId) { success taskId errors { code } }
}
"""
UPLOAD_ROUTE = """
mutation($file: Upload!, $robotId: ID, $fleetId: ID) {
  uploadRoute(file: $file, robotId: $robotId, fleetId: $fleetId) { success route { id } }
}
"""


async def upload(api: Api, query: str, **variables: Any) -> httpx.Response:
    """A GraphQL multipart request (graphql-multipart-request-spec) with one JSON file."""
    token = await api.token(*ADMIN)
    operations = {"query": query, "variables": {"file": None, **variables}}
    return await api.client.post(
        "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps({"0": ["variables.file"]})},
        files={"0": ("prog.json", b"{}", "application/json")},
        headers={"authorization": f"Bearer {token}"},
    )


def codes(response: httpx.Response) -> list[tuple[str, str | None]]:
    errors = response.json()["errors"]
    return [(e["extensions"]["code"], e["extensions"].get("field")) for e in errors]


async def test_upload_program_with_a_file_answers_not_implemented(api: Api) -> None:
    response = await upload(api, UPLOAD_PROGRAM, robotId=ALPHA)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["message"] == "uploadProgram is not implemented yet"
    assert codes(response) == [("NOT_IMPLEMENTED", None)]
    # Nothing was created for the upload.
    assert await api.resources.db.fetchval("SELECT count(*) FROM tasks") == 4


async def test_upload_route_to_a_fleet_answers_not_implemented(api: Api) -> None:
    response = await upload(api, UPLOAD_ROUTE, fleetId=DEV_FLEET)
    assert codes(response) == [("NOT_IMPLEMENTED", None)]
    assert response.json()["errors"][0]["message"] == "uploadRoute is not implemented yet"


async def test_upload_needs_a_well_formed_target(api: Api) -> None:
    assert codes(await upload(api, UPLOAD_PROGRAM)) == [("BAD_USER_INPUT", "robotId")]
    assert codes(await upload(api, UPLOAD_PROGRAM, robotId="bot-7")) == [("BAD_USER_INPUT", "robotId")]
    assert codes(await upload(api, UPLOAD_ROUTE, fleetId="fleet")) == [("BAD_USER_INPUT", "fleetId")]


async def test_plain_json_request_without_a_file_is_an_error(api: Api) -> None:
    token = await api.token(*ADMIN)
    response = await api.post(UPLOAD_PROGRAM, {"file": None, "robotId": ALPHA}, token=token)
    # Rejected while validating the document (`Upload!` got null), before anything runs.
    assert response.status_code == 400
    body = response.json()
    assert body.get("data") is None
    assert "Upload!" in body["errors"][0]["message"]
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]


async def test_anonymous_upload_is_unauthenticated(api: Api) -> None:
    anonymous = await api.client.post(
        "/graphql",
        data={
            "operations": json.dumps(
                {"query": UPLOAD_PROGRAM, "variables": {"file": None, "robotId": ALPHA}}
            ),
            "map": json.dumps({"0": ["variables.file"]}),
        },
        files={"0": ("prog.json", b"{}", "application/json")},
        # As apollo-upload-client sends it: multipart requests need a preflight-forcing header.
        headers={"apollo-require-preflight": "true"},
    )
    assert codes(anonymous) == [("UNAUTHENTICATED", None)]
