"""The MQTT consumer of robot messages: gmqtt, acknowledging each message only after its batch commit.

- MQTT 5 (Mosquitto, EMQX): `optimistic_acknowledgement=False`, and the PUBACK of a QoS 1 message
  goes out from its batch's commit (`Pipeline.enqueue`'s future). A crash before that leaves the
  message unacknowledged and the broker delivers it again, where its key makes it a duplicate.
  Workers share the load with `$share/sepulki/...` subscriptions.
- gmqtt runs an `async def on_message` as a task per message and sends the PUBACK when it returns;
  at 10,000+ messages/s that task is a tenth of the worker's CPU, so QoS 1 messages are taken from
  gmqtt's packet handler directly (`_receive_qos1`, reading gmqtt 0.8 internals like `_flow`) and
  only QoS 0 ones go through `on_message`.
- Persistent session: a stable client id, clean start off and a session expiry, so what robots
  publish while the worker restarts is queued by the broker, not lost.
- gmqtt does not subscribe again after a reconnect: `on_connect` subscribes every time.
- Status topics are subscribed without `$share`: a broker never sends retained messages to a shared
  subscription, and the retained status is how a worker learns robots' states on start. Every worker
  then sees each status message; its content key stores it once.
- MQTT 3.1.1 (the embedded amqtt broker of `sepulki dev`): plain topics, and gmqtt acknowledges on
  receipt there (3.1.1 has no way to delay it), so the no-loss guarantee is for MQTT 5 brokers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from gmqtt import Client, Subscription

from app.infra.mqtt import connect, connect_with_retry
from app.ingest.messages import RawMessage, parse_topic
from app.ingest.pipeline import Pipeline
from app.settings import Settings

log = logging.getLogger("sepulki.ingest.mqtt")

SHARE_GROUP = "sepulki"
# How long the broker keeps the session (and queues messages for it) while the worker is away.
SESSION_EXPIRY_S = 7 * 24 * 3600
KEEPALIVE_S = 30
RECONNECT_DELAY_S = 1
# On stop, how long messages already received may take to commit before the worker disconnects.
DRAIN_TIMEOUT_S = 10.0
SHARED_TOPICS = ("robots/+/telemetry", "robots/+/events", "robots/+/commands/ack")
STATUS_TOPIC = "robots/+/status"


class StaleDelivery(RuntimeError):
    """The connection a message came on is gone: its PUBACK must not go out on the new connection,
    where the broker delivers the message again (with the same packet id, or a reused one)."""


def topic_filters(protocol: int, share_group: str = SHARE_GROUP, *, shared: bool = True) -> list[str]:
    """`$share/<group>/...` splits the robots' topics between the workers of a group (MQTT 5);
    plain topics (`shared=False`, or MQTT 3.1.1) give this worker every message."""
    if protocol >= 5 and shared:
        return [f"$share/{share_group}/{topic}" for topic in SHARED_TOPICS] + [STATUS_TOPIC]
    return [*SHARED_TOPICS, STATUS_TOPIC]


class MqttIngest:
    """Consumes robot topics into the pipeline until stopped; reconnects on its own."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        *,
        client_id: str | None = None,
        share_group: str = SHARE_GROUP,
        receive_maximum: int | None = None,
        persistent: bool | None = None,
    ) -> None:
        if settings.mqtt_url is None:
            raise ValueError("SEPULKI_MQTT_URL is required for MQTT ingest")
        self._url = settings.mqtt_url
        self._protocol = settings.mqtt_protocol
        self._pipeline = pipeline
        # Exclusive: a plain persistent subscription, which Mosquitto 2.0 restores from its
        # persistence file after a restart (it does not write shared ones there): robots that
        # reconnect before the worker lose nothing (docs/ingest.md, "Broker restarts").
        self._filters = topic_filters(
            settings.mqtt_protocol, share_group, shared=settings.mqtt_subscription == "shared"
        )
        # Messages in flight (received, not yet acknowledged): several batches' worth keeps the
        # writer busy and bounds what this process holds. Announced as Receive Maximum, and
        # enforced by `_flow` since Mosquitto 2.0 does not keep to it.
        window = receive_maximum or min(65535, max(100, 4 * settings.ingest_batch_size))
        self._window = window
        # The test suite shares one broker between many short-lived apps: a session kept by each
        # would stay in the `$share` group, and Mosquitto routes a share of messages to offline
        # members until their sessions expire. Tests that need persistence pass persistent=True.
        if persistent is None:
            persistent = settings.env != "test"
        self.client = Client(
            client_id or settings.mqtt_client_id,
            clean_session=not persistent,
            optimistic_acknowledgement=False,
            session_expiry_interval=SESSION_EXPIRY_S if persistent else 0,
            receive_maximum=window,
        )
        self.client.set_config({"reconnect_delay": RECONNECT_DELAY_S})
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self._handler = self.client._package_handler
        self._handler._handle_qos_1_publish_packet = self._receive_qos1
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.subscribed = asyncio.Event()
        self._generation = 0
        self._inflight = 0
        self._stopping = False
        self._paused = False
        self._idle = asyncio.Event()
        self._connecting: asyncio.Task[None] | None = None

    @property
    def is_connected(self) -> bool:
        """Connected and subscribed: messages flow to this worker."""
        return bool(self.client.is_connected) and self.subscribed.is_set()

    async def __aenter__(self) -> MqttIngest:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connects in the background: the process starts even while the broker is still down."""
        self._connecting = asyncio.create_task(self._connect(), name="mqtt-ingest-connect")

    async def stop(self) -> None:
        """Stops reading, lets the messages already received commit and be acknowledged, then
        disconnects. The session stays on the broker: what arrives meanwhile waits for the next start."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if not self.client.is_connected:
            return
        self._stopping = True
        self._flow(pause=True)
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    await self._idle.wait()
        if self._inflight:
            log.warning(
                "MQTT ingest: %d messages not acknowledged at shutdown (redelivered later)", self._inflight
            )
        await self.client.disconnect()

    async def _connect(self) -> None:
        await connect_with_retry(
            self.client, self._url, protocol=self._protocol, keepalive=KEEPALIVE_S, name="MQTT ingest"
        )

    def _flow(self, *, pause: bool) -> None:
        """TCP backpressure: Mosquitto 2.0 keeps sending past our Receive Maximum once PUBACKs
        flow (measured: 110 messages in flight for a window of 10), so the window is enforced by
        not reading the socket; the broker queues the rest (max_queued_messages)."""
        connection = self.client._connection
        transport = getattr(connection, "_transport", None)
        if transport is None or transport.is_closing():
            return
        if pause:
            if not self._paused:
                self._paused = True
                self._pipeline.metrics.mqtt_read_pauses += 1
            if transport.is_reading():
                transport.pause_reading()
            # gmqtt reads through an asyncio.StreamReader, which pauses the transport itself when
            # its buffer is full and resumes it once drained, which would undo this pause: it is
            # told it has not paused, so the resume stays ours.
            reader = getattr(getattr(connection, "_protocol", None), "_stream_reader", None)
            if reader is not None and getattr(reader, "_paused", False):
                reader._paused = False
        elif self._paused and not self._stopping:
            self._paused = False
            transport.resume_reading()

    def _on_connect(self, client: Client, _flags: int, rc: int, _properties: dict[str, Any]) -> None:
        self._generation += 1
        self._paused = False  # a new socket, read from the start
        self._pipeline.metrics.mqtt_connects += 1
        log.info("MQTT ingest connected (rc=%s); subscribing to %s", rc, ", ".join(self._filters))
        client.subscribe([Subscription(topic, qos=1) for topic in self._filters])

    def _on_subscribe(self, _client: Client, _mid: int, _qos: Any, _properties: Any) -> None:
        self.subscribed.set()

    def _on_disconnect(self, _client: Client, _packet: Any, _exc: Any = None) -> None:
        self._generation += 1
        self.subscribed.clear()
        self._pipeline.metrics.mqtt_disconnects += 1
        log.info("MQTT ingest disconnected")

    def _admit(self, topic: str, payload: bytes) -> asyncio.Future[Any] | None:
        """The message into the pipeline; None when there is nothing to store (an empty retained
        status is how a retained status is cleared, for a retired robot)."""
        parsed = parse_topic(topic)
        robot_id, kind = parsed if parsed is not None else ("", "unknown")
        if not payload and kind == "status":
            return None
        stored = self._pipeline.enqueue([RawMessage("mqtt", topic, robot_id, kind, payload)])
        self._inflight += 1
        self._idle.clear()
        if self._inflight >= self._window:
            self._flow(pause=True)
        stored.add_done_callback(self._settled)
        return stored

    def _settled(self, _stored: asyncio.Future[Any]) -> None:
        self._inflight -= 1
        if not self._inflight:
            self._idle.set()
        if self._inflight <= self._window // 2:
            self._flow(pause=False)

    def _receive_qos1(self, mid: int, payload: bytes, topic: str, _properties: dict[str, Any]) -> None:
        """gmqtt's handler of a QoS 1 PUBLISH: PUBACK once the message's batch has committed."""
        generation = self._generation
        if self._handler._optimistic_acknowledgement:  # gmqtt's choice below MQTT 5
            self._handler._send_puback(mid)
            self._admit(topic, payload)
            return
        stored = self._admit(topic, payload)
        if stored is None:
            self._handler._send_puback(mid)
            return

        def acknowledge(stored: asyncio.Future[Any]) -> None:
            # Not stored (the pipeline stopped): no PUBACK, the broker delivers it again. Stored
            # but the connection replaced meanwhile: the broker delivers it again on the new one
            # (a duplicate then), and a PUBACK there could acknowledge another message.
            if stored.cancelled() or stored.exception() is not None or generation != self._generation:
                return
            self._handler._send_puback(mid)

        stored.add_done_callback(acknowledge)

    async def _on_message(
        self, _client: Client, topic: str, payload: bytes, _qos: int, _properties: dict[str, Any]
    ) -> int:
        """QoS 0 messages: nothing to acknowledge."""
        generation = self._generation
        stored = self._admit(topic, payload)
        if stored is not None:
            await stored
        if generation != self._generation:
            raise StaleDelivery(f"connection replaced while storing a message of {topic}")
        return 0


async def forget_session(url: str, client_id: str, protocol: int = 5) -> None:
    """Ends a worker's persistent session on the broker: use it when retiring a worker for good.
    Mosquitto keeps routing a share of `$share` messages to an offline member of the group until its
    session expires; a session ended this way leaves the group at once."""
    client = Client(client_id, clean_session=True, session_expiry_interval=0)
    await connect(client, url, protocol=protocol, keepalive=KEEPALIVE_S)
    await client.disconnect()
