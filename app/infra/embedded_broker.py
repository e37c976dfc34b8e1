"""The embedded MQTT broker of `sepulki dev`: amqtt, in the application's event loop.

DEVELOPMENT ONLY. It listens on loopback TCP only and lets anyone connect without a password;
it keeps sessions and retained messages in memory. amqtt speaks MQTT 3.1.1 only and has no
shared subscriptions (`$share/...`), so in dev the ingest connects with 3.1.1 and plain topics,
and the zero-loss guarantee (ack after commit) holds only on an MQTT 5 broker (Mosquitto, EMQX).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("sepulki.broker")

DEFAULT_PORT = 1883


def broker_config(port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        # Replaces amqtt's defaults, which also log every packet and publish $SYS topics.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


def port_of(mqtt_url: str | None) -> int:
    parts = urlsplit(mqtt_url or "")
    return parts.port or DEFAULT_PORT


@functools.cache
def _broker_class() -> type[Any]:
    from amqtt.broker import Broker  # only the dev process needs it

    class DevBroker(Broker):
        """amqtt 0.12.1 offers a connecting client the retained messages of every topic filter
        anyone subscribed (`_handle_client_session` loops over all subscriptions), and the awaits
        in that loop let a concurrent SUBSCRIBE break it ("dictionary changed size during
        iteration", the connection dropped). A client gets retained messages of its own filters only."""

        async def _publish_retained_messages_for_subscription(
            self, subscription: tuple[str, int], session: Any
        ) -> None:
            subscribers = self._subscriptions.get(subscription[0], ())
            if any(subscriber.client_id == session.client_id for subscriber, _qos in subscribers):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return DevBroker


@contextlib.asynccontextmanager
async def running_broker(port: int) -> AsyncIterator[Any]:
    """An amqtt broker on 127.0.0.1:`port` until the block exits."""
    from amqtt.errors import BrokerError

    Broker = _broker_class()  # noqa: N806 - a class

    for name in ("amqtt", "transitions"):  # one INFO line per packet and state change otherwise
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)
    broker = Broker(broker_config(port))
    try:
        await broker.start()
    except BrokerError as exc:
        raise RuntimeError(
            f"the embedded MQTT broker cannot listen on 127.0.0.1:{port} ({exc.__cause__ or exc}): "
            "set SEPULKI_MQTT_PORT to another port, or SEPULKI_MQTT_URL to use a running broker"
        ) from exc
    log.info("embedded MQTT broker (amqtt, MQTT 3.1.1, anonymous, development only) on 127.0.0.1:%d", port)
    try:
        yield broker
    finally:
        await broker.shutdown()
