"""Robot messages: topic parsing and payload validation into typed items, or a `Rejected`.

What a robot may send (docs/ingest.md has the full contract):
- `robots/{id}/telemetry`: {"seq"?, "ts", "batteryLevel"?, "healthScore"?, "pose"?, "metrics"?}
- `robots/{id}/status` (retained; also the robot's Last Will): {"status", "ts"}
- `robots/{id}/events`: {"seq"?, "ts", "type", "severity"?, "message"?, "data"?}
- `robots/{id}/commands/ack`: {"commandId", "state", "detail"?}

Idempotency key: `(robot_id, seq)`. A message without `seq` (every status message, and telemetry or
events a robot sends without one) is keyed by its content: `seq = -1 - (BLAKE2b-64(raw payload) >> 1)`,
a negative number, so it never collides with a robot's own sequence numbers (which are >= 0) and a
redelivered copy of the same bytes gets the same key.

Validation is pure (no I/O): whether the robot exists is the pipeline's question (its cache).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

Source = Literal["mqtt", "http"]
Kind = Literal["telemetry", "status", "events", "ack"]
Status = Literal["stored", "duplicate", "rejected"]

ROBOT_STATUSES = frozenset({"IDLE", "WORKING", "CHARGING", "MAINTENANCE", "ERROR", "OFFLINE"})
SEVERITIES = frozenset({"INFO", "WARNING", "ERROR", "CRITICAL"})
ACK_STATES = frozenset({"RECEIVED", "SUCCEEDED", "FAILED"})
KINDS: frozenset[str] = frozenset({"telemetry", "status", "events", "ack"})
# A robot whose clock runs this far ahead is refused rather than allowed to move lastSeen into the future.
MAX_CLOCK_AHEAD = timedelta(days=1)
EARLIEST_TS = datetime(2000, 1, 1, tzinfo=UTC)
MAX_METRICS = 200
MAX_NAME = 100
MAX_MESSAGE = 4000
MAX_SEQ = 2**63 - 1

# Reasons stored in dead_letters.reason and counted in metrics.
MALFORMED_JSON = "malformed_json"
INVALID_TYPE = "invalid_type"
MISSING_FIELD = "missing_field"
OUT_OF_RANGE = "out_of_range"
INVALID_VALUE = "invalid_value"
INVALID_TIMESTAMP = "invalid_timestamp"
OVERSIZED = "oversized"
UNKNOWN_ROBOT = "unknown_robot"
ROBOT_MISMATCH = "robot_mismatch"
INVALID_TOPIC = "invalid_topic"
STORAGE_ERROR = "storage_error"


@dataclass(slots=True)
class RawMessage:
    """A message as it arrived, before validation; `authenticated_robot_id` is who sent it
    when the transport authenticated the sender (HTTP API key, MQTT username)."""

    source: str
    topic: str
    robot_id: str
    kind: str
    payload: bytes
    authenticated_robot_id: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    reason: str | None = None
    detail: str | None = None


STORED = Outcome("stored")
DUPLICATE = Outcome("duplicate")


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str
    detail: str

    @property
    def outcome(self) -> Outcome:
        return Outcome("rejected", self.reason, self.detail)


@dataclass(slots=True)
class Sample:
    """A telemetry sample, or a status message (stored as a sample carrying only the status)."""

    robot_id: str
    seq: int
    ts: datetime
    status: str | None = None
    battery_level: float | None = None
    health_score: float | None = None
    pose: dict[str, Any] | None = None
    metrics: dict[str, float] | None = None


@dataclass(slots=True)
class RobotEvent:
    robot_id: str
    seq: int
    ts: datetime
    type: str
    severity: str
    message: str | None
    data: dict[str, Any]


@dataclass(slots=True)
class CommandAck:
    robot_id: str
    command_id: str
    state: str
    detail: str | None


Item = Sample | RobotEvent | CommandAck


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_topic(topic: str) -> tuple[str, str] | None:
    """`robots/{id}/telemetry|status|events|commands/ack` -> (robot id as sent, kind)."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == "robots" and parts[2] in ("telemetry", "status", "events"):
        return parts[1], parts[2]
    if len(parts) == 4 and parts[0] == "robots" and parts[2] == "commands" and parts[3] == "ack":
        return parts[1], "ack"
    return None


def canonical_id(value: str) -> str | None:
    """The canonical UUID text of a robot id, or None when it is not one."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


def content_key(payload: bytes) -> int:
    """The idempotency key of a message without `seq` (see the module docstring)."""
    digest = int.from_bytes(hashlib.blake2b(payload, digest_size=8).digest(), "big")
    return -1 - (digest >> 1)


def validate(raw: RawMessage, robot_id: str, max_bytes: int) -> Item | Rejected:
    """The typed item of a message whose robot id (canonical) is already known to be valid,
    or why it is refused. Never raises for bad input."""
    payload = raw.payload
    if len(payload) > max_bytes:
        return Rejected(OVERSIZED, f"payload of {len(payload)} bytes exceeds {max_bytes}")
    if raw.authenticated_robot_id is not None and raw.authenticated_robot_id != robot_id:
        return Rejected(ROBOT_MISMATCH, f"authenticated as robot {raw.authenticated_robot_id}")
    # PostgreSQL text and jsonb cannot hold NUL; refuse it here rather than fail the batch.
    if b"\\u0000" in payload:
        return Rejected(INVALID_VALUE, "strings must not contain NUL (\\u0000)")
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        return Rejected(MALFORMED_JSON, str(exc)[:200])
    if not isinstance(body, dict):
        return Rejected(INVALID_TYPE, f"payload must be a JSON object, got {_type(body)}")
    claimed = body.get("robotId")
    if claimed is not None and claimed != robot_id and canonical_id(str(claimed)) != robot_id:
        return Rejected(ROBOT_MISMATCH, f"payload robotId {str(claimed)[:64]!r} is not the topic's robot")
    try:
        kind = raw.kind
        if kind == "telemetry":
            return _telemetry(robot_id, body, payload)
        if kind == "status":
            return _status(robot_id, body, payload)
        if kind == "events":
            return _event(robot_id, body, payload)
        if kind == "ack":
            return _ack(robot_id, body)
        return Rejected(INVALID_TOPIC, f"unknown message kind {kind!r}")
    except _Invalid as exc:
        return Rejected(exc.reason, exc.detail)


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "number",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _seq(body: dict[str, Any], payload: bytes) -> int:
    seq = body.get("seq")
    if seq is None:
        return content_key(payload)
    if type(seq) is not int:
        raise _Invalid(INVALID_TYPE, f"seq must be an integer, got {_type(seq)}")
    if seq < 0 or seq > MAX_SEQ:
        raise _Invalid(OUT_OF_RANGE, f"seq must be between 0 and {MAX_SEQ}, got {seq}")
    return seq


def _ts(body: dict[str, Any]) -> datetime:
    value = body.get("ts")
    if value is None:
        raise _Invalid(MISSING_FIELD, "ts is required (RFC 3339 date-time with offset)")
    if not isinstance(value, str):
        raise _Invalid(INVALID_TYPE, f"ts must be an RFC 3339 string, got {_type(value)}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise _Invalid(INVALID_TIMESTAMP, f"ts {value[:40]!r} is not an RFC 3339 date-time") from None
    if ts.tzinfo is None or len(value) < 20:
        raise _Invalid(INVALID_TIMESTAMP, f"ts {value[:40]!r} needs a date, a time and an offset")
    if ts - datetime.now(UTC) > MAX_CLOCK_AHEAD:
        raise _Invalid(OUT_OF_RANGE, f"ts {value[:40]!r} is more than a day in the future")
    if ts < EARLIEST_TS:
        raise _Invalid(OUT_OF_RANGE, f"ts {value[:40]!r} is before 2000 (a clock that was never set)")
    return ts


def _number(value: Any, field: str, low: float | None = None, high: float | None = None) -> float:
    kind = type(value)
    if kind is not float and kind is not int:
        raise _Invalid(INVALID_TYPE, f"{field} must be a number, got {_type(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _Invalid(OUT_OF_RANGE, f"{field} must be finite")
    if (low is not None and number < low) or (high is not None and number > high):
        raise _Invalid(OUT_OF_RANGE, f"{field} must be between {low:g} and {high:g}, got {number:g}")
    return number


def _optional_percent(body: dict[str, Any], field: str) -> float | None:
    value = body.get(field)
    return None if value is None else _number(value, field, 0.0, 100.0)


def _vector(value: Any, field: str, keys: tuple[str, ...]) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _Invalid(INVALID_TYPE, f"{field} must be an object with {', '.join(keys)}")
    out: dict[str, float] = {}
    for key in keys:
        if key not in value:
            raise _Invalid(MISSING_FIELD, f"{field}.{key} is required")
        out[key] = _number(value[key], f"{field}.{key}")
    return out


def _pose(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(INVALID_TYPE, f"pose must be an object, got {_type(value)}")
    pose: dict[str, Any] = {"position": _vector(value.get("position"), "pose.position", ("x", "y", "z"))}
    if value.get("orientation") is not None:
        pose["orientation"] = _vector(value["orientation"], "pose.orientation", ("x", "y", "z", "w"))
    joints = value.get("jointPositions")
    if joints is not None:
        if not isinstance(joints, list) or len(joints) > 64:
            raise _Invalid(INVALID_TYPE, "pose.jointPositions must be a list of at most 64 numbers")
        pose["jointPositions"] = [_number(j, "pose.jointPositions[]") for j in joints]
    return pose


def _metrics(value: Any) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(INVALID_TYPE, f"metrics must be an object of name: number, got {_type(value)}")
    if len(value) > MAX_METRICS:
        raise _Invalid(OUT_OF_RANGE, f"at most {MAX_METRICS} metrics per message, got {len(value)}")
    for name, number in value.items():
        if not name or len(name) > MAX_NAME:
            raise _Invalid(INVALID_VALUE, f"metric names must be 1 to {MAX_NAME} characters")
        kind = type(number)
        # orjson refuses NaN and Infinity in a document, so any float here is finite.
        if kind is not float and kind is not int:
            raise _Invalid(INVALID_TYPE, f"metrics.{name} must be a number, got {_type(number)}")
    return value


def _telemetry(robot_id: str, body: dict[str, Any], payload: bytes) -> Sample:
    return Sample(
        robot_id=robot_id,
        seq=_seq(body, payload),
        ts=_ts(body),
        battery_level=_optional_percent(body, "batteryLevel"),
        health_score=_optional_percent(body, "healthScore"),
        pose=_pose(body.get("pose")),
        metrics=_metrics(body.get("metrics")),
    )


def _status(robot_id: str, body: dict[str, Any], payload: bytes) -> Sample:
    status = body.get("status")
    if status is None:
        raise _Invalid(MISSING_FIELD, "status is required")
    if status not in ROBOT_STATUSES:
        raise _Invalid(INVALID_VALUE, f"status must be one of {', '.join(sorted(ROBOT_STATUSES))}")
    return Sample(robot_id=robot_id, seq=_seq(body, payload), ts=_ts(body), status=status)


def _text(body: dict[str, Any], field: str, limit: int, *, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise _Invalid(MISSING_FIELD, f"{field} is required")
        return None
    if not isinstance(value, str):
        raise _Invalid(INVALID_TYPE, f"{field} must be a string, got {_type(value)}")
    if len(value) > limit or (required and not value.strip()):
        raise _Invalid(OUT_OF_RANGE, f"{field} must be 1 to {limit} characters")
    return value


def _event(robot_id: str, body: dict[str, Any], payload: bytes) -> RobotEvent:
    event_type = _text(body, "type", MAX_NAME, required=True)
    severity = body.get("severity", "INFO")
    if severity not in SEVERITIES:
        raise _Invalid(INVALID_VALUE, f"severity must be one of {', '.join(sorted(SEVERITIES))}")
    data = body.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise _Invalid(INVALID_TYPE, f"data must be an object, got {_type(data)}")
    return RobotEvent(
        robot_id=robot_id,
        seq=_seq(body, payload),
        ts=_ts(body),
        type=event_type or "",
        severity=severity,
        message=_text(body, "message", MAX_MESSAGE),
        data=data,
    )


def _ack(robot_id: str, body: dict[str, Any]) -> CommandAck:
    command_id = body.get("commandId")
    if command_id is None:
        raise _Invalid(MISSING_FIELD, "commandId is required")
    canonical = canonical_id(command_id) if isinstance(command_id, str) else None
    if canonical is None:
        raise _Invalid(INVALID_VALUE, f"commandId must be a UUID, got {str(command_id)[:64]!r}")
    state = body.get("state")
    if state not in ACK_STATES:
        raise _Invalid(INVALID_VALUE, f"state must be one of {', '.join(sorted(ACK_STATES))}")
    return CommandAck(robot_id, canonical, state, _text(body, "detail", MAX_MESSAGE))
