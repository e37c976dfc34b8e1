"""One ingest batch, written by one SQL statement: samples, robot events, dead letters, the robot
rows, and the event-log rows of what subscribers will be told after the commit.

Why one statement: under load the ingest event loop is busy with thousands of messages, and every
round trip to PostgreSQL waits for a turn of that loop; a batch of separate statements (BEGIN,
inserts, update, event log, COMMIT) spent most of its time waiting so. The statement's
data-modifying CTEs all see the same snapshot and commit together (a statement outside a
transaction block is its own transaction). A batch with command acks runs it inside a
transaction, after `app.commands.apply_acks`.

`ON CONFLICT DO NOTHING` tells which messages were new; the statement returns the keys of those
that were not (a redelivery: counted as duplicates, usually none) and the events to publish. Only
new rows move the robot rows and reach the event log. Each sample's bellows entries are rendered
here (orjson) and PostgreSQL only joins those of the new samples: building 3,000 JSON objects per
batch with jsonb_build_object took a third of the statement's time.

A telemetry sample is identified by (robot_id, seq), but the table's key is (robot_id, seq, ts)
because partitions by time need ts in every unique key. So a sample whose (robot_id, seq) is
already stored with a `ts` within `DEDUP_WINDOW` of its own is a duplicate too (a retransmission
stamped anew): one probe of the primary key per sample, in the same statement. It sees committed
rows only: two copies committed at the same instant by different workers could both be stored.

The fleet's bellows event carries every new telemetry sample of the batch (status messages and
samples without metrics have nothing to show), in (robot, ts, seq) order, plus all robot events:
a dashboard sees what storage has, however fast a robot sends. Each sample is one compact entry
(`samples`: robot, seq, timestamp, battery, health, pose and its metrics as one object) that the
API expands into one TelemetryMetric per metric (resolvers/bellows.py); one entry per metric,
rendered for every sample, was ~300 KB of JSON per batch of 1,000 and the largest part of the
statement (~12 of ~30 ms, `bench/RESULTS.md`), which is why an earlier version kept only each
robot's newest sample. A redelivered sample (already stored, so not new) has no entry: it was
published when it was first stored.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from app.core.channels import channels
from app.infra.db import Connection, Pool
from app.ingest.messages import (
    DUPLICATE,
    STORED,
    CommandAck,
    Item,
    Outcome,
    RawMessage,
    Rejected,
    RobotEvent,
    Sample,
)

log = logging.getLogger("sepulki.ingest")

# A sample repeating a stored sample's (robot_id, seq) with a `ts` less than this apart is a
# duplicate (docs/ingest.md); robots must not reuse a seq within it.
DEDUP_WINDOW = timedelta(hours=24)

# $1-$8 samples (telemetry, and status messages stored as samples carrying only the status: they
# share the idempotency key, so a retained status delivered again is a duplicate and does not
# overwrite newer state), $22 their bellows entries ('' for those without metrics);
# $9-$15 robot events; $16-$21 dead letters (+ $27-$28); $23-$25 channel names; $26 the dedup window;
# $29 each sample's source (mqtt, http).
#
# Robot rows: lastSeen moves to the newest new message (never back, never past now()); battery,
# health and pose come from the newest new telemetry sample (a field it leaves out keeps its value)
# and apply only when that sample is not older than the robot's lastSeen, since several workers
# commit in any order; a status message always applies (its content key already made a replay a
# duplicate, and a Last Will carries the time the robot connected, older than its last sample).
WRITE_BATCH = """
WITH s AS (
  SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::text[], $5::float8[],
                       $6::float8[], $7::text[], $8::text[], $22::text[], $29::text[])
         AS s(robot_id, seq, ts, status, battery_level, health_score, pose, metrics, bellows, source)
), ins AS (
  INSERT INTO telemetry (robot_id, fleet_id, seq, ts, status, battery_level, health_score, pose, metrics,
                         is_status)
  SELECT s.robot_id::uuid, r.fleet_id, s.seq, s.ts, coalesce(s.status::robot_status, r.status),
         s.battery_level, s.health_score, s.pose::jsonb, s.metrics::jsonb, s.status IS NOT NULL
  FROM s JOIN robots r ON r.id = s.robot_id::uuid
  WHERE NOT EXISTS (
    SELECT FROM telemetry t
    WHERE t.robot_id = s.robot_id::uuid AND t.seq = s.seq
      AND t.ts BETWEEN s.ts - $26::interval AND s.ts + $26::interval
  )
  ON CONFLICT DO NOTHING
  RETURNING robot_id, fleet_id, seq, ts, battery_level, health_score, pose, metrics
), new AS (
  SELECT i.*, s.status AS reported_status, s.bellows, s.source
  FROM ins i JOIN s ON s.robot_id::uuid = i.robot_id AND s.seq = i.seq AND s.ts = i.ts
), pending AS (
  -- The samples' minutes are marked for the rollup worker, committed with the samples. DO UPDATE
  -- ... WHERE false writes nothing but locks an existing mark until this commits, and the worker
  -- skips locked marks: it never consumes a mark before the rows behind it are visible
  -- (migrations/20261202_51_telemetry_rollups.sql). Sorted, so writers lock marks in one order.
  INSERT INTO telemetry_rollup_pending (robot_id, bucket)
  SELECT DISTINCT robot_id, date_trunc('minute', ts, 'UTC') FROM new WHERE reported_status IS NULL
  ORDER BY 1, 2
  ON CONFLICT (robot_id, bucket) DO UPDATE SET robot_id = excluded.robot_id WHERE false
), e AS (
  SELECT * FROM unnest($9::text[], $10::bigint[], $11::timestamptz[], $12::text[], $13::text[],
                       $14::text[], $15::text[])
         AS e(robot_id, seq, ts, type, severity, message, data)
), ins_e AS (
  INSERT INTO robot_events (robot_id, fleet_id, seq, ts, type, severity, message, data)
  SELECT e.robot_id::uuid, r.fleet_id, e.seq, e.ts, e.type, e.severity, e.message, e.data::jsonb
  FROM e JOIN robots r ON r.id = e.robot_id::uuid
  -- Like samples: robot_events is partitioned by ts, so its unique key is (robot_id, seq, ts) and
  -- a copy stamped anew is caught by the dedup window.
  WHERE NOT EXISTS (
    SELECT FROM robot_events x
    WHERE x.robot_id = e.robot_id::uuid AND x.seq = e.seq
      AND x.ts BETWEEN e.ts - $26::interval AND e.ts + $26::interval
  )
  ON CONFLICT DO NOTHING
  RETURNING id, robot_id, fleet_id, seq, ts, type, severity, message, data
), dead AS (
  INSERT INTO dead_letters (source, topic, robot_id, reason, detail, payload, payload_size, payload_sha256)
  SELECT * FROM unnest($16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::bytea[],
                       $27::bigint[], $28::bytea[])
), seen AS (
  SELECT robot_id, max(ts) AS seen
  FROM (SELECT robot_id, ts FROM new UNION ALL SELECT robot_id, ts FROM ins_e) AS x
  GROUP BY robot_id
), latest AS (
  SELECT DISTINCT ON (robot_id) robot_id, ts AS sample_ts, battery_level, health_score,
         pose || jsonb_build_object('timestamp', ts) AS pose
  FROM new WHERE reported_status IS NULL
  ORDER BY robot_id, ts DESC
), latest_status AS (
  SELECT DISTINCT ON (robot_id) robot_id, reported_status, source
  FROM new WHERE reported_status IS NOT NULL
  ORDER BY robot_id, ts DESC
), cause AS (
  -- The robots' status history (trigger on robots) records these changes as the robot's report.
  SELECT set_config('sepulki.status_cause', 'REPORTED', true) AS cause
), locked AS (
  -- Rows locked in id order: workers whose batches share robots then never deadlock.
  SELECT r.id FROM robots r WHERE r.id IN (SELECT robot_id FROM seen) ORDER BY r.id FOR NO KEY UPDATE
), upd AS (
  UPDATE robots r SET
    last_seen = greatest(r.last_seen, least(x.seen, now())),
    battery_level = CASE WHEN l.sample_ts >= coalesce(r.last_seen, '-infinity')
                         THEN coalesce(l.battery_level, r.battery_level) ELSE r.battery_level END,
    health_score = CASE WHEN l.sample_ts >= coalesce(r.last_seen, '-infinity')
                        THEN coalesce(l.health_score, r.health_score) ELSE r.health_score END,
    last_pose = CASE WHEN l.sample_ts >= coalesce(r.last_seen, '-infinity')
                     THEN coalesce(l.pose, r.last_pose) ELSE r.last_pose END,
    status = coalesce(ls.reported_status::robot_status, r.status),
    -- MQTT connectivity (docs/mqtt-contract.md): a status over MQTT says connected unless it is
    -- OFFLINE (the Will, or a clean power-down); HTTP messages leave it as it is.
    mqtt_connected = CASE WHEN ls.source = 'mqtt' THEN ls.reported_status <> 'OFFLINE'
                          ELSE r.mqtt_connected END,
    mqtt_changed_at = CASE WHEN ls.source = 'mqtt'
                            AND (ls.reported_status <> 'OFFLINE') IS DISTINCT FROM r.mqtt_connected
                           THEN now() ELSE r.mqtt_changed_at END
  FROM locked k JOIN seen x ON x.robot_id = k.id CROSS JOIN cause
       LEFT JOIN latest l USING (robot_id) LEFT JOIN latest_status ls USING (robot_id)
  WHERE r.id = k.id
  RETURNING r.*
), fleet_metrics AS (
  -- Bellows entries come rendered from Python, one per sample with metrics (the others carry
  -- ''); only new samples' are kept, in each robot's order.
  SELECT fleet_id, ('[' || string_agg(bellows, ',' ORDER BY robot_id, ts, seq) || ']')::jsonb AS items
  FROM new WHERE bellows <> ''
  GROUP BY fleet_id
), fleet_events AS (
  SELECT fleet_id,
         jsonb_agg(jsonb_build_object(
           'id', id::text, 'robot_id', robot_id, 'type', type, 'data', data, 'timestamp', ts,
           'message', message, 'severity', severity) ORDER BY id) AS items
  FROM ins_e GROUP BY fleet_id
), outbox AS (
  SELECT 1 AS kind, f.fleet_id::text AS key, ARRAY[$23 || f.fleet_id] AS channels,
         jsonb_build_object('fleet_id', f.fleet_id, 'samples', coalesce(m.items, '[]'),
                            'events', coalesce(ev.items, '[]'), 'real_time', true) AS payload
  FROM (SELECT fleet_id FROM fleet_metrics UNION SELECT fleet_id FROM fleet_events) AS f
  LEFT JOIN fleet_metrics m USING (fleet_id) LEFT JOIN fleet_events ev USING (fleet_id)
  UNION ALL
  SELECT 2, u.id::text, ARRAY[$24 || u.id, $25], to_jsonb(u) FROM upd u
), logged AS (
  INSERT INTO event_log (channels, payload)
  SELECT channels, payload FROM outbox ORDER BY kind, key
  RETURNING id, channels, payload
)
SELECT 'event' AS kind, id, channels, payload::text AS payload, NULL::text AS robot_id,
       NULL::bigint AS seq, NULL::timestamptz AS ts
FROM logged
UNION ALL
SELECT 'duplicate_sample', NULL, NULL, NULL, s.robot_id, s.seq, s.ts FROM s
WHERE NOT EXISTS (SELECT FROM new WHERE new.robot_id = s.robot_id::uuid AND new.seq = s.seq AND new.ts = s.ts)
UNION ALL
SELECT 'duplicate_event', NULL, NULL, NULL, e.robot_id, e.seq, NULL FROM e
WHERE NOT EXISTS (SELECT FROM ins_e WHERE ins_e.robot_id = e.robot_id::uuid AND ins_e.seq = e.seq)
"""

# A dead letter keeps this much of the payload, with the whole payload's size and SHA-256: enough
# to see what was sent, and one oversized message costs the table 4 KiB, not what it weighed.
DEAD_LETTER_PREFIX_BYTES = 4096
# Dead letters are pruned in slices this large, so a long backlog never holds one huge delete.
PRUNE_SLICE = 10_000
PRUNE_DEAD_LETTERS = """
DELETE FROM dead_letters WHERE id IN (
  SELECT id FROM dead_letters WHERE received_at < now() - make_interval(secs => $1) LIMIT $2
)
"""

ApplyAcks = Callable[[Connection, list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]]


@dataclass(slots=True)
class Entry:
    """One message moving through the pipeline: what arrived, what it validated to, its outcome."""

    raw: RawMessage
    robot_id: str | None
    item: Item | Rejected
    received_at: datetime
    outcome: Outcome | None = None


@dataclass(slots=True)
class Publication:
    """An event committed to event_log, to publish after the commit."""

    id: int
    channels: list[str]
    payload: dict[str, Any]


@dataclass(slots=True)
class Written:
    """What a committed batch has to publish: its own events, and the command changes that
    `app.commands.apply_acks` logged (published with `app.commands.publish`)."""

    publications: list[Publication]
    command_changes: list[dict[str, Any]]


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _bellows(sample: Sample) -> str:
    """The sample's entry in the fleet's bellows event, as JSON; rendered here with orjson, which
    costs far less than building it in SQL. '' for a sample with nothing to show."""
    if sample.status is not None or not sample.metrics:
        return ""
    entry = {
        "robot_id": sample.robot_id,
        "seq": sample.seq,
        "timestamp": sample.ts,
        "battery_level": sample.battery_level,
        "health_score": sample.health_score,
        "pose": sample.pose,
        "metrics": sample.metrics,
    }
    return orjson.dumps(entry).decode()


async def write_batch(conn: Connection, entries: list[Entry], apply_acks: ApplyAcks) -> Written:
    """Writes the batch (atomically: call it inside a transaction when it has acks); sets each
    entry's outcome and returns the events to publish once committed."""
    samples: list[Entry] = []
    events: list[Entry] = []
    acks: list[Entry] = []
    rejected: list[Entry] = []
    # A key seen twice in one batch (a redelivery that caught up with its original): the first
    # copy is written, the others are duplicates. Samples: (robot_id, seq), whatever their ts.
    sample_keys: dict[tuple[str, int], Entry] = {}
    event_keys: dict[tuple[str, int], Entry] = {}
    for entry in entries:
        item = entry.item
        kind = type(item)
        if kind is Sample:
            key = (item.robot_id, item.seq)  # type: ignore[union-attr]
            if key in sample_keys:
                entry.outcome = DUPLICATE
            else:
                sample_keys[key] = entry
                samples.append(entry)
        elif kind is RobotEvent:
            event_key = (item.robot_id, item.seq)  # type: ignore[union-attr]
            if event_key in event_keys:
                entry.outcome = DUPLICATE
            else:
                event_keys[event_key] = entry
                events.append(entry)
        elif kind is CommandAck:
            acks.append(entry)
        else:
            rejected.append(entry)

    command_changes = await _apply_acks(conn, acks, apply_acks) if acks else []
    s: list[Sample] = [e.item for e in samples]  # type: ignore[misc]
    ev: list[RobotEvent] = [e.item for e in events]  # type: ignore[misc]
    bad: list[Rejected] = [e.item for e in rejected]  # type: ignore[misc]
    rows = await conn.fetch(
        WRITE_BATCH,
        [x.robot_id for x in s],
        [x.seq for x in s],
        [x.ts for x in s],
        [x.status for x in s],
        [x.battery_level for x in s],
        [x.health_score for x in s],
        [None if x.pose is None else _dumps(x.pose) for x in s],
        [_dumps(x.metrics) if x.metrics else "{}" for x in s],
        [x.robot_id for x in ev],
        [x.seq for x in ev],
        [x.ts for x in ev],
        [x.type for x in ev],
        [x.severity for x in ev],
        [x.message for x in ev],
        [_dumps(x.data) for x in ev],
        [e.raw.source for e in rejected],
        [e.raw.topic for e in rejected],
        [e.robot_id or e.raw.robot_id for e in rejected],
        [r.reason for r in bad],
        [r.detail for r in bad],
        [e.raw.payload[:DEAD_LETTER_PREFIX_BYTES] for e in rejected],
        [_bellows(x) for x in s],
        channels.bellows(""),
        channels.robot_status(""),
        channels.ROBOT_STATUS_ALL,
        DEDUP_WINDOW,
        [len(e.raw.payload) for e in rejected],
        [hashlib.sha256(e.raw.payload).digest() for e in rejected],
        [e.raw.source for e in samples],
    )
    # Rows come back only for events to publish and for messages that were not new (usually none).
    for entry in samples:
        entry.outcome = STORED
    for entry in events:
        entry.outcome = STORED
    for entry in rejected:
        entry.outcome = entry.item.outcome  # type: ignore[union-attr]
    publications: list[Publication] = []
    for row in rows:
        kind = row["kind"]
        if kind == "duplicate_sample":
            sample_keys[(row["robot_id"], row["seq"])].outcome = DUPLICATE
        elif kind == "duplicate_event":
            event_keys[(row["robot_id"], row["seq"])].outcome = DUPLICATE
        else:
            publications.append(Publication(row["id"], list(row["channels"]), orjson.loads(row["payload"])))
    publications.sort(key=lambda p: p.id)
    return Written(publications, command_changes)


async def _apply_acks(conn: Connection, entries: list[Entry], apply_acks: ApplyAcks) -> list[dict[str, Any]]:
    acks: list[CommandAck] = [e.item for e in entries]  # type: ignore[misc]
    changes = await apply_acks(
        conn,
        [
            {
                "robot_id": a.robot_id,
                "command_id": a.command_id,
                "state": a.state,
                "detail": a.detail,
                "received_at": e.received_at,
            }
            for a, e in zip(acks, entries, strict=True)
        ],
    )
    # An ack that changed no command (a replay, or a state the command already passed) is a duplicate.
    changed = {str(change["id"]) for change in changes}
    for entry, ack in zip(entries, acks, strict=True):
        entry.outcome = STORED if ack.command_id in changed else DUPLICATE
        changed.discard(ack.command_id)
    return changes


async def prune_dead_letters(pool: Pool, keep_s: int) -> int:
    """Deletes dead letters received more than `keep_s` seconds ago; returns how many."""
    deleted = 0
    while True:
        status: str = await pool.execute(PRUNE_DEAD_LETTERS, float(keep_s), PRUNE_SLICE)
        count = int(status.split()[-1])
        deleted += count
        if count < PRUNE_SLICE:
            return deleted
