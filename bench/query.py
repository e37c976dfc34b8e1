"""Requests/s of the GraphQL endpoint with parse/validation caches against the same app without.

    .venv/bin/python -m bench.query [--seconds 3] [--rounds 3]

Both apps run in this process on the same database; rounds alternate between them so machine noise
hits both alike. Prints one JSON line per query: cached and uncached requests/s and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from app.settings import Settings
from app.web.app import create_app
from bench.common import call, database, emit

SMALL = "query Small { __typename }"
NESTED = """
query Nested {
  fleets {
    id name status
    locus { name coordinates { latitude longitude } }
    robots { id name status batteryLevel currentIngot { id version status } }
  }
}
"""
LOGIN = (
    'mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"})'
    " { session { token } } }"
)


async def throughput(app: Any, body: bytes, headers: list, seconds: float, concurrency: int = 4) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            status, payload = await call(app, body, headers)
            if status != 200 or b'"errors"' in payload:
                raise RuntimeError(payload.decode()[:300])
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


async def main(seconds: float, rounds: int) -> None:
    async with database() as dsn:
        base = Settings(
            env="development",
            database_url=dsn,
            data_dir=Path(tempfile.mkdtemp(prefix="sepulki-bench-data-")),
            argon2_time_cost=1,
            argon2_memory_kib=1024,
            # Thousands of requests a second from one caller: the per-IP request limit would
            # refuse nearly all of them and the figure would measure 429 answers.
            request_rate_limit_ip="0",
        )
        cached_app = create_app(base, caches=True)
        plain_app = create_app(base.replace(seed_on_start=False), caches=False)
        async with (
            cached_app.router.lifespan_context(cached_app),
            plain_app.router.lifespan_context(plain_app),
        ):
            _, payload = await call(cached_app, json.dumps({"query": LOGIN}).encode(), [])
            token = json.loads(payload)["data"]["login"]["session"]["token"]
            auth = [(b"authorization", f"Bearer {token}".encode())]
            for name, query, headers in (("small", SMALL, []), ("nested_list", NESTED, auth)):
                body = json.dumps({"query": query}).encode()
                for app in (cached_app, plain_app):  # warm up both
                    await throughput(app, body, headers, 0.3)
                cached: list[float] = []
                plain: list[float] = []
                for _ in range(rounds):
                    cached.append(await throughput(cached_app, body, headers, seconds))
                    plain.append(await throughput(plain_app, body, headers, seconds))
                c, p = max(cached), max(plain)
                emit(
                    figure=f"query_{name}_rps",
                    value=round(c),
                    baseline=round(p),
                    baseline_name="same app without parse/validation caches",
                    ratio=round(c / p, 2),
                    unit="requests/s",
                    rounds=rounds,
                    seconds_per_round=seconds,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rounds))
