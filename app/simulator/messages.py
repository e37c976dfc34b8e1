"""The simulated robot's side of the MQTT contract (docs/mqtt-contract.md): topics and payloads it
publishes, the commands it understands, and the bad messages it sends on purpose."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.simulator import physics
from app.simulator.physics import RobotState


def topic(robot_id: str, stream: str) -> str:
    """`robots/{id}/telemetry|status|events|commands|commands/ack`."""
    return f"robots/{robot_id}/{stream}"


def now() -> str:
    """RFC 3339 in UTC with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def telemetry(state: RobotState, seq: int, rng: random.Random) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": now(),
        "batteryLevel": round(state.battery, 2),
        "healthScore": round(physics.health_score(state.battery, state.motor_temp, state.error_count), 2),
        "pose": physics.pose(state),
        "metrics": physics.metrics(state, rng),
    }


def status(value: str) -> dict[str, Any]:
    return {"status": value, "ts": now()}


def event(seq: int, kind: str, severity: str, message: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"seq": seq, "ts": now(), "type": kind, "severity": severity, "message": message, "data": data}


def ack(command_id: str, state: str, detail: str | None = None) -> dict[str, Any]:
    return {"commandId": command_id, "state": state, "detail": detail}


BAD_KINDS = ("malformed_json", "out_of_range", "invalid_type")


def bad_telemetry(state: RobotState, seq: int, rng: random.Random) -> tuple[str, bytes]:
    """A telemetry message the ingest must dead-letter: (kind, payload bytes)."""
    kind = rng.choice(BAD_KINDS)
    good = telemetry(state, seq, rng)
    if kind == "malformed_json":
        raw = encode(good)
        return kind, raw[: max(1, len(raw) // 2)]  # cut mid-message, as a flaky link would
    if kind == "out_of_range":
        good["batteryLevel"] = rng.choice((-5.0, 140.0))
    else:
        good["seq"] = "not-a-number"
    return kind, encode(good)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the robot acknowledged a command, and whether its status changed."""

    state: str  # SUCCEEDED or FAILED
    detail: str
    status_changed: bool = False
    event: tuple[str, str, str, dict[str, Any]] | None = None


# The steps a simulated robot reports while running a DISPATCH_TASK, and why one may fail.
TASK_STEPS = ("travelling to the work area", "working", "verifying the result", "returning")
TASK_FAILURES = ("gripper lost the part", "path blocked by an obstacle", "sensor reading out of range")

# The command types a simulated robot understands; any other type is acknowledged FAILED.
COMMAND_TYPES = (
    "EMERGENCY_STOP",
    "DISPATCH_TASK",
    "CANCEL_TASK",
    "RESUME",
    "PAUSE",
    "RETURN_TO_DOCK",
    "PING",
    "UPDATE_INGOT",
    "UPDATE_FIRMWARE",
    "CALIBRATE",
)


def execute(state: RobotState, kind: str, params: dict[str, Any]) -> Outcome:
    """Applies one command to the robot (pure: no I/O)."""
    before = state.status
    if kind not in COMMAND_TYPES:
        return Outcome("FAILED", f"unknown command type {kind!r}")
    if kind == "UPDATE_INGOT":
        return update_ingot(state, params, failed=False)
    # Firmware and calibration are serviced in any status, a halted robot included.
    if kind == "UPDATE_FIRMWARE":
        return update_firmware(state, params)
    if kind == "CALIBRATE":
        return calibrate(state, params)
    if kind == "EMERGENCY_STOP":
        _halt(state, "MAINTENANCE")
        return Outcome(
            "SUCCEEDED",
            "motion stopped; robot in MAINTENANCE until RESUME",
            before != state.status,
            ("EMERGENCY_STOP", "CRITICAL", "Emergency stop executed", {"previousStatus": before}),
        )
    if kind == "PING":
        return Outcome("SUCCEEDED", f"pong: {state.status}, battery {state.battery:.1f}%")
    if kind == "CANCEL_TASK":  # the runner stops the task's execution; a halted robot may drop one too
        return Outcome("SUCCEEDED", f"task {params.get('taskId')} dropped")
    if kind == "RESUME":
        if before not in physics.HALTED:
            return Outcome("SUCCEEDED", f"already {before}")
        state.error_count = 0
        state.status = "IDLE"
        return Outcome("SUCCEEDED", "resumed: IDLE", True)
    if before in physics.HALTED:
        return Outcome("FAILED", f"robot is {before}: send RESUME first")
    if kind == "DISPATCH_TASK":
        if before == "CHARGING":
            return Outcome("FAILED", f"robot is charging ({state.battery:.1f}%)")
        task = params.get("taskId")
        state.task_id = str(task) if task is not None else None
        state.status = "WORKING"
        return Outcome("SUCCEEDED", f"task {task} accepted" if task else "working", before != "WORKING")
    if kind == "PAUSE":
        _halt(state, "IDLE")
        return Outcome("SUCCEEDED", "paused: IDLE", before != "IDLE")
    _halt(state, "CHARGING")  # RETURN_TO_DOCK
    return Outcome("SUCCEEDED", "docked: CHARGING", before != "CHARGING")


def update_ingot(state: RobotState, params: dict[str, Any], *, failed: bool) -> Outcome:
    """Installs the build `params.version` (docs/mqtt-contract.md): the SUCCEEDED ack's detail is
    the version now running; a failed install keeps the old one."""
    version = params.get("version")
    if not isinstance(version, str) or not version:
        return Outcome("FAILED", "UPDATE_INGOT needs params.version")
    if failed:
        return Outcome("FAILED", f"installing {version} failed: artifact checksum mismatch")
    state.ingot_version = version
    return Outcome("SUCCEEDED", version)


def update_firmware(state: RobotState, params: dict[str, Any]) -> Outcome:
    """Installs `params.version` and reports it with a FIRMWARE_UPDATED event
    (docs/mqtt-contract.md), which is what moves the robot's firmwareVersion."""
    version = params.get("version")
    if not isinstance(version, str) or not version:
        return Outcome("FAILED", "UPDATE_FIRMWARE needs params.version")
    previous, state.firmware_version = state.firmware_version, version
    data = {"version": version, "previousVersion": previous}
    return Outcome(
        "SUCCEEDED",
        f"firmware {version} installed",
        False,
        ("FIRMWARE_UPDATED", "INFO", f"Firmware {version}", data),
    )


def calibrate(state: RobotState, params: dict[str, Any]) -> Outcome:
    """Applies `params.parameters` and reports them with a CALIBRATED event."""
    parameters = params.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        return Outcome("FAILED", "CALIBRATE needs params.parameters, a JSON object")
    state.calibration = dict(parameters)
    event = ("CALIBRATED", "INFO", f"Calibrated {len(parameters)} parameters", {"parameters": parameters})
    return Outcome("SUCCEEDED", "calibration applied", False, event)


def _halt(state: RobotState, status: str) -> None:
    state.status = status
    state.speed = 0.0
    state.waypoint = None
    state.dwell_left_s = 0.0
