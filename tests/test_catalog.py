"""A smith browses the catalog: patterns by category, alloys by type, tags and compatibility."""

from __future__ import annotations

from tests.seed_ids import ARM_PATTERN, GRIPPER, POWER, SERVO
from tests.support import DEMO, Api

PATTERNS = """
query($category: PatternCategory, $limit: Int, $offset: Int) {
  patterns(category: $category, limit: $limit, offset: $offset) {
    id name category tags parameters defaults createdAt
  }
}
"""
PATTERN = "query($id: ID!) { pattern(id: $id) { id name category tags defaults } }"
ALLOYS = """
query($filter: AlloyFilter, $limit: Int, $offset: Int) {
  alloys(filter: $filter, limit: $limit, offset: $offset) { id name type tags }
}
"""
ALLOY = """
query($id: ID!) {
  alloy(id: $id) {
    id name type specifications meshAssets version createdAt
    compatibility { alloyId compatibleWith constraints }
  }
}
"""


async def test_smith_lists_every_pattern_in_name_order(api: Api) -> None:
    patterns = (await api.data(PATTERNS, as_=DEMO))["patterns"]
    names = [p["name"] for p in patterns]
    assert len(names) == 6
    assert names == sorted(names)
    arm = next(p for p in patterns if p["id"] == ARM_PATTERN)
    assert arm["category"] == "INDUSTRIAL_ARM"
    assert arm["tags"] == ["arm", "6dof", "industrial"]
    assert arm["defaults"] == {"reach": 1.2, "payload": 10}
    assert arm["createdAt"]


async def test_patterns_filter_by_category_and_page(api: Api) -> None:
    mobile = (await api.data(PATTERNS, {"category": "MOBILE_ROBOT"}))["patterns"]
    assert [p["name"] for p in mobile] == ["Mobile Base - Differential Drive"]
    everything = [p["id"] for p in (await api.data(PATTERNS))["patterns"]]
    window = [p["id"] for p in (await api.data(PATTERNS, {"limit": 2, "offset": 1}))["patterns"]]
    assert window == everything[1:3]


async def test_pattern_by_id_and_unknown_or_malformed_ids(api: Api) -> None:
    pattern = (await api.data(PATTERN, {"id": ARM_PATTERN}))["pattern"]
    assert pattern["name"] == "Industrial Arm - 6DOF"
    unknown = await api.data(PATTERN, {"id": "10000000-0000-4000-8000-0000000000ff"})
    assert unknown["pattern"] is None
    assert await api.error_codes(PATTERN, {"id": "not-a-uuid"}) == ["BAD_USER_INPUT"]


async def test_alloys_filter_by_type(api: Api) -> None:
    sensors = (await api.data(ALLOYS, {"filter": {"type": "SENSOR"}}))["alloys"]
    assert [a["name"] for a in sensors] == ["LidarSweep 360", "VisionEye 4K"]
    assert all(a["type"] == "SENSOR" for a in sensors)


async def test_alloys_filter_by_any_overlapping_tag(api: Api) -> None:
    tagged = (await api.data(ALLOYS, {"filter": {"tags": ["gripper", "battery", "nope"]}}))["alloys"]
    assert [a["id"] for a in tagged] == [GRIPPER, POWER]
    every = (await api.data(ALLOYS, {"filter": {"tags": []}}))["alloys"]
    assert len(every) == 8


async def test_alloys_compatible_with_an_alloy_in_either_direction(api: Api) -> None:
    # The servo lists the gripper and the power core; the gripper lists the servo back.
    with_servo = (await api.data(ALLOYS, {"filter": {"compatibility": SERVO}}))["alloys"]
    assert sorted(a["id"] for a in with_servo) == [GRIPPER, POWER]
    # The power core lists nothing itself, yet the servo declares it compatible.
    with_power = (await api.data(ALLOYS, {"filter": {"compatibility": POWER}}))["alloys"]
    assert [a["id"] for a in with_power] == [SERVO]
    both = await api.data(ALLOYS, {"filter": {"compatibility": SERVO, "type": "POWER"}})
    assert [a["id"] for a in both["alloys"]] == [POWER]


async def test_alloy_exposes_its_camel_case_compatibility_entries(api: Api) -> None:
    alloy = (await api.data(ALLOY, {"id": SERVO}))["alloy"]
    assert alloy["name"] == "ServoMax Pro 3000"
    assert alloy["specifications"]["torque"] == "45Nm"
    assert alloy["meshAssets"] == []
    assert alloy["compatibility"] == [
        {"alloyId": SERVO, "compatibleWith": [GRIPPER, POWER], "constraints": {"voltage": "24V"}}
    ]
    assert (await api.data(ALLOY, {"id": "20000000-0000-4000-8000-0000000000ff"}))["alloy"] is None


async def test_catalog_rejects_malformed_ids_and_negative_paging(api: Api) -> None:
    assert await api.error_codes(ALLOY, {"id": "123"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(ALLOYS, {"filter": {"compatibility": "x"}}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(ALLOYS, {"limit": -1}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(PATTERNS, {"offset": -5}) == ["BAD_USER_INPUT"]


async def test_catalog_needs_a_signed_in_smith(api: Api) -> None:
    assert await api.error_codes(PATTERNS, as_=None) == ["UNAUTHENTICATED"]
    assert await api.error_codes(ALLOYS, as_=None) == ["UNAUTHENTICATED"]
