"""`sepulki dev` on a machine with nothing installed: embedded PostgreSQL, migrations, seed, GraphiQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.processes import start_dev
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
LOGIN = (
    'mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"})'
    " { session { token } } }"
)


def _post(port: int, query: str, token: str | None = None) -> dict:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", json.dumps({"query": query}).encode(), headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=60)


def test_dev_server_starts_with_embedded_defaults_and_keeps_its_data(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    dev = start_dev(tmp_path / "data", port, log)
    try:
        page = (
            urllib.request.urlopen(  # noqa: S310
                urllib.request.Request(f"http://127.0.0.1:{port}/graphql", headers={"accept": "text/html"})
            )
            .read()
            .decode()
        )
        assert "GraphiQL" in page
        token = _post(port, LOGIN)["data"]["login"]["session"]["token"]
        robot = "70000000-0000-4000-8000-000000000002"
        changed = _post(
            port, f'mutation {{ updateRobotStatus(robotId: "{robot}", status: ERROR) {{ status }} }}', token
        )
        assert changed["data"]["updateRobotStatus"]["status"] == "ERROR"
        # The simulated robots publish through the embedded broker and the ingest: lastSeen advances.
        last_seen = f'{{ robot(id: "{robot[:-1]}1") {{ lastSeen }} }}'
        first, deadline = _post(port, last_seen, token)["data"]["robot"]["lastSeen"], time.monotonic() + 10
        while _post(port, last_seen, token)["data"]["robot"]["lastSeen"] == first:
            assert time.monotonic() < deadline, "no fresh data from the simulated robots within 10 s"
            time.sleep(0.2)
    finally:
        assert _stop(dev) == 0
    first_run = log.read_text()
    assert "Applying 20261123_01_initial-schema" in first_run

    dev = start_dev(tmp_path / "data", port, log)
    try:
        token = _post(port, LOGIN)["data"]["login"]["session"]["token"]
        robots = _post(port, f'{{ robot(id: "{robot}") {{ status }} }}', token)
        assert robots["data"]["robot"]["status"] == "ERROR"  # the data survived the restart
        fleets = _post(port, "{ fleets { name } }", token)["data"]["fleets"]
        assert len(fleets) == 4  # the seed was not loaded twice
    finally:
        assert _stop(dev) == 0
    second_run = log.read_text()[len(first_run) :]
    assert "Applying" not in second_run


# Holds the embedded PostgreSQL of the data directory argv[1] until a line arrives on stdin.
HOLDER = """
import asyncio, sys
from pathlib import Path
from app.infra.embedded_postgres import EmbeddedPostgres

async def main() -> None:
    server = EmbeddedPostgres(Path(sys.argv[1]))
    print(await server.start(), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await server.stop()

asyncio.run(main())
"""


def _hold(data_dir: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().startswith("postgresql://"), "the embedded PostgreSQL did not start"
    return holder


def _postmaster(data_dir: Path) -> int | None:
    """The pid in postmaster.pid, while that file exists."""
    try:
        return int((data_dir / "pg" / "postmaster.pid").read_text().splitlines()[0])
    except FileNotFoundError:
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    # A zombie (ended, not yet reaped by whoever adopted it) runs no more.
    return not stat.exists() or stat.read_text().rpartition(")")[2].split()[0] != "Z"


def test_a_start_after_a_kill_9_owns_the_orphaned_postgres_and_stops_it_on_its_clean_shutdown(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    killed = _hold(data_dir)
    postmaster = _postmaster(data_dir)
    assert postmaster is not None and _running(postmaster)
    killed.send_signal(signal.SIGKILL)  # no cleanup: the server lives on, orphaned
    killed.wait(timeout=10)
    assert _running(postmaster)

    successor = _hold(data_dir)
    try:
        assert _postmaster(data_dir) == postmaster  # the running server is reused, not started twice
        assert successor.stdin is not None
        successor.stdin.write("stop\n")
        successor.stdin.flush()
        assert successor.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while _running(postmaster) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(postmaster), "the orphaned PostgreSQL outlived the clean shutdown"
        assert _postmaster(data_dir) is None
    finally:
        successor.kill()
        if _running(postmaster):
            os.kill(postmaster, signal.SIGQUIT)
