"""`sepulki` command line: dev, serve, migrate, seed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from app.settings import Settings, SettingsError


def _serve(settings: Settings) -> None:
    import uvicorn

    from app.server import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        ws="websockets-sansio",
        proxy_headers=True,
    )


def cmd_dev(args: argparse.Namespace) -> None:
    """Everything in one process with embedded defaults: nothing to install or configure."""
    settings = Settings.from_env()
    print(
        f"Sepulki Hammer (development): GraphiQL at http://{settings.host}:{settings.port}/graphql\n"
        "  sign in with the login mutation as admin@sepulki.com / admin123 (development seed)",
        flush=True,
    )
    _serve(settings)


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


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=os.environ.get("SEPULKI_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    parser = argparse.ArgumentParser(prog="sepulki", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (
        ("dev", cmd_dev),
        ("serve", cmd_serve),
        ("migrate", cmd_migrate),
        ("seed", cmd_seed),
    ):
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else None)
        p.set_defaults(func=fn)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except SettingsError as exc:
        sys.exit(f"sepulki: {exc}")


if __name__ == "__main__":
    main()
