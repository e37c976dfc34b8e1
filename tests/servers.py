"""Real servers for the test suite, each on a free loopback port in a temporary directory."""

from __future__ import annotations

import getpass
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql (./run test does)")
    return found


class PostgresServer:
    """A throwaway PostgreSQL cluster; run as the `postgres` user when we are root."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sepulki-pg-"))
        self.data = self.dir / "data"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._user:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> str:
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"), "-w", "start"
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class _LoopbackProcess:
    """A server process on a free loopback port with its own temporary directory; `stop` and
    `start` again keep the port, so tests can restart it under connected clients."""

    prefix = "sepulki-"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisServer(_LoopbackProcess):
    """redis-server on a free loopback port, persistence off; restartable on the same port."""

    prefix = "sepulki-redis-"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> str:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port)
        return self.url


class MosquittoServer(_LoopbackProcess):
    """Mosquitto (MQTT 5) on a free loopback port with raised queue limits: its defaults
    (1000 queued, 20 in flight) silently drop QoS 1 messages to a slow subscriber."""

    prefix = "sepulki-mqtt-"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> str:
        config = self.dir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            "max_packet_size 1048576\n"
            "log_dest none\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_port(self.port)
        return self.url


class DynsecMosquittoServer(MosquittoServer):
    """Mosquitto with its dynamic security plugin and no anonymous access, as in production: an
    admin account (`admin_url`) and the backend's account `sepulki` (`service_url`: reads robots'
    topics, sends their commands). Robots' accounts are the service's to create."""

    prefix = "sepulki-mqtt-dynsec-"
    ADMIN_PASSWORD = "dynsec-admin-test-password"
    SERVICE_PASSWORD = "sepulki-service-test-password"

    @property
    def admin_url(self) -> str:
        return f"mqtt://admin:{self.ADMIN_PASSWORD}@127.0.0.1:{self.port}"

    @property
    def service_url(self) -> str:
        return f"mqtt://sepulki:{self.SERVICE_PASSWORD}@127.0.0.1:{self.port}"

    def start(self) -> str:
        plugins = sorted(Path("/usr/lib").glob("**/mosquitto_dynamic_security.so"))
        if not plugins:
            raise RuntimeError("mosquitto_dynamic_security.so not found (Debian package mosquitto)")
        ctrl = shutil.which("mosquitto_ctrl") or "/usr/bin/mosquitto_ctrl"
        dynsec = self.dir / "dynamic-security.json"
        subprocess.run(
            [ctrl, "dynsec", "init", str(dynsec), "admin", self.ADMIN_PASSWORD],
            check=True,
            capture_output=True,
        )
        config = self.dir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            "persistence false\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 1000\n"
            # The plugin rewrites its file on every change: stay the user who owns it.
            f"user {getpass.getuser()}\n"
            f"plugin {plugins[0]}\n"
            f"plugin_opt_config_file {dynsec}\n"
            "log_dest none\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for_port(self.port)
        connect = [ctrl, "-h", "127.0.0.1", "-p", str(self.port), "-u", "admin", "-P", self.ADMIN_PASSWORD]
        for command in (
            ["createRole", "sepulki-service"],
            ["addRoleACL", "sepulki-service", "subscribePattern", "robots/#", "allow", "0"],
            # Shared subscriptions are checked with their `$share/<group>/` prefix.
            ["addRoleACL", "sepulki-service", "subscribePattern", "$share/sepulki/robots/#", "allow", "0"],
            ["addRoleACL", "sepulki-service", "publishClientSend", "robots/+/commands", "allow", "0"],
            ["createClient", "sepulki", "-p", self.SERVICE_PASSWORD],
            ["addClientRole", "sepulki", "sepulki-service", "0"],
        ):
            subprocess.run([*connect, "dynsec", *command], check=True, capture_output=True)
        return self.url


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


async def admin_execute(server_url: str, *statements: str) -> None:
    """Runs statements such as CREATE or DROP DATABASE on one connection to the server."""
    import asyncpg

    admin = await asyncpg.connect(server_url)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()
