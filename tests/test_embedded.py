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


def _start(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
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


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=60)


def test_dev_server_starts_with_embedded_defaults_and_keeps_its_data(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "dev.log"
    dev = _start(tmp_path / "data", port, log)
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

    dev = _start(tmp_path / "data", port, log)
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
