"""MQTT connections, the one way: the broker URL parsed once, credentials applied, and connecting
retried with backoff (gmqtt reconnects by itself only once a first connection succeeded)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from gmqtt import Client
from gmqtt.mqtt.constants import UNLIMITED_RECONNECTS, MQTTv50, MQTTv311

log = logging.getLogger("sepulki.mqtt")


def broker_address(url: str) -> tuple[str, int, ssl.SSLContext | bool, str | None, str | None]:
    """mqtt://user:password@host:1883 or mqtts://host:8883 -> host, port, ssl, user, password."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"unsupported MQTT URL scheme {parts.scheme!r} (mqtt:// or mqtts://)")
    secure = parts.scheme in ("mqtts", "ssl")
    port = parts.port or (8883 if secure else 1883)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return (
        parts.hostname or "127.0.0.1",
        port,
        (ssl.create_default_context() if secure else False),
        user,
        password,
    )


def process_client_id(base: str, role: str) -> str:
    """A client id no other process can hold: `<base>-<role>-<pid>-<random>`. Two connections
    with one id make the broker drop the older one, so clients that keep no session (the command
    publisher of every api and worker replica) never share one; the ingest, whose session must
    survive restarts, keeps its stable SEPULKI_MQTT_CLIENT_ID instead."""
    return f"{base}-{role}-{os.getpid()}-{secrets.token_hex(3)}"


def version_of(protocol: int) -> int:
    """gmqtt's protocol constant for 5 (MQTT 5) or 4 (MQTT 3.1.1)."""
    version: int = MQTTv50 if protocol >= 5 else MQTTv311
    return version


async def connect(client: Client, url: str, *, protocol: int = 5, keepalive: int = 60) -> None:
    """One attempt: the URL's credentials on the client, then CONNECT."""
    host, port, tls, user, password = broker_address(url)
    if user is not None:
        client.set_auth_credentials(user, password)
    await client.connect(host, port, ssl=tls, keepalive=keepalive, version=version_of(protocol))


async def connect_with_retry(
    client: Client,
    url: str,
    *,
    protocol: int = 5,
    keepalive: int = 60,
    name: str = "MQTT",
    first_delay: float = 0.2,
    max_delay: float = 10.0,
    attempt_timeout: float = 10.0,
) -> None:
    """Connects, retrying with exponential backoff until it succeeds (cancel to give up)."""
    host, port, *_ = broker_address(url)
    delay = first_delay
    while True:
        try:
            async with asyncio.timeout(attempt_timeout):
                await connect(client, url, protocol=protocol, keepalive=keepalive)
            log.info("%s connected to %s:%s", name, host, port)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - gmqtt raises several kinds; all mean "retry"
            log.warning("%s cannot reach MQTT %s:%s (%s); retrying in %.1fs", name, host, port, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


class Publisher:
    """A publishing MQTT client owned by the process's resources: connects in the background
    (retrying until the broker answers), then gmqtt reconnects it by itself. `on_connect`
    callbacks run on every (re)connection."""

    def __init__(self, url: str, client_id: str, *, protocol: int = 5) -> None:
        self._url = url
        self._protocol = protocol
        self.client = Client(client_id)
        # gmqtt reconnects by itself once connected; only the first connection is ours to retry.
        self.client.set_config({"reconnect_retries": UNLIMITED_RECONNECTS, "reconnect_delay": 2})
        self.client.on_connect = self._connected
        self._callbacks: list[Callable[[], None]] = []
        self._connecting: asyncio.Task[None] | None = None
        self._ever_connected = False

    @property
    def is_connected(self) -> bool:
        return bool(self.client.is_connected)

    def on_connect(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def _connected(self, *_: Any) -> None:
        for callback in self._callbacks:
            callback()

    async def __aenter__(self) -> Publisher:
        self._connecting = asyncio.create_task(self._connect(), name=f"mqtt-connect:{self.client._client_id}")
        return self

    async def _connect(self) -> None:
        await connect_with_retry(
            self.client, self._url, protocol=self._protocol, name="MQTT publisher", max_delay=2.0
        )
        self._ever_connected = True

    async def __aexit__(self, *_: object) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._ever_connected:
            # Also stops gmqtt's own reconnect attempts when the broker is gone.
            try:
                await asyncio.wait_for(self.client.disconnect(), 5)
            except (OSError, TimeoutError) as exc:
                log.warning("MQTT publisher: disconnect failed: %s", exc)
