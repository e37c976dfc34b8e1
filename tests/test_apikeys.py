"""Admins issue per-robot API keys for HTTP ingest, see them by prefix, rotate and revoke them."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from app import apikeys
from tests.seed_ids import ALPHA, BETA, MISSING_ROBOT
from tests.support import Api

KEY_FIELDS = "id robotId name prefix createdAt expiresAt lastUsedAt revokedAt"

CREATE = f"""
mutation($robotId: ID!, $name: String, $days: Int) {{
  createRobotApiKey(robotId: $robotId, name: $name, expiresInDays: $days) {{
    apiKey {{ {KEY_FIELDS} }} key errors {{ code message field }}
  }}
}}
"""
ROTATE = f"""
mutation($id: ID!) {{
  rotateRobotApiKey(id: $id) {{ apiKey {{ {KEY_FIELDS} }} key errors {{ code message field }} }}
}}
"""
REVOKE = f"mutation($id: ID!) {{ revokeRobotApiKey(id: $id) {{ {KEY_FIELDS} }} }}"
LIST = f"query($robotId: ID!) {{ robotApiKeys(robotId: $robotId) {{ {KEY_FIELDS} }} }}"
KEY_FORMAT = re.compile(r"^sk_robot_[a-z0-9]{8}_[A-Za-z0-9_-]{43}$")


async def create_key(api: Api, robot_id: str = ALPHA, **variables: Any) -> dict[str, Any]:
    data = await api.data(CREATE, {"robotId": robot_id, **variables})
    payload: dict[str, Any] = data["createRobotApiKey"]
    assert payload["errors"] is None, payload
    return payload


async def stored_key(api: Api, key_id: str) -> dict[str, Any]:
    return dict(await api.resources.db.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id))


async def test_admin_creates_a_key_whose_plaintext_is_shown_once_and_stored_hashed(api: Api) -> None:
    payload = await create_key(api, name="alpha field unit", days=30)
    key, created = payload["key"], payload["apiKey"]
    assert KEY_FORMAT.match(key), key
    assert created["robotId"] == ALPHA
    assert created["name"] == "alpha field unit"
    assert key.startswith(created["prefix"] + "_")
    assert created["revokedAt"] is None and created["lastUsedAt"] is None
    assert created["expiresAt"] is not None

    row = await stored_key(api, created["id"])
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in {str(value) for value in row.values()}
    assert (row["expires_at"] - row["created_at"]).days == 30

    listed = (await api.data(LIST, {"robotId": ALPHA}))["robotApiKeys"]
    assert listed == [created]
    assert all(key not in str(item) for item in listed)

    audit = await api.resources.db.fetchrow(
        "SELECT * FROM audit_logs WHERE action = 'createRobotApiKey' AND resource_id = $1", created["id"]
    )
    assert audit["changes"]["prefix"] == created["prefix"]
    assert key not in str(audit["changes"]) and row["key_hash"] not in str(audit["changes"])


async def test_a_valid_key_authenticates_its_robot_and_marks_it_used_once_a_minute(api: Api) -> None:
    payload = await create_key(api)
    pool = api.resources.db
    assert await apikeys.authenticate(pool, payload["key"]) == ALPHA
    first_use = (await stored_key(api, payload["apiKey"]["id"]))["last_used_at"]
    assert first_use is not None

    with api.count_statements() as statements:
        assert await apikeys.authenticate(pool, payload["key"]) == ALPHA
    assert not [s for s in statements if "UPDATE" in s], statements
    assert (await stored_key(api, payload["apiKey"]["id"]))["last_used_at"] == first_use

    # Older than a minute: written again.
    await pool.execute(
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1",
        payload["apiKey"]["id"],
    )
    assert await apikeys.authenticate(pool, payload["key"]) == ALPHA
    assert (await stored_key(api, payload["apiKey"]["id"]))["last_used_at"] > first_use


async def test_forged_or_malformed_keys_authenticate_nobody(api: Api) -> None:
    key = (await create_key(api))["key"]
    pool = api.resources.db
    prefix, _, secret = key.rpartition("_")
    forged = f"{prefix}_{'A' * len(secret)}"
    for attempt in (forged, key[:-1], "sk_robot_", "sk_robot_abcdefgh_x", "Bearer " + key, "", "🤖" * 20):
        assert await apikeys.authenticate(pool, attempt) is None, attempt


async def test_rotating_a_key_invalidates_the_old_one_and_keeps_name_and_lifetime(api: Api) -> None:
    old = await create_key(api, name="beta", days=90, robot_id=BETA)
    rotated = (await api.data(ROTATE, {"id": old["apiKey"]["id"]}))["rotateRobotApiKey"]
    assert rotated["errors"] is None
    new_key = rotated["key"]
    assert KEY_FORMAT.match(new_key) and new_key != old["key"]
    assert rotated["apiKey"]["id"] != old["apiKey"]["id"]
    assert rotated["apiKey"]["robotId"] == BETA and rotated["apiKey"]["name"] == "beta"

    pool = api.resources.db
    assert await apikeys.authenticate(pool, old["key"]) is None
    assert await apikeys.authenticate(pool, new_key) == BETA
    old_row = await stored_key(api, old["apiKey"]["id"])
    new_row = await stored_key(api, rotated["apiKey"]["id"])
    assert old_row["revoked_at"] is not None
    assert (new_row["expires_at"] - new_row["created_at"]).days == 90

    listed = (await api.data(LIST, {"robotId": BETA}))["robotApiKeys"]
    assert [item["id"] for item in listed] == [rotated["apiKey"]["id"], old["apiKey"]["id"]]
    assert listed[1]["revokedAt"] is not None

    again = (await api.data(ROTATE, {"id": old["apiKey"]["id"]}))["rotateRobotApiKey"]
    assert again["apiKey"] is None and again["key"] is None
    assert [e["code"] for e in again["errors"]] == ["CONFLICT"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM api_keys WHERE robot_id = $1", BETA) == 2


async def test_revoked_key_stops_working_and_revoking_twice_changes_nothing(api: Api) -> None:
    payload = await create_key(api)
    key_id = payload["apiKey"]["id"]
    revoked = (await api.data(REVOKE, {"id": key_id}))["revokeRobotApiKey"]
    assert revoked["id"] == key_id and revoked["revokedAt"] is not None
    assert await apikeys.authenticate(api.resources.db, payload["key"]) is None

    again = (await api.data(REVOKE, {"id": key_id}))["revokeRobotApiKey"]
    assert again["revokedAt"] == revoked["revokedAt"]
    audits = await api.resources.db.fetchval(
        "SELECT count(*) FROM audit_logs WHERE action = 'revokeRobotApiKey' AND resource_id = $1", key_id
    )
    assert audits == 1

    missing = "00000000-0000-4000-8000-0000000000aa"
    assert await api.error_codes(REVOKE, {"id": missing}) == ["NOT_FOUND"]
    assert await api.error_codes(REVOKE, {"id": "not-a-uuid"}) == ["BAD_USER_INPUT"]


async def test_expired_key_stops_working_and_keys_without_expiry_keep_working(api: Api) -> None:
    expiring = await create_key(api, days=1)
    forever = await create_key(api)
    assert forever["apiKey"]["expiresAt"] is None
    pool = api.resources.db
    assert await apikeys.authenticate(pool, expiring["key"]) == ALPHA
    await pool.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = $1", expiring["apiKey"]["id"]
    )
    assert await apikeys.authenticate(pool, expiring["key"]) is None
    assert await apikeys.authenticate(pool, forever["key"]) == ALPHA


async def test_keys_of_a_deleted_robot_stop_working(api: Api) -> None:
    payload = await create_key(api, robot_id=BETA)
    await api.resources.db.execute("UPDATE robots SET deleted_at = now() WHERE id = $1", BETA)
    assert await apikeys.authenticate(api.resources.db, payload["key"]) is None
    refused = (await api.data(ROTATE, {"id": payload["apiKey"]["id"]}))["rotateRobotApiKey"]
    assert [e["code"] for e in refused["errors"]] == ["NOT_FOUND"]


async def test_out_of_range_expiry_and_unknown_robot_are_payload_errors(api: Api) -> None:
    for days in (0, -5, 3651):
        payload = (await api.data(CREATE, {"robotId": ALPHA, "days": days}))["createRobotApiKey"]
        assert payload["apiKey"] is None and payload["key"] is None
        assert [(e["code"], e["field"]) for e in payload["errors"]] == [("BAD_USER_INPUT", "expiresInDays")]
    long_name = (await api.data(CREATE, {"robotId": ALPHA, "name": "n" * 101}))["createRobotApiKey"]
    assert [e["field"] for e in long_name["errors"]] == ["name"]
    unknown = (await api.data(CREATE, {"robotId": MISSING_ROBOT}))["createRobotApiKey"]
    assert [e["code"] for e in unknown["errors"]] == ["NOT_FOUND"]
    assert await api.error_codes(CREATE, {"robotId": "robot-1"}) == ["BAD_USER_INPUT"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM api_keys") == 0


async def test_an_over_smith_without_system_config_cannot_manage_keys(api: Api) -> None:
    key_id = (await create_key(api))["apiKey"]["id"]
    over_smith = await api.create_smith("foreman@sepulki.com", "OVER_SMITH")
    assert await api.error_codes(CREATE, {"robotId": ALPHA}, as_=over_smith) == ["FORBIDDEN"]
    assert await api.error_codes(LIST, {"robotId": ALPHA}, as_=over_smith) == ["FORBIDDEN"]
    assert await api.error_codes(ROTATE, {"id": key_id}, as_=over_smith) == ["FORBIDDEN"]
    assert await api.error_codes(REVOKE, {"id": key_id}, as_=over_smith) == ["FORBIDDEN"]
    assert await api.error_codes(LIST, {"robotId": ALPHA}, as_=None) == ["UNAUTHENTICATED"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM api_keys") == 1
    assert (await stored_key(api, key_id))["revoked_at"] is None
