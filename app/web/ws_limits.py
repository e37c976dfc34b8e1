"""What one client may hold on the websocket endpoint of this process: messages per second per
socket (a token bucket), sockets per IP and per smith, subscriptions per socket and per smith.
AuthenticatingWSHandler (app/web/websocket.py) asks; docs/security.md gives the rules."""

from __future__ import annotations

import time
from collections import Counter

from app.settings import Settings

TOO_MANY_CONNECTIONS = "Too many connections"
TOO_MANY_MESSAGES = "Too many messages"
# Close code of a socket refused by a cap or the message rate; graphql-ws clients do not retry it.
CLOSE_TOO_MANY = 4429


class TokenBucket:
    """`burst` messages at once, refilled at `rate` per second; rate 0 never refuses."""

    __slots__ = ("_burst", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self) -> bool:
        if not self._rate:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class SocketState:
    """One socket's share of the limits, kept in its scope."""

    __slots__ = ("active_at", "bucket", "ip", "smith_id", "subscriptions")

    def __init__(self, ip: str, bucket: TokenBucket) -> None:
        self.ip = ip
        self.bucket = bucket
        self.smith_id: str | None = None
        self.subscriptions = 0
        # When the socket last sent a subscribe message (the anonymous idle timer reads it).
        self.active_at = time.monotonic()


class SocketLimits:
    """The counters of one websocket handler (one per app, so per process in production).
    Every cap of 0 is off. Each `admit_*`/`reserve_*` that returns True is undone once by the
    matching `release_*`."""

    def __init__(self, settings: Settings) -> None:
        self.rate = settings.ws_message_rate
        self.burst = settings.ws_message_burst
        self.sockets_per_ip = settings.ws_max_sockets_per_ip
        self.sockets_per_smith = settings.ws_max_sockets_per_smith
        self.subscriptions_per_socket = settings.ws_max_subscriptions_per_socket
        self.subscriptions_per_smith = settings.ws_max_subscriptions_per_smith
        self._ips: Counter[str] = Counter()
        self._smith_sockets: Counter[str] = Counter()
        self._smith_subscriptions: Counter[str] = Counter()
        # Open sockets and running subscriptions of this handler (GET /metrics reads them).
        self.sockets = 0
        self.subscriptions = 0

    def admit_socket(self, ip: str) -> SocketState | None:
        """The new socket's state, or None when its IP holds the most sockets allowed."""
        if self.sockets_per_ip and self._ips[ip] >= self.sockets_per_ip:
            return None
        self._ips[ip] += 1
        self.sockets += 1
        return SocketState(ip, TokenBucket(self.rate, self.burst))

    def release_socket(self, state: SocketState) -> None:
        _decrement(self._ips, state.ip)
        self.sockets -= 1
        if state.smith_id is not None:
            _decrement(self._smith_sockets, state.smith_id)
            state.smith_id = None

    def admit_smith(self, state: SocketState, smith_id: str) -> bool:
        """Files the socket under its smith; False when the smith holds the most sockets allowed."""
        if self.sockets_per_smith and self._smith_sockets[smith_id] >= self.sockets_per_smith:
            return False
        self._smith_sockets[smith_id] += 1
        state.smith_id = smith_id
        return True

    def reserve_subscription(self, state: SocketState) -> str | None:
        """Takes a subscription slot; the refusal's message when the socket or its smith has none."""
        if self.subscriptions_per_socket and state.subscriptions >= self.subscriptions_per_socket:
            return f"A socket may run {self.subscriptions_per_socket} subscriptions at once"
        smith = state.smith_id
        if smith is not None and self.subscriptions_per_smith:
            if self._smith_subscriptions[smith] >= self.subscriptions_per_smith:
                return f"An account may run {self.subscriptions_per_smith} subscriptions at once"
        state.subscriptions += 1
        self.subscriptions += 1
        if smith is not None:
            self._smith_subscriptions[smith] += 1
        return None

    def release_subscription(self, state: SocketState, smith_id: str | None) -> None:
        """`smith_id`: the smith the slot was reserved under (the socket may have lost it since)."""
        state.subscriptions -= 1
        self.subscriptions -= 1
        if smith_id is not None:
            _decrement(self._smith_subscriptions, smith_id)


def _decrement(counter: Counter[str], key: str) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]
