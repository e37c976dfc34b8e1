"""`sepulki` command line: dev, serve, migrate, seed."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace

from app import logs
from app.settings import Settings, SettingsError


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.server import create_app

    uvicorn.run(
        create_app(settings, owns_process=True),
        host=settings.host,
        port=settings.port,
        log_level="info",
        # uvicorn's handlers, access log included, redact secrets and mask emails like ours.
        log_config=logs.uvicorn_log_config(),
        ws="websockets-sansio",
        proxy_headers=True,
        server_header=False,
        # Open SSE streams and websockets would otherwise hold shutdown; clients resume with
        # Last-Event-ID / `after` and lose nothing.
        timeout_graceful_shutdown=5,
        # Frames are small JSON: compressing each costs more CPU than it saves on loopback and LANs.
        ws_per_message_deflate=False,
    )


def cmd_dev(args: argparse.Namespace) -> None:
    """Everything in one process with embedded defaults: nothing to install or configure."""
    settings = Settings.from_env()
    if settings.mqtt_url is None:
        # The embedded amqtt broker speaks MQTT 3.1.1 only (no $share): the ingest uses plain topics.
        port = int(os.environ.get("SEPULKI_MQTT_PORT", "1883"))
        settings = replace(
            settings, mqtt_url=f"mqtt://127.0.0.1:{port}", mqtt_protocol=4, embedded_broker=True
        )
    print(
        f"Sepulki Hammer (development): GraphiQL at http://{settings.host}:{settings.port}/graphql\n"
        "  sign in with the login mutation as admin@sepulki.com / admin123 (development seed)",
        flush=True,
    )
    _serve(settings)


def cmd_simulate(args: argparse.Namespace) -> None:
    """Simulated robots publishing telemetry, status and events over MQTT, acknowledging commands."""
    from app.simulator import command

    command.run(args)


def cmd_serve(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    if settings.database_url is None:
        sys.exit("SEPULKI_DATABASE_URL is required for `sepulki serve` (use `sepulki dev` locally)")
    _serve(settings)


def cmd_migrate(args: argparse.Namespace) -> None:
    from app import db

    settings = Settings.from_env()

    async def run() -> None:
        if settings.database_url:
            await db.migrate(settings.database_url)
            return
        from app.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir)
        try:
            await db.migrate(await embedded.start())
        finally:
            await embedded.stop()

    asyncio.run(run())
    print("migrations applied")


def cmd_seed(args: argparse.Namespace) -> None:
    from app import db, seed
    from app.security import Passwords

    settings = Settings.from_env()
    if settings.production:
        sys.exit("refusing to load the development seed with SEPULKI_ENV=production")

    async def run() -> None:
        from app.embedded import EmbeddedPostgres

        embedded = None if settings.database_url else EmbeddedPostgres(settings.data_dir)
        dsn = settings.database_url or await embedded.start()  # type: ignore[union-attr]
        try:
            await db.migrate(dsn)
            await seed.load(dsn, Passwords(settings))
        finally:
            if embedded is not None:
                await embedded.stop()

    asyncio.run(run())
    print("development seed loaded")


def cmd_worker(args: argparse.Namespace) -> None:
    """Command dispatch and timeouts, without the API (any number may run)."""
    from app import commands

    settings = Settings.from_env()
    if settings.database_url is None:
        sys.exit("SEPULKI_DATABASE_URL is required for `sepulki worker`")
    asyncio.run(commands.run_worker(settings))


def cmd_ingest(args: argparse.Namespace) -> None:
    """MQTT ingest worker: robot telemetry, status, events and acks into PostgreSQL."""
    from app import heap
    from app.ingest.service import run_worker

    settings = Settings.from_env()
    if settings.database_url is None or settings.mqtt_url is None:
        sys.exit("SEPULKI_DATABASE_URL and SEPULKI_MQTT_URL are required for `sepulki ingest`")
    heap.settle()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(run_worker(settings))
    else:
        uvloop.run(run_worker(settings))


def main(argv: list[str] | None = None) -> None:
    logs.configure(os.environ.get("SEPULKI_LOG_LEVEL", "INFO"))
    parser = argparse.ArgumentParser(prog="sepulki", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (
        ("dev", cmd_dev),
        ("serve", cmd_serve),
        ("migrate", cmd_migrate),
        ("seed", cmd_seed),
        ("worker", cmd_worker),
        ("ingest", cmd_ingest),
    ):
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else None)
        p.set_defaults(func=fn)
    from app.simulator.command import add_arguments as simulate_arguments

    simulate = sub.add_parser("simulate", help=(cmd_simulate.__doc__ or "").strip())
    simulate_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except SettingsError as exc:
        sys.exit(f"sepulki: {exc}")


if __name__ == "__main__":
    main()
