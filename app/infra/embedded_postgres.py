"""The embedded PostgreSQL of `sepulki dev`: a private server from the pgserver wheel.

pgserver stops the server when the last process holding it lets go: each holder adds its pid to
`<pgdata>/.handle_pids.json` and removes it on cleanup, and only the one that finds itself alone
in the list stops the server. A holder killed without its cleanup (`kill -9`) stays listed, so the
next start reused the orphaned server and never stopped it. Before taking its handle, a start
drops the pids of holders that are gone (under pgserver's own inter-process lock): it then owns a
server it finds orphaned and stops it on its clean shutdown."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("sepulki.embedded")

HANDLES = ".handle_pids.json"


class EmbeddedPostgres:
    """Starts PostgreSQL with its data under `data_dir` (kept between runs), stops it on close."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    async def start(self) -> str:
        from pgserver.postgres_server import get_server  # heavy import, only needed in embedded mode

        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pg"
        await asyncio.to_thread(forget_dead_holders, pgdata)
        self._server = await asyncio.to_thread(get_server, pgdata, "stop")
        uri: str = self._server.get_uri()
        log.info("embedded PostgreSQL running in %s", pgdata)
        return uri

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)
            self._server = None


def forget_dead_holders(pgdata: Path) -> list[int]:
    """Removes from pgserver's list of holders of the server in `pgdata` the processes that no
    longer run; answers the pids removed."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = pgdata / HANDLES
    with PostgresServer._lock:
        if not handles.exists():
            return []
        # Every listed holder wrote the file after it started; a process started after the last
        # write is a stranger that inherited a dead holder's pid.
        written_at = handles.stat().st_mtime
        listed = DiskList(handles)
        try:
            pids = [int(pid) for pid in listed.get()]
        except (ValueError, TypeError):
            log.warning("embedded PostgreSQL: unreadable %s, left as it is", handles)
            return []
        gone = [pid for pid in pids if not _holder_alive(pid, written_at)]
        if gone:
            listed.put([pid for pid in pids if pid not in gone])
            log.warning(
                "embedded PostgreSQL: process(es) %s ended without stopping the server; this process "
                "takes it over and stops it when it ends",
                ", ".join(map(str, gone)),
            )
        return gone


def _holder_alive(pid: int, written_at: float) -> bool:
    import psutil  # type: ignore[import-untyped]  # a dependency of pgserver (and ours)

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        started: float = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return started <= written_at + 1.0  # clocks of /proc and the file system differ by a tick
