"""Robots without MQTT post telemetry over HTTP with their API key; it lands where MQTT's does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.core.channels import channels
from app.ingest import http as http_ingest
from tests.seed_ids import ALPHA, BETA, DEV_FLEET
from tests.support import Api
from tests.test_apikeys import create_key


def now(offset_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat()


# The seed holds seq 1..60 of each demo robot; these tests use seq >= 1000.
def telemetry(seq: int, **fields: Any) -> dict[str, Any]:
    data = {"seq": seq, "ts": now(), "metrics": {"CPU_USAGE": 35.2, "MOTOR_TEMPERATURE": 48.1}} | fields
    return {"eventType": "telemetry", "data": data}


async def post(
    api: Api, path: str, body: Any = None, *, key: str | None, content: bytes | None = None
) -> httpx.Response:
    headers = {"x-api-key": key} if key is not None else {}
    if content is not None:
        return await api.client.post(
            path, content=content, headers=headers | {"content-type": "application/json"}
        )
    return await api.client.post(path, json=body, headers=headers)


async def count(api: Api, sql: str, *args: Any) -> int:
    value: int = await api.resources.db.fetchval(sql, *args)
    return value


async def test_robot_posts_telemetry_with_its_key_and_it_is_stored_like_mqtt(api: Api) -> None:
    key = (await create_key(api))["key"]
    pose = {"position": {"x": 4.0, "y": 2.5, "z": 0.0}, "orientation": {"x": 0, "y": 0, "z": 0, "w": 1}}
    body = telemetry(1001, batteryLevel=55.5, healthScore=91.0, pose=pose)

    response = await post(api, f"/telemetry/{ALPHA}", body, key=key)

    assert response.status_code == 200, response.text
    assert response.json() == {
        "robotId": ALPHA,
        "stored": 1,
        "duplicate": 0,
        "rejected": 0,
        "results": [{"index": 0, "status": "stored"}],
    }
    row = await api.resources.db.fetchrow("SELECT * FROM telemetry WHERE robot_id = $1 AND seq = 1001", ALPHA)
    assert row["battery_level"] == 55.5 and row["health_score"] == 91.0
    assert row["metrics"] == {"CPU_USAGE": 35.2, "MOTOR_TEMPERATURE": 48.1}
    assert row["fleet_id"] == DEV_FLEET
    robot = await api.resources.db.fetchrow("SELECT * FROM robots WHERE id = $1", ALPHA)
    assert robot["battery_level"] == 55.5 and robot["health_score"] == 91.0
    assert robot["last_pose"]["position"] == {"x": 4.0, "y": 2.5, "z": 0.0}
    assert datetime.now(UTC) - robot["last_seen"] < timedelta(seconds=30)
    # Fleet subscribers are told, through the event log like every ingest batch.
    logged = await count(
        api, "SELECT count(*) FROM event_log WHERE $1 = ANY(channels)", channels.bellows(DEV_FLEET)
    )
    assert logged == 1


async def test_batch_stores_the_good_items_and_rejects_the_bad_ones_with_reasons(api: Api) -> None:
    key = (await create_key(api))["key"]
    event = {"seq": 7, "ts": now(), "type": "BUMPER", "severity": "WARNING", "message": "Bumped a pallet"}
    items: list[Any] = [
        telemetry(1010, batteryLevel=80.0),
        telemetry(1011, batteryLevel=150.0),
        telemetry(1012, batteryLevel=79.0),
        {"eventType": "event", "data": event},
        {"eventType": "selfie", "data": {}},
        "not an item",
        {"eventType": "status", "data": {"status": "CHARGING", "ts": now(1)}},
    ]

    response = await post(api, f"/telemetry/{ALPHA}/batch", {"items": items}, key=key)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["stored"], body["duplicate"], body["rejected"]) == (4, 0, 3)
    results = body["results"]
    assert [r["index"] for r in results] == list(range(7))
    assert [r["status"] for r in results] == [
        "stored",
        "rejected",
        "stored",
        "stored",
        "rejected",
        "rejected",
        "stored",
    ]
    assert results[1]["reason"] == "out_of_range" and "batteryLevel" in results[1]["detail"]
    assert results[4]["reason"] == "invalid_item" and "selfie" in results[4]["detail"]
    assert results[5]["reason"] == "invalid_item"

    db = api.resources.db
    seqs = [
        r["seq"]
        for r in await db.fetch(
            "SELECT seq FROM telemetry WHERE robot_id = $1 AND seq >= 1000 ORDER BY seq", ALPHA
        )
    ]
    assert seqs == [1010, 1012]
    stored_event = await db.fetchrow("SELECT * FROM robot_events WHERE robot_id = $1 AND seq = 7", ALPHA)
    assert (stored_event["type"], stored_event["message"]) == ("BUMPER", "Bumped a pallet")
    assert await db.fetchval("SELECT status::text FROM robots WHERE id = $1", ALPHA) == "CHARGING"
    dead = await db.fetch("SELECT * FROM dead_letters")
    assert [(d["source"], d["reason"], d["robot_id"]) for d in dead] == [("http", "out_of_range", ALPHA)]
    assert b'"batteryLevel":150.0' in bytes(dead[0]["payload"])


async def test_a_resent_seq_is_reported_duplicate_and_stored_once(api: Api) -> None:
    key = (await create_key(api))["key"]
    body = telemetry(1042, batteryLevel=61.0)
    first = await post(api, f"/telemetry/{ALPHA}", body, key=key)
    again = await post(api, f"/telemetry/{ALPHA}", body, key=key)
    in_batch = await post(api, f"/telemetry/{ALPHA}/batch", {"items": [body, telemetry(1043)]}, key=key)

    assert first.json()["results"] == [{"index": 0, "status": "stored"}]
    assert again.status_code == 200
    assert again.json()["results"] == [{"index": 0, "status": "duplicate"}]
    assert [r["status"] for r in in_batch.json()["results"]] == ["duplicate", "stored"]
    assert await count(api, "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND seq = 1042", ALPHA) == 1


async def test_a_retransmission_stamped_with_a_new_ts_is_still_the_same_sample(api: Api) -> None:
    key = (await create_key(api))["key"]
    first = await post(api, f"/telemetry/{ALPHA}", telemetry(1050, batteryLevel=61.0), key=key)
    # The robot did not hear the answer and sends the sample again, its ts taken at sending.
    resent = await post(api, f"/telemetry/{ALPHA}", telemetry(1050, batteryLevel=61.0, ts=now(3)), key=key)
    # Twice in one batch, minutes apart: the first copy counts.
    batch = {"items": [telemetry(1051, ts=now(-120)), telemetry(1051), telemetry(1050, ts=now(-3600))]}
    in_batch = await post(api, f"/telemetry/{ALPHA}/batch", batch, key=key)

    assert first.json()["results"] == [{"index": 0, "status": "stored"}]
    assert resent.json()["results"] == [{"index": 0, "status": "duplicate"}]
    assert [r["status"] for r in in_batch.json()["results"]] == ["stored", "duplicate", "duplicate"]
    rows = await api.resources.db.fetch(
        "SELECT seq, count(*) AS n FROM telemetry WHERE robot_id = $1 AND seq IN (1050, 1051) GROUP BY seq",
        ALPHA,
    )
    assert {row["seq"]: row["n"] for row in rows} == {1050: 1, 1051: 1}


async def test_a_seq_repeated_more_than_a_day_later_is_a_new_sample(api: Api) -> None:
    key = (await create_key(api))["key"]
    old = telemetry(1060, ts=now(-25 * 3600))
    assert (await post(api, f"/telemetry/{ALPHA}", old, key=key)).json()["stored"] == 1
    # Outside the 24-hour window a seq may come back (a robot whose counter started over).
    assert (await post(api, f"/telemetry/{ALPHA}", telemetry(1060), key=key)).json()["stored"] == 1
    # Another robot's seq is its own.
    beta_key = (await create_key(api, BETA))["key"]
    assert (await post(api, f"/telemetry/{BETA}", telemetry(1060), key=beta_key)).json()["stored"] == 1
    assert await count(api, "SELECT count(*) FROM telemetry WHERE seq = 1060") == 3


async def test_a_single_rejected_item_answers_422_with_its_reason(api: Api) -> None:
    key = (await create_key(api))["key"]
    response = await post(
        api,
        f"/telemetry/{ALPHA}",
        {"eventType": "status", "data": {"status": "NAPPING", "ts": now()}},
        key=key,
    )
    assert response.status_code == 422
    assert response.json()["results"][0]["reason"] == "invalid_value"
    assert await count(api, "SELECT count(*) FROM dead_letters WHERE source = 'http'") == 1
    status = await api.resources.db.fetchval("SELECT status::text FROM robots WHERE id = $1", ALPHA)
    assert status == "WORKING"


async def test_missing_key_is_401_and_bad_revoked_expired_or_foreign_keys_are_403(api: Api) -> None:
    alpha = await create_key(api)
    beta = (await create_key(api, robot_id=BETA))["key"]
    revoked = await create_key(api)
    expired = await create_key(api, days=1)
    db = api.resources.db
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1", revoked["apiKey"]["id"])
    await db.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1", expired["apiKey"]["id"]
    )
    body = telemetry(1001)

    missing = await post(api, f"/telemetry/{ALPHA}", body, key=None)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["error"]
    for key in ("sk_robot_nope", alpha["key"][:-2] + "xx", revoked["key"], expired["key"]):
        refused = await post(api, f"/telemetry/{ALPHA}", body, key=key)
        assert refused.status_code == 403, key
        assert refused.json() == {"error": "Invalid, expired or revoked API key"}
    foreign = await post(api, f"/telemetry/{ALPHA}/batch", {"items": [body]}, key=beta)
    assert foreign.status_code == 403 and "another robot" in foreign.json()["error"]
    assert (await post(api, "/telemetry/not-a-robot", body, key=alpha["key"])).status_code == 403
    assert await count(api, "SELECT count(*) FROM telemetry WHERE seq = 1001") == 0


async def test_malformed_bodies_are_400_and_oversized_ones_413(api: Api) -> None:
    key = (await create_key(api))["key"]
    single, batch = f"/telemetry/{ALPHA}", f"/telemetry/{ALPHA}/batch"
    cases: list[tuple[str, Any, bytes | None]] = [
        (single, None, b"{not json"),
        (single, None, b"\xff\xfe"),
        (single, None, b"[" * 60000),
        (single, [telemetry(1)], None),
        (single, {"data": {"seq": 1}}, None),
        (single, {"eventType": "selfie", "data": {}}, None),
        (single, {"eventType": "telemetry", "data": [1, 2]}, None),
        (batch, telemetry(1), None),
        (batch, {"items": []}, None),
        (batch, {"items": [telemetry(i) for i in range(1001)]}, None),
        (batch, None, b""),
    ]
    for path, body, content in cases:
        response = await post(api, path, body, key=key, content=content)
        assert response.status_code == 400, (path, body, content, response.text)
        assert isinstance(response.json()["error"], str)

    limit = api.resources.settings.ingest_max_payload_bytes
    huge = telemetry(1001, metrics={"BLOB": 1.0}, padding="x" * (limit + 2048))
    too_big = await post(api, single, huge, key=key)
    assert too_big.status_code == 413 and "larger" in too_big.json()["error"]
    padded = b'{"items": [' + b" " * http_ingest.MAX_BATCH_BYTES + b"]}"
    assert (await post(api, batch, key=key, content=padded)).status_code == 413
    assert await count(api, "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND seq >= 1000", ALPHA) == 0


async def test_the_api_runs_the_pipeline_without_mqtt_and_answers_503_without_it(api: Api) -> None:
    assert api.resources.settings.mqtt_url is None
    pipeline = api.components.pipeline
    assert pipeline is not None
    key = (await create_key(api))["key"]
    api.components.pipeline = None
    try:
        response = await post(api, f"/telemetry/{ALPHA}", telemetry(1001), key=key)
    finally:
        api.components.pipeline = pipeline
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "not running" in response.json()["error"]
