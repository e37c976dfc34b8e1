"""`sepulki` command line: dev, serve, migrate, seed, worker, ingest, simulate, env-example,
config-table, schema."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from app.settings import Settings, SettingsError

if TYPE_CHECKING:
    from app.resources import Role

Command = Callable[[argparse.Namespace, Settings], None]


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.infra import logs
    from app.web.app import create_app
    from app.web.http_server import http_options

    uvicorn.run(
        create_app(settings, owns_process=True),
        host=settings.host,
        port=settings.port,
        log_level="info",
        # uvicorn's handlers redact secrets and mask emails like ours; the access log is ours
        # (app.infra.logs.access, with each request's duration and id).
        log_config=logs.uvicorn_log_config(settings.log_format),
        access_log=False,
        ws="websockets-sansio",
        # X-Forwarded-For/-Proto only from SEPULKI_TRUSTED_PROXIES; none configured: the socket
        # peer is the client (uvicorn's own default would believe any process on loopback).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies),
        server_header=False,
        # Open SSE streams and websockets would otherwise hold shutdown; clients resume with
        # Last-Event-ID / `after` and lose nothing.
        timeout_graceful_shutdown=5,
        # Frames are small JSON: compressing each costs more CPU than it saves on loopback and LANs.
        ws_per_message_deflate=False,
        # httptools with a bound on reading a request's headers, and the keep-alive timeout.
        **http_options(settings),
    )


# The commands whose processes send mail (invitations, password resets, alert notifications).
_SENDS_MAIL = frozenset({"serve", "worker"})


def _require(settings: Settings, command: str, *names: str) -> None:
    missing = [f"SEPULKI_{name.upper()}" for name in names if getattr(settings, name) is None]
    if missing:
        hint = " (use `sepulki dev` locally)" if command == "serve" else ""
        sys.exit(f"sepulki {command}: {' and '.join(missing)} required{hint}")


def cmd_dev(args: argparse.Namespace, settings: Settings) -> None:
    """Everything in one process with embedded defaults: nothing to install or configure."""
    if settings.mqtt_url is None:
        # The embedded amqtt broker speaks MQTT 3.1.1 only (no $share): the ingest uses plain topics.
        settings = settings.replace(
            mqtt_url=f"mqtt://127.0.0.1:{settings.mqtt_port}", mqtt_protocol=4, embedded_broker=True
        )
    print(
        f"Sepulki Hammer (development): GraphiQL at http://{settings.host}:{settings.port}/graphql\n"
        "  sign in with the login mutation as admin@sepulki.com / admin123 (development seed)",
        flush=True,
    )
    _serve(settings)


def cmd_simulate(args: argparse.Namespace, settings: Settings) -> None:
    """Simulated robots publishing telemetry, status and events over MQTT, acknowledging commands."""
    from app.simulator import command

    command.run(args)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    """The API against SEPULKI_DATABASE_URL."""
    _require(settings, "serve", "database_url")
    _serve(settings)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    """Applies pending migrations (idempotent)."""
    from app.infra import db
    from app.infra.embedded_postgres import EmbeddedPostgres

    async def run() -> None:
        if settings.database_url:
            await db.migrate(settings.database_url)
            return
        embedded = EmbeddedPostgres(settings.data_dir)
        try:
            await db.migrate(await embedded.start())
        finally:
            await embedded.stop()

    asyncio.run(run())
    print("migrations applied")


def cmd_seed(args: argparse.Namespace, settings: Settings) -> None:
    """Loads the development seed (idempotent; refused in production)."""
    from app.infra import db, seed
    from app.infra.embedded_postgres import EmbeddedPostgres
    from app.infra.security import Passwords

    if settings.production:
        sys.exit("refusing to load the development seed with SEPULKI_ENV=production")

    async def run() -> None:
        embedded = None if settings.database_url else EmbeddedPostgres(settings.data_dir)
        dsn = settings.database_url if embedded is None else await embedded.start()
        assert dsn is not None
        try:
            await db.migrate(dsn)
            await seed.load(dsn, Passwords(settings))
        finally:
            if embedded is not None:
                await embedded.stop()

    asyncio.run(run())
    print("development seed loaded")


async def _run_role(settings: Settings, role: Role) -> None:
    """Opens the role's resources, runs its components until SIGTERM or SIGINT."""
    import logging

    from app.resources import open_resources
    from app.workers import run_components

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_resources(settings, role) as resources, run_components(resources, role):
        logging.getLogger("sepulki").info("sepulki %s running", role)
        await stop.wait()


def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    """Command dispatch to robots and command timeouts, without the API (any number may run)."""
    _require(settings, "worker", "database_url")
    asyncio.run(_run_role(settings, "worker"))


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> None:
    """The MQTT ingest worker: robot telemetry, status, events and acks into PostgreSQL."""
    from app.infra import heap

    _require(settings, "ingest", "database_url", "mqtt_url")
    heap.settle()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(_run_role(settings, "ingest"))
    else:
        uvloop.run(_run_role(settings, "ingest"))


def cmd_env_example(args: argparse.Namespace, settings: Settings) -> None:
    """Prints .env.example: every variable, its default and what it does."""
    from app.settings import env_example

    sys.stdout.write(env_example())


def cmd_config_table(args: argparse.Namespace, settings: Settings) -> None:
    """Prints the configuration as a Markdown table (variable, type, default, description)."""
    from app.settings import settings_table

    sys.stdout.write(settings_table())


def cmd_schema(args: argparse.Namespace, settings: Settings) -> None:
    """Prints the executable schema as SDL (docs/schema.graphql is this output)."""
    from graphql import print_schema

    from app.web.graphql_app import build_schema

    sys.stdout.write(print_schema(build_schema()) + "\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sepulki")
    except PackageNotFoundError:  # pragma: no cover - run from a checkout that was never installed
        return "unknown (not installed)"


# Commands that describe the service and need no environment.
_DESCRIBE = ("env-example", "config-table", "schema")

COMMANDS: dict[str, Command] = {
    "dev": cmd_dev,
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "seed": cmd_seed,
    "worker": cmd_worker,
    "ingest": cmd_ingest,
    "env-example": cmd_env_example,
    "config-table": cmd_config_table,
    "schema": cmd_schema,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line: every command and option with its help text."""
    parser = argparse.ArgumentParser(prog="sepulki", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", help="one of:")
    for name, fn in COMMANDS.items():
        doc = (fn.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        p.set_defaults(func=fn)
    from app.simulator.command import add_arguments as simulate_arguments

    simulate_doc = (cmd_simulate.__doc__ or "").strip()
    simulate = sub.add_parser("simulate", help=simulate_doc, description=simulate_doc)
    simulate_arguments(simulate)
    simulate.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command in _DESCRIBE:  # no environment needed: describe it
        args.func(args, Settings.model_construct())
        return
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # One line naming the variable and what it accepts, not a traceback.
        sys.exit(f"sepulki: configuration refused: {exc}")
    from app.infra import logs

    logs.configure(settings.log_level, settings.log_format)
    if (
        args.command in _SENDS_MAIL
        and settings.production
        and not settings.smtp_url
        and not settings.mail_to_files
    ):
        # Invitations and password resets written to files nobody reads look sent to their senders.
        sys.exit(
            "sepulki: production needs a mail transport: set SEPULKI_SMTP_URL, or "
            "SEPULKI_MAIL_TO_FILES=true to write mails under SEPULKI_DATA_DIR/mail"
        )
    try:
        args.func(args, settings)
    except SettingsError as exc:
        sys.exit(f"sepulki: {exc}")


if __name__ == "__main__":
    main()
