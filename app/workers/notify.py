"""The notification outbox's delivery side: e-mails through the mailer, webhook calls over HTTP.

Rows are claimed with SKIP LOCKED and a lease (app.webhooks.CLAIM), delivered outside any
transaction, then marked. Several workers split the queue; a worker killed mid-delivery leaves
its rows leased, and once the lease runs out another delivers them again (at least once: the
delivery id in X-Sepulki-Delivery lets a receiver drop the copy). Wakes on NOTIFY
notification_deliveries (sent with the rows' commit) and every SEPULKI_NOTIFY_POLL_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
import httpx
import orjson

from app import webhooks
from app.infra import db
from app.infra.mail import MailError
from app.resources import Resources
from app.workers.commands import OwnConnection
from app.workers.running import running

log = logging.getLogger("sepulki.notify")

BATCH = 50
NOTIFY_CHANNEL = "notification_deliveries"
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Notifier:
    def __init__(self, resources: Resources) -> None:
        self._resources = resources
        self._settings = resources.settings
        self._wake = asyncio.Event()
        self._conn = OwnConnection(resources, self._opened)
        self._http = httpx.AsyncClient(timeout=self._settings.webhook_timeout_s, follow_redirects=False)
        self.delivered = 0

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _opened(self, conn: db.Connection) -> None:
        await conn.add_listener(NOTIFY_CHANNEL, self._notified)
        conn.add_termination_listener(self._notified)

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    await self.drain()
                except _DB_ERRORS as exc:
                    log.warning("notification worker: %s; reconnecting", exc)
                    await self._conn.close()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
                # that arrives as the wake-up does, and the loop would then outlive its shutdown.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._settings.notify_poll_s):
                        await self._wake.wait()
        finally:
            await self._conn.close()
            await self._http.aclose()

    async def drain(self) -> None:
        while True:
            conn = await self._conn.get()
            rows = await webhooks.claim(conn, BATCH, self._settings.notify_lease_s)
            if not rows:
                return
            results = await asyncio.gather(*(self._deliver(row) for row in rows))
            s = self._settings
            retry = (
                s.notify_max_attempts,
                s.notify_backoff_s,
                s.notify_backoff_max_s,
                s.webhook_disable_after,
            )
            for row, (ok, status, error, ms) in zip(rows, results, strict=True):
                await webhooks.finish(
                    conn, row, ok=ok, status=status, error=error, duration_ms=ms, retry=retry
                )
                self.delivered += ok
            if len(rows) < BATCH:
                return

    async def _deliver(self, row: dict[str, Any]) -> tuple[bool, int | None, str | None, float]:
        started = time.perf_counter()
        ok, status, error = False, None, None
        payload = row["payload"]
        try:
            if row["channel"] == "EMAIL":
                await self._resources.mailer.send(payload["to"], payload["subject"], payload["body"])
                ok = True
            else:
                status = await self._call(row, payload)
                ok = 200 <= status < 300
                error = None if ok else f"HTTP {status}"
        except MailError as exc:
            error = str(exc)[:500]
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if not ok:
            log.warning(
                "notification %s (%s) attempt %d failed: %s",
                row["id"],
                row["channel"],
                row["attempts"],
                error,
            )
        return ok, status, error, (time.perf_counter() - started) * 1000

    async def _call(self, row: dict[str, Any], payload: Any) -> int:
        hook = row["webhook"]
        body = orjson.dumps(payload)
        headers = {
            "content-type": "application/json",
            "user-agent": "sepulki-webhooks/1",
            "x-sepulki-event": row["event"],
            "x-sepulki-delivery": str(row["id"]),
            "x-sepulki-signature": webhooks.sign(hook["secret"], body),
        }
        response = await self._http.post(hook["url"], content=body, headers=headers)
        return response.status_code


def notifier(resources: Resources) -> contextlib.AbstractAsyncContextManager[Notifier]:
    """Component: delivers e-mails and webhook calls of alerts (roles api and worker)."""
    return running("notification_worker", Notifier(resources))
