"""Onboarding and servicing a robot: registerRobot (the robot row and its API key, shown once,
with the key's MQTT broker account), and the tracked commands that change its firmware or its
calibration. The robot's own report (a FIRMWARE_UPDATED or CALIBRATED event, applied by a
trigger on robot_events) is what moves `firmwareVersion` and `calibration`, not the request."""

from __future__ import annotations

import json
import re
from typing import Any

from app import apikeys, audit, commands
from app.context import Context, Viewer
from app.core.channels import channels
from app.core.errors import GRAPHQL_ONLY, Conflict, DomainError, Invalid, NotFound
from app.infra.db import returned
from app.infra.eventlog import record

FIRMWARE_COMMAND = "UPDATE_FIRMWARE"
CALIBRATE_COMMAND = "CALIBRATE"
VERSION_PATTERN = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
MAX_NAME = 100
MAX_SERIAL = 100
MAX_URL = 2000
MAX_CALIBRATION_BYTES = 16384

LIVE_ROBOT = "SELECT id FROM robots WHERE id = $1 AND deleted_at IS NULL"
LIVE_FLEET = "SELECT id FROM fleets WHERE id = $1 AND deleted_at IS NULL"
LIVE_SEPULKA = "SELECT id FROM sepulkas WHERE id = $1 AND deleted_at IS NULL"
# A built ingot of the sepulka: the one named, else the newest.
BUILT_INGOT = """
SELECT id FROM ingots
WHERE sepulka_id = $1 AND ($2::uuid IS NULL OR id = $2::uuid)
  AND status IN ('READY', 'TEMPERED', 'DEPLOYED')
ORDER BY created_at DESC, id DESC
LIMIT 1
"""
SERIAL_TAKEN = "SELECT id FROM robots WHERE serial_number = $1 AND deleted_at IS NULL"
# A new robot has not been heard from: OFFLINE until its first status message.
INSERT_ROBOT = """
INSERT INTO robots (name, sepulka_id, fleet_id, current_ingot_id, status, serial_number,
                    firmware_version, is_mobile, stream_url)
VALUES ($1, $2, $3, $4, 'OFFLINE', $5, $6, $7, $8)
RETURNING *
"""


def check_version(version: str, field: str = "version") -> str:
    text = (version or "").strip()
    if not VERSION_PATTERN.fullmatch(text):
        raise Invalid(
            f"{field} must be 1 to 64 characters of letters, digits and . + _ -, e.g. 2.4.1", field=field
        )
    return text


def _text(value: str | None, field: str, limit: int, required: bool = False) -> str | None:
    text = (value or "").strip()
    if required and not text:
        raise Invalid(f"{field} is required", field=field)
    if len(text) > limit or "\x00" in text:
        raise Invalid(f"{field} must be at most {limit} characters of text", field=field)
    return text or None


def _registration(input: dict[str, Any]) -> dict[str, Any]:
    url = _text(input.get("stream_url"), "input.streamUrl", MAX_URL)
    if url is not None and not url.startswith(("http://", "https://", "rtsp://", "wss://")):
        raise Invalid("input.streamUrl must be an http(s), rtsp or wss URL", field="input.streamUrl")
    firmware = input.get("firmware_version")
    return {
        "name": _text(input.get("name"), "input.name", MAX_NAME, required=True),
        "serial": _text(input.get("serial_number"), "input.serialNumber", MAX_SERIAL),
        "firmware": check_version(firmware, "input.firmwareVersion") if firmware is not None else None,
        "url": url,
        "key_name": _text(input.get("key_name"), "input.keyName", apikeys.MAX_NAME_LENGTH),
    }


async def register(
    ctx: Context, viewer: Viewer, input: dict[str, Any], ids: dict[str, str | None]
) -> dict[str, Any]:
    """The robot (OFFLINE until it reports) and its first API key in one transaction; the key is
    in this payload only. `ids`: the parsed fleet, sepulka and ingot ids."""
    try:
        fields = _registration(input)
        async with ctx.db.acquire() as conn, conn.transaction():
            if await conn.fetchval(LIVE_FLEET, ids["fleet"]) is None:
                raise NotFound("Fleet not found", field="input.fleetId")
            if await conn.fetchval(LIVE_SEPULKA, ids["sepulka"]) is None:
                raise NotFound("Sepulka not found", field="input.sepulkaId")
            ingot = await conn.fetchval(BUILT_INGOT, ids["sepulka"], ids["ingot"])
            if ingot is None:
                field = "input.ingotId" if ids["ingot"] else "input.sepulkaId"
                raise Conflict(
                    "No built ingot (READY, TEMPERED or DEPLOYED) of this sepulka to run", field=field
                )
            if fields["serial"] and await conn.fetchval(SERIAL_TAKEN, fields["serial"]) is not None:
                raise Conflict("Another robot has this serial number", field="input.serialNumber")
            robot = dict(
                returned(
                    await conn.fetchrow(
                        INSERT_ROBOT,
                        fields["name"],
                        ids["sepulka"],
                        ids["fleet"],
                        ingot,
                        fields["serial"],
                        fields["firmware"],
                        input.get("is_mobile"),
                        fields["url"],
                    )
                )
            )
            key_row, key = await apikeys.issue_in(ctx, conn, robot["id"], fields["key_name"], viewer.id)
            changes = {
                "name": robot["name"],
                "fleetId": robot["fleet_id"],
                "sepulkaId": robot["sepulka_id"],
                "ingotId": robot["current_ingot_id"],
                "serialNumber": robot["serial_number"],
                "apiKeyPrefix": key_row["prefix"],
            }
            await audit.record(conn, ctx, viewer.id, "registerRobot", "Robot", robot["id"], changes)
            event = await record(conn, channels.robot(robot["id"]), robot)
    except GRAPHQL_ONLY:
        raise
    except DomainError as exc:
        return {"robot": None, "api_key": None, "key": None, "errors": [exc.as_payload_error()]}
    await ctx.events.publish_recorded([event])
    return {"robot": robot, "api_key": key_row, "key": key, "errors": None}


async def _command(
    ctx: Context, viewer: Viewer, robot_id: str, kind: str, params: dict[str, Any], action: str
) -> dict[str, Any]:
    async with ctx.db.acquire() as conn, conn.transaction():
        if await conn.fetchval(LIVE_ROBOT, robot_id) is None:
            raise NotFound.of("Robot", robot_id)
        (command,) = await commands.enqueue(
            conn, [robot_id], kind, params, issued_by=viewer.id, ttl_s=ctx.resources.settings.command_ttl_s
        )
        changes = {"robotId": robot_id, "commandId": command["id"], **params}
        await audit.record(conn, ctx, viewer.id, action, "Robot", robot_id, changes)
    await commands.publish(ctx.events, [command])
    return command


async def update_firmware(ctx: Context, viewer: Viewer, robot_id: str, version: str) -> dict[str, Any]:
    """An UPDATE_FIRMWARE command ({version}); the robot reports FIRMWARE_UPDATED when done."""
    checked = check_version(version)
    return await _command(
        ctx, viewer, robot_id, FIRMWARE_COMMAND, {"version": checked}, "updateRobotFirmware"
    )


async def calibrate(ctx: Context, viewer: Viewer, robot_id: str, parameters: Any) -> dict[str, Any]:
    """A CALIBRATE command ({parameters}); the robot reports CALIBRATED with what it applied."""
    if not isinstance(parameters, dict) or not parameters:
        raise Invalid("parameters must be a non-empty JSON object", field="parameters")
    if len(json.dumps(parameters)) > MAX_CALIBRATION_BYTES:
        raise Invalid(f"parameters must be at most {MAX_CALIBRATION_BYTES} bytes of JSON", field="parameters")
    return await _command(
        ctx, viewer, robot_id, CALIBRATE_COMMAND, {"parameters": parameters}, "calibrateRobot"
    )
