"""The embedded PostgreSQL of `sepulki dev`: a private server from the pgserver wheel."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("sepulki.embedded")


class EmbeddedPostgres:
    """Starts PostgreSQL with its data under `data_dir` (kept between runs), stops it on close."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: Any = None

    async def start(self) -> str:
        from pgserver.postgres_server import get_server  # heavy import, only needed in embedded mode

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.to_thread(get_server, self.data_dir / "pg", "stop")
        uri: str = self._server.get_uri()
        log.info("embedded PostgreSQL running in %s", self.data_dir / "pg")
        return uri

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.cleanup)
            self._server = None
