"""Development seed data from `seed/`: smiths (argon2id-hashed) and the reference demo domain."""

from __future__ import annotations

import json
import logging

import asyncpg

from app.core.permissions import Perm
from app.infra.security import Passwords
from app.settings import ASSETS

SEED_DIR = ASSETS / "seed"
log = logging.getLogger("sepulki.seed")

INSERT_SMITH = """
INSERT INTO smiths (id, email, name, password_hash, role, permissions)
VALUES ($1, $2, $3, $4, $5::smith_role, $6) ON CONFLICT (id) DO NOTHING
"""


async def load(dsn: str, passwords: Passwords) -> None:
    """Load the development seed; idempotent (fixed ids, nothing overwritten)."""
    smiths = json.loads((SEED_DIR / "smiths.json").read_text())["smiths"]
    conn = await asyncpg.connect(dsn)
    try:
        existing = {
            str(r["id"])
            for r in await conn.fetch(
                "SELECT id FROM smiths WHERE id = ANY($1::uuid[])", [s["id"] for s in smiths]
            )
        }
        async with conn.transaction():
            for smith in smiths:
                if smith["id"] in existing:
                    continue
                grants = list(Perm) if smith["permissions"] == "ALL" else smith["permissions"]
                await conn.execute(
                    INSERT_SMITH,
                    smith["id"],
                    smith["email"],
                    smith["name"],
                    await passwords.hash(smith["password"]),
                    smith["role"],
                    [str(p) for p in grants],
                )
            await conn.execute((SEED_DIR / "reference.sql").read_text())
    finally:
        await conn.close()
    log.info("development seed loaded")
