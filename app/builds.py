"""Build and temper jobs: the work behind castIngot and temperIngot (docs/builds.md).

A mutation writes a `build_jobs` row in its transaction; a worker (app.workers.builds) claims it
with FOR UPDATE SKIP LOCKED and a lease, so several workers never run one job at once and a job
whose worker died is run again once its lease ran out (at most SEPULKI_BUILD_MAX_ATTEMPTS runs).
A job finishes in one transaction that also moves its ingot and sepulka, and only while it still
holds its lease (`attempts` unchanged), so a worker that lost its lease cannot finish twice.

    ingot   BUILDING -> READY | BUILD_FAILED        sepulka CASTING -> READY | CAST_FAILED
    ingot   TEMPERING -> TEMPERED | TEMPER_FAILED   (temper results recorded)
"""

from __future__ import annotations

import json
import logging
import zlib
from datetime import UTC, datetime
from typing import Any

from app.core import tempering
from app.infra.db import Connection, Pool
from app.infra.storage import Storage

log = logging.getLogger("sepulki.builds")

INSERT_JOB = """
INSERT INTO build_jobs (ingot_id, kind, input, created_by) VALUES ($1, $2, $3, $4) RETURNING *
"""
CLAIM = """
UPDATE build_jobs j SET state = 'RUNNING', attempts = j.attempts + 1, started_at = now(),
  lease_until = now() + $1::int * interval '1 second'
FROM (SELECT id FROM build_jobs
      WHERE state = 'QUEUED' OR (state = 'RUNNING' AND lease_until < now())
      ORDER BY created_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) due
WHERE j.id = due.id
RETURNING j.*
"""
FINISH_JOB = """
UPDATE build_jobs SET state = $3, error = $4, finished_at = now(), lease_until = NULL
WHERE id = $1 AND state = 'RUNNING' AND attempts = $2
RETURNING id
"""
BUILD_INPUT = """
SELECT i.id, i.version, i.build_hash, i.sepulka_id, s.name AS sepulka_name, s.parameters,
       p.name AS pattern_name, p.category::text AS category, p.parameters AS schema, p.defaults,
       p.template
FROM ingots i JOIN sepulkas s ON s.id = i.sepulka_id LEFT JOIN patterns p ON p.id = s.pattern_id
WHERE i.id = $1
"""
ALLOYS_OF = """
SELECT a.id, a.name, a.type::text AS type, a.version, a.specifications, a.urdf_template
FROM sepulka_alloys sa JOIN alloys a ON a.id = sa.alloy_id WHERE sa.sepulka_id = $1 ORDER BY a.name, a.id
"""
FINISH_BUILD = """
UPDATE ingots SET status = $2::ingot_status, artifacts = $3, build_logs = build_logs || $4::text[]
WHERE id = $1 AND status = 'BUILDING'
RETURNING sepulka_id
"""
# Only the newest cast moves the sepulka: a stale build of an older ingot leaves it alone.
FINISH_SEPULKA = """
UPDATE sepulkas s SET status = $2::sepulka_status
WHERE s.id = $1 AND s.status = 'CASTING'
  AND NOT EXISTS (SELECT 1 FROM ingots i WHERE i.sepulka_id = s.id AND i.id <> $3 AND i.status = 'BUILDING')
"""
FINISH_TEMPER = """
UPDATE ingots SET status = $2::ingot_status, tempered = tempered OR $3,
  temper_results = COALESCE($4, temper_results), build_logs = build_logs || $5::text[]
WHERE id = $1 AND status = 'TEMPERING'
"""
JOBS_OF_INGOT = "SELECT * FROM build_jobs WHERE ingot_id = $1 ORDER BY created_at DESC, id"


class BuildError(ValueError):
    """The design cannot be built; the message goes to the build log."""


def _stamp(line: str) -> str:
    return f"{datetime.now(UTC).isoformat(timespec='milliseconds')} {line}"


async def enqueue(conn: Connection, ingot_id: str, kind: str, input: dict[str, Any], by: str | None) -> None:
    await conn.execute(INSERT_JOB, ingot_id, kind, input, by)


async def claim(conn: Connection, lease_s: int, limit: int) -> list[dict[str, Any]]:
    """Due jobs, now RUNNING under this worker's lease (on the worker's own connection)."""
    async with conn.transaction():
        return [dict(r) for r in await conn.fetch(CLAIM, lease_s, limit)]


def check_parameters(schema: Any, parameters: Any) -> list[str]:
    """Problems of the sepulka's parameters against its pattern's schema, as log lines."""
    problems = []
    for name, spec in (schema or {}).items():
        value = (parameters or {}).get(name)
        if value is None or not isinstance(spec, dict):
            continue
        kind = spec.get("type")
        if kind == "number":
            if not isinstance(value, int | float) or isinstance(value, bool):
                problems.append(f"parameter {name} must be a number, got {value!r}")
            elif "min" in spec and value < spec["min"] or "max" in spec and value > spec["max"]:
                problems.append(f"parameter {name}={value} is outside {spec.get('min')}..{spec.get('max')}")
        elif kind == "string" and not isinstance(value, str):
            problems.append(f"parameter {name} must be text, got {value!r}")
    return problems


def _urdf(design: dict[str, Any], alloys: list[dict[str, Any]]) -> bytes:
    links = "\n".join(
        f'  <link name="{a["type"].lower()}_{n}"><!-- {a["name"]} {a["version"]} -->'
        f"{a['urdf_template'] or ''}</link>"
        for n, a in enumerate(alloys)
    )
    return f'<?xml version="1.0"?>\n<robot name="{design["sepulka_name"]}">\n{links}\n</robot>\n'.encode()


def artifacts_of(design: dict[str, Any], alloys: list[dict[str, Any]]) -> list[tuple[str, str, bytes]]:
    """(type, file name, bytes) of each artifact: the manifest, the URDF and the firmware image.
    Deterministic: the same design builds the same bytes, so checksums compare builds."""
    if not alloys:
        raise BuildError("the sepulka has no alloys")
    problems = check_parameters(design["schema"], design["parameters"])
    if problems:
        raise BuildError("; ".join(problems))
    parameters = {**(design["defaults"] or {}), **(design["parameters"] or {})}
    manifest = {
        "sepulka": {"id": design["sepulka_id"], "name": design["sepulka_name"]},
        "ingot": {"id": design["id"], "version": design["version"], "buildHash": design["build_hash"]},
        "pattern": {"name": design["pattern_name"], "category": design["category"]},
        "alloys": [
            {"id": a["id"], "name": a["name"], "type": a["type"], "version": a["version"]} for a in alloys
        ],
        "parameters": parameters,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, indent=2).encode()
    # The firmware image: a header naming the build, then the compressed configuration.
    firmware = b"SEPULKI-FW1\n" + design["build_hash"].encode() + b"\n" + zlib.compress(manifest_bytes, 9)
    return [
        ("manifest", "manifest.json", manifest_bytes),
        ("urdf", "robot.urdf", _urdf(design, alloys)),
        ("firmware", "firmware.bin", firmware),
    ]


async def run_build(pool: Pool, storage: Storage, job: dict[str, Any]) -> bool:
    """Builds the job's ingot; True when this worker finished the job (it still held the lease)."""
    row = await pool.fetchrow(BUILD_INPUT, job["ingot_id"])
    if row is None:
        return await _finish(pool, job, "FAILED", "ingot is gone", [])
    design = dict(row)
    logs = [_stamp(f"Build {design['build_hash']} of {design['sepulka_name']} {design['version']} started")]
    alloys = [dict(r) for r in await pool.fetch(ALLOYS_OF, design["sepulka_id"])]
    logs.append(_stamp(f"Alloys: {', '.join(a['name'] for a in alloys) or 'none'}"))
    artifacts: list[dict[str, Any]] = []
    try:
        for kind, name, data in artifacts_of(design, alloys):
            stored = await storage.put(f"ingots/{design['id']}/{name}", data)
            artifacts.append(
                {"type": kind, "path": stored.key, "size": stored.size, "checksum": stored.checksum}
            )
            logs.append(_stamp(f"Wrote {stored.key} ({stored.size} bytes, {stored.checksum})"))
    except BuildError as exc:
        logs.append(_stamp(f"Build failed: {exc}"))
        return await _finish(pool, job, "FAILED", str(exc), logs, ingot=("BUILD_FAILED", [], "CAST_FAILED"))
    logs.append(_stamp("Build complete"))
    return await _finish(pool, job, "SUCCEEDED", None, logs, ingot=("READY", artifacts, "READY"))


async def _finish(
    pool: Pool,
    job: dict[str, Any],
    state: str,
    error: str | None,
    logs: list[str],
    *,
    ingot: tuple[str, list[dict[str, Any]], str] | None = None,
) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(FINISH_JOB, job["id"], job["attempts"], state, error) is None:
            log.warning("build job %s lost its lease before finishing", job["id"])
            return False
        if ingot is not None:
            status, artifacts, sepulka_status = ingot
            sepulka_id = await conn.fetchval(FINISH_BUILD, job["ingot_id"], status, artifacts, logs)
            if sepulka_id is not None:
                await conn.execute(FINISH_SEPULKA, sepulka_id, sepulka_status, job["ingot_id"])
    return True


async def run_temper(pool: Pool, job: dict[str, Any], iterations: int) -> bool:
    design = await pool.fetchrow(BUILD_INPUT, job["ingot_id"])
    if design is None:
        return await _finish(pool, job, "FAILED", "ingot is gone", [])
    data = job["input"] or {}
    logs = [_stamp(f"Tempering {design['version']} for {len(data.get('goals') or [])} goals")]
    try:
        goals = tempering.parse_goals(data.get("goals") or [])
        constraints = tempering.check_constraints(data.get("constraints"))
        results = tempering.temper(
            design["schema"],
            design["defaults"],
            design["parameters"],
            goals,
            constraints,
            iterations,
            job["ingot_id"],
        )
    except (ValueError, tempering.TemperError) as exc:
        logs.append(_stamp(f"Tempering failed: {exc}"))
        return await _finish_temper(pool, job, "FAILED", str(exc), None, logs)
    logs.append(_stamp(f"Tempering complete: {len(results['recommendations'])} recommendations"))
    return await _finish_temper(pool, job, "SUCCEEDED", None, results, logs)


async def _finish_temper(
    pool: Pool, job: dict[str, Any], state: str, error: str | None, results: Any, logs: list[str]
) -> bool:
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval(FINISH_JOB, job["id"], job["attempts"], state, error) is None:
            return False
        status = "TEMPERED" if state == "SUCCEEDED" else "TEMPER_FAILED"
        await conn.execute(FINISH_TEMPER, job["ingot_id"], status, results is not None, results, logs)
    return True


async def give_up(pool: Pool, job: dict[str, Any]) -> None:
    """A job that ran out of attempts: it fails, and so does its ingot (and the sepulka's cast)."""
    line = [_stamp(f"Gave up after {job['attempts'] - 1} interrupted runs")]
    if job["kind"] == "BUILD":
        await _finish(
            pool, job, "FAILED", "too many attempts", line, ingot=("BUILD_FAILED", [], "CAST_FAILED")
        )
    else:
        await _finish_temper(pool, job, "FAILED", "too many attempts", None, line)
