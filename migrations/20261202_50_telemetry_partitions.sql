-- Telemetry and robot events range-partitioned by time; status rows told apart from samples (docs/telemetry.md)
-- depends: 20261202_01_dead_letter_bounds

-- migrate: apply

-- Status messages are stored as rows of telemetry carrying only the status. Both they and samples
-- sent without `seq` get a negative content-key seq, so seq cannot tell them apart: this column
-- does. Rows stored before it existed are status rows when they carry nothing but the status.
ALTER TABLE telemetry ADD COLUMN is_status boolean NOT NULL DEFAULT false;
UPDATE telemetry SET is_status = true
WHERE seq < 0 AND metrics = '{}' AND battery_level IS NULL AND health_score IS NULL AND pose IS NULL;

-- partition_create(parent, lo, hi): the partition `<parent>_p<YYYYMMDD of lo>` for [lo, hi),
-- unless a partition already overlaps that range (then nothing: false). Rows that waited for it
-- in the parent's DEFAULT partition move into it first, so attaching it never fails on them.
-- The worker (app/workers/telemetry.py) calls it ahead of time; this migration calls it for the
-- ranges the existing rows cover.
CREATE FUNCTION partition_create(parent regclass, lo timestamptz, hi timestamptz, key text)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  child text := format('%s_p%s', parent::text, to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'));
  dflt text;
BEGIN
  IF EXISTS (
    SELECT FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (
      SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid), $re$FROM \('([^']+)'\) TO \('([^']+)'\)$re$) AS b
    ) AS x
    WHERE i.inhparent = parent AND x.b IS NOT NULL
      AND x.b[1]::timestamptz < hi AND x.b[2]::timestamptz > lo
  ) THEN
    RETURN false;
  END IF;
  EXECUTE format('CREATE TABLE %I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', child, parent);
  -- The bound as a CHECK lets ATTACH skip scanning the new table.
  EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (%I >= %L AND %I < %L)',
                 child, child || '_bound', key, lo, key, hi);
  SELECT c.relname INTO dflt FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
  WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
  IF dflt IS NOT NULL THEN
    EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *) '
                   'INSERT INTO %I SELECT * FROM moved', dflt, key, lo, key, hi, child);
  END IF;
  EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, child, lo, hi);
  EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', child, child || '_bound');
  RETURN true;
END
$fn$;

-- partition_drop(parent, child): retention's one step, a whole partition detached and dropped.
CREATE FUNCTION partition_drop(parent regclass, child regclass) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, child);
  EXECUTE format('DROP TABLE %s', child);
END
$fn$;

-- robot_events becomes partitioned: unique keys of a partitioned table must hold the partition
-- key, so the primary key is (id, ts) and the idempotency key (robot_id, seq, ts); the ingest
-- checks (robot_id, seq) within its dedup window as it does for samples. Same columns as before.
ALTER TABLE robot_events RENAME TO robot_events_unpartitioned;
ALTER SEQUENCE robot_events_id_seq OWNED BY NONE;
ALTER INDEX robot_events_fleet_ts_idx RENAME TO robot_events_unpartitioned_fleet_ts_idx;
ALTER INDEX robot_events_robot_ts_idx RENAME TO robot_events_unpartitioned_robot_ts_idx;
CREATE TABLE robot_events (
  id bigint NOT NULL DEFAULT nextval('robot_events_id_seq'),
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  fleet_id uuid NOT NULL,
  seq bigint,
  ts timestamptz NOT NULL,
  type text NOT NULL,
  severity text NOT NULL DEFAULT 'INFO',
  message text,
  data jsonb NOT NULL DEFAULT '{}',
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id, ts),
  UNIQUE (robot_id, seq, ts)
) PARTITION BY RANGE (ts);
ALTER SEQUENCE robot_events_id_seq OWNED BY robot_events.id;
CREATE TABLE robot_events_default PARTITION OF robot_events DEFAULT;
CREATE INDEX robot_events_fleet_ts_idx ON robot_events (fleet_id, ts DESC);
CREATE INDEX robot_events_robot_ts_idx ON robot_events (robot_id, ts DESC);
-- Rows arrive in time order, so a BRIN index on ts costs a few pages per partition and serves
-- scans of a time range across every robot (exports of a fleet, rollup catch-up, ad-hoc queries).
CREATE INDEX robot_events_ts_brin ON robot_events USING brin (ts);
INSERT INTO robot_events SELECT id, robot_id, fleet_id, seq, ts, type, severity, message, data, received_at
FROM robot_events_unpartitioned;
-- Triggers other parts of the schema put on robot_events move to the new table (after the copy:
-- the rows copied were reported already).
DO $do$
DECLARE
  def text;
BEGIN
  FOR def IN SELECT pg_get_triggerdef(oid) FROM pg_trigger
             WHERE tgrelid = 'robot_events_unpartitioned'::regclass AND NOT tgisinternal LOOP
    EXECUTE regexp_replace(def, ' ON (public\.)?robot_events_unpartitioned ', ' ON robot_events ');
  END LOOP;
END
$do$;
DROP TABLE robot_events_unpartitioned;

CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts);
-- Status rows are a small share of telemetry; utilization reads only them.
CREATE INDEX telemetry_status_idx ON telemetry (robot_id, ts) WHERE is_status;

-- Monthly partitions for every month the existing rows cover, and this month and the next two.
DO $do$
DECLARE
  t text;
  m timestamptz;
  first timestamptz;
BEGIN
  FOREACH t IN ARRAY ARRAY['telemetry', 'robot_events'] LOOP
    EXECUTE format('SELECT min(ts) FROM %I', t) INTO first;
    m := date_trunc('month', least(coalesce(first, now()), now()) AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    WHILE m < date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '3 months' LOOP
      PERFORM partition_create(t::regclass, m, ((m AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC', 'ts');
      m := ((m AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
    END LOOP;
  END LOOP;
END
$do$;

-- migrate: rollback
-- Back to one unpartitioned robot_events table and telemetry's DEFAULT partition only.
ALTER TABLE robot_events RENAME TO robot_events_partitioned;
ALTER SEQUENCE robot_events_id_seq OWNED BY NONE;
ALTER INDEX robot_events_fleet_ts_idx RENAME TO robot_events_partitioned_fleet_ts_idx;
ALTER INDEX robot_events_robot_ts_idx RENAME TO robot_events_partitioned_robot_ts_idx;
CREATE TABLE robot_events (
  id bigint PRIMARY KEY DEFAULT nextval('robot_events_id_seq'),
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  fleet_id uuid NOT NULL,
  seq bigint,
  ts timestamptz NOT NULL,
  type text NOT NULL,
  severity text NOT NULL DEFAULT 'INFO',
  message text,
  data jsonb NOT NULL DEFAULT '{}',
  received_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (robot_id, seq)
);
ALTER SEQUENCE robot_events_id_seq OWNED BY robot_events.id;
INSERT INTO robot_events SELECT * FROM robot_events_partitioned ON CONFLICT DO NOTHING;
DROP TABLE robot_events_partitioned;
CREATE INDEX robot_events_fleet_ts_idx ON robot_events (fleet_id, ts DESC);
CREATE INDEX robot_events_robot_ts_idx ON robot_events (robot_id, ts DESC);
CREATE TABLE telemetry_unpartitioned AS SELECT * FROM telemetry;
DROP TABLE telemetry;
CREATE TABLE telemetry (
  robot_id uuid NOT NULL,
  fleet_id uuid NOT NULL,
  seq bigint NOT NULL,
  ts timestamptz NOT NULL,
  status robot_status,
  battery_level double precision,
  health_score double precision,
  pose jsonb,
  metrics jsonb NOT NULL DEFAULT '{}',
  received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (robot_id, seq, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
CREATE INDEX telemetry_robot_ts_idx ON telemetry (robot_id, ts DESC);
CREATE INDEX telemetry_fleet_ts_idx ON telemetry (fleet_id, ts DESC);
INSERT INTO telemetry SELECT robot_id, fleet_id, seq, ts, status, battery_level, health_score, pose, metrics, received_at
FROM telemetry_unpartitioned;
DROP TABLE telemetry_unpartitioned;
DROP FUNCTION IF EXISTS partition_create(regclass, timestamptz, timestamptz, text);
DROP FUNCTION IF EXISTS partition_drop(regclass, regclass);
