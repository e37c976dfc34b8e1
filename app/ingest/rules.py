"""The rule evaluator: active edicts run against every committed telemetry sample.

The pipeline hands it each committed batch's stored samples (`offer`, no I/O, never blocks the
writer); its own task evaluates what has gathered, in one transaction per round:

1. take a transaction-scoped advisory lock per robot of the round (in key order: no deadlocks),
2. read those robots' rule state (edict_rule_state; a pair with nothing to remember has no row),
3. step each (edict, robot) through the robot's samples in time order (`step`, pure),
4. write the states that changed, and record breaches and clears (app.alerts), then commit,
5. publish the round's events.

The state of a robot therefore lives in one place, its rows, and the lock makes the rounds of
several ingest workers that got samples of the same robot (MQTT shared subscriptions spread a
robot's messages) run one after the other: a worker restart loses nothing but what was not yet
committed. Missing-data rules are checked every SEPULKI_EDICT_MISSING_CHECK_S against robots'
lastSeen, under the same locks. docs/edicts.md describes the rule format and its semantics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from app import alerts
from app.core import edict_rules
from app.infra.bus import Events
from app.infra.db import Connection, Pool
from app.ingest.evaluation import Candidates, Edict, bounds_of, describe, idle, step
from app.ingest.messages import Sample
from app.settings import Settings

log = logging.getLogger("sepulki.rules")

ACTIVE_EDICTS = """
SELECT id, name, severity::text AS severity, rules, applies_to FROM edicts
WHERE active AND deleted_at IS NULL ORDER BY id
"""
ROBOT_SCOPES = """
SELECT r.id, r.fleet_id, f.locus_id, t.type::text AS task_type,
       extract(epoch FROM r.last_seen) AS last_seen
FROM robots r JOIN fleets f ON f.id = r.fleet_id LEFT JOIN tasks t ON t.id = f.active_task_id
WHERE r.deleted_at IS NULL
"""
LOCK_ROBOTS = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k"
STATES = "SELECT edict_id, robot_id, state FROM edict_rule_state WHERE robot_id = ANY($1::uuid[])"
SAVE_STATES = """
INSERT INTO edict_rule_state (edict_id, robot_id, state)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::jsonb[])
ON CONFLICT (robot_id, edict_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
"""
DROP_STATES = """
DELETE FROM edict_rule_state s USING unnest($1::uuid[], $2::uuid[]) AS u(edict_id, robot_id)
WHERE s.edict_id = u.edict_id AND s.robot_id = u.robot_id
"""
LOCK_NAMESPACE = 0x5E9_ED1C
# A round's checkout waits at most this long (a connect to a restarting server can go unanswered),
# and so does the pool's release of its connection after a failed round.
ACQUIRE_TIMEOUT_S = 10.0


def robot_lock(robot_id: str) -> int:
    """The advisory lock key of a robot: 60 bits of its id, within our namespace."""
    return (int(robot_id.replace("-", "")[:15], 16) ^ LOCK_NAMESPACE) - 2**59


class RuleEngine:
    """See the module docstring."""

    def __init__(self, pool: Pool, events: Events | None, settings: Settings) -> None:
        self._pool = pool
        self._events = events
        self._settings = settings
        self._pending: list[Sample] = []
        self._wake = asyncio.Event()
        self._edicts: list[Edict] = []
        self._robots: dict[str, dict[str, Any]] = {}
        self._scoped: dict[str, Candidates] = {}
        self._loaded_at = -1e9
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0
        self.breaches = 0

    def offer(self, samples: list[Sample]) -> None:
        """Committed samples to evaluate (called by the pipeline after each commit)."""
        if samples:
            self._pending.extend(samples)
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="edict-evaluator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending:
            # What gathered since the last round, evaluated once more before the process ends.
            with contextlib.suppress(Exception):
                await self._round()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_missing = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_missing - loop.time())):
                    await self._wake.wait()
            # Cleared before the round: samples offered during it set it again for the next.
            self._wake.clear()
            try:
                if self._pending:
                    self._busy = True
                    try:
                        await self._round()
                    finally:
                        self._busy = False
                if loop.time() >= next_missing:
                    next_missing = loop.time() + self._settings.edict_missing_check_s
                    await self._missing()
            except Exception:
                # Samples of a failed round are kept for the next one (the state did not move).
                log.exception("edict evaluation failed; retrying")
                await asyncio.sleep(0.5)

    async def _refresh(self) -> None:
        if asyncio.get_running_loop().time() - self._loaded_at < self._settings.edict_reload_s:
            return
        edicts = []
        for row in await self._pool.fetch(ACTIVE_EDICTS):
            try:
                parsed = edict_rules.parse(row["rules"])
            except Exception as exc:  # stored before rules were checked this strictly
                log.warning("edict %s is not evaluated: %s", row["id"], exc)
                continue
            if not parsed.rules:
                continue  # no conditions: nothing can breach it
            scope = row["applies_to"] or {}
            keys = ("fleets", "robots", "locations", "taskTypes")
            sets = {k: frozenset(str(v) for v in scope.get(k) or ()) for k in keys}
            edicts.append(Edict(row["id"], row["name"], row["severity"], parsed, sets))
        self._edicts = edicts
        self._robots = {r["id"]: dict(r) for r in await self._pool.fetch(ROBOT_SCOPES)}
        self._scoped = {}
        self._loaded_at = asyncio.get_running_loop().time()

    def _applicable(self, robot_id: str) -> Candidates:
        """The edicts of a robot, worked out (and indexed) once per reload."""
        found = self._scoped.get(robot_id)
        if found is None:
            robot = self._robots.get(robot_id)
            edicts = [] if robot is None else [e for e in self._edicts if e.applies(robot_id, robot)]
            found = self._scoped[robot_id] = Candidates(robot_id, edicts)
        return found

    @property
    def idle(self) -> bool:
        """Nothing waiting and no round running."""
        return not self._pending and not self._busy

    async def _round(self) -> None:
        await self._refresh()
        samples, self._pending = self._pending, []
        by_robot: dict[str, list[Sample]] = {}
        for sample in samples:
            if sample.status is None:
                by_robot.setdefault(sample.robot_id, []).append(sample)
        work = {r: (s, e) for r, s in by_robot.items() if (e := self._applicable(r)).edicts}
        if not work:
            return
        try:
            await self._evaluate(work)
        except Exception:
            self._pending[:0] = samples
            raise

    async def _evaluate(self, work: dict[str, tuple[list[Sample], Candidates]]) -> None:
        recorded = alerts.Recorded([], [])
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            states = await self._lock_and_load(conn, list(work))
            saved, dropped = [], []
            with_state: dict[str, set[str]] = {}
            for edict_id, robot_id in states:
                with_state.setdefault(robot_id, set()).add(edict_id)
            for robot_id, (samples, candidates) in work.items():
                samples.sort(key=lambda s: (s.ts, s.seq))
                bounds = bounds_of(samples)
                for edict in candidates.due(bounds, with_state.get(robot_id, set())):
                    key = (edict.id, robot_id)
                    before = states.get(key)
                    if before is None and edict.thresholds_only and not edict.could_breach(robot_id, bounds):
                        continue  # idle, and no sample of the round can change that
                    # A deep copy (rate and anomaly memories are nested; `before` tells what changed).
                    state = orjson.loads(orjson.dumps(before)) if before is not None else {}
                    for sample in samples:
                        outcome = step(edict, robot_id, state, sample)
                        if outcome is not None:
                            recorded.extend(await self._act(conn, edict, robot_id, sample.ts, *outcome))
                    if idle(state, samples[-1].ts.timestamp(), edict.rules.cooldown_s):
                        if before is not None:
                            dropped.append(key)
                    elif state != before:
                        saved.append((*key, state))
            await self._save(conn, saved, dropped)
        self.rounds += 1
        if self._events is not None:
            await alerts.publish(self._events, recorded)

    async def _lock_and_load(self, conn: Connection, robot_ids: list[str]) -> dict[tuple[str, str], Any]:
        await conn.execute(LOCK_ROBOTS, sorted({robot_lock(r) for r in robot_ids}))
        rows = await conn.fetch(STATES, robot_ids)
        return {(r["edict_id"], r["robot_id"]): r["state"] for r in rows}

    async def _save(self, conn: Connection, saved: list[Any], dropped: list[Any]) -> None:
        if saved:
            await conn.execute(
                SAVE_STATES, [s[0] for s in saved], [s[1] for s in saved], [s[2] for s in saved]
            )
        if dropped:
            await conn.execute(DROP_STATES, [d[0] for d in dropped], [d[1] for d in dropped])

    async def _act(
        self, conn: Connection, edict: Edict, robot_id: str, at: datetime, kind: str, details: dict[str, Any]
    ) -> alerts.Recorded:
        if kind == "clear":
            return await alerts.record_clear(conn, edict.id, robot_id, at)
        self.breaches += 1
        breach = alerts.Breach(
            edict_id=edict.id,
            edict_name=edict.name,
            robot_id=robot_id,
            fleet_id=self._robots[robot_id]["fleet_id"],
            severity=details["severity"],
            message=describe(edict, details["values"]),
            data={"values": details["values"], "at": at},
            at=at,
            actions=edict.rules.actions,
        )
        return await alerts.record_breach(
            conn, breach, self._settings.command_ttl_s, repeat=details.get("repeat", False)
        )

    async def _missing(self) -> None:
        """Robots silent for longer than a missing-data rule allows breach it (once, until they
        send again: their next sample clears it)."""
        self._loaded_at = -1e9  # robots' lastSeen must be fresh
        await self._refresh()
        now = datetime.now(UTC)
        work: dict[str, list[Edict]] = {}
        for edict in self._edicts:
            limits = [r.seconds for r in edict.rules.rules if r.kind == "missing"]
            if not limits:
                continue
            for robot_id, robot in self._robots.items():
                seen = robot["last_seen"]
                if (
                    seen is not None
                    and now.timestamp() - float(seen) > max(limits)
                    and edict.applies(robot_id, robot)
                ):
                    work.setdefault(robot_id, []).append(edict)
        if not work:
            return
        recorded = alerts.Recorded([], [])
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            states = await self._lock_and_load(conn, list(work))
            saved = []
            for robot_id, edicts in work.items():
                for edict in edicts:
                    state = dict(states.get((edict.id, robot_id)) or {})
                    if state.get("b"):
                        continue
                    state["b"], state["fired"] = True, now.timestamp()
                    recorded.extend(
                        await self._act(
                            conn, edict, robot_id, now, "breach", {"severity": edict.severity, "values": {}}
                        )
                    )
                    saved.append((edict.id, robot_id, state))
            await self._save(conn, saved, [])
        if self._events is not None:
            await alerts.publish(self._events, recorded)
