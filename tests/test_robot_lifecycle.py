"""Robots over MQTT through their lifecycle: registered with a key that is their broker account,
connected (and seen to be), serviced with firmware and calibration commands they acknowledge and
report, halted by an emergency stop and released. Real Mosquitto (MQTT 5, with dynamic security
where accounts matter), PostgreSQL and the simulated robots of `sepulki simulate`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50

from app.settings import Settings
from app.simulator import SimConfig, Simulator
from app.simulator.robots import SimRobot
from tests.seed_ids import ALPHA, BETA, DEV_FLEET, DEVBOT_SEPULKA, MISSING_ROBOT
from tests.servers import DynsecMosquittoServer, MosquittoServer
from tests.support import Api
from tests.support import eventually as _eventually
from tests.test_broker_accounts import dynsec  # noqa: F401 - the module's broker fixture
from tests.test_ingest import clear_retained_status, ingest_settings, ingesting
from tests.test_robot_liveness import HISTORY, NETWORK, REGISTER, causes

COMMAND = "query($id: ID!) { robotCommand(id: $id) { id type params state detail } }"
FIRMWARE = """
mutation($id: ID!, $v: String!) { updateRobotFirmware(robotId: $id, version: $v) { id type params state } }
"""
CALIBRATE = """
mutation($id: ID!, $p: JSON!) { calibrateRobot(robotId: $id, parameters: $p) { id type params state } }
"""
SERVICED = "query($id: ID!) { robot(id: $id) { firmwareVersion calibration calibratedAt } }"
LOGS = """
query($id: ID!, $level: LogLevel, $limit: Int) {
  robotLogs(robotId: $id, level: $level, limit: $limit) { robotId level type message data timestamp }
}
"""
LOG_PAGE = """
query($id: ID!, $first: Int, $after: String) {
  robotLogsConnection(robotId: $id, first: $first, after: $after) {
    edges { cursor node { type } } pageInfo { hasNextPage endCursor }
  }
}
"""
STOP = "mutation($id: ID!) { emergencyStop(fleetId: $id) { id status emergencyStoppedAt } }"
RELEASE = "mutation($id: ID!) { releaseEmergencyStop(fleetId: $id) { id status emergencyStoppedAt } }"
FLEET = "query($id: ID!) { fleet(id: $id) { status emergencyStoppedAt robots { id status } } }"
WORKING = "mutation($id: ID!) { updateRobotStatus(robotId: $id, status: WORKING) { id } }"
COMMANDS = "query($id: ID!) { robotCommands(robotId: $id, limit: 100) { type state } }"


async def eventually(check: Any, within: float = 30, what: str = "") -> Any:
    """Robots, broker, ingest and the API share two busy cores here: allow them time."""
    return await _eventually(check, within=max(within, 30), what=what)


def sim(robot_ids: list[str], url: str, **config: Any) -> Simulator:
    robots = [
        SimRobot(robot_id, f"R{n}", DEV_FLEET, "IDLE", 80.0, None) for n, robot_id in enumerate(robot_ids)
    ]
    return Simulator(robots, SimConfig(mqtt_url=url, protocol=5, hz=5, seed=3, ack_delay_s=0.05, **config))


async def field(api: Api, query: str, variables: dict[str, Any], *path: str) -> Any:
    value: Any = await api.data(query, variables)
    for key in path:
        value = value[key]
    return value


@pytest.fixture
async def guarded(settings: Settings, dynsec: DynsecMosquittoServer) -> AsyncIterator[Api]:  # noqa: F811
    """The API managing robots' accounts on the guarded broker, with a one-second inactivity timeout."""
    configured = settings.replace(
        mqtt_url=dynsec.service_url,
        mqtt_admin_url=dynsec.admin_url,
        mqtt_client_id=f"sepulki-ingest-test-{uuid.uuid4().hex[:8]}",
        robot_offline_after_s=1,
        robot_liveness_interval_s=0.1,
    )
    async with ingesting(configured) as api:
        yield api


@pytest.fixture
async def broker_api(settings: Settings, mosquitto: MosquittoServer) -> AsyncIterator[Api]:
    await clear_retained_status(mosquitto.url, [ALPHA, BETA])
    async with ingesting(ingest_settings(settings, mosquitto, robot_liveness_interval_s=0.1)) as api:
        yield api


async def test_a_registered_robot_connects_with_its_key_then_falls_silent_and_is_marked_offline(
    guarded: Api,
    dynsec: DynsecMosquittoServer,  # noqa: F811
) -> None:
    # Given an admin registering a robot: the key is its MQTT password, the prefix its username.
    payload = (
        await guarded.data(
            REGISTER, {"input": {"name": "Rover-9", "fleetId": DEV_FLEET, "sepulkaId": DEVBOT_SEPULKA}}
        )
    )["registerRobot"]
    robot_id, account = payload["robot"]["id"], (payload["apiKey"]["prefix"], payload["key"])
    url = f"mqtt://127.0.0.1:{dynsec.port}"
    async with sim([robot_id], url, credentials={robot_id: account}) as robots:
        # When it connects, its network status says so.
        network = await eventually(
            lambda: _network_if(guarded, robot_id, lambda n: n["mqttConnected"] and n["online"]),
            what="the robot connected",
        )
        assert network["transport"] == "MQTT" and network["since"] and network["lastSeen"]
        # When it falls silent (connected, but sending nothing), the timeout marks it OFFLINE.
        for task in robots._tasks:
            task.cancel()
        silent = await eventually(
            lambda: _network_if(guarded, robot_id, lambda n: not n["online"]), within=10, what="OFFLINE"
        )
        assert silent["mqttConnected"] is True  # the session is up; the robot says nothing
    history = await causes(guarded, robot_id)
    # Newest first: marked OFFLINE by the timeout from what it was doing (IDLE, or WORKING if the
    # fleet's queue gave it a task meanwhile), after it came online by its own report.
    assert history[0][1:] == ("OFFLINE", "INACTIVITY_TIMEOUT") and history[0][0] in ("IDLE", "WORKING")
    assert ("OFFLINE", "IDLE", "REPORTED") in history and history[-1] == (None, "OFFLINE", "REGISTERED")


async def _network_if(api: Api, robot_id: str, check: Any) -> dict[str, Any] | None:
    network: dict[str, Any] = await field(api, NETWORK, {"id": robot_id}, "networkStatus")
    return network if check(network) else None


@contextlib.asynccontextmanager
async def contract_robot(url: str, robot_id: str) -> AsyncIterator[Client]:
    """A robot following docs/mqtt-contract.md by hand: its Will says OFFLINE, and on connecting
    it publishes its status retained."""
    will = Message(
        f"robots/{robot_id}/status", json.dumps({"status": "OFFLINE", "ts": _now()}), qos=1, retain=True
    )
    client = Client(robot_id, clean_session=True, will_message=will)
    client.set_config({"reconnect_retries": 0})
    host, port = url.removeprefix("mqtt://").split(":")
    await client.connect(host, int(port), version=MQTTv50)
    client.publish(
        f"robots/{robot_id}/status", json.dumps({"status": "WORKING", "ts": _now()}), qos=1, retain=True
    )
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


def drop_link(client: Client) -> None:
    """Cuts the socket without DISCONNECT, as a power cut would, and keeps gmqtt from reconnecting:
    it reconnects after a lost link even with reconnect_retries 0 (it allows one attempt when none
    failed yet), and that session would connect again after this test, carrying the robot's Will
    into later tests (an OFFLINE published whenever that session is taken over or times out)."""
    client._is_active = False  # what disconnect() sets first; reconnect() checks it
    client._connection._transport.abort()


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def test_a_dropped_link_shows_as_disconnected_by_the_robots_last_will(
    broker_api: Api, mosquitto: MosquittoServer
) -> None:
    async with contract_robot(mosquitto.url, BETA) as robot:
        up = await eventually(
            lambda: _network_if(broker_api, BETA, lambda n: n["mqttConnected"]), what="connected"
        )
        drop_link(robot)  # the link drops without DISCONNECT: the broker sends the Will
        down = await eventually(
            lambda: _network_if(broker_api, BETA, lambda n: not n["mqttConnected"]), what="the Will"
        )
    assert down["online"] is False and down["since"] > up["since"] and down["transport"] == "MQTT"
    history = await field(broker_api, HISTORY, {"id": BETA, "first": 2}, "robotStatusHistory", "edges")
    assert [(e["node"]["to"], e["node"]["cause"]) for e in history] == [
        ("OFFLINE", "REPORTED"),
        ("WORKING", "REPORTED"),
    ]


async def test_firmware_and_calibration_are_commands_the_robot_acknowledges_and_reports(
    broker_api: Api, mosquitto: MosquittoServer
) -> None:
    async with sim([ALPHA], mosquitto.url):
        await eventually(
            lambda: _network_if(broker_api, ALPHA, lambda n: n["mqttConnected"]), what="connected"
        )
        update = await field(broker_api, FIRMWARE, {"id": ALPHA, "v": "2.4.1"}, "updateRobotFirmware")
        assert update["type"] == "UPDATE_FIRMWARE" and update["params"] == {"version": "2.4.1"}
        parameters = {"lidarOffsetMm": 12, "wheelBaseMm": 480}
        calibration = await field(broker_api, CALIBRATE, {"id": ALPHA, "p": parameters}, "calibrateRobot")
        for command in (update, calibration):
            done = await eventually(
                lambda c=command: _command_if_done(broker_api, c["id"]),
                what=f"{command['type']} acknowledged",
            )
            assert done["state"] == "SUCCEEDED", done
        serviced = await eventually(lambda: _serviced(broker_api), what="the robot's reports applied")
    assert serviced["firmwareVersion"] == "2.4.1" and serviced["calibration"] == parameters
    logs = await field(broker_api, LOGS, {"id": ALPHA, "level": "INFO"}, "robotLogs")
    reported = {entry["type"]: entry for entry in logs}
    assert reported["FIRMWARE_UPDATED"]["data"]["version"] == "2.4.1"
    assert (
        reported["CALIBRATED"]["data"] == {"parameters": parameters}
        and reported["CALIBRATED"]["level"] == "INFO"
    )
    assert await field(broker_api, LOGS, {"id": ALPHA, "level": "ERROR"}, "robotLogs") == []
    # Paging the log: one entry per page, to the end.
    seen, after = [], None
    while True:
        page = await field(
            broker_api, LOG_PAGE, {"id": ALPHA, "first": 1, "after": after}, "robotLogsConnection"
        )
        seen += [e["node"]["type"] for e in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == [entry["type"] for entry in logs]


async def _command_if_done(api: Api, command_id: str) -> dict[str, Any] | None:
    command: dict[str, Any] = await field(api, COMMAND, {"id": command_id}, "robotCommand")
    return command if command["state"] in ("SUCCEEDED", "FAILED") else None


async def _serviced(api: Api) -> dict[str, Any] | None:
    robot: dict[str, Any] = await field(api, SERVICED, {"id": ALPHA}, "robot")
    return robot if robot["firmwareVersion"] and robot["calibration"] else None


async def test_bad_service_requests_get_typed_errors_and_send_nothing(api: Api) -> None:
    before = await api.resources.db.fetchval("SELECT count(*) FROM robot_commands")
    assert await api.error_codes(FIRMWARE, {"id": ALPHA, "v": "2.4 beta"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(FIRMWARE, {"id": MISSING_ROBOT, "v": "2.4.1"}) == ["NOT_FOUND"]
    assert await api.error_codes(FIRMWARE, {"id": "nope", "v": "2.4.1"}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(CALIBRATE, {"id": ALPHA, "p": [1, 2]}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(CALIBRATE, {"id": ALPHA, "p": {}}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(CALIBRATE, {"id": ALPHA, "p": {"k": "x" * 20000}}) == ["BAD_USER_INPUT"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM robot_commands") == before
    assert await api.error_codes(LOGS, {"id": ALPHA, "limit": -1}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(LOG_PAGE, {"id": ALPHA, "after": "bm9wZQ=="}) == ["BAD_USER_INPUT"]


async def test_an_emergency_stop_halts_a_fleet_until_release_sends_resume_and_it_follows_its_robots(
    broker_api: Api, mosquitto: MosquittoServer
) -> None:
    async with sim([ALPHA, BETA], mosquitto.url):
        for robot_id in (ALPHA, BETA):
            await eventually(
                lambda r=robot_id: _network_if(broker_api, r, lambda n: n["mqttConnected"]), what="connected"
            )
        stopped = await field(broker_api, STOP, {"id": DEV_FLEET}, "emergencyStop")
        assert stopped["status"] == "MAINTENANCE" and stopped["emergencyStoppedAt"]
        # The robots halt and say so; the fleet stays stopped whatever they report.
        await eventually(lambda: _all_acked(broker_api, "EMERGENCY_STOP"), what="EMERGENCY_STOP acknowledged")
        await asyncio.sleep(0.3)  # a few liveness passes
        assert (await field(broker_api, FLEET, {"id": DEV_FLEET}, "fleet"))["status"] == "MAINTENANCE"

        released = await field(broker_api, RELEASE, {"id": DEV_FLEET}, "releaseEmergencyStop")
        assert released["emergencyStoppedAt"] is None
        await eventually(lambda: _all_acked(broker_api, "RESUME"), what="RESUME acknowledged")
        await eventually(lambda: _fleet_robots_are(broker_api, "IDLE"), what="the robots resumed")
        await eventually(lambda: _fleet_is(broker_api, "IDLE"), what="the fleet following its robots")
        # A robot at work makes the fleet ACTIVE again.
        await broker_api.data(WORKING, {"id": ALPHA})
        await eventually(lambda: _fleet_is(broker_api, "ACTIVE"), what="the fleet ACTIVE")
    codes = await broker_api.error_codes(RELEASE, {"id": DEV_FLEET})
    assert codes == ["CONFLICT"]
    assert await broker_api.error_codes(RELEASE, {"id": MISSING_ROBOT}) == ["NOT_FOUND"]
    assert ("MAINTENANCE", "EMERGENCY_STOP") in [(t, c) for _, t, c in await causes(broker_api, ALPHA)]


async def _fleet_robots_are(api: Api, status: str) -> bool:
    fleet = await field(api, FLEET, {"id": DEV_FLEET}, "fleet")
    return all(r["status"] == status for r in fleet["robots"])


async def _fleet_is(api: Api, status: str) -> bool:
    return bool((await field(api, FLEET, {"id": DEV_FLEET}, "fleet"))["status"] == status)


async def _all_acked(api: Api, kind: str) -> bool:
    for robot_id in (ALPHA, BETA):
        commands = await field(api, COMMANDS, {"id": robot_id}, "robotCommands")
        if not any(c["type"] == kind and c["state"] == "SUCCEEDED" for c in commands):
            return False
    return True
