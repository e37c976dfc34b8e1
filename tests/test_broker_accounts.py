"""Robots sign in to the MQTT broker with their API keys, and may publish only as themselves.

A real Mosquitto with its dynamic security plugin and no anonymous access; the backend reads
robots' topics with its own account, and holds the broker's admin account to manage robots'.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest
from gmqtt import Client
from gmqtt.mqtt.constants import MQTTv50
from gmqtt.mqtt.handler import MQTTConnectError

from app import apikeys
from app.infra import broker_accounts
from app.infra.mqtt import connect
from app.settings import Settings
from app.simulator import Plan, SimConfig, simulate
from tests.seed_ids import ALPHA, BETA
from tests.servers import DynsecMosquittoServer, free_port
from tests.support import Api
from tests.test_apikeys import CREATE, REVOKE, ROTATE, create_key
from tests.test_ingest import eventually, ingesting, samples_of, telemetry


@pytest.fixture(scope="module")
def dynsec() -> Iterator[DynsecMosquittoServer]:
    server = DynsecMosquittoServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
async def guarded(settings: Settings, dynsec: DynsecMosquittoServer) -> AsyncIterator[Api]:
    """The API ingesting from the guarded broker, managing robots' accounts on it."""
    configured = settings.replace(
        mqtt_url=dynsec.service_url,
        mqtt_admin_url=dynsec.admin_url,
        mqtt_client_id=f"sepulki-ingest-test-{uuid.uuid4().hex[:8]}",
    )
    async with ingesting(configured) as api:
        yield api


class Robot:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.disconnected = asyncio.Event()
        self.commands: list[bytes] = []
        self.subscribed = asyncio.Event()

    def publish(self, robot_id: str, seq: int) -> None:
        self.client.publish(f"robots/{robot_id}/telemetry", orjson.dumps(telemetry(seq)), qos=1)

    def _on_message(self, _client: Client, _topic: str, payload: bytes, _qos: int, _props: object) -> int:
        self.commands.append(payload)
        return 0

    async def subscribe_to_commands(self, robot_id: str) -> None:
        self.client.subscribe(f"robots/{robot_id}/commands", qos=1)
        async with asyncio.timeout(5):
            await self.subscribed.wait()


@contextlib.asynccontextmanager
async def robot(
    server: DynsecMosquittoServer,
    username: str,
    password: str,
    client_id: str,
    *,
    session_expiry_s: int = 0,
) -> AsyncIterator[Robot]:
    """A robot's connection; with `session_expiry_s` its session (subscriptions, queued commands)
    outlives the connection and the next connection with the same client id resumes it."""
    persistent = session_expiry_s > 0
    client = Client(client_id, clean_session=not persistent, session_expiry_interval=session_expiry_s)
    client.set_config({"reconnect_retries": 0})
    client.set_auth_credentials(username, password)
    connected = Robot(client)
    client.on_disconnect = lambda *_: connected.disconnected.set()
    client.on_message = connected._on_message
    client.on_subscribe = lambda *_: connected.subscribed.set()
    await client.connect("127.0.0.1", server.port, version=MQTTv50)
    try:
        yield connected
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def refused(
    server: DynsecMosquittoServer, username: str, password: str, client_id: str, *, session_expiry_s: int = 0
) -> bool:
    try:
        async with robot(server, username, password, client_id, session_expiry_s=session_expiry_s):
            return False
    except MQTTConnectError as exc:
        return "135" in str(exc) or "134" in str(exc)  # not authorized / bad user name or password


def credentials(issued: dict[str, Any]) -> tuple[str, str]:
    """A created or rotated key's broker account: (username, password)."""
    return issued["apiKey"]["prefix"], issued["key"]


@contextlib.asynccontextmanager
async def commander(server: DynsecMosquittoServer) -> AsyncIterator[Callable[[str, bytes], None]]:
    """The backend's own account, sending robots their commands as the dispatcher does (QoS 1)."""
    client = Client(f"sepulki-commands-test-{uuid.uuid4().hex[:8]}", clean_session=True)
    client.set_config({"reconnect_retries": 0})
    await connect(client, server.service_url, protocol=5)
    try:
        yield lambda robot_id, payload: client.publish(f"robots/{robot_id}/commands", payload, qos=1)
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def test_a_robot_publishes_with_its_api_key_and_only_on_its_own_topics(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    issued = await create_key(guarded, ALPHA)
    async with robot(dynsec, *credentials(issued), ALPHA) as alpha:
        alpha.publish(ALPHA, 1)
        alpha.publish(BETA, 2)  # posing as another robot: the broker drops it
        alpha.publish(ALPHA, 3)
        stored = await eventually(lambda: _seqs(guarded, ALPHA, 2), what="the robot's own two samples")
    assert stored == [1, 3]
    # The broker handles one connection's messages in order: the one in between was refused.
    assert await samples_of(guarded, BETA) == []


async def _seqs(api: Api, robot_id: str, count: int) -> list[int] | None:
    rows = await samples_of(api, robot_id)
    return [r["seq"] for r in rows] if len(rows) >= count else None


async def test_wrong_and_revoked_keys_are_refused_and_a_revoked_robot_is_disconnected(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    issued = await create_key(guarded, ALPHA)
    prefix, key = issued["apiKey"]["prefix"], issued["key"]
    assert await refused(dynsec, prefix, key[:-1] + ("A" if key[-1] != "A" else "B"), ALPHA)
    assert await refused(dynsec, ALPHA, key, ALPHA)  # the username is the key's prefix, not the robot id
    async with robot(dynsec, prefix, key, ALPHA) as alpha:
        await guarded.data(REVOKE, {"id": issued["apiKey"]["id"]})
        async with asyncio.timeout(5):
            await alpha.disconnected.wait()
    assert await refused(dynsec, prefix, key, ALPHA)


async def test_a_robots_key_cannot_take_over_another_robots_connection_session_or_commands(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    alpha, beta = credentials(await create_key(guarded, ALPHA)), credentials(await create_key(guarded, BETA))
    async with commander(dynsec) as send:
        async with robot(dynsec, *beta, BETA, session_expiry_s=600) as connected:
            await connected.subscribe_to_commands(BETA)
            # Alpha's key with Beta's client id would end Beta's connection and take its session.
            assert await refused(dynsec, *alpha, BETA, session_expiry_s=600)
            send(BETA, b"while-online")
            await eventually(lambda: connected.commands, what="Beta's command")
            assert not connected.disconnected.is_set()
            assert connected.commands == [b"while-online"]
        # Beta is offline; its session keeps the command for it until it returns, and Alpha's key
        # can resume that session neither before the command is queued nor after.
        assert await refused(dynsec, *alpha, BETA, session_expiry_s=600)
        send(BETA, b"while-offline")
        assert await refused(dynsec, *alpha, BETA, session_expiry_s=600)
        async with robot(dynsec, *beta, BETA, session_expiry_s=600) as returned:
            assert await eventually(lambda: returned.commands, what="Beta's queued command") == [
                b"while-offline"
            ]


async def test_a_robots_key_connects_with_its_robot_id_as_client_id_and_with_no_other(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    alpha = credentials(await create_key(guarded, ALPHA))
    assert await refused(dynsec, *alpha, f"robot-{uuid.uuid4().hex[:8]}")
    async with commander(dynsec) as send, robot(dynsec, *alpha, ALPHA) as connected:
        await connected.subscribe_to_commands(ALPHA)
        send(ALPHA, b"for-alpha")
        assert await eventually(lambda: connected.commands, what="Alpha's command") == [b"for-alpha"]
        connected.publish(ALPHA, 21)
        assert await eventually(lambda: _seqs(guarded, ALPHA, 1), what="a sample") == [21]


async def test_reconcile_binds_accounts_made_without_a_client_id_to_their_robot(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    issued = await create_key(guarded, ALPHA)
    async with broker_accounts.session(dynsec.admin_url) as admin:
        # As accounts were made before they carried a client id: one that any client id may use.
        (response,) = await admin.run({"command": "setClientId", "username": issued["apiKey"]["prefix"]})
        assert "error" not in response
    assert not await refused(dynsec, *credentials(issued), BETA)
    assert await apikeys.reconcile_broker_accounts(guarded.resources.db, dynsec.admin_url) == []
    assert await refused(dynsec, *credentials(issued), BETA)
    assert not await refused(dynsec, *credentials(issued), ALPHA)


async def test_rotation_moves_the_robot_to_the_new_key(guarded: Api, dynsec: DynsecMosquittoServer) -> None:
    old = await create_key(guarded, ALPHA)
    rotated = (await guarded.data(ROTATE, {"id": old["apiKey"]["id"]}))["rotateRobotApiKey"]
    assert rotated["errors"] is None
    assert await refused(dynsec, *credentials(old), ALPHA)
    assert await refused(dynsec, *credentials(rotated), BETA)  # the new account is bound to its robot too
    async with robot(dynsec, *credentials(rotated), ALPHA) as alpha:
        alpha.publish(ALPHA, 11)
        assert await eventually(lambda: _seqs(guarded, ALPHA, 1), what="a sample") == [11]


async def test_reconcile_deletes_the_accounts_of_expired_revoked_and_unknown_keys(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    expired = await create_key(guarded, ALPHA)
    live = await create_key(guarded, BETA)
    await guarded.resources.db.execute(
        "UPDATE api_keys SET expires_at = now() - interval '1 minute', created_at = now() - interval '1 day'"
        " WHERE id = $1",
        expired["apiKey"]["id"],
    )
    async with broker_accounts.session(dynsec.admin_url) as admin:
        # An account the database knows nothing of (made by hand, or left by a rolled-back key).
        await admin.grant(BETA, "sk_robot_zz000000", "sk_robot_zz000000_not-a-key-we-issued")
    deleted = await apikeys.reconcile_broker_accounts(guarded.resources.db, dynsec.admin_url)
    assert sorted(deleted) == sorted([expired["apiKey"]["prefix"], "sk_robot_zz000000"])
    assert await refused(dynsec, *credentials(expired), ALPHA)
    assert not await refused(dynsec, *credentials(live), BETA)
    assert await apikeys.reconcile_broker_accounts(guarded.resources.db, dynsec.admin_url) == []


async def test_no_key_is_issued_when_the_broker_cannot_take_its_account(settings: Settings) -> None:
    unreachable = settings.replace(mqtt_admin_url=f"mqtt://admin:x@127.0.0.1:{free_port()}")
    async with Api.running(unreachable) as api:
        payload = (await api.data(CREATE, {"robotId": ALPHA}))["createRobotApiKey"]
        assert payload["apiKey"] is None and payload["key"] is None
        assert [e["code"] for e in payload["errors"]] == ["SERVICE_UNAVAILABLE"]
        keys = await api.resources.db.fetchval("SELECT count(*) FROM api_keys WHERE robot_id = $1", ALPHA)
        assert keys == 0


async def test_simulated_robots_get_keys_for_their_run_on_a_broker_that_requires_them(
    guarded: Api, dynsec: DynsecMosquittoServer
) -> None:
    plan = Plan(
        guarded.resources.settings.database_url or "",
        robots=0,
        robot_ids=[ALPHA, BETA],
        fleet_id=None,
        duration_s=1.5,
        admin_url=dynsec.admin_url,
    )
    stats = await simulate(plan, SimConfig(mqtt_url=dynsec.url, protocol=5, hz=5.0))
    assert stats.as_dict()["telemetry"] > 0
    for robot_id in (ALPHA, BETA):
        assert await samples_of(guarded, robot_id), f"nothing stored from simulated robot {robot_id}"
    keys = await guarded.resources.db.fetch(
        "SELECT prefix, revoked_at, created_by FROM api_keys WHERE name = 'sepulki simulate'"
    )
    # One key per robot for the run, issued by the service itself, revoked when it ended.
    assert len(keys) == 2
    assert all(k["revoked_at"] is not None and k["created_by"] is None for k in keys)
    async with broker_accounts.session(dynsec.admin_url) as admin:
        assert not {k["prefix"] for k in keys} & set(await admin.accounts())
