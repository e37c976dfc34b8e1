-- Robots with a lifecycle: status history, connectivity, firmware, calibration, maintenance, emergency-stop release
-- depends: 20261202_01_dead_letter_bounds

-- migrate: apply
-- Registration details, firmware and calibration as the robot reports them, MQTT connectivity,
-- every status change with its cause, maintenance records and schedules, and the emergency stop a
-- fleet stays in until an operator releases it.
ALTER TABLE robots
  ADD COLUMN serial_number text,
  -- What the robot last reported (FIRMWARE_UPDATED / CALIBRATED events), not what was asked.
  ADD COLUMN firmware_version text,
  ADD COLUMN calibration jsonb,
  ADD COLUMN calibrated_at timestamptz,
  -- Null: never spoke MQTT; true from its on-connect status until its Will (docs/mqtt-contract.md).
  ADD COLUMN mqtt_connected boolean,
  ADD COLUMN mqtt_changed_at timestamptz;
CREATE UNIQUE INDEX robots_serial_number_key ON robots (serial_number)
  WHERE serial_number IS NOT NULL AND deleted_at IS NULL;

-- While set the fleet stays MAINTENANCE whatever its robots do; releaseEmergencyStop clears it.
ALTER TABLE fleets ADD COLUMN emergency_stopped_at timestamptz;

-- One row per status change, written by the trigger below whoever changed the status. The writer
-- names the cause with `SET LOCAL sepulki.status_cause` (and `sepulki.status_actor`, a smith id;
-- `sepulki.status_detail`); a change nobody named is UPDATED.
CREATE TABLE robot_status_changes (
  id bigserial PRIMARY KEY,
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  from_status robot_status,
  to_status robot_status NOT NULL,
  cause text NOT NULL,
  actor_id uuid REFERENCES smiths(id) ON DELETE SET NULL,
  detail text,
  changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX robot_status_changes_robot_idx ON robot_status_changes (robot_id, id DESC);
CREATE INDEX robot_status_changes_time_idx ON robot_status_changes (changed_at);

CREATE FUNCTION record_robot_status_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  cause text := nullif(current_setting('sepulki.status_cause', true), '');
  actor text := nullif(current_setting('sepulki.status_actor', true), '');
BEGIN
  INSERT INTO robot_status_changes (robot_id, from_status, to_status, cause, actor_id, detail)
  VALUES (
    NEW.id,
    CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
    NEW.status,
    coalesce(cause, CASE WHEN TG_OP = 'INSERT' THEN 'REGISTERED' ELSE 'UPDATED' END),
    actor::uuid,
    nullif(current_setting('sepulki.status_detail', true), '')
  );
  RETURN NULL;
END $$;
CREATE TRIGGER robots_status_history_update AFTER UPDATE OF status ON robots
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION record_robot_status_change();
CREATE TRIGGER robots_status_history_insert AFTER INSERT ON robots
  FOR EACH ROW EXECUTE FUNCTION record_robot_status_change();

-- The robot's own report of a firmware update or a calibration moves its row (the WHEN keeps
-- every other event free of the function call).
CREATE FUNCTION apply_robot_report() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.type = 'FIRMWARE_UPDATED' AND jsonb_typeof(NEW.data -> 'version') = 'string' THEN
    UPDATE robots SET firmware_version = NEW.data ->> 'version' WHERE id = NEW.robot_id;
  ELSIF NEW.type = 'CALIBRATED' AND jsonb_typeof(NEW.data -> 'parameters') = 'object' THEN
    UPDATE robots SET calibration = NEW.data -> 'parameters', calibrated_at = NEW.ts WHERE id = NEW.robot_id;
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER robot_events_apply_report AFTER INSERT ON robot_events
  FOR EACH ROW WHEN (NEW.type IN ('FIRMWARE_UPDATED', 'CALIBRATED')) EXECUTE FUNCTION apply_robot_report();

CREATE TYPE maintenance_status AS ENUM ('SCHEDULED', 'COMPLETED', 'CANCELLED');

-- A recurring plan: completing its open record schedules the next one interval_days later.
CREATE TABLE maintenance_schedules (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  kind text NOT NULL,
  description text,
  interval_days integer NOT NULL CHECK (interval_days BETWEEN 1 AND 3650),
  active boolean NOT NULL DEFAULT true,
  created_by uuid REFERENCES smiths(id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX maintenance_schedules_robot_idx ON maintenance_schedules (robot_id);

CREATE TABLE maintenance_records (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  schedule_id uuid REFERENCES maintenance_schedules(id) ON DELETE SET NULL,
  kind text NOT NULL,
  description text,
  status maintenance_status NOT NULL DEFAULT 'SCHEDULED',
  due_at timestamptz,
  completed_at timestamptz,
  completed_by uuid REFERENCES smiths(id) ON DELETE SET NULL,
  notes text,
  created_by uuid REFERENCES smiths(id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((status = 'COMPLETED') = (completed_at IS NOT NULL))
);
CREATE INDEX maintenance_records_robot_idx ON maintenance_records (robot_id, created_at DESC);
CREATE INDEX maintenance_records_due_idx ON maintenance_records (robot_id, due_at) WHERE status = 'SCHEDULED';

-- migrate: rollback
DROP TABLE IF EXISTS maintenance_records;
DROP TABLE IF EXISTS maintenance_schedules;
DROP TYPE IF EXISTS maintenance_status;
DROP TRIGGER IF EXISTS robot_events_apply_report ON robot_events;
DROP FUNCTION IF EXISTS apply_robot_report();
DROP TRIGGER IF EXISTS robots_status_history_insert ON robots;
DROP TRIGGER IF EXISTS robots_status_history_update ON robots;
DROP FUNCTION IF EXISTS record_robot_status_change();
DROP TABLE IF EXISTS robot_status_changes;
ALTER TABLE fleets DROP COLUMN IF EXISTS emergency_stopped_at;
DROP INDEX IF EXISTS robots_serial_number_key;
ALTER TABLE robots
  DROP COLUMN IF EXISTS serial_number,
  DROP COLUMN IF EXISTS firmware_version,
  DROP COLUMN IF EXISTS calibration,
  DROP COLUMN IF EXISTS calibrated_at,
  DROP COLUMN IF EXISTS mqtt_connected,
  DROP COLUMN IF EXISTS mqtt_changed_at;
