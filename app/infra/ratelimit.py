"""Rate limits and login lockout, counted by `limits` (memory in one process, Redis across
replicas), in windows that slide so a burst at a window's edge cannot double the allowance.

Login and mail rules use moving windows (one stored entry per attempt: exact, and their limits
are small). The per-address request budget (`request_ip`) is a sliding-window counter: two
counters per address whatever the limit, one constant-time update per request, with the previous
window's count weighted by how much of it still overlaps; an exact log of every request of
every address would cost memory and time in proportion to the limit.

Degraded mode (docs/security.md): when the shared storage (Redis) fails, counting goes on in this
process's memory at half of every limit (at least 1), so a login or a request never fails because
Redis is down. The first failure of an outage logs one warning; the storage is tried again every
`SEPULKI_RATE_LIMIT_RETRY_S` seconds (by one call; the others keep counting locally) and by every
`storage_state()` (`/health`); the first answer logs once and the shared limits apply again. A
lock counted in memory during an outage keeps holding after it until its window passes."""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.aio.strategies import RateLimiter as Strategy
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.core.errors import RateLimited
from app.settings import Settings

log = logging.getLogger("sepulki.ratelimit")

# A command to Redis waits at most this long to connect and again for its answer; one immediate
# retry covers a pooled connection that died with a Redis restart. (redis-py's default, three
# retries with backoff from 1 s, would hold a login for seconds while Redis is down.)
REDIS_TIMEOUT_S = 1.0

StorageState = Literal["ok", "down"]
# What one limiter call does with a strategy: answers the seconds to wait, or None.
_Op = Callable[[Strategy, RateLimitItem, str, str], Awaitable[float | None]]
# Rules counted by a sliding-window counter instead of a moving window (see above).
COUNTER_RULES = frozenset({"request_ip"})


class _MemoryStorage(MemoryStorage):
    """limits' in-process storage with its expiry sweep run at most once a second, in the loop.

    Upstream starts a sweep task on every hit whose previous sweep finished, and that sweep
    sends each key's bisect to a worker thread (`asyncio.to_thread`): with one request in
    flight at a time that is a task and a thread hop per request. The sweep only frees memory
    (a hit decides by the entries' own times), so once a second is enough, and a bisect over
    one key's entries is microseconds: it runs inline, between two awaits, so no other
    coroutine sees a half-swept list."""

    SWEEP_EVERY_S = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # the hook upstream calls per hit
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_EVERY_S
            self._sweep()

    def _sweep(self) -> None:
        now = time.time()
        for key, events in list(self.events.items()):
            # Newest first: the entries still in their window are a prefix.
            kept = events[: bisect.bisect_left(events, -now, key=lambda event: -event.expiry)]
            if kept:
                self.events[key] = kept
            else:
                self.events.pop(key, None)
                self.locks.pop(key, None)
        for key, expiry in list(self.expirations.items()):
            if expiry <= now:
                self.storage.pop(key, None)
                self.expirations.pop(key, None)
                self.locks.pop(key, None)


def storage_url(settings: Settings) -> str:
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    if settings.broadcast_url.startswith(("redis://", "rediss://")):
        return "async+" + settings.broadcast_url
    return "async+memory://"


def _key(value: str) -> str:
    # Identifiers end up as Redis keys: hashed, so no email or address is stored in clear.
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


def _strategies(storage: Storage, rules: Iterable[str]) -> dict[str, Strategy]:
    """Each rule's strategy over one storage."""
    moving, counter = MovingWindowRateLimiter(storage), SlidingWindowCounterRateLimiter(storage)
    return {name: counter if name in COUNTER_RULES else moving for name in rules}


def _halved(item: RateLimitItem) -> RateLimitItem:
    return type(item)(max(1, item.amount // 2), item.multiples, item.namespace)


async def _wait(strategy: Strategy, item: RateLimitItem, rule: str, key: str) -> float:
    stats = await strategy.get_window_stats(item, rule, key)
    return max(1.0, stats.reset_time - time.time())


async def _hit(strategy: Strategy, item: RateLimitItem, rule: str, key: str) -> float | None:
    if await strategy.hit(item, rule, key):
        return None
    return await _wait(strategy, item, rule, key)


async def _test(strategy: Strategy, item: RateLimitItem, rule: str, key: str) -> float | None:
    if await strategy.test(item, rule, key):
        return None
    return await _wait(strategy, item, rule, key)


async def _clear(strategy: Strategy, item: RateLimitItem, rule: str, key: str) -> None:
    await strategy.clear(item, rule, key)


class RateLimiter:
    """Named rules from the settings (`login_ip`, `login_account`, `login_lockout`, `mail_ip`,
    `mail_account`, `request_ip`); an empty or "0" rule never limits."""

    def __init__(self, settings: Settings) -> None:
        url = storage_url(settings)
        rules: dict[str, str] = {
            "login_ip": settings.login_rate_limit_ip,
            "login_account": settings.login_rate_limit_account,
            "login_lockout": settings.login_lockout,
            "mail_ip": settings.mail_rate_limit_ip,
            "mail_account": settings.mail_rate_limit_account,
            "request_ip": settings.request_rate_limit_ip,
        }
        self._rules: dict[str, RateLimitItem | None] = {
            name: parse(rule) if rule.strip() not in {"", "0"} else None for name, rule in rules.items()
        }
        self._storage: Storage | None = None
        self._shared: dict[str, Strategy] | None = None
        if not url.startswith("async+memory"):
            options: dict[str, Any] = {"wrap_exceptions": True}
            if "redis" in url:
                options |= {
                    "implementation": "redispy",
                    "socket_connect_timeout": REDIS_TIMEOUT_S,
                    "socket_timeout": REDIS_TIMEOUT_S,
                    "retry": Retry(NoBackoff(), 1),
                }
            storage = storage_from_string(url, **options)
            if not isinstance(storage, Storage):
                raise ValueError("SEPULKI_RATE_LIMIT_STORAGE_URL must name an asyncio storage (async+...)")
            self._storage = storage
            self._shared = _strategies(storage, self._rules)
        # Memory: the only storage, or the fallback of the shared one at half the limits.
        self._local = _strategies(_MemoryStorage(), self._rules)
        self._local_rules = {
            name: _halved(item) if item is not None and self._shared is not None else item
            for name, item in self._rules.items()
        }
        self._retry_s = settings.rate_limit_retry_s
        self._down_since: float | None = None
        self._next_try = 0.0
        # Memory holds counts of an outage (a lock among them) that still apply after it.
        self._outage_counts = False

    async def retry_after(self, rule: str, key: str) -> float | None:
        """Seconds until `key` may try again under `rule`; None when it may now."""
        return await self._ask(rule, key, _test, with_outage_counts=True)

    async def hit(self, rule: str, key: str, message: str = "Too many requests") -> None:
        """Counts one attempt; raises `RateLimited` when `key` has none left under `rule`."""
        wait = await self._ask(rule, key, _hit)
        if wait is not None:
            raise RateLimited(message, retry_after=wait)

    async def check(self, rule: str, key: str, message: str = "Too many requests") -> None:
        """Raises `RateLimited` when `key` has no attempt left under `rule`, without counting one."""
        wait = await self.retry_after(rule, key)
        if wait is not None:
            raise RateLimited(message, retry_after=wait)

    async def clear(self, rule: str, key: str) -> None:
        await self._ask(rule, key, _clear, with_outage_counts=True)

    @property
    def degraded(self) -> bool:
        """True while the shared storage is failing and limits count in this process."""
        return self._down_since is not None

    async def storage_state(self) -> StorageState | None:
        """Whether the shared storage answers a ping now ("ok"/"down"; None when counts live in
        memory only); the answer moves the limiter in or out of degraded mode like any call."""
        if self._storage is None:
            return None
        try:
            async with asyncio.timeout(2 * REDIS_TIMEOUT_S):
                answered = await self._storage.check()
        except (StorageError, OSError):  # TimeoutError is an OSError
            answered = False
        if answered:
            self._back()
            return "ok"
        self._lost("no answer to a ping")
        return "down"

    # -- the shared storage, or memory while it fails ------------------------------------------

    async def _ask(self, rule: str, key: str, op: _Op, *, with_outage_counts: bool = False) -> float | None:
        item = self._rules[rule]
        if item is None:
            return None
        hashed = _key(key)
        local_item = self._local_rules[rule]
        assert local_item is not None
        if self._shared is not None and self._shared_turn():
            try:
                wait = await op(self._shared[rule], item, rule, hashed)
            except (StorageError, OSError) as exc:
                self._lost(f"{type(exc.__cause__ or exc).__name__}: {exc}")
            else:
                self._back()
                if not (with_outage_counts and self._outage_counts):
                    return wait
                local = await op(self._local[rule], local_item, rule, hashed)
                return max(wait, local) if wait is not None and local is not None else wait or local
        return await op(self._local[rule], local_item, rule, hashed)

    def _shared_turn(self) -> bool:
        """Whether this call goes to the shared storage: always while it works; during an outage
        one call per retry interval."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now < self._next_try:
            return False
        self._next_try = now + self._retry_s
        return True

    def _lost(self, reason: str) -> None:
        self._next_try = time.monotonic() + self._retry_s
        if self._shared is not None:
            self._outage_counts = True
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "rate-limit storage unavailable (%s): limits count in this process at half until it "
                "answers (tried again every %g s)",
                reason,
                self._retry_s,
            )

    def _back(self) -> None:
        if self._down_since is not None:
            log.warning(
                "rate-limit storage answers again after %.0f s: the shared limits apply",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
