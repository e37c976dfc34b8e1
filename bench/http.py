"""HTTP throughput of the GraphQL endpoint, measured from outside with wrk (Debian's `wrk`).

    .venv/bin/python -m bench.http [--seconds 10] [--rounds 2] [--connections 32] [--replicas 1|2]
    .venv/bin/python -m bench.http --smoke          # a second per figure: the CI check that it runs

Servers, each its own process with one uvicorn worker, started by this script in this order:

- `sepulki serve` with SEPULKI_ENV=production (the shipped middleware, access log and JSON
  logging, GraphQL caches and limits; the per-IP request limit raised so that one loopback client
  is not refused), embedded PostgreSQL with the development seed;
- vanilla Ariadne: `ariadne.asgi.GraphQL` over the same SDL (`sepulki schema`), no resolvers;
- raw Starlette: one route answering POST /graphql with the bytes `{ __typename }` gets.

Both baselines run under uvicorn with the same loop (uvloop) and HTTP parser (httptools), access
log off. Rounds alternate between the servers so that the shared machine's noise hits all alike;
the best round of each is kept. Latency at 70 % of saturation: the same query paced with wrk's
`delay()` to 0.7 of the rate just measured. Prints a table with the targets, then one JSON line
per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.common import database, emit
from bench.query import NESTED

SMALL = "{ __typename }"
ROBOT = (
    'query Robot { robot(id: "70000000-0000-4000-8000-000000000001") '
    "{ id name status fleetId batteryLevel healthScore lastSeen } }"
)
LOGIN = (
    'mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"})'
    " { session { token } } }"
)
SMALL_ANSWER = b'{"data":{"__typename":"Query"}}'
# Targets (req/s, and ratio to vanilla Ariadne for the small query; p99 at 70 % in ms).
TARGETS = {"small": 5000.0, "small_vs_vanilla": 3.0, "robot": 4000.0, "nested": 1500.0, "p99_ms": 25.0}

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("BENCH_AUTH")
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
if pause > 0 then function delay() return pause end end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non2xx":%d,"socket_errors":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


# -- the baseline servers (run as `python -m bench.http --serve vanilla|starlette --port N`) ------


def _baseline_app(kind: str) -> Any:
    if kind == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def graphql(request: Request) -> Response:
            await request.body()
            return Response(SMALL_ANSWER, media_type="application/json")

        return Starlette(routes=[Route("/graphql", graphql, methods=["POST"])])
    from ariadne import make_executable_schema
    from ariadne.asgi import GraphQL

    sdl = subprocess.run(
        [sys.executable, "-m", "app.cli", "schema"], check=True, capture_output=True, text=True
    ).stdout
    return GraphQL(make_executable_schema(sdl))


def _serve_baseline(kind: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        _baseline_app(kind),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


# -- processes -------------------------------------------------------------------------------------


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


async def _wait_up(url: str, process: asyncio.subprocess.Process, log: Path, body: bytes) -> None:
    import httpx

    deadline = time.monotonic() + 90
    async with httpx.AsyncClient() as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(url, content=body, headers={"content-type": "application/json"})
                if response.status_code == 200:
                    return
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start:\n{_tail(log)}")
            await asyncio.sleep(0.3)


@contextlib.asynccontextmanager
async def _process(
    args: list[str], env: dict[str, str], log: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    out = log.open("wb")
    process = await asyncio.create_subprocess_exec(*args, env=env, stdout=out, stderr=out)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        out.close()


def sepulki_env(dsn: str, port: int, data_dir: Path) -> dict[str, str]:
    env = os.environ | {
        "SEPULKI_ENV": "production",
        "SEPULKI_JWT_SECRET": "bench-secret-bench-secret-bench-secret-0123",
        "SEPULKI_DATABASE_URL": dsn,
        "SEPULKI_PORT": str(port),
        "SEPULKI_DATA_DIR": str(data_dir),
        "SEPULKI_MIGRATE_ON_START": "true",
        "SEPULKI_SEED_ON_START": "true",
        "SEPULKI_SIMULATE_ROBOTS": "0",
        "SEPULKI_INGEST_IN_API": "false",
        "SEPULKI_MAIL_TO_FILES": "true",
        # One client IP sends everything here; the limiter still runs (and costs what it costs).
        "SEPULKI_REQUEST_RATE_LIMIT_IP": "100000000/minute",
    }
    for name in ("SEPULKI_MQTT_URL", "SEPULKI_REDIS_URL"):
        env.pop(name, None)
    return env


# -- wrk ---------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def wrk(
    url: str,
    body: str,
    seconds: float,
    connections: int,
    script: Path,
    auth: str = "",
    delay_ms: int = 0,
    pid: int | None = None,
) -> dict[str, Any]:
    """One wrk run; with the server's `pid`, also the CPU the server spent per request (`cpu_us`)
    and its share of one core (`cpu_share`): unlike req/s, these hardly move with the load others
    put on the shared machine, as long as the server is the bottleneck (cpu_share near 1)."""
    env = os.environ | {"BENCH_BODY": body, "BENCH_AUTH": auth, "BENCH_DELAY_MS": str(delay_ms)}
    cpu_before = _cpu_seconds(pid)
    process = await asyncio.create_subprocess_exec(
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    lines = [line for line in out.decode().splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {out.decode()} {err.decode()}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    if pid is not None:
        cpu = _cpu_seconds(pid) - cpu_before
        result["cpu_us"] = cpu / max(1, result["requests"]) * 1e6
        result["cpu_share"] = cpu / (result["duration_us"] / 1e6)
    if result["non2xx"] or result["socket_errors"]:
        raise RuntimeError(
            f"{url}: {result['non2xx']} non-2xx answers, {result['socket_errors']} socket errors"
        )
    return result


async def _check(url: str, body: str, auth: str, expect: bytes | None = None) -> None:
    """One request by hand before measuring: a 200 without errors (wrk only sees the status)."""
    import httpx

    headers = {"content-type": "application/json"} | ({"authorization": auth} if auth else {})
    async with httpx.AsyncClient() as client:
        response = await client.post(url, content=body, headers=headers)
    if response.status_code != 200 or b'"errors"' in response.content:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    if expect is not None and response.content != expect:
        raise RuntimeError(f"{url} answered {response.content!r}, not {expect!r}")


async def _token(url: str) -> str:
    import httpx

    async with httpx.AsyncClient() as client:
        response = await client.post(url, json={"query": LOGIN})
    return f"Bearer {response.json()['data']['login']['session']['token']}"


# -- the run -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.servers import free_port

    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (./run test installs it)")
    seconds, rounds = (1.0, 1) if args.smoke else (args.seconds, args.rounds)
    async with database() as dsn:
        with tempfile.TemporaryDirectory(prefix="sepulki-bench-http-") as tmp_name:
            tmp = Path(tmp_name)
            script = tmp / "post.lua"
            script.write_text(WRK_SCRIPT)
            small = json.dumps({"query": SMALL})
            ports = [free_port() for _ in range(args.replicas)]
            vanilla_port, starlette_port = free_port(), free_port()
            async with contextlib.AsyncExitStack() as stack:
                procs: dict[str, asyncio.subprocess.Process] = {}
                for n, port in enumerate(ports):
                    data_dir = tmp / f"sepulki-{n}"
                    data_dir.mkdir()
                    log = tmp / f"sepulki-{n}.log"
                    env = sepulki_env(dsn, port, data_dir)
                    if n > 0:
                        env |= {"SEPULKI_MIGRATE_ON_START": "false", "SEPULKI_SEED_ON_START": "false"}
                    proc = await stack.enter_async_context(
                        _process([sys.executable, "-m", "app.cli", "serve"], env, log)
                    )
                    await _wait_up(f"http://127.0.0.1:{port}/graphql", proc, log, small.encode())
                    procs[f"sepulki-{n}"] = proc
                for kind, port in (("vanilla", vanilla_port), ("starlette", starlette_port)):
                    log = tmp / f"{kind}.log"
                    proc = await stack.enter_async_context(
                        _process(
                            [sys.executable, "-m", "bench.http", "--serve", kind, "--port", str(port)],
                            dict(os.environ),
                            log,
                        )
                    )
                    await _wait_up(f"http://127.0.0.1:{port}/graphql", proc, log, small.encode())
                    procs[kind] = proc
                urls = {
                    "sepulki": [f"http://127.0.0.1:{port}/graphql" for port in ports],
                    "vanilla": [f"http://127.0.0.1:{vanilla_port}/graphql"],
                    "starlette": [f"http://127.0.0.1:{starlette_port}/graphql"],
                }
                pids = {
                    "sepulki": [procs[f"sepulki-{n}"].pid for n in range(len(ports))],
                    "vanilla": [procs["vanilla"].pid],
                    "starlette": [procs["starlette"].pid],
                }
                auth = await _token(urls["sepulki"][0])
                robot, nested = json.dumps({"query": ROBOT}), json.dumps({"query": NESTED})
                await _check(urls["sepulki"][0], small, "", SMALL_ANSWER)
                await _check(urls["vanilla"][0], small, "", SMALL_ANSWER)
                await _check(urls["starlette"][0], small, "", SMALL_ANSWER)
                await _check(urls["sepulki"][0], robot, auth)
                await _check(urls["sepulki"][0], nested, auth)
                plan = [
                    ("small", "sepulki", small, ""),
                    ("small", "vanilla", small, ""),
                    ("small", "starlette", small, ""),
                    ("robot", "sepulki", robot, auth),
                    ("nested", "sepulki", nested, auth),
                ]
                best: dict[tuple[str, str], dict[str, Any]] = {}
                # Every server's connections: the same total whether one replica or two.
                per = max(1, args.connections // len(ports))
                for _ in range(rounds):
                    for name, server, body, token in plan:
                        targets = urls[server]
                        conns = per if server == "sepulki" else args.connections
                        results = await asyncio.gather(
                            *(
                                wrk(u, body, seconds, conns, script, token, pid=pids[server][i])
                                for i, u in enumerate(targets)
                            )
                        )
                        merged = {
                            "rps": sum(r["rps"] for r in results),
                            "p99_us": max(r["p99_us"] for r in results),
                            "p50_us": max(r["p50_us"] for r in results),
                            "cpu_us": sum(r["cpu_us"] * r["requests"] for r in results)
                            / max(1, sum(r["requests"] for r in results)),
                            "cpu_share": sum(r["cpu_share"] for r in results) / len(results),
                        }
                        key = (name, server)
                        if key not in best or merged["rps"] > best[key]["rps"]:
                            best[key] = merged
                if args.profile:
                    await profile(
                        Path(args.profile),
                        procs["sepulki-0"].pid,
                        urls["sepulki"][0],
                        plan,
                        seconds,
                        args.connections,
                        script,
                    )
                # p99 at 70 % of the measured saturation, paced per connection.
                paced: dict[str, dict[str, Any]] = {}
                for name, body, token in (
                    ("small", small, ""),
                    ("robot", robot, auth),
                    ("nested", nested, auth),
                ):
                    rate = 0.7 * best[(name, "sepulki")]["rps"]
                    delay_ms = max(
                        1, round(args.connections / rate * 1000 - best[(name, "sepulki")]["p50_us"] / 1000)
                    )
                    results = await asyncio.gather(
                        *(wrk(u, body, seconds, per, script, token, delay_ms) for u in urls["sepulki"])
                    )
                    paced[name] = {
                        "rps": sum(r["rps"] for r in results),
                        "p99_us": max(r["p99_us"] for r in results),
                        "target_rps": rate,
                    }
    report = {"best": best, "paced": paced, "replicas": args.replicas, "seconds": seconds, "rounds": rounds}
    print_table(report)
    return report


async def profile(
    out: Path,
    pid: int,
    url: str,
    plan: list[tuple[str, str, str, str]],
    seconds: float,
    connections: int,
    script: Path,
) -> None:
    """py-spy samples (collapsed stacks, `--format raw`) of the sepulki process under each query's
    load: out/<query>.txt, and the functions with the most samples (own and total) printed."""
    os.makedirs(out, exist_ok=True)
    for name, server, body, token in plan:
        if server != "sepulki":
            continue
        target = out / f"{name}.txt"
        spy = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "-p",
            str(pid),
            "-r",
            "200",
            "-d",
            str(max(2, round(seconds))),
            "-f",
            "raw",
            "-o",
            str(target),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        result = await wrk(url, body, seconds + 1, connections, script, token)
        await spy.wait()
        print(f"\nprofile {name} ({result['rps']:,.0f} req/s while sampled): {target}")
        for line in summarize(target):
            print("  " + line)


def summarize(collapsed: Path, top: int = 15) -> list[str]:
    """The frames with the most samples, as `total% own% function (file)`."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not samples:
        return ["no samples"]
    ranked = sorted(total, key=lambda f: -total[f])
    lines = [
        f"{100 * total[f] / samples:5.1f}% {100 * own.get(f, 0) / samples:5.1f}%  {f}" for f in ranked[:top]
    ]
    lines.append("by own samples:")
    lines += [f"{100 * own[f] / samples:5.1f}%  {f}" for f in sorted(own, key=lambda f: -own[f])[:top]]
    return lines


def print_table(report: dict[str, Any]) -> None:
    best, paced = report["best"], report["paced"]
    small, vanilla, raw = (best[("small", s)]["rps"] for s in ("sepulki", "vanilla", "starlette"))
    replicas = report["replicas"]
    rows = [
        (
            "`{ __typename }` req/s",
            small,
            TARGETS["small"] * replicas,
            f"vanilla Ariadne {vanilla:,.0f}, raw Starlette {raw:,.0f}",
        ),
        (
            "  × vanilla Ariadne",
            small / vanilla,
            TARGETS["small_vs_vanilla"],
            f"{small / raw:.2f} of raw Starlette",
        ),
        ("authenticated robot(id) req/s", best[("robot", "sepulki")]["rps"], TARGETS["robot"] * replicas, ""),
        ("nested fleets req/s", best[("nested", "sepulki")]["rps"], TARGETS["nested"] * replicas, ""),
    ]
    for name in ("small", "robot", "nested"):
        rows.append(
            (
                f"p99 ms at 70 % ({name}, {paced[name]['rps']:,.0f} req/s)",
                paced[name]["p99_us"] / 1000,
                TARGETS["p99_ms"],
                f"paced to {paced[name]['target_rps']:,.0f} req/s",
            )
        )
    cpu = {key: result["cpu_us"] for key, result in best.items()}
    rows.append(
        (
            "server CPU µs per `{ __typename }`",
            cpu[("small", "sepulki")],
            1e6 / TARGETS["small"],
            f"vanilla {cpu[('small', 'vanilla')]:,.0f}, raw Starlette {cpu[('small', 'starlette')]:,.0f}"
            f" (× vanilla {cpu[('small', 'vanilla')] / cpu[('small', 'sepulki')]:.2f})",
        )
    )
    rows.append(("server CPU µs per robot(id)", cpu[("robot", "sepulki")], 1e6 / TARGETS["robot"], ""))
    rows.append(("server CPU µs per nested", cpu[("nested", "sepulki")], 1e6 / TARGETS["nested"], ""))
    print(
        f"\nbench.http: {replicas} sepulki replica(s), wrk -t1,"
        f" best of {report['rounds']} × {report['seconds']:.0f} s"
    )
    print(f"{'figure':<44} {'value':>10} {'target':>10}  ok  baseline (same run)")
    for figure, value, target, note in rows:
        ok = value <= target if figure.startswith(("p99", "server CPU")) else value >= target
        print(f"{figure:<44} {value:>10,.2f} {target:>10,.2f}  {'yes' if ok else 'NO ':<3} {note}")
    for (name, server), result in sorted(best.items()):
        emit(
            figure=f"http_{name}_{server}",
            rps=round(result["rps"], 1),
            p99_ms=round(result["p99_us"] / 1000, 2),
            cpu_us=round(result["cpu_us"], 1),
            cpu_share=round(result["cpu_share"], 2),
        )
    for name, result in paced.items():
        emit(
            figure=f"http_{name}_p99_at_70pct",
            rps=round(result["rps"], 1),
            p99_ms=round(result["p99_us"] / 1000, 2),
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--replicas", type=int, default=1, help="sepulki serve processes (wrk per replica)")
    parser.add_argument("--smoke", action="store_true", help="one round of 1 s per figure")
    parser.add_argument("--profile", metavar="DIR", help="also sample the API with py-spy under each query")
    parser.add_argument("--serve", choices=["vanilla", "starlette"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve_baseline(args.serve, args.port)
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
