"""HTTP ingest, the fallback for robots that cannot speak MQTT: POST /telemetry/{robotId} and
POST /telemetry/{robotId}/batch, authenticated with the robot's API key (`X-API-Key`).

Items enter the same pipeline as MQTT messages (validation, dead letters, idempotent batch write,
publish after commit), so a message means the same whichever way it arrived. The body is
`{"eventType": ..., "data": {...}}`, where `data` is exactly the payload the robot would publish on
MQTT; `eventType` names the topic:

| eventType         | MQTT topic it stands for  | data                                                   |
|-------------------|---------------------------|--------------------------------------------------------|
| telemetry         | robots/{id}/telemetry     | {seq, ts, batteryLevel?, healthScore?, pose?, metrics} |
| status            | robots/{id}/status        | {status, ts}                                           |
| event, events     | robots/{id}/events        | {seq, ts, type, severity?, message?, data?}            |
| ack, commandAck   | robots/{id}/commands/ack  | {commandId, state, detail?}                            |

Answers:
- 401 without `X-API-Key`; 403 for a key that is unknown, revoked, expired, or another robot's.
- 400 for a body that is not JSON or not of that shape; 413 past the body limit.
- 503 when no ingest pipeline runs in this process, or it failed (`Retry-After`): resend as is,
  the (robot, seq) key makes the retry harmless.
- Otherwise 200 with one result per item, in order: `{"index", "status", "reason"?, "detail"?}`,
  status `stored`, `duplicate` (already stored: not an error, do not resend) or `rejected`
  (dead-lettered with its reason: fix it, do not resend as is). Like WebDAV's 207, the status of
  the whole request says only that every item was processed; the items say how. The single form
  answers 422 instead of 200 when its one item is rejected, for clients that only look at the code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app import apikeys
from app.core.errors import Invalid
from app.core.validation import parse_id
from app.ingest.messages import Outcome, RawMessage
from app.ingest.pipeline import Pipeline, PipelineStopped
from app.resources import Resources

log = logging.getLogger("sepulki.http_ingest")

# eventType -> the pipeline's message kind; TOPICS gives the MQTT topic each kind stands for.
EVENT_KINDS = {
    "telemetry": "telemetry",
    "status": "status",
    "event": "events",
    "events": "events",
    "ack": "ack",
    "commandAck": "ack",
}
TOPICS = {"telemetry": "telemetry", "status": "status", "events": "events", "ack": "commands/ack"}
MAX_BATCH_ITEMS = 1000
# The envelope around one MQTT-sized payload; the pipeline still enforces the payload's own limit.
ENVELOPE_BYTES = 1024
# 1000 typical telemetry items (~0.5 KB each) fit with room to spare; send bigger bursts in parts.
MAX_BATCH_BYTES = 4 * 1024 * 1024


class _Refused(Exception):
    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers


def _answer(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _Refused(413, f"Body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(413, f"Body larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Refused(400, "Client disconnected before the body was complete") from None
    return b"".join(chunks)


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _Refused(400, "Body is not valid JSON") from None


def _envelope_error(item: Any) -> str | None:
    """Why an item is not `{eventType, data}`, or None when it is."""
    if not isinstance(item, dict):
        return "an item must be an object {eventType, data}"
    event_type = item.get("eventType")
    if not isinstance(event_type, str):
        return "eventType must be a string"
    if event_type not in EVENT_KINDS:
        return f"unknown eventType {event_type!r}; expected one of {', '.join(EVENT_KINDS)}"
    if not isinstance(item.get("data"), dict):
        return "data must be an object"
    return None


def _message(robot_id: str, item: dict[str, Any]) -> RawMessage:
    kind = EVENT_KINDS[item["eventType"]]
    payload = json.dumps(item["data"], separators=(",", ":")).encode()
    return RawMessage(
        source="http",
        topic=f"robots/{robot_id}/{TOPICS[kind]}",
        robot_id=robot_id,
        kind=kind,
        payload=payload,
        authenticated_robot_id=robot_id,
    )


def _result(index: int, outcome: Outcome) -> dict[str, Any]:
    result: dict[str, Any] = {"index": index, "status": outcome.status}
    if outcome.reason:
        result["reason"] = outcome.reason
    if outcome.detail:
        result["detail"] = outcome.detail
    return result


async def _authenticate(request: Request, resources: Resources) -> str:
    """The robot of the path, once its key is checked; refuses before the body is read."""
    key = request.headers.get("x-api-key")
    if not key:
        raise _Refused(401, "X-API-Key header required")
    try:
        robot_id = await apikeys.authenticate(resources.db, key)
    except Exception:
        log.exception("HTTP ingest: API key check failed")
        raise _Refused(503, "Ingest temporarily unavailable, retry", {"Retry-After": "1"}) from None
    if robot_id is None:
        raise _Refused(403, "Invalid, expired or revoked API key")
    try:
        path_robot: str | None = parse_id(request.path_params["robot_id"], "robotId")
    except Invalid:
        path_robot = None
    if path_robot != robot_id:
        raise _Refused(403, "This API key belongs to another robot")
    return robot_id


async def _submit(pipeline: Pipeline | None, messages: list[RawMessage]) -> list[Outcome]:
    if pipeline is None:
        raise _Refused(503, "Ingest is not running in this process", {"Retry-After": "5"})
    try:
        outcomes: list[Outcome] = await pipeline.submit(messages)
    except PipelineStopped:
        raise _Refused(503, "Ingest is stopping, retry", {"Retry-After": "1"}) from None
    except Exception:
        log.exception("HTTP ingest: the pipeline failed")
        raise _Refused(503, "Ingest temporarily unavailable, retry", {"Retry-After": "1"}) from None
    return outcomes


async def _ingest(
    request: Request, resources: Resources | None, pipeline: Pipeline | None, *, batch: bool
) -> JSONResponse:
    if resources is None:
        return _answer(503, {"error": "Starting, try again later"}, {"Retry-After": "1"})
    try:
        robot_id = await _authenticate(request, resources)
        limit = MAX_BATCH_BYTES if batch else resources.settings.ingest_max_payload_bytes + ENVELOPE_BYTES
        document = _decode(await _read_body(request, limit))
        if batch:
            items = document.get("items") if isinstance(document, dict) else None
            if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_ITEMS:
                raise _Refused(400, f'Body must be {{"items": [...]}} with 1 to {MAX_BATCH_ITEMS} items')
        else:
            error = _envelope_error(document)
            if error is not None:
                raise _Refused(400, f"Body must be {{eventType, data}}: {error}")
            items = [document]
        results: list[dict[str, Any] | None] = [None] * len(items)
        accepted: list[int] = []
        for index, item in enumerate(items):
            error = _envelope_error(item)
            if error is None:
                accepted.append(index)
            else:
                # Not a message at all (no topic to stand for): refused here, not dead-lettered.
                results[index] = {
                    "index": index,
                    "status": "rejected",
                    "reason": "invalid_item",
                    "detail": error,
                }
        if accepted:
            outcomes = await _submit(pipeline, [_message(robot_id, items[i]) for i in accepted])
            for index, outcome in zip(accepted, outcomes, strict=True):
                results[index] = _result(index, outcome)
    except _Refused as refused:
        return _answer(refused.status, {"error": refused.error}, refused.headers)
    counts = {status: 0 for status in ("stored", "duplicate", "rejected")}
    for result in results:
        assert result is not None
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    status = 422 if not batch and counts["rejected"] else 200
    return _answer(status, {"robotId": robot_id, **counts, "results": results})


def routes(resources: Callable[[], Resources | None], pipeline: Callable[[], Pipeline | None]) -> list[Route]:
    """The HTTP ingest routes of the API, reading the process's resources and pipeline per request."""

    async def ingest_one(request: Request) -> JSONResponse:
        return await _ingest(request, resources(), pipeline(), batch=False)

    async def ingest_batch(request: Request) -> JSONResponse:
        return await _ingest(request, resources(), pipeline(), batch=True)

    return [
        Route("/telemetry/{robot_id}", ingest_one, methods=["POST"]),
        Route("/telemetry/{robot_id}/batch", ingest_batch, methods=["POST"]),
    ]
