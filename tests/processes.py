"""Real `sepulki` processes for tests that need the server a user runs, not the ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.servers import free_port
from tests.support import ROOT


@contextlib.asynccontextmanager
async def sepulki_serve(database_url: str, tmp: Path, **variables: str) -> AsyncIterator[int]:
    """`sepulki serve` in its own process on a free loopback port; yields the port."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SEPULKI_")}
    env |= {
        "SEPULKI_ENV": "test",
        "SEPULKI_DATABASE_URL": database_url,
        "SEPULKI_HOST": "127.0.0.1",
        "SEPULKI_PORT": str(port),
        "SEPULKI_DATA_DIR": str(tmp / "data"),
        "SEPULKI_MIGRATE_ON_START": "false",
        "SEPULKI_SEED_ON_START": "false",
        "SEPULKI_RATE_LIMIT_STORAGE_URL": "async+memory://",
        "SEPULKI_ARGON2_TIME_COST": "1",
        "SEPULKI_ARGON2_MEMORY_KIB": "1024",
        "SEPULKI_DB_POOL_MIN": "1",
        "SEPULKI_DB_POOL_MAX": "3",
        **{f"SEPULKI_{name.upper()}": value for name, value in variables.items()},
    }
    log = tmp / f"serve-{port}.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "app.cli", "serve"),
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "sepulki serve did not start:\n" + log.read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        break
                await asyncio.sleep(0.2)
        yield port
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), timeout=30)
        except TimeoutError:
            process.kill()
            await process.wait()


def start_dev(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`sepulki dev` as a developer starts it (embedded PostgreSQL and broker, simulated robots),
    on `port` with the broker on a free port; returns once /health answers."""
    env = {**os.environ, "SEPULKI_DATA_DIR": str(data_dir), "SEPULKI_PORT": str(port)}
    env.pop("SEPULKI_DATABASE_URL", None)
    env.pop("SEPULKI_MQTT_URL", None)  # the embedded broker, on a free port rather than 1883
    env["SEPULKI_MQTT_PORT"] = str(free_port())
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dev"],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):  # noqa: S310
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise AssertionError("sepulki dev did not become healthy:\n" + log.read_text()[-3000:])
