"""A smith forges robot designs (sepulkas), browses them with every filter, and deletes their own."""

from __future__ import annotations

from tests.seed_ids import ARM_PATTERN, ASSEMBLY_SEPULKA, DEMO_ID, DEVBOT_SEPULKA, SERVO, TEST_ID, VISION
from tests.support import ADMIN, DEMO, DEV, TEST, Api, request_work

SEPULKAS = """
query($filter: SepulkaFilter, $limit: Int, $offset: Int) {
  sepulkas(filter: $filter, limit: $limit, offset: $offset) { id name status }
}
"""
SEPULKA = """
query($id: ID!) {
  sepulka(id: $id) {
    id name version description status parameters createdAt updatedAt
    pattern { id name }
    alloys { id name }
    ingots { id version buildHash status }
    createdBy { id email }
  }
}
"""
DEEP = """
query($limit: Int) {
  sepulkas(limit: $limit) { id pattern { name } alloys { name } ingots { version } createdBy { email } }
}
"""
FORGE = """
mutation($input: ForgeInput!) {
  forgeSepulka(input: $input) {
    sepulka { id name status description parameters pattern { id } alloys { id } createdBy { email } }
    errors { code message field }
  }
}
"""
DELETE = "mutation($id: ID!) { deleteSepulka(id: $id) { success errors { code message field } } }"


def names(data: dict) -> set[str]:
    return {s["name"] for s in data["sepulkas"]}


async def test_smith_lists_live_sepulkas(api: Api) -> None:
    data = await api.data(SEPULKAS, as_=DEMO)
    assert names(data) == {"DevBot-001", "WarehouseWorker-Demo", "AssemblyBot-Test"}


async def test_every_sepulka_filter_narrows_the_list(api: Api) -> None:
    by_status = await api.data(SEPULKAS, {"filter": {"status": "CAST_READY"}})
    assert names(by_status) == {"WarehouseWorker-Demo"}
    by_creator = await api.data(SEPULKAS, {"filter": {"createdBy": TEST_ID}})
    assert names(by_creator) == {"AssemblyBot-Test"}
    by_pattern = await api.data(SEPULKAS, {"filter": {"patternId": ARM_PATTERN}})
    assert names(by_pattern) == {"DevBot-001", "AssemblyBot-Test"}
    # Tags match the pattern's tags (the reference ignored patternId and tags).
    by_tag = await api.data(SEPULKAS, {"filter": {"tags": ["warehouse", "drone"]}})
    assert names(by_tag) == {"WarehouseWorker-Demo"}
    combined = await api.data(SEPULKAS, {"filter": {"tags": ["arm"], "status": "FORGING"}})
    assert names(combined) == {"AssemblyBot-Test"}
    assert names(await api.data(SEPULKAS, {"filter": {"createdBy": DEMO_ID, "status": "READY"}})) == set()


async def test_sepulka_list_pages_deterministically(api: Api) -> None:
    every = [s["id"] for s in (await api.data(SEPULKAS))["sepulkas"]]
    assert [s["id"] for s in (await api.data(SEPULKAS, {"limit": 1, "offset": 1}))["sepulkas"]] == every[1:2]
    assert await api.error_codes(SEPULKAS, {"limit": -1}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(SEPULKAS, {"filter": {"createdBy": "me"}}) == ["BAD_USER_INPUT"]


async def test_sepulka_shows_pattern_alloys_ingots_and_creator(api: Api) -> None:
    sepulka = (await api.data(SEPULKA, {"id": DEVBOT_SEPULKA}))["sepulka"]
    assert sepulka["status"] == "READY"
    assert sepulka["parameters"] == {"reach": 1.4, "payload": 12}
    assert sepulka["pattern"] == {"id": ARM_PATTERN, "name": "Industrial Arm - 6DOF"}
    assert [a["name"] for a in sepulka["alloys"]] == ["GripForce Elite", "ServoMax Pro 3000", "VisionEye 4K"]
    assert sepulka["ingots"] == [
        {
            "id": "60000000-0000-4000-8000-000000000001",
            "version": "1.0.0",
            "buildHash": "build_dev001_abc123",
            "status": "READY",
        }
    ]
    assert sepulka["createdBy"]["email"] == DEV[0]


async def test_unknown_sepulka_is_null_and_malformed_id_is_bad_input(api: Api) -> None:
    assert (await api.data(SEPULKA, {"id": "50000000-0000-4000-8000-0000000000ff"}))["sepulka"] is None
    assert await api.error_codes(SEPULKA, {"id": "50000000"}) == ["BAD_USER_INPUT"]


async def test_nested_sepulka_fields_are_batched(api: Api) -> None:
    await api.data(DEEP, {"limit": 1})
    with api.count_statements() as one:
        await api.data(DEEP, {"limit": 1})
    with api.count_statements() as three:
        data = await api.data(DEEP, {"limit": 3})
    assert len(data["sepulkas"]) == 3
    # The list, then one batch each for pattern, alloys, ingots and createdBy.
    assert len(request_work(one)) == len(request_work(three)) == 5


async def test_smith_forges_a_sepulka_with_alloys_in_one_go(api: Api) -> None:
    variables = {
        "input": {
            "name": "  Picker-9  ",
            "description": "A picking arm",
            "patternId": ARM_PATTERN,
            "alloyIds": [SERVO, VISION, SERVO],
            "parameters": {"reach": 1.1},
        }
    }
    payload = (await api.data(FORGE, variables, as_=DEMO))["forgeSepulka"]
    assert payload["errors"] is None
    sepulka = payload["sepulka"]
    assert sepulka["name"] == "Picker-9"
    assert sepulka["status"] == "FORGING"
    assert sepulka["parameters"] == {"reach": 1.1}
    assert sepulka["pattern"] == {"id": ARM_PATTERN}
    assert sorted(a["id"] for a in sepulka["alloys"]) == [SERVO, VISION]
    assert sepulka["createdBy"]["email"] == DEMO[0]

    db = api.resources.db
    row = await db.fetchrow("SELECT * FROM sepulkas WHERE id = $1", sepulka["id"])
    assert (row["name"], row["status"], row["created_by"]) == ("Picker-9", "FORGING", DEMO_ID)
    alloys = await db.fetch("SELECT alloy_id FROM sepulka_alloys WHERE sepulka_id = $1", sepulka["id"])
    assert sorted(r["alloy_id"] for r in alloys) == [SERVO, VISION]
    audit = await db.fetchrow(
        "SELECT * FROM audit_logs WHERE action = 'forgeSepulka' AND resource_id = $1", sepulka["id"]
    )
    assert audit["smith_id"] == DEMO_ID
    assert audit["changes"]["alloyIds"] == [SERVO, VISION]


async def test_forging_with_an_unknown_alloy_changes_nothing(api: Api) -> None:
    db = api.resources.db
    before = await db.fetchval("SELECT count(*) FROM sepulkas")
    ghost = "20000000-0000-4000-8000-0000000000ff"
    payload = (await api.data(FORGE, {"input": {"name": "Ghost", "alloyIds": [SERVO, ghost]}}))[
        "forgeSepulka"
    ]
    assert payload["sepulka"] is None
    assert payload["errors"] == [
        {"code": "NOT_FOUND", "message": f"Unknown alloy ids: {ghost}", "field": "alloyIds"}
    ]
    assert await db.fetchval("SELECT count(*) FROM sepulkas") == before


async def test_forging_reports_missing_name_alloys_and_pattern(api: Api) -> None:
    blank = (await api.data(FORGE, {"input": {"name": "  ", "alloyIds": [SERVO]}}))["forgeSepulka"]
    assert blank["errors"][0]["field"] == "name"
    assert blank["errors"][0]["code"] == "BAD_USER_INPUT"
    empty = (await api.data(FORGE, {"input": {"name": "X", "alloyIds": []}}))["forgeSepulka"]
    assert empty["errors"] == [
        {"code": "BAD_USER_INPUT", "message": "At least one alloy is required", "field": "alloyIds"}
    ]
    no_pattern = {"name": "X", "alloyIds": [SERVO], "patternId": "10000000-0000-4000-8000-0000000000ff"}
    missing = (await api.data(FORGE, {"input": no_pattern}))["forgeSepulka"]
    assert missing["errors"][0]["code"] == "NOT_FOUND"
    assert missing["errors"][0]["field"] == "patternId"
    assert await api.resources.db.fetchval("SELECT count(*) FROM sepulkas WHERE name = 'X'") == 0


async def test_forging_with_malformed_ids_is_bad_user_input(api: Api) -> None:
    codes = await api.error_codes(FORGE, {"input": {"name": "X", "alloyIds": ["servo"]}})
    assert codes == ["BAD_USER_INPUT"]
    codes = await api.error_codes(FORGE, {"input": {"name": "X", "alloyIds": [SERVO], "patternId": "p"}})
    assert codes == ["BAD_USER_INPUT"]


async def test_creator_soft_deletes_their_sepulka(api: Api) -> None:
    payload = (await api.data(DELETE, {"id": ASSEMBLY_SEPULKA}, as_=TEST))["deleteSepulka"]
    assert payload == {"success": True, "errors": None}
    db = api.resources.db
    assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA)
    assert (
        await db.fetchval(
            "SELECT smith_id FROM audit_logs WHERE action = 'deleteSepulka' AND resource_id = $1",
            ASSEMBLY_SEPULKA,
        )
        == TEST_ID
    )
    assert "AssemblyBot-Test" not in names(await api.data(SEPULKAS))
    assert (await api.data(SEPULKA, {"id": ASSEMBLY_SEPULKA}))["sepulka"] is None
    # Deleting it again finds nothing.
    again = (await api.data(DELETE, {"id": ASSEMBLY_SEPULKA}, as_=TEST))["deleteSepulka"]
    assert again["success"] is False
    assert again["errors"][0]["code"] == "NOT_FOUND"


async def test_only_the_creator_or_an_admin_may_delete(api: Api) -> None:
    # dev@ holds DELETE_SEPULKA through grants, but test@ created this sepulka.
    # FORBIDDEN is a GraphQL error, in payload mutations too (docs/architecture.md, payload policy).
    assert await api.error_codes(DELETE, {"id": ASSEMBLY_SEPULKA}, as_=DEV) == ["FORBIDDEN"]
    db = api.resources.db
    assert await db.fetchval("SELECT deleted_at FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA) is None
    allowed = (await api.data(DELETE, {"id": ASSEMBLY_SEPULKA}, as_=ADMIN))["deleteSepulka"]
    assert allowed == {"success": True, "errors": None}
    assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA)


async def test_smith_role_without_delete_permission_is_forbidden(api: Api) -> None:
    smith = await api.create_smith("forger@sepulki.com", "SMITH")
    assert await api.error_codes(DELETE, {"id": ASSEMBLY_SEPULKA}, as_=smith) == ["FORBIDDEN"]
    assert (
        await api.resources.db.fetchval("SELECT deleted_at FROM sepulkas WHERE id = $1", ASSEMBLY_SEPULKA)
        is None
    )


async def test_sepulka_used_by_robots_cannot_be_deleted(api: Api) -> None:
    payload = (await api.data(DELETE, {"id": DEVBOT_SEPULKA}))["deleteSepulka"]
    assert payload["success"] is False
    assert payload["errors"][0]["code"] == "CONFLICT"
    assert (
        await api.resources.db.fetchval("SELECT deleted_at FROM sepulkas WHERE id = $1", DEVBOT_SEPULKA)
        is None
    )


async def test_sepulka_with_a_deployed_ingot_cannot_be_deleted(api: Api) -> None:
    forged = (await api.data(FORGE, {"input": {"name": "Deployed", "alloyIds": [SERVO]}}))["forgeSepulka"]
    sepulka_id = forged["sepulka"]["id"]
    db = api.resources.db
    await db.execute(
        "INSERT INTO ingots (sepulka_id, version, build_hash, status) "
        "VALUES ($1, '1.0.0', 'h-dep', 'DEPLOYED')",
        sepulka_id,
    )
    payload = (await api.data(DELETE, {"id": sepulka_id}))["deleteSepulka"]
    assert payload["errors"][0]["code"] == "CONFLICT"
    assert await db.fetchval("SELECT deleted_at FROM sepulkas WHERE id = $1", sepulka_id) is None


async def test_delete_with_a_malformed_id_is_bad_user_input(api: Api) -> None:
    assert await api.error_codes(DELETE, {"id": "nope"}) == ["BAD_USER_INPUT"]
