"""`sepulki simulate`: its arguments and how they combine with the environment's settings."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TextIO

import asyncpg

from app.core.errors import Unavailable
from app.infra import db
from app.settings import Settings
from app.simulator import BrokerUnreachable, NoRobots, Plan, SimConfig, Stats, simulate

# Dead letters the ingest stored since the run started (every robot's: the table does not say
# which run sent them; the index on received_at keeps the count cheap).
DEAD_LETTERS_SINCE = "SELECT count(*) FROM dead_letters WHERE received_at >= $1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--robots", type=int, default=4, help="how many robots (default 4)")
    parser.add_argument("--hz", type=float, default=1.0, help="telemetry messages per robot per second")
    parser.add_argument("--fleet", help="fleet id: simulate its robots, register Sim-NNN robots there")
    parser.add_argument("--robot-ids", help="comma-separated robot ids to simulate (instead of --robots)")
    parser.add_argument("--bad-rate", type=float, default=0.0, help="share of bad telemetry, 0..1")
    parser.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    parser.add_argument("--time-scale", type=float, default=60.0, help="simulated s per real s (battery)")
    parser.add_argument("--mqtt-url", help="broker (default SEPULKI_MQTT_URL, else the dev broker)")
    parser.add_argument("--protocol", type=int, choices=(4, 5), help="MQTT version: 5, or 4 = 3.1.1")
    parser.add_argument("--no-register", action="store_true", help="fail instead of adding Sim-NNN robots")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible run")
    parser.add_argument(
        "--status-every", type=float, default=10.0, help="seconds between status lines on stderr (0: none)"
    )


def _broker(args: argparse.Namespace, settings: Settings) -> tuple[str, int]:
    """The broker and protocol: explicit arguments, else SEPULKI_MQTT_URL with its protocol, else
    the embedded broker of a running `sepulki dev` (MQTT 3.1.1)."""
    url: str | None = args.mqtt_url or settings.mqtt_url
    if url:
        return url, args.protocol or settings.mqtt_protocol
    return f"mqtt://127.0.0.1:{settings.mqtt_port}", args.protocol or 4


def _raise_open_files_limit(robots: int) -> None:
    # One connection per robot: lift the soft limit as far as the hard limit allows.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = robots + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        limit = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


class StatusLine:
    """One line every `every_s` seconds on stderr: robots connected, messages per second since the
    last line, acks, skipped messages and the dead letters the ingest stored since the start."""

    def __init__(self, stats: Stats, robots: int, dsn: str, out: TextIO = sys.stderr) -> None:
        self.stats, self.robots, self.dsn, self.out = stats, robots, dsn, out
        self.started = datetime.now(UTC)
        self._sent, self._at = 0, time.monotonic()
        self._conn: asyncpg.Connection | None = None

    async def dead_letters(self) -> int | None:
        """None when the database cannot say (a connection lost, an older schema)."""
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await db.connect(self.dsn)
            return int(await self._conn.fetchval(DEAD_LETTERS_SINCE, self.started))
        except (OSError, asyncpg.PostgresError):
            return None

    async def line(self) -> str:
        now, sent = time.monotonic(), self.stats.sent
        rate = (sent - self._sent) / max(now - self._at, 1e-6)
        self._sent, self._at = sent, now
        dead = await self.dead_letters()
        stats = self.stats
        return (
            f"simulate: {len(stats.connected)}/{self.robots} robots connected, {rate:.1f} msg/s, "
            f"sent {sent} (telemetry {stats.telemetry}, bad {stats.bad}, events {stats.events}), "
            f"commands {stats.commands}, acks {stats.acks}, skipped {stats.skipped}, "
            f"dead letters {'?' if dead is None else dead}"
        )

    @contextlib.asynccontextmanager
    async def every(self, every_s: float) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every_s)
                print(await self.line(), file=self.out, flush=True)

        task = asyncio.create_task(loop()) if every_s > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._conn is not None:
                await self._conn.close()


def run(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    if not 0.0 <= args.bad_rate <= 1.0:
        raise SystemExit("--bad-rate must be between 0 and 1")
    if not 0 < args.hz <= 1000:
        raise SystemExit("--hz must be in (0, 1000]")
    if args.status_every < 0:
        raise SystemExit("--status-every must be 0 (no status lines) or more seconds")
    robot_ids = [item.strip() for item in (args.robot_ids or "").split(",") if item.strip()]
    if not robot_ids and args.robots < 1:
        raise SystemExit("--robots must be at least 1")
    mqtt_url, protocol = _broker(args, settings)
    config = SimConfig(
        mqtt_url=mqtt_url,
        protocol=protocol,
        hz=args.hz,
        time_scale=args.time_scale,
        bad_rate=args.bad_rate,
        seed=args.seed,
    )
    _raise_open_files_limit(len(robot_ids) or args.robots)

    async def main() -> None:
        embedded = None
        dsn = settings.database_url
        if dsn is None:
            from app.infra.embedded_postgres import EmbeddedPostgres

            # Shares the server of a running `sepulki dev` (pgserver counts its users).
            embedded = EmbeddedPostgres(settings.data_dir)
            dsn = await embedded.start()
        try:
            plan = Plan(
                dsn,
                args.robots,
                robot_ids,
                args.fleet,
                args.duration,
                register=not args.no_register,
                admin_url=settings.mqtt_admin_url,
            )
            stats = Stats()
            status = StatusLine(stats, len(robot_ids) or args.robots, dsn)
            async with status.every(args.status_every):
                await simulate(plan, config, stats)
            print(json.dumps({"sent": stats.as_dict()}), flush=True)
        finally:
            if embedded is not None:
                await embedded.stop()

    try:
        asyncio.run(main())
    except (NoRobots, BrokerUnreachable, Unavailable) as exc:
        raise SystemExit(f"sepulki simulate: {exc}") from None
    except KeyboardInterrupt:
        pass
