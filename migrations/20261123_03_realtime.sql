-- Real-time pipeline: event log for replay, robot API keys, command outbox, dead letters
-- depends: 20261123_02_telemetry

-- migrate: apply
-- Every event published to subscribers is first a row here, written in the transaction that made
-- the change; its id orders events and lets a subscriber resume `after` the last one it saw.
CREATE TABLE event_log (
  id bigserial PRIMARY KEY,
  channels text[] NOT NULL,
  payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_log_channels_idx ON event_log USING gin (channels);
CREATE INDEX event_log_created_idx ON event_log (created_at);

CREATE TABLE api_keys (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  -- The first characters of the key, shown to admins and used to find the row.
  prefix text NOT NULL UNIQUE,
  key_hash text NOT NULL,
  name text,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz,
  last_used_at timestamptz,
  revoked_at timestamptz
);
CREATE INDEX api_keys_robot_idx ON api_keys (robot_id);

CREATE TYPE command_state AS ENUM ('QUEUED', 'SENT', 'RECEIVED', 'SUCCEEDED', 'FAILED', 'EXPIRED', 'TIMED_OUT');

CREATE TABLE robot_commands (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  -- EMERGENCY_STOP, DISPATCH_TASK, or any type a robot understands
  type text NOT NULL,
  params jsonb NOT NULL DEFAULT '{}',
  state command_state NOT NULL DEFAULT 'QUEUED',
  detail text,
  task_id uuid REFERENCES tasks(id) ON DELETE SET NULL,
  issued_by uuid REFERENCES smiths(id),
  issued_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  sent_at timestamptz,
  received_at timestamptz,
  completed_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX robot_commands_robot_idx ON robot_commands (robot_id, issued_at DESC);
CREATE INDEX robot_commands_open_idx ON robot_commands (state, expires_at)
  WHERE state IN ('QUEUED', 'SENT', 'RECEIVED');
CREATE TRIGGER robot_commands_touch BEFORE UPDATE ON robot_commands
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE dead_letters (
  id bigserial PRIMARY KEY,
  -- mqtt or http
  source text NOT NULL,
  topic text,
  robot_id text,
  -- malformed_json, unknown_robot, invalid_type, out_of_range, oversized, robot_mismatch, ...
  reason text NOT NULL,
  detail text,
  payload bytea NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_received_idx ON dead_letters (received_at DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, received_at DESC);

-- migrate: rollback
DROP TABLE IF EXISTS dead_letters, robot_commands, api_keys, event_log;
DROP TYPE IF EXISTS command_state;
