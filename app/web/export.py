"""GET /export/telemetry: a robot's or a fleet's raw telemetry over a range, streamed as CSV or
NDJSON to holders of EXPORT_TELEMETRY (the same bearer token as the GraphQL API).

Query string: `robotId` or `fleetId` (one of them), `start` and `end` (ISO 8601 with an offset;
at most 400 days apart), `format` = csv (default) or ndjson. Rows come oldest first.

Memory stays constant however long the range: rows come from a server-side cursor a slice at a
time and each slice is written out before the next is read. The count and the rows are read in
one REPEATABLE READ snapshot, so `X-Row-Count` is exactly the number of rows that follow; the
file name is in Content-Disposition. The connection is held while the body streams and given
back however the response ends (done, client gone, error).

Answers: 401 without a valid token, 403 without EXPORT_TELEMETRY, 400 for bad parameters, 404
for an unknown robot or fleet; errors are JSON `{"error": ..., "code": ...}`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app import series
from app.context import bearer_token
from app.core.errors import DomainError, Invalid, NotFound
from app.core.permissions import Perm
from app.core.validation import parse_id
from app.resources import Resources
from app.web.connection import context_for

FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
COLUMNS = ["ts", "robot_id", "fleet_id", "seq", "status", "battery_level", "health_score", "pose", "metrics"]
# Rows per cursor fetch and per chunk written.
SLICE = 1000
STATUSES = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403, "BAD_USER_INPUT": 400, "NOT_FOUND": 404}

ROBOT_EXISTS = "SELECT EXISTS (SELECT 1 FROM robots WHERE id = $1 AND deleted_at IS NULL)"
FLEET_EXISTS = "SELECT EXISTS (SELECT 1 FROM fleets WHERE id = $1 AND deleted_at IS NULL)"
# Samples only (status messages are rows of their own); (robot_id, ts) and (fleet_id, ts) indexes.
COUNT = {
    "robot": "SELECT count(*) FROM telemetry WHERE robot_id = $1 AND ts BETWEEN $2 AND $3 AND NOT is_status",
    "fleet": "SELECT count(*) FROM telemetry WHERE fleet_id = $1 AND ts BETWEEN $2 AND $3 AND NOT is_status",
}
ROWS = {
    "robot": """
SELECT ts, robot_id, fleet_id, seq, status::text AS status, battery_level, health_score, pose, metrics
FROM telemetry WHERE robot_id = $1 AND ts BETWEEN $2 AND $3 AND NOT is_status ORDER BY ts, seq
""",
    "fleet": """
SELECT ts, robot_id, fleet_id, seq, status::text AS status, battery_level, health_score, pose, metrics
FROM telemetry WHERE fleet_id = $1 AND ts BETWEEN $2 AND $3 AND NOT is_status ORDER BY ts, robot_id, seq
""",
}


def _error(exc: DomainError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "code": exc.code}, status_code=STATUSES.get(exc.code, 400))


def _time(params: Any, name: str) -> datetime:
    raw = params.get(name)
    try:
        value = datetime.fromisoformat(raw) if raw else None
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise Invalid(f"{name} must be an ISO 8601 time with an offset, e.g. 2026-12-01T00:00Z", field=name)
    return value


def _parse(params: Any) -> tuple[str, str, datetime, datetime, str]:
    robot, fleet = params.get("robotId"), params.get("fleetId")
    if (robot is None) == (fleet is None):
        raise Invalid("give exactly one of robotId and fleetId", field="robotId")
    kind, ident = ("robot", parse_id(robot, "robotId")) if robot else ("fleet", parse_id(fleet, "fleetId"))
    start, end = _time(params, "start"), _time(params, "end")
    if start >= end:
        raise Invalid("start must be before end", field="start")
    if end - start > series.MAX_SPAN:
        raise Invalid("the range must span at most 400 days", field="end")
    fmt = params.get("format", "csv")
    if fmt not in FORMATS:
        raise Invalid("format must be csv or ndjson", field="format")
    return kind, ident, start, end, fmt


def _csv_chunk(rows: list[Any]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for r in rows:
        writer.writerow(
            [
                r["ts"].isoformat(),
                r["robot_id"],
                r["fleet_id"],
                r["seq"],
                r["status"] or "",
                "" if r["battery_level"] is None else r["battery_level"],
                "" if r["health_score"] is None else r["health_score"],
                "" if r["pose"] is None else orjson.dumps(r["pose"]).decode(),
                orjson.dumps(r["metrics"]).decode(),
            ]
        )
    return out.getvalue().encode()


def _ndjson_chunk(rows: list[Any]) -> bytes:
    return b"".join(orjson.dumps(dict(r)) + b"\n" for r in rows)


class _Export(StreamingResponse):
    """A StreamingResponse that gives its connection back however the response ends."""

    def __init__(self, body: AsyncIterator[bytes], release: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(body, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


def routes(resources: Callable[[], Resources | None]) -> list[Route]:
    async def export_telemetry(request: Request) -> Response:
        held = resources()
        if held is None:
            return JSONResponse({"error": "starting"}, status_code=503)
        ctx = context_for(held, request, bearer_token(request.headers.get("authorization")))
        try:
            await ctx.require(Perm.EXPORT_TELEMETRY)
            kind, ident, start, end, fmt = _parse(request.query_params)
            exists = ROBOT_EXISTS if kind == "robot" else FLEET_EXISTS
            if not await held.db.fetchval(exists, ident):
                raise NotFound.of(kind.capitalize(), ident)
        except DomainError as exc:
            return _error(exc)

        conn = await held.db.acquire()
        tx = conn.transaction(isolation="repeatable_read", readonly=True)
        started = released = False

        async def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            try:
                if started:
                    await tx.rollback()
            finally:
                await held.db.release(conn)

        try:
            await tx.start()
            started = True
            count = await conn.fetchval(COUNT[kind], ident, start, end)
        except BaseException:
            await release()
            raise

        async def body() -> AsyncIterator[bytes]:
            if fmt == "csv":
                yield (",".join(COLUMNS) + "\n").encode()
            chunk = _csv_chunk if fmt == "csv" else _ndjson_chunk
            cursor = await conn.cursor(ROWS[kind], ident, start, end)
            while rows := await cursor.fetch(SLICE):
                yield chunk(rows)

        name = f"telemetry-{kind}-{ident}-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}.{fmt}"
        return _Export(
            body(),
            release,
            media_type=FORMATS[fmt],
            headers={"content-disposition": f'attachment; filename="{name}"', "x-row-count": str(count)},
        )

    return [Route("/export/telemetry", export_telemetry, methods=["GET"])]
