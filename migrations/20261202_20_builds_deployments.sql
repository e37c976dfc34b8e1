-- Builds and deployments: build/temper jobs, deployment targets, uploaded files and routes
-- depends: 20261202_01_dead_letter_bounds

-- migrate: apply
-- One row per build or temper job. Workers claim QUEUED rows (and RUNNING rows whose lease ran
-- out: a worker that died mid-job) with FOR UPDATE SKIP LOCKED, so several workers never run one
-- job twice at the same time; `attempts` bounds how often a job is retried.
CREATE TABLE build_jobs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  ingot_id uuid NOT NULL REFERENCES ingots(id) ON DELETE CASCADE,
  -- BUILD (castIngot) or TEMPER (temperIngot)
  kind text NOT NULL CHECK (kind IN ('BUILD', 'TEMPER')),
  -- QUEUED, RUNNING, SUCCEEDED, FAILED
  state text NOT NULL DEFAULT 'QUEUED' CHECK (state IN ('QUEUED', 'RUNNING', 'SUCCEEDED', 'FAILED')),
  -- temperIngot's goals and constraints
  input jsonb NOT NULL DEFAULT '{}',
  attempts integer NOT NULL DEFAULT 0,
  lease_until timestamptz,
  error text,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz
);
CREATE INDEX build_jobs_open_idx ON build_jobs (created_at) WHERE state IN ('QUEUED', 'RUNNING');
CREATE INDEX build_jobs_ingot_idx ON build_jobs (ingot_id, created_at DESC);

-- Deployments finish when every target did; `to_version` is what the robots must report.
ALTER TABLE deployments
  ADD COLUMN to_version text,
  ADD COLUMN completed_at timestamptz;
CREATE INDEX deployments_ingot_idx ON deployments (ingot_id, created_at DESC);
CREATE INDEX deployments_open_idx ON deployments (created_at) WHERE status IN ('PENDING', 'IN_PROGRESS');

-- One row per robot a deployment (quench or recall) addresses, with the UPDATE_INGOT command
-- that carries it; `reported_version` is the version the robot said it runs afterwards.
CREATE TABLE deployment_targets (
  deployment_id uuid NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  from_ingot_id uuid REFERENCES ingots(id),
  to_ingot_id uuid REFERENCES ingots(id),
  command_id uuid REFERENCES robot_commands(id) ON DELETE SET NULL,
  -- PENDING (command on its way), SUCCEEDED, FAILED
  state text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'SUCCEEDED', 'FAILED')),
  reported_version text,
  detail text,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (deployment_id, robot_id)
);
CREATE INDEX deployment_targets_command_idx ON deployment_targets (command_id);
CREATE INDEX deployment_targets_robot_idx ON deployment_targets (robot_id);

-- Files uploaded through uploadProgram / uploadRoute; the bytes live in the storage (app/infra/storage.py).
CREATE TABLE uploaded_files (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- PROGRAM or ROUTE
  kind text NOT NULL CHECK (kind IN ('PROGRAM', 'ROUTE')),
  file_name text NOT NULL,
  content_type text,
  storage_key text NOT NULL UNIQUE,
  size bigint NOT NULL,
  sha256 text NOT NULL,
  task_id uuid REFERENCES tasks(id) ON DELETE SET NULL,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now()
);

-- A route read from an uploaded file: waypoints [{sequence, position, orientation, actions}].
CREATE TABLE routes (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL,
  waypoints jsonb NOT NULL,
  file_id uuid REFERENCES uploaded_files(id) ON DELETE SET NULL,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now()
);

-- migrate: rollback
DROP TABLE IF EXISTS routes, uploaded_files, deployment_targets, build_jobs;
DROP INDEX IF EXISTS deployments_ingot_idx, deployments_open_idx;
ALTER TABLE deployments DROP COLUMN IF EXISTS to_version, DROP COLUMN IF EXISTS completed_at;
