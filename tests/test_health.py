"""An operator's and an orchestrator's view of health: /health/live says the process answers,
/health/ready says whether every dependency does (503 naming the one that does not), on the API,
on `sepulki ingest` and on `sepulki worker`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx

from app.settings import Settings
from tests.servers import MosquittoServer, RedisServer, free_port
from tests.support import ROOT, Api, eventually, with_broker


async def test_the_api_is_live_and_ready_with_each_dependency_named(
    settings: Settings, redis_server: RedisServer, mosquitto: MosquittoServer
) -> None:
    ready_settings = with_broker(settings, mosquitto, broadcast_url=redis_server.url)
    async with Api.running(ready_settings) as api:
        live = await api.client.get("/health/live")
        assert (live.status_code, live.json()) == (200, {"status": "live"})

        async def ready() -> httpx.Response | None:
            response = await api.client.get("/health/ready")
            return response if response.status_code == 200 else None

        response = await eventually(ready, within=10, what="the API ready")
        assert response.json() == {
            "status": "ready",
            "checks": {"postgres": "ok", "redis": "ok", "mqtt": "ok"},
        }
        # The earlier endpoint keeps its answer.
        assert (await api.client.get("/health")).json()["status"] == "ok"


async def test_readiness_answers_503_naming_redis_while_it_is_down_and_recovers_by_itself(
    settings: Settings, redis_server: RedisServer
) -> None:
    async with Api.running(settings.replace(broadcast_url=redis_server.url)) as api:
        assert (await api.client.get("/health/ready")).status_code == 200
        redis_server.stop()
        try:
            response = await api.client.get("/health/ready")
            assert response.status_code == 503
            assert response.json() == {
                "status": "unavailable",
                "checks": {"postgres": "ok", "redis": "down", "mqtt": "unused"},
            }
            assert (await api.client.get("/health/live")).status_code == 200
        finally:
            redis_server.start()

        async def ready() -> bool:
            return (await api.client.get("/health/ready")).status_code == 200

        await eventually(ready, within=10, what="ready again without a restart")


async def test_the_api_answers_503_not_500_while_postgresql_refuses_it_and_recovers(
    settings: Settings, postgres_url: str, database_url: str
) -> None:
    name = database_url.rpartition("/")[2]
    async with Api.running(settings) as api:
        admin = await asyncpg.connect(postgres_url)
        try:
            # What a stopped server looks like to the API: its connections gone, new ones refused.
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            health = await api.client.get("/health")
            assert health.status_code == 503
            assert health.json() == {"status": "unavailable", "postgres": "down"}
            ready = await api.client.get("/health/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["postgres"] == "down"
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()

        async def ready_again() -> bool:
            return (await api.client.get("/health/ready")).status_code == 200

        await eventually(ready_again, within=10, what="ready again without a restart")


def _role(command: str, database_url: str, port: int, log: Path, **variables: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPULKI_")}
    env |= {
        "SEPULKI_ENV": "test",
        "SEPULKI_DATABASE_URL": database_url,
        "SEPULKI_MIGRATE_ON_START": "false",
        "SEPULKI_HOST": "127.0.0.1",
        "SEPULKI_METRICS_PORT": str(port),
        "SEPULKI_LOG_LEVEL": "WARNING",
        **{f"SEPULKI_{k.upper()}": v for k, v in variables.items()},
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "app.cli", command], cwd=ROOT, env=env, stdout=out, stderr=out
        )


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _ready_states(port: int, process: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=3) as http:

        async def answer() -> dict[str, object] | None:
            if process.poll() is not None:
                raise AssertionError(_tail(log))
            with contextlib.suppress(httpx.TransportError):
                response = await http.get("/health/ready")
                if response.status_code == 200:
                    assert (await http.get("/health/live")).status_code == 200
                    metrics = await http.get("/metrics")
                    assert "sepulki_db_pool_connections" in metrics.text
                    return {"ready": response.json(), "metrics": metrics.text}
            return None

        result: dict[str, object] = await eventually(answer, within=30, what="ready")
        return result


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


async def test_the_ingest_and_the_worker_serve_live_ready_and_metrics_on_their_own_port(
    database_url: str, mosquitto: MosquittoServer, redis_server: RedisServer, tmp_path: Path
) -> None:
    ingest_port, worker_port = free_port(), free_port()
    ingest = _role(
        "ingest",
        database_url,
        ingest_port,
        tmp_path / "ingest.log",
        mqtt_url=mosquitto.url,
        mqtt_client_id=f"sepulki-ingest-health-{os.getpid()}",
        redis_url=redis_server.url,
    )
    worker = _role(
        "worker", database_url, worker_port, tmp_path / "worker.log", mqtt_url=mosquitto.url, redis_url=""
    )
    try:
        ingest_state, worker_state = await asyncio.gather(
            _ready_states(ingest_port, ingest, tmp_path / "ingest.log"),
            _ready_states(worker_port, worker, tmp_path / "worker.log"),
        )
        assert ingest_state["ready"] == {
            "status": "ready",
            "checks": {"postgres": "ok", "redis": "ok", "mqtt": "ok"},
        }
        assert "sepulki_ingest_mqtt_read_pauses_total" in str(ingest_state["metrics"])
        assert worker_state["ready"] == {
            "status": "ready",
            "checks": {"postgres": "ok", "redis": "unused", "mqtt": "ok"},
        }
        assert "sepulki_commands_open" in str(worker_state["metrics"])
    finally:
        assert _stop(ingest) == 0
        assert _stop(worker) == 0
