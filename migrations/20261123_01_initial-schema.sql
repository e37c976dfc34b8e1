-- Reference domain schema (smiths, catalog, sepulkas, ingots, fleets, robots, tasks, floors, edicts)
-- depends:

-- migrate: apply
CREATE TYPE smith_role AS ENUM ('SMITH', 'OVER_SMITH', 'ADMIN');
CREATE TYPE pattern_category AS ENUM ('INDUSTRIAL_ARM', 'MOBILE_ROBOT', 'HUMANOID', 'QUADRUPED', 'DRONE', 'CUSTOM');
CREATE TYPE alloy_type AS ENUM ('ACTUATOR', 'SENSOR', 'CONTROLLER', 'END_EFFECTOR', 'CHASSIS', 'POWER', 'COMMUNICATION');
CREATE TYPE sepulka_status AS ENUM ('FORGING', 'CAST_READY', 'CASTING', 'CAST_FAILED', 'READY');
CREATE TYPE ingot_status AS ENUM ('BUILDING', 'BUILD_FAILED', 'READY', 'TEMPERING', 'TEMPER_FAILED', 'TEMPERED', 'DEPLOYED');
CREATE TYPE fleet_status AS ENUM ('IDLE', 'ACTIVE', 'MAINTENANCE', 'ERROR', 'OFFLINE');
CREATE TYPE robot_status AS ENUM ('IDLE', 'WORKING', 'CHARGING', 'MAINTENANCE', 'ERROR', 'OFFLINE');
CREATE TYPE task_type AS ENUM ('PICK_AND_PLACE', 'ASSEMBLY', 'INSPECTION', 'TRANSPORT', 'MAINTENANCE', 'PATROL', 'CUSTOM');
CREATE TYPE task_status AS ENUM ('PENDING', 'ASSIGNED', 'IN_PROGRESS', 'COMPLETED', 'FAILED', 'CANCELLED');
CREATE TYPE task_priority AS ENUM ('LOW', 'NORMAL', 'HIGH', 'URGENT');
CREATE TYPE run_status AS ENUM ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED');
CREATE TYPE edict_type AS ENUM ('SAFETY', 'PERFORMANCE', 'COMPLIANCE', 'OPERATIONAL');
CREATE TYPE edict_severity AS ENUM ('INFO', 'WARNING', 'CRITICAL');
CREATE TYPE blueprint_type AS ENUM ('IMAGE', 'PDF', 'CAD');

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;

CREATE TABLE smiths (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email text NOT NULL,
  name text NOT NULL,
  password_hash text NOT NULL,
  role smith_role NOT NULL DEFAULT 'SMITH',
  permissions text[] NOT NULL DEFAULT '{}',
  is_active boolean NOT NULL DEFAULT true,
  preferences jsonb NOT NULL DEFAULT '{}',
  last_login_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE UNIQUE INDEX smiths_email_key ON smiths (lower(email));

CREATE TABLE sessions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  smith_id uuid NOT NULL REFERENCES smiths(id) ON DELETE CASCADE,
  refresh_token_hash text NOT NULL UNIQUE,
  ip_address text,
  user_agent text,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz
);
CREATE INDEX sessions_smith_idx ON sessions (smith_id);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

CREATE TABLE patterns (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  category pattern_category NOT NULL,
  parameters jsonb,
  defaults jsonb,
  template text,
  tags text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alloys (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  type alloy_type NOT NULL,
  specifications jsonb,
  mesh_assets text[] NOT NULL DEFAULT '{}',
  urdf_template text,
  -- [{alloyId, compatibleWith: [id], constraints}]
  compatibility jsonb NOT NULL DEFAULT '[]',
  tags text[] NOT NULL DEFAULT '{}',
  version text NOT NULL DEFAULT '1.0.0',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sepulkas (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  version text NOT NULL DEFAULT '1.0.0',
  pattern_id uuid REFERENCES patterns(id) ON DELETE SET NULL,
  status sepulka_status NOT NULL DEFAULT 'FORGING',
  parameters jsonb,
  created_by uuid NOT NULL REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX sepulkas_created_by_idx ON sepulkas (created_by);
CREATE INDEX sepulkas_live_idx ON sepulkas (created_at DESC) WHERE deleted_at IS NULL;

CREATE TABLE sepulka_alloys (
  sepulka_id uuid NOT NULL REFERENCES sepulkas(id) ON DELETE CASCADE,
  alloy_id uuid NOT NULL REFERENCES alloys(id) ON DELETE CASCADE,
  configuration jsonb,
  added_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (sepulka_id, alloy_id)
);
CREATE INDEX sepulka_alloys_alloy_idx ON sepulka_alloys (alloy_id);

CREATE TABLE ingots (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  sepulka_id uuid NOT NULL REFERENCES sepulkas(id) ON DELETE CASCADE,
  version text NOT NULL,
  build_hash text NOT NULL UNIQUE,
  status ingot_status NOT NULL DEFAULT 'BUILDING',
  artifacts jsonb NOT NULL DEFAULT '[]',
  build_logs text[] NOT NULL DEFAULT '{}',
  tempered boolean NOT NULL DEFAULT false,
  temper_results jsonb,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  UNIQUE (sepulka_id, version)
);

CREATE TABLE loci (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  -- {latitude, longitude, altitude}
  coordinates jsonb,
  constraint_ids uuid[] NOT NULL DEFAULT '{}',
  -- [{id, name, type, boundaries, restrictions}]
  safety_zones jsonb NOT NULL DEFAULT '[]',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fleets (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  locus_id uuid NOT NULL REFERENCES loci(id),
  status fleet_status NOT NULL DEFAULT 'IDLE',
  constraint_ids uuid[] NOT NULL DEFAULT '{}',
  active_task_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX fleets_locus_idx ON fleets (locus_id);

-- Created before robots (the reference referenced it before it existed).
CREATE TABLE factory_floors (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  blueprint_url text,
  blueprint_type blueprint_type,
  width_meters double precision NOT NULL CHECK (width_meters > 0),
  height_meters double precision NOT NULL CHECK (height_meters > 0),
  scale_factor double precision NOT NULL CHECK (scale_factor > 0),
  origin_x double precision NOT NULL DEFAULT 0,
  origin_y double precision NOT NULL DEFAULT 0,
  created_by uuid NOT NULL REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);

CREATE TABLE robots (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  sepulka_id uuid NOT NULL REFERENCES sepulkas(id),
  fleet_id uuid NOT NULL REFERENCES fleets(id),
  current_ingot_id uuid NOT NULL REFERENCES ingots(id),
  status robot_status NOT NULL DEFAULT 'IDLE',
  last_seen timestamptz,
  -- {position: {x, y, z} local metres, orientation: {x, y, z, w}, jointPositions, timestamp}
  last_pose jsonb,
  battery_level double precision CHECK (battery_level BETWEEN 0 AND 100),
  health_score double precision CHECK (health_score BETWEEN 0 AND 100),
  stream_url text,
  factory_floor_id uuid REFERENCES factory_floors(id) ON DELETE SET NULL,
  floor_position_x double precision,
  floor_position_y double precision,
  floor_position_theta double precision,
  is_mobile boolean,
  floor_rotation_degrees double precision,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX idx_robots_fleet_status ON robots (fleet_id, status);
CREATE INDEX idx_robots_factory_floor ON robots (factory_floor_id) WHERE factory_floor_id IS NOT NULL;
CREATE INDEX idx_robots_last_seen ON robots (last_seen DESC) WHERE status <> 'OFFLINE';
CREATE INDEX robots_sepulka_idx ON robots (sepulka_id);

CREATE TABLE tasks (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  type task_type NOT NULL,
  parameters jsonb,
  status task_status NOT NULL DEFAULT 'PENDING',
  priority task_priority NOT NULL DEFAULT 'NORMAL',
  fleet_id uuid REFERENCES fleets(id),
  scheduled_at timestamptz,
  created_by uuid NOT NULL REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX idx_tasks_status_priority ON tasks (status, priority);
CREATE INDEX idx_tasks_created_at ON tasks (created_at DESC);
CREATE INDEX tasks_fleet_idx ON tasks (fleet_id);

ALTER TABLE fleets ADD CONSTRAINT fleets_active_task_fk
  FOREIGN KEY (active_task_id) REFERENCES tasks(id) ON DELETE SET NULL;

CREATE TABLE task_robots (
  task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  assigned_at timestamptz NOT NULL DEFAULT now(),
  estimated_duration integer,
  confidence double precision NOT NULL DEFAULT 1.0,
  PRIMARY KEY (task_id, robot_id)
);
CREATE INDEX task_robots_robot_idx ON task_robots (robot_id);

CREATE TABLE runs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  status run_status NOT NULL DEFAULT 'PENDING',
  started_at timestamptz,
  completed_at timestamptz,
  -- {duration, energyConsumed, accuracy, errors, warnings, performance}
  metrics jsonb,
  logs text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_task_idx ON runs (task_id);
CREATE INDEX idx_runs_robot_started ON runs (robot_id, started_at DESC);

CREATE TABLE edicts (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  description text,
  type edict_type NOT NULL,
  rules jsonb NOT NULL,
  severity edict_severity NOT NULL DEFAULT 'WARNING',
  active boolean NOT NULL DEFAULT true,
  -- {fleets, robots, locations, taskTypes}
  applies_to jsonb,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  deleted_at timestamptz
);
CREATE INDEX edicts_type_active_idx ON edicts (type, active);

CREATE TABLE policy_violations (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  edict_id uuid NOT NULL REFERENCES edicts(id) ON DELETE CASCADE,
  robot_id uuid REFERENCES robots(id) ON DELETE SET NULL,
  fleet_id uuid REFERENCES fleets(id) ON DELETE SET NULL,
  task_id uuid REFERENCES tasks(id) ON DELETE SET NULL,
  severity edict_severity NOT NULL,
  message text NOT NULL,
  data jsonb,
  resolved boolean NOT NULL DEFAULT false,
  resolved_by uuid REFERENCES smiths(id),
  resolved_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX policy_violations_open_idx ON policy_violations (edict_id) WHERE NOT resolved;

CREATE TABLE deployments (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  ingot_id uuid NOT NULL REFERENCES ingots(id),
  fleet_id uuid NOT NULL REFERENCES fleets(id),
  -- PENDING, IN_PROGRESS, COMPLETED, PARTIAL, FAILED
  status text NOT NULL,
  rollout_percent integer NOT NULL CHECK (rollout_percent BETWEEN 0 AND 100),
  kind text NOT NULL DEFAULT 'QUENCH',
  details jsonb,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_fleet_idx ON deployments (fleet_id, created_at DESC);

-- Every mutation writes one row here, in its own transaction.
CREATE TABLE audit_logs (
  id bigserial PRIMARY KEY,
  smith_id uuid REFERENCES smiths(id) ON DELETE SET NULL,
  action text NOT NULL,
  resource_type text NOT NULL,
  resource_id text,
  changes jsonb,
  ip_address text,
  user_agent text,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_smith_time ON audit_logs (smith_id, created_at DESC);
CREATE INDEX idx_audit_resource ON audit_logs (resource_type, resource_id);

CREATE TRIGGER smiths_touch BEFORE UPDATE ON smiths FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER patterns_touch BEFORE UPDATE ON patterns FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER alloys_touch BEFORE UPDATE ON alloys FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER sepulkas_touch BEFORE UPDATE ON sepulkas FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER ingots_touch BEFORE UPDATE ON ingots FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER loci_touch BEFORE UPDATE ON loci FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER fleets_touch BEFORE UPDATE ON fleets FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER factory_floors_touch BEFORE UPDATE ON factory_floors FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER robots_touch BEFORE UPDATE ON robots FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER tasks_touch BEFORE UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER runs_touch BEFORE UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER edicts_touch BEFORE UPDATE ON edicts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- migrate: rollback
DROP TABLE IF EXISTS audit_logs, deployments, policy_violations, edicts, runs, task_robots CASCADE;
DROP TABLE IF EXISTS tasks, robots, factory_floors, fleets, loci, ingots, sepulka_alloys CASCADE;
DROP TABLE IF EXISTS sepulkas, alloys, patterns, sessions, smiths CASCADE;
DROP FUNCTION IF EXISTS touch_updated_at();
DROP TYPE IF EXISTS blueprint_type, edict_severity, edict_type, run_status, task_priority, task_status,
  task_type, robot_status, fleet_status, ingot_status, sepulka_status, alloy_type, pattern_category,
  smith_role;
