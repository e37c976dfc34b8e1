"""Execute once, send many: subscription operations share each event's result and its JSON text.

Sockets running the same document (one DocumentNode per query text, from the parse cache) with
the same variables, for viewers of the same role and permissions, share one execution and one
JSON text per event. Fields whose answer depends on who asks, not only on their permissions (a
smith's private fields: their own or, with MANAGE_SMITHS, anyone's), carry `PER_VIEWER` in their
`GraphQLField.extensions` (app.web.directives' `@selfOr`); an operation selecting one whose
permission the viewer lacks shares only with sockets of the same viewer.

The caches are per application, not per process: `SharedEventExecutor.for_app()` returns an
executor class bound to state of its own (tests and embedded mode may run several apps in one
process), and the websocket handler that uses it sends through `EventIdSocket`s of the same state.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from inspect import isawaitable
from typing import Any, ClassVar

import orjson
from graphql import FieldNode, Node, TypeInfo, TypeInfoVisitor, Visitor, visit
from graphql.execution.executor_throwing_on_incremental import ExecutorThrowingOnIncremental
from starlette.websockets import WebSocket

from app.context import Viewer
from app.infra.bus import Event

# The id of the event whose result the current task is about to send: set by the Subscription
# field's resolver (or a shared result), read back by EventIdSocket in the same task.
EVENT_ID: ContextVar[int | None] = ContextVar("sepulki_event_id", default=None)

# The key, in a field's extensions, of the permission under which its answer no longer depends on
# the viewer's identity (without it, each viewer sees only their own value).
PER_VIEWER = "sepulki_per_viewer"


class _SharedResults:
    """The result of one event for one selection, computed by the first operation that needs it
    and reused by the others. Results of the latest `keep` events are kept; a subscriber further
    behind computes its own."""

    def __init__(self, keep: int = 512) -> None:
        self._keep = keep
        self._events: OrderedDict[int, dict[tuple[Any, ...], tuple[Any, asyncio.Future[Any]]]] = OrderedDict()

    def result(self, event_id: int, key: tuple[Any, ...], anchor: Any, compute: Callable[[], Any]) -> Any:
        """The shared (awaitable) result; `anchor` is kept alive so that ids in `key` stay unique."""
        results = self._events.get(event_id)
        if results is None:
            results = self._events[event_id] = {}
            if len(self._events) > self._keep:
                self._events.popitem(last=False)
        entry = results.get(key)
        if entry is None:
            value = compute()
            if not isawaitable(value):
                # Computed at once (no resolver awaited anything): the other sockets take it
                # from `done` without an executor of their own.
                computed = asyncio.get_running_loop().create_future()
                computed.set_result(value)
                results[key] = (anchor, computed)
                return value
            # Its own task: a subscriber leaving mid-execution cannot cancel it for the others.
            entry = results[key] = (anchor, asyncio.ensure_future(_awaited(value)))
        return asyncio.shield(entry[1])

    def done(self, event_id: int, key: tuple[Any, ...]) -> Any:
        """The result when it is already computed (and succeeded), else None."""
        results = self._events.get(event_id)
        entry = results.get(key) if results is not None else None
        if entry is None or not entry[1].done() or entry[1].cancelled() or entry[1].exception():
            return None
        return entry[1].result()


class _Texts:
    """The JSON of a result's `data`, serialised once however many sockets send it (keyed by the
    object, which the entry keeps alive so that its id is not reused)."""

    def __init__(self, keep: int = 512) -> None:
        self._keep = keep
        self._texts: OrderedDict[int, tuple[Any, str]] = OrderedDict()

    def __call__(self, data: Any) -> str:
        cached = self._texts.get(id(data))
        if cached is not None and cached[0] is data:
            return cached[1]
        text = orjson.dumps(data).decode()
        self._texts[id(data)] = (data, text)
        if len(self._texts) > self._keep:
            self._texts.popitem(last=False)
        return text


async def _awaited(value: Any) -> Any:
    return await value if isawaitable(value) else value


class _Ready:
    """A per-event "executor" whose result another operation already computed."""

    __slots__ = ("_result",)

    def __init__(self, result: Any) -> None:
        self._result = result

    def execute_operation(self, serially: bool | None = None) -> Any:
        return self._result


_UNKNOWN: Any = object()


class SharedEventExecutor(ExecutorThrowingOnIncremental):
    """The executor of subscription operations: notes each event's id for `extensions.eventId`
    and shares per-event results between identical operations. Use a class from `for_app()`."""

    results: ClassVar[_SharedResults]
    texts: ClassVar[_Texts]
    # Whether a document selects viewer-dependent fields a set of permissions lacks, per
    # (operation, permissions): thousands of dashboards subscribe with the same few documents.
    per_viewer: ClassVar[dict[tuple[int, frozenset[Any]], tuple[Node, bool]]]
    _share_key: Any = _UNKNOWN

    @classmethod
    def for_app(cls) -> type[SharedEventExecutor]:
        """An executor class with caches of its own, for one application."""
        return type(cls.__name__, (cls,), {"results": _SharedResults(), "texts": _Texts(), "per_viewer": {}})

    def _key(self) -> tuple[Any, ...] | None:
        """What makes two operations' results identical; None when this one shares nothing."""
        if self._share_key is _UNKNOWN:
            # The viewer was loaded when the subscription's permission was checked.
            viewer = getattr(self.context_value, "_viewer", None)
            key: tuple[Any, ...] | None = None
            if isinstance(viewer, Viewer):
                variables = tuple(sorted(self.variable_values.coerced.items()))
                key = (id(self.operation), variables, viewer.role, viewer.permissions)
                if self._selects_per_viewer_fields(viewer):
                    key = (*key, viewer.id)
                try:
                    hash(key)
                except TypeError:  # an input object among the variables
                    key = None
            self._share_key = key
        return self._share_key  # type: ignore[no-any-return]

    def _selects_per_viewer_fields(self, viewer: Viewer) -> bool:
        """Whether the operation (its fragments included) selects a field that answers this
        viewer differently from others of the same permissions. Once per document and set of
        permissions (the operation node is kept with the answer, so its id stays its own)."""
        cache = self.per_viewer
        key = (id(self.operation), viewer.permissions)
        known = cache.get(key)
        if known is not None and known[0] is self.operation:
            return known[1]
        found = self._visit_per_viewer_fields(viewer)
        if len(cache) >= 1024:
            cache.clear()
        cache[key] = (self.operation, found)
        return found

    def _visit_per_viewer_fields(self, viewer: Viewer) -> bool:
        type_info = TypeInfo(self.schema)
        found: list[bool] = []

        class PerViewer(Visitor):
            def enter_field(self, node: FieldNode, *_: Any) -> None:
                field = type_info.get_field_def()
                perm = field.extensions.get(PER_VIEWER) if field is not None else None
                if perm is not None and not viewer.can(perm):
                    found.append(True)

        nodes: list[Node] = [self.operation, *(f.definition for f in self.fragments.values())]
        for node in nodes:
            visit(node, TypeInfoVisitor(type_info, PerViewer()))
        return bool(found)

    def build_per_event_executor(self, payload: Any) -> Any:
        if isinstance(payload, Event):
            key = self._key()
            if key is not None:
                done = self.results.done(payload.id, key)
                if done is not None:
                    # Computed for another socket: no copy of the executor, no execution.
                    EVENT_ID.set(payload.id)
                    return _Ready(done)
        return super().build_per_event_executor(payload)

    def execute_operation(self, serially: bool | None = None) -> Any:
        event = self.root_value
        if not isinstance(event, Event):
            return super().execute_operation(serially)
        EVENT_ID.set(event.id)
        key = self._key()
        if key is None:
            return super().execute_operation(serially)
        compute = super().execute_operation
        return self.results.result(event.id, key, self.operation, lambda: compute(serially))


class EventIdSocket:
    """The operation's websocket as Ariadne's result loop sees it: each `next` message gets the
    id of the event it answers in `payload.extensions.eventId`, and a shared result is sent as
    the JSON text serialised once for all sockets."""

    __slots__ = ("_texts", "_websocket")

    def __init__(self, websocket: WebSocket, executor: type[SharedEventExecutor]) -> None:
        self._websocket = websocket
        self._texts = executor.texts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._websocket, name)

    async def send_json(self, message: dict[str, Any]) -> None:
        event_id = EVENT_ID.get()
        if event_id is None or message.get("type") != "next":
            await self._websocket.send_json(message)
            return
        EVENT_ID.set(None)
        payload = message["payload"]
        if payload.keys() == {"data"}:
            text = (
                f'{{"type":"next","id":{orjson.dumps(message["id"]).decode()},"payload":{{"data":'
                f'{self._texts(payload["data"])},"extensions":{{"eventId":"{event_id}"}}}}}}'
            )
            await self._websocket.send_text(text)
            return
        payload["extensions"] = {**payload.get("extensions", {}), "eventId": str(event_id)}
        await self._websocket.send_json(message)
