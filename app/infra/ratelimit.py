"""Rate limits and login lockout, counted by `limits` (memory in one process, Redis across
replicas), with moving windows so a burst at a window's edge cannot double the allowance."""

from __future__ import annotations

import hashlib
import time

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from app.core.errors import RateLimited
from app.settings import Settings


def storage_url(settings: Settings) -> str:
    if settings.rate_limit_storage_url:
        return settings.rate_limit_storage_url
    if settings.broadcast_url.startswith(("redis://", "rediss://")):
        return "async+" + settings.broadcast_url
    return "async+memory://"


def _key(value: str) -> str:
    # Identifiers end up as Redis keys: hashed, so no email or address is stored in clear.
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


class RateLimiter:
    """Named rules from the settings (`login_ip`, `login_account`, `login_lockout`, `mail_ip`,
    `mail_account`, `request_ip`); an empty or "0" rule never limits."""

    def __init__(self, settings: Settings) -> None:
        url = storage_url(settings)
        options = {"implementation": "redispy"} if "redis" in url else {}
        self._storage = storage_from_string(url, **options)
        self._strategy = MovingWindowRateLimiter(self._storage)
        rules = {
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

    async def retry_after(self, rule: str, key: str) -> float | None:
        """Seconds until `key` may try again under `rule`; None when it may now."""
        item = self._rules[rule]
        if item is None or await self._strategy.test(item, rule, _key(key)):
            return None
        stats = await self._strategy.get_window_stats(item, rule, _key(key))
        return max(1.0, stats.reset_time - time.time())

    async def hit(self, rule: str, key: str, message: str = "Too many requests") -> None:
        """Counts one attempt; raises `RateLimited` when `key` has none left under `rule`."""
        item = self._rules[rule]
        if item is None or await self._strategy.hit(item, rule, _key(key)):
            return
        stats = await self._strategy.get_window_stats(item, rule, _key(key))
        raise RateLimited(message, retry_after=max(1.0, stats.reset_time - time.time()))

    async def check(self, rule: str, key: str, message: str = "Too many requests") -> None:
        """Raises `RateLimited` when `key` has no attempt left under `rule`, without counting one."""
        wait = await self.retry_after(rule, key)
        if wait is not None:
            raise RateLimited(message, retry_after=wait)

    async def clear(self, rule: str, key: str) -> None:
        item = self._rules[rule]
        if item is not None:
            await self._strategy.clear(item, rule, _key(key))
