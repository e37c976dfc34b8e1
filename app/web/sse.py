"""Server-Sent Events, the fallback for clients without websockets: GET /events/fleet/{fleetId}
streams what the `bellowsStream(fleetId)` subscription streams, from the same channel
(`bellows:{fleetId}`) through the same stream (app.realtime.event_stream): replay, then live.

Each event is

    id: <event_log id>
    event: bellows
    data: <the BellowsStream object as JSON, field names as in the GraphQL type>

and a comment line (`: heartbeat`) goes out every 15 s of silence, so proxies keep the connection
and a dead client is noticed. A reconnecting `EventSource` sends `Last-Event-ID` by itself: the
events committed after that id are replayed from PostgreSQL, then the stream continues live,
none missed and none twice. A client that opens a new `EventSource` (after a token refresh, say)
passes the last id it saw as `?lastEventId=`.

Authentication: `Authorization: Bearer <access token>`, the same token and checks as GraphQL,
with the VIEW_BELLOWS permission. Browsers' `EventSource` cannot set headers, so `?access_token=`
is accepted too. The trade-off: a token in a URL can end up in access logs, proxy logs and
browser history (our own access log masks it; a proxy's may not), where a header would not. It is
only ever an access token, never a refresh token: it expires (SEPULKI_ACCESS_TOKEN_TTL_S) and a
revoked session opens no new stream; deployments should keep query strings of this path out of
their logs. An open stream checks its token once, when it opens, and ends when the token expires
(`event: expired`); the client signs in again and reconnects with `lastEventId`.

Answers before the stream starts: 401 without a valid token, 403 without VIEW_BELLOWS, 400 for a
malformed fleet id or event id, 404 for an unknown fleet, 503 while the database is unreachable.
A stream can end with an event saying why, after which the client reconnects with the last id
it saw and loses nothing: `overflow` (it fell `settings.ws_queue_size` events behind; data
`{"lastEventId"}`), `expired` (see above) or `interrupted` (the database failed mid-replay).

Shutdown: uvicorn waits for open responses before it stops, and a stream never ends by itself;
run uvicorn with `timeout_graceful_shutdown` so that streams are cut after a few seconds (their
EventSource clients reconnect to another replica with `Last-Event-ID`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.bellows import live_metrics
from app.context import bearer_token
from app.core.channels import channels
from app.core.errors import Forbidden, Invalid, Unauthenticated
from app.core.permissions import Perm
from app.core.validation import parse_id
from app.fleets import fleets_by_id
from app.infra.bus import Event
from app.realtime.streams import SlowConsumer, event_stream, parse_after
from app.resources import Resources
from app.web.connection import context_for

log = logging.getLogger("sepulki.sse")

HEARTBEAT_S = 15.0
# How long an EventSource waits before reconnecting after the stream drops.
RETRY_MS = 3000
# Between the stream and the socket; the real bound is the subscriber queue (ws_queue_size).
HANDOFF = 16


def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _graphql_names(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with GraphQL field names: its own keys and those of the objects of its lists
    (metrics, events); values below them (pose, event data) are the robot's and stay as sent."""

    def fields(value: Any) -> Any:
        if isinstance(value, dict):
            return {_camel(k): v for k, v in value.items()}
        if isinstance(value, list):
            return [fields(item) if isinstance(item, dict) else item for item in value]
        return value

    return {
        _camel(key): fields(value) if isinstance(value, list) else value for key, value in payload.items()
    }


def _as_stream(payload: dict[str, Any]) -> dict[str, Any]:
    """A live event as the BellowsStream object: its compact `samples` (app/ingest/writer.py)
    become the `metrics` the type has, as the subscription's resolver shows them."""
    if "samples" not in payload:
        return payload  # logged before events carried every sample (`metrics` already)
    return {
        ("metrics" if key == "samples" else key): live_metrics(value) if key == "samples" else value
        for key, value in payload.items()
    }


def format_event(event: Event) -> str:
    # Payloads are JSON-safe by app.pubsub's contract (they come out of jsonb or the wire).
    data = json.dumps(_graphql_names(_as_stream(event.data)), separators=(",", ":"))
    return f"id: {event.id}\nevent: bellows\ndata: {data}\n\n"


def _refuse(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


_END = object()


async def _pump(stream: AsyncIterator[Event], handoff: asyncio.Queue[Any]) -> None:
    """Runs the stream in one task from start to end, so its subscription is entered and left in
    the same task, and hands its events over; an error is handed over in their place."""
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        try:
            async for event in stream:
                await handoff.put(event)
        except Exception as exc:  # the response tells the client and ends
            await handoff.put(exc)
            return
    await handoff.put(_END)


async def _serve(stream: AsyncIterator[Event], expires_at: float) -> AsyncIterator[str]:
    """The response body: heartbeats in silences, an end at token expiry; the stream stops when
    the client disconnects (Starlette cancels this generator, which cancels the pump)."""
    handoff: asyncio.Queue[Any] = asyncio.Queue(HANDOFF)
    pump = asyncio.create_task(_pump(stream, handoff), name="sse-stream")
    last_id: int | None = None
    try:
        yield f"retry: {RETRY_MS}\n: connected\n\n"
        while True:
            remaining = expires_at - time.time()
            if remaining <= 0:
                yield 'event: expired\ndata: {"error":"Token expired"}\n\n'
                return
            try:
                async with asyncio.timeout(min(HEARTBEAT_S, remaining)):
                    item = await handoff.get()
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            if item is _END:
                return
            if isinstance(item, SlowConsumer):
                data = json.dumps({"lastEventId": str(item.after) if item.after is not None else None})
                yield f"event: overflow\ndata: {data}\n\n"
                return
            if isinstance(item, Exception):
                log.error("SSE stream failed", exc_info=item)
                # Not `event: error`, which EventSource also fires for its own connection errors.
                yield 'event: interrupted\ndata: {"error":"Stream interrupted, reconnect"}\n\n'
                return
            last_id = item.id
            yield format_event(item)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        log.debug("SSE stream closed after event %s", last_id)


async def _viewer_expiry(resources: Resources, request: Request) -> float:
    """The token's expiry once it is checked like GraphQL's (session live, VIEW_BELLOWS held)."""
    token = bearer_token(request.headers.get("authorization")) or request.query_params.get("access_token")
    context = context_for(resources, request, token)
    await context.require(Perm.VIEW_BELLOWS)
    assert token is not None
    return float(resources.tokens.verify(token).expires_at)


async def fleet_events(request: Request) -> Response:
    resources: Resources | None = request.app.state.resources_holder.resources
    if resources is None:
        return _refuse(503, "Starting, try again later", {"Retry-After": "1"})
    try:
        expires_at = await _viewer_expiry(resources, request)
        fleet_id = parse_id(request.path_params["fleet_id"], "fleetId")
        # The header wins: an EventSource opened with ?lastEventId= sends a newer id when it reconnects.
        after = parse_after(request.headers.get("last-event-id") or request.query_params.get("lastEventId"))
        (fleet,) = await fleets_by_id(resources.db, [fleet_id])
    except Unauthenticated as exc:
        return _refuse(401, exc.message, {"WWW-Authenticate": "Bearer"})
    except Forbidden as exc:
        return _refuse(403, exc.message)
    except Invalid as exc:
        return _refuse(400, exc.message)
    except Exception:
        log.exception("SSE: could not open the stream")
        return _refuse(503, "Temporarily unavailable, retry", {"Retry-After": "1"})
    if fleet is None:
        return _refuse(404, f"Fleet with id {fleet_id} not found")
    stream = event_stream(
        resources.events,
        resources.db,
        channels.bellows(fleet_id),
        after=after,
        queue_size=resources.settings.ws_queue_size,
    )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_serve(stream, expires_at), media_type="text/event-stream", headers=headers)


def routes() -> list[Route]:
    return [Route("/events/fleet/{fleet_id}", fleet_events, methods=["GET"])]
