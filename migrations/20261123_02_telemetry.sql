-- Stored robot telemetry and events (bellows), partitioned by month on time
-- depends: 20261123_01_initial-schema

-- migrate: apply
CREATE TABLE telemetry (
  robot_id uuid NOT NULL,
  fleet_id uuid NOT NULL,
  seq bigint NOT NULL,
  ts timestamptz NOT NULL,
  status robot_status,
  battery_level double precision,
  health_score double precision,
  pose jsonb,
  -- {name: number}, e.g. {"CPU_USAGE": 35.2, "MOTOR_TEMPERATURE": 48.1}
  metrics jsonb NOT NULL DEFAULT '{}',
  received_at timestamptz NOT NULL DEFAULT now(),
  -- (robot_id, seq) is the idempotency key; ts is part of it because partitions need it.
  PRIMARY KEY (robot_id, seq, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT;
CREATE INDEX telemetry_robot_ts_idx ON telemetry (robot_id, ts DESC);
CREATE INDEX telemetry_fleet_ts_idx ON telemetry (fleet_id, ts DESC);

CREATE TABLE robot_events (
  id bigserial PRIMARY KEY,
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
CREATE INDEX robot_events_fleet_ts_idx ON robot_events (fleet_id, ts DESC);
CREATE INDEX robot_events_robot_ts_idx ON robot_events (robot_id, ts DESC);

-- migrate: rollback
DROP TABLE IF EXISTS robot_events;
DROP TABLE IF EXISTS telemetry;
