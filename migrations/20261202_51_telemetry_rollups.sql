-- Telemetry rollups at 1 minute, 1 hour and 1 day; materialized view robot_utilization_daily (docs/telemetry.md)
-- depends: 20261202_50_telemetry_partitions

-- migrate: apply

-- One row per robot, bucket and metric: the robot's numeric metrics as sent, plus batteryLevel,
-- healthScore (the sample's fields), uptime (1 unless the robot was OFFLINE or ERROR) and
-- working (1 while WORKING), so averages of the last two are shares of samples.
-- fleet_id: the fleet of the bucket's last sample. The fleet index carries robot_id and metric so
-- that a fleet's newest entries come off it in order (bellows stops after its cap).
CREATE TABLE telemetry_1m (
  robot_id uuid NOT NULL,
  fleet_id uuid NOT NULL,
  bucket timestamptz NOT NULL,
  metric text NOT NULL,
  n integer NOT NULL,
  sum double precision NOT NULL,
  min double precision NOT NULL,
  max double precision NOT NULL,
  last double precision NOT NULL,
  last_ts timestamptz NOT NULL,
  PRIMARY KEY (robot_id, bucket, metric)
) PARTITION BY RANGE (bucket);
CREATE TABLE telemetry_1m_default PARTITION OF telemetry_1m DEFAULT;
CREATE INDEX telemetry_1m_fleet_idx ON telemetry_1m (fleet_id, bucket, robot_id, metric);

CREATE TABLE telemetry_1h (LIKE telemetry_1m INCLUDING DEFAULTS, PRIMARY KEY (robot_id, bucket, metric))
  PARTITION BY RANGE (bucket);
CREATE TABLE telemetry_1h_default PARTITION OF telemetry_1h DEFAULT;
CREATE INDEX telemetry_1h_fleet_idx ON telemetry_1h (fleet_id, bucket, robot_id, metric);

-- Kept forever by default; partitioned all the same, so a retention set later drops partitions too.
CREATE TABLE telemetry_1d (LIKE telemetry_1m INCLUDING DEFAULTS, PRIMARY KEY (robot_id, bucket, metric))
  PARTITION BY RANGE (bucket);
CREATE TABLE telemetry_1d_default PARTITION OF telemetry_1d DEFAULT;
CREATE INDEX telemetry_1d_fleet_idx ON telemetry_1d (fleet_id, bucket, robot_id, metric);

-- Minutes whose rollups are out of date: the ingest marks a robot's minute in the same statement
-- that stores its samples, so a mark is committed exactly when its rows are. The ingest takes the
-- mark's row lock (ON CONFLICT DO UPDATE ... WHERE false locks without writing) and the worker
-- skips locked marks: a mark is never consumed while a transaction adding rows to it is open.
CREATE TABLE telemetry_rollup_pending (
  robot_id uuid NOT NULL,
  bucket timestamptz NOT NULL,
  PRIMARY KEY (robot_id, bucket)
);

-- telemetry_rollup(max_minutes, raw_since): takes up to max_minutes marks and recomputes their
-- minutes from the raw rows, then their hours from the minutes and their days from the hours.
-- Recomputing (not adding) makes a late sample land in its own bucket and a duplicate count
-- once. Marks older than raw_since are dropped unapplied: the raw rows around them may be gone
-- already, and recomputing from what is left would lose what the rollups still hold.
-- Returns how many marks it took.
CREATE FUNCTION telemetry_rollup(max_minutes integer, raw_since timestamptz)
RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
  robots uuid[];
  buckets timestamptz[];
  taken integer;
BEGIN
  WITH picked AS (
    SELECT robot_id, bucket FROM telemetry_rollup_pending
    ORDER BY bucket LIMIT max_minutes FOR UPDATE SKIP LOCKED
  ), gone AS (
    DELETE FROM telemetry_rollup_pending p USING picked k
    WHERE p.robot_id = k.robot_id AND p.bucket = k.bucket
    RETURNING p.robot_id, p.bucket
  )
  SELECT array_agg(robot_id) FILTER (WHERE bucket >= raw_since),
         array_agg(bucket) FILTER (WHERE bucket >= raw_since), count(*)
  INTO robots, buckets, taken
  FROM gone;
  IF robots IS NULL THEN
    RETURN taken;
  END IF;

  DELETE FROM telemetry_1m r USING unnest(robots, buckets) AS k(robot_id, bucket)
  WHERE r.robot_id = k.robot_id AND r.bucket = k.bucket;
  INSERT INTO telemetry_1m (robot_id, fleet_id, bucket, metric, n, sum, min, max, last, last_ts)
  SELECT k.robot_id, (array_agg(t.fleet_id ORDER BY t.ts DESC, t.seq DESC))[1], k.bucket, v.metric,
         count(*), sum(v.value), min(v.value), max(v.value),
         (array_agg(v.value ORDER BY t.ts DESC, t.seq DESC))[1], max(t.ts)
  -- LATERAL: one (robot_id, ts) index range per minute, whatever the planner thinks of unnest.
  FROM unnest(robots, buckets) AS k(robot_id, bucket)
  CROSS JOIN LATERAL (
    SELECT * FROM telemetry t
    WHERE t.robot_id = k.robot_id AND t.ts >= k.bucket AND t.ts < k.bucket + interval '1 minute' AND NOT t.is_status
  ) AS t
  CROSS JOIN LATERAL (
    SELECT m.key AS metric, m.value::double precision AS value
    FROM jsonb_each(t.metrics) AS m
    WHERE jsonb_typeof(m.value) = 'number' AND m.key NOT IN ('batteryLevel', 'healthScore', 'uptime', 'working')
    UNION ALL SELECT 'batteryLevel', t.battery_level WHERE t.battery_level IS NOT NULL
    UNION ALL SELECT 'healthScore', t.health_score WHERE t.health_score IS NOT NULL
    UNION ALL SELECT 'uptime', CASE WHEN t.status IN ('OFFLINE', 'ERROR') THEN 0 ELSE 1 END
    UNION ALL SELECT 'working', CASE WHEN t.status = 'WORKING' THEN 1 ELSE 0 END
  ) AS v
  GROUP BY k.robot_id, k.bucket, v.metric;

  -- The hours of those minutes, each from its minutes; then their days, each from its hours.
  SELECT array_agg(robot_id), array_agg(bucket) INTO robots, buckets
  FROM (SELECT DISTINCT k.robot_id, date_trunc('hour', k.bucket, 'UTC') AS bucket
        FROM unnest(robots, buckets) AS k(robot_id, bucket)) AS x;
  DELETE FROM telemetry_1h r USING unnest(robots, buckets) AS k(robot_id, bucket)
  WHERE r.robot_id = k.robot_id AND r.bucket = k.bucket;
  INSERT INTO telemetry_1h (robot_id, fleet_id, bucket, metric, n, sum, min, max, last, last_ts)
  SELECT k.robot_id, (array_agg(r.fleet_id ORDER BY r.last_ts DESC))[1], k.bucket, r.metric,
         sum(r.n), sum(r.sum), min(r.min), max(r.max), (array_agg(r.last ORDER BY r.last_ts DESC))[1], max(r.last_ts)
  FROM unnest(robots, buckets) AS k(robot_id, bucket)
  CROSS JOIN LATERAL (
    SELECT * FROM telemetry_1m r
    WHERE r.robot_id = k.robot_id AND r.bucket >= k.bucket AND r.bucket < k.bucket + interval '1 hour'
  ) AS r
  GROUP BY k.robot_id, k.bucket, r.metric;

  SELECT array_agg(robot_id), array_agg(bucket) INTO robots, buckets
  FROM (SELECT DISTINCT k.robot_id, date_trunc('day', k.bucket, 'UTC') AS bucket
        FROM unnest(robots, buckets) AS k(robot_id, bucket)) AS x;
  DELETE FROM telemetry_1d r USING unnest(robots, buckets) AS k(robot_id, bucket)
  WHERE r.robot_id = k.robot_id AND r.bucket = k.bucket;
  INSERT INTO telemetry_1d (robot_id, fleet_id, bucket, metric, n, sum, min, max, last, last_ts)
  SELECT k.robot_id, (array_agg(r.fleet_id ORDER BY r.last_ts DESC))[1], k.bucket, r.metric,
         sum(r.n), sum(r.sum), min(r.min), max(r.max), (array_agg(r.last ORDER BY r.last_ts DESC))[1], max(r.last_ts)
  FROM unnest(robots, buckets) AS k(robot_id, bucket)
  CROSS JOIN LATERAL (
    SELECT * FROM telemetry_1h r
    WHERE r.robot_id = k.robot_id AND r.bucket >= k.bucket AND r.bucket < k.bucket + interval '24 hours'
  ) AS r
  GROUP BY k.robot_id, k.bucket, r.metric;
  RETURN taken;
END
$fn$;

-- Seconds each robot spent in each status per UTC day, from its status messages (the status rows
-- of telemetry): each status lasts until the robot's next status message, the latest one until
-- the refresh. Time before a robot's first stored status is not counted. Refreshed concurrently
-- by the worker (SEPULKI_UTILIZATION_REFRESH_S); it covers what raw retention keeps.
CREATE MATERIALIZED VIEW robot_utilization_daily AS
WITH s AS (
  SELECT robot_id, fleet_id, ts, status,
         coalesce(lead(ts) OVER (PARTITION BY robot_id ORDER BY ts, seq), greatest(ts, now())) AS until
  FROM telemetry WHERE is_status
), pieces AS (
  SELECT s.robot_id, s.fleet_id, s.ts, s.status, d.day,
         extract(epoch FROM least(s.until, d.day + interval '24 hours') - greatest(s.ts, d.day)) AS seconds
  FROM s CROSS JOIN LATERAL generate_series(date_trunc('day', s.ts, 'UTC'), s.until, interval '24 hours') AS d(day)
  WHERE s.until > s.ts
)
SELECT robot_id, (array_agg(fleet_id ORDER BY ts DESC))[1] AS fleet_id, (day AT TIME ZONE 'UTC')::date AS day,
       coalesce(sum(seconds) FILTER (WHERE status = 'WORKING'), 0)::double precision AS working_s,
       coalesce(sum(seconds) FILTER (WHERE status = 'IDLE'), 0)::double precision AS idle_s,
       coalesce(sum(seconds) FILTER (WHERE status = 'CHARGING'), 0)::double precision AS charging_s,
       coalesce(sum(seconds) FILTER (WHERE status = 'MAINTENANCE'), 0)::double precision AS maintenance_s,
       coalesce(sum(seconds) FILTER (WHERE status = 'ERROR'), 0)::double precision AS error_s,
       coalesce(sum(seconds) FILTER (WHERE status = 'OFFLINE'), 0)::double precision AS offline_s
FROM pieces WHERE seconds > 0
GROUP BY robot_id, day;
-- CONCURRENTLY needs a unique index.
CREATE UNIQUE INDEX robot_utilization_daily_key ON robot_utilization_daily (robot_id, day);
CREATE INDEX robot_utilization_daily_fleet_idx ON robot_utilization_daily (fleet_id, day);

-- Partitions of the rollups for this month and the next two; rows already stored get rolled up.
DO $do$
DECLARE
  t text;
  m timestamptz;
BEGIN
  FOREACH t IN ARRAY ARRAY['telemetry_1m', 'telemetry_1h', 'telemetry_1d'] LOOP
    m := date_trunc('month', now(), 'UTC');
    WHILE m < date_trunc('month', now(), 'UTC') + interval '3 months' LOOP
      PERFORM partition_create(t::regclass, m, ((m AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC', 'bucket');
      m := ((m AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    END LOOP;
  END LOOP;
END
$do$;
INSERT INTO telemetry_rollup_pending (robot_id, bucket)
SELECT DISTINCT robot_id, date_trunc('minute', ts, 'UTC') FROM telemetry WHERE NOT is_status
ON CONFLICT DO NOTHING;

-- migrate: rollback
DROP MATERIALIZED VIEW IF EXISTS robot_utilization_daily;
DROP FUNCTION IF EXISTS telemetry_rollup(integer, timestamptz);
DROP TABLE IF EXISTS telemetry_rollup_pending;
DROP TABLE IF EXISTS telemetry_1d;
DROP TABLE IF EXISTS telemetry_1h;
DROP TABLE IF EXISTS telemetry_1m;
