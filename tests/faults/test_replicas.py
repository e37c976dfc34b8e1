"""Two `sepulki ingest` replicas in one `$share` group: the broker splits the robots' messages
between them (both get work) and PostgreSQL holds each message once."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import asyncpg
import httpx

from tests.faults.harness import CLEAR_HISTORY, Robots, running_ingest, stored, until_stored
from tests.servers import MosquittoServer


async def stored_by(port: int) -> int:
    async with httpx.AsyncClient(timeout=15) as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(
        sum(
            float(value)
            for value in re.findall(
                r'^sepulki_ingest_messages_total\{[^}]*outcome="stored"[^}]*\} (\S+)$', text, re.M
            )
        )
    )


async def test_two_ingest_replicas_split_one_shared_group_and_store_each_message_once(
    database_url: str, mosquitto: MosquittoServer, tmp_path: Path
) -> None:
    total = 800
    conn = await asyncpg.connect(database_url)
    await conn.execute(CLEAR_HISTORY)
    robots = Robots(mosquitto.url)
    try:
        async with contextlib.AsyncExitStack() as stack:
            first = await stack.enter_async_context(running_ingest(database_url, mosquitto.url, tmp_path))
            second = await stack.enter_async_context(running_ingest(database_url, mosquitto.url, tmp_path))
            await robots.connect()
            await robots.publish(total)
            await until_stored(conn, total, within=30)
            count, duplicated = await stored(conn)
            assert (count, duplicated) == (total, 0)
            by_first, by_second = await stored_by(first.port), await stored_by(second.port)
        # Both consumers got work, and between them stored every message exactly once.
        assert by_first > 0 and by_second > 0, (by_first, by_second)
        assert by_first + by_second == total
    finally:
        await robots.disconnect()
        await conn.close()
