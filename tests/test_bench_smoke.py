"""The benchmarks still run: each bench script in its short smoke mode, as a maintainer runs it
(`.venv/bin/python -m bench.<name> ...`), prints its table and figures. The figures themselves are
not asserted (2 shared cores); bench/RESULTS.md records full runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str, timeout: float = 300) -> tuple[str, dict[str, dict[str, Any]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPULKI_")}
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            figure = json.loads(line)
            figures[figure["figure"]] = figure
    return done.stdout, figures


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by ./run test (apt)")
def test_bench_http_measures_sepulki_and_both_baselines_with_wrk() -> None:
    out, figures = run_bench("bench.http", "--smoke")
    assert "`{ __typename }` req/s" in out and "× vanilla Ariadne" in out
    for name in ("small_sepulki", "small_vanilla", "small_starlette", "robot_sepulki", "nested_sepulki"):
        assert figures[f"http_{name}"]["rps"] > 0, name
    for name in ("small", "robot", "nested"):
        assert figures[f"http_{name}_p99_at_70pct"]["p99_ms"] > 0


def test_bench_stream_delivers_every_event_to_a_few_sockets() -> None:
    out, figures = run_bench("bench.stream", "--smoke")
    assert "RSS per idle socket KB" in out
    assert figures["stream_delivered_fraction"]["value"] == 1.0
    assert figures["stream_delivered_fraction"]["duplicates"] == 0
    assert figures["stream_rss_per_idle_socket_kb"]["value"] is not None


def test_bench_ingest_commits_every_message_of_a_small_round() -> None:
    _, figures = run_bench(
        *("bench.ingest", "--messages", "2000", "--rounds", "1", "--burst", "1"),
        *("--robots", "10", "--workers", "2"),
    )
    committed = figures["ingest_committed_msgs_per_s"]
    assert (committed["lost"], committed["duplicated"]) == (0, 0)
    assert committed["value"] > 0 and committed["baseline"] > 0


def test_bench_analytics_small_measures_every_query_against_its_raw_baseline() -> None:
    _, figures = run_bench("bench.analytics", "--small", "--runs", "3", timeout=240)
    assert figures["telemetry_copy_rows_per_s"]["rows"] >= 20_000  # and the development seed's
    assert figures["rollup_build_s"]["value"] > 0
    assert figures["bytes_per_raw_sample"]["value"] > 0
    for name in ("fleetPerformance", "robotHealth", "batteryAnalytics", "utilizationReport"):
        figure = figures[f"{name}_ms"]
        assert figure["p95"] >= figure["p50"] > 0 and figure["baseline_p95"] > 0, name
    # 30 days of a 20-robot fleet: daily buckets by default, the rolled-up cap when HOUR is asked.
    picked, hourly = figures["bellows_30d_ms"], figures["bellows_30d_hour_ms"]
    assert (picked["resolution"], hourly["resolution"]) == ("DAY", "HOUR")
    assert 0 < picked["entries"] <= 1000 and hourly["entries"] == 1000
    assert picked["baseline_entries"] == 5000
    assert figures["drop_month_ms"]["rows"] > 0
