"""`sepulki simulate`: its arguments and how they combine with the environment's settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource

from app.core.errors import Unavailable
from app.settings import Settings
from app.simulator import BrokerUnreachable, NoRobots, Plan, SimConfig, simulate


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


def run(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    if not 0.0 <= args.bad_rate <= 1.0:
        raise SystemExit("--bad-rate must be between 0 and 1")
    if not 0 < args.hz <= 1000:
        raise SystemExit("--hz must be in (0, 1000]")
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
            stats = await simulate(plan, config)
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
