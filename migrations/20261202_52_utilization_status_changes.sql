-- robot_utilization_daily counts status changes made by the server too (docs/telemetry.md)
-- depends: 20261202_51_telemetry_rollups 20261202_30_robot_lifecycle

-- migrate: apply

-- Seconds each robot spent in each status per UTC day. A status lasts until the robot's next one,
-- the latest until the refresh; time before a robot's first known status is not counted. Its
-- status history has two sources: what the robot reported (the status rows of telemetry, at the
-- robot's clock) and every other change of robots.status, recorded by the trigger of migration
-- 20261202_30 at the server's clock: an operator's updateRobotStatus, an emergency stop,
-- maintenance, the inactivity timeout and its end. Left out: the trigger's REPORTED rows (the
-- robot's reports again) and REGISTERED ones (the status a robot row was created with, stamped
-- when it was created: it would cut into a history loaded or reported with earlier times).
-- Refreshed concurrently by the worker (SEPULKI_UTILIZATION_REFRESH_S); the reported part
-- covers what raw retention keeps.
DROP MATERIALIZED VIEW robot_utilization_daily;
CREATE MATERIALIZED VIEW robot_utilization_daily AS
WITH h AS (
  SELECT robot_id, fleet_id, ts, seq, status FROM telemetry WHERE is_status
  UNION ALL
  SELECT c.robot_id, r.fleet_id, c.changed_at, c.id, c.to_status
  FROM robot_status_changes c JOIN robots r ON r.id = c.robot_id
  WHERE c.cause NOT IN ('REPORTED', 'REGISTERED')
), s AS (
  SELECT robot_id, fleet_id, ts, status,
         coalesce(lead(ts) OVER (PARTITION BY robot_id ORDER BY ts, seq), greatest(ts, now())) AS until
  FROM h
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

-- migrate: rollback
DROP MATERIALIZED VIEW IF EXISTS robot_utilization_daily;
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
CREATE UNIQUE INDEX robot_utilization_daily_key ON robot_utilization_daily (robot_id, day);
CREATE INDEX robot_utilization_daily_fleet_idx ON robot_utilization_daily (fleet_id, day);
