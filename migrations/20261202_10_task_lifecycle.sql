-- Task lifecycle: a transition log per task, runs with their command and progress, one open run per robot, schedules
-- depends: 20261202_01_dead_letter_bounds

-- migrate: apply
-- Runs are linked to their DISPATCH_TASK command and carry progress; a robot (and a task) has at
-- most one open run; schedules create tasks.
ALTER TABLE tasks
  ADD COLUMN started_at timestamptz,
  ADD COLUMN completed_at timestamptz,
  ADD COLUMN failure_reason text,
  ADD COLUMN progress_percent double precision CHECK (progress_percent BETWEEN 0 AND 100),
  ADD COLUMN progress_step text,
  ADD COLUMN progress_at timestamptz;

ALTER TABLE runs
  ADD COLUMN command_id uuid REFERENCES robot_commands(id) ON DELETE SET NULL,
  ADD COLUMN attempt integer NOT NULL DEFAULT 1,
  ADD COLUMN failure_reason text,
  ADD COLUMN progress_percent double precision CHECK (progress_percent BETWEEN 0 AND 100),
  ADD COLUMN progress_step text,
  ADD COLUMN progress_at timestamptz,
  ADD COLUMN progress_event_id bigint;

-- Before the one-open-run rule: earlier dispatches could double-book a robot. The newest open
-- run of each robot (and of each task) stays open, older ones are cancelled.
UPDATE runs SET status = 'CANCELLED', completed_at = now(), failure_reason = 'superseded'
WHERE status IN ('PENDING', 'RUNNING')
  AND id NOT IN (SELECT DISTINCT ON (robot_id) id FROM runs WHERE status IN ('PENDING', 'RUNNING')
                 ORDER BY robot_id, created_at DESC, id DESC);
UPDATE runs SET status = 'CANCELLED', completed_at = now(), failure_reason = 'superseded'
WHERE status IN ('PENDING', 'RUNNING')
  AND id NOT IN (SELECT DISTINCT ON (task_id) id FROM runs WHERE status IN ('PENDING', 'RUNNING')
                 ORDER BY task_id, created_at DESC, id DESC);
-- No robot runs two tasks at once, and no task runs twice at once, whatever the code path or the
-- number of dispatchers: the database refuses the second open run.
CREATE UNIQUE INDEX runs_one_open_per_robot ON runs (robot_id) WHERE status IN ('PENDING', 'RUNNING');
CREATE UNIQUE INDEX runs_one_open_per_task ON runs (task_id) WHERE status IN ('PENDING', 'RUNNING');
CREATE INDEX runs_command_idx ON runs (command_id) WHERE command_id IS NOT NULL;

-- The dispatch queue: due PENDING tasks of a fleet by priority, then age.
CREATE INDEX tasks_queue_idx ON tasks (fleet_id, priority DESC, created_at, id)
  WHERE status = 'PENDING' AND deleted_at IS NULL;

CREATE TABLE task_transitions (
  id bigserial PRIMARY KEY,
  task_id uuid NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  run_id uuid REFERENCES runs(id) ON DELETE SET NULL,
  from_status task_status,  -- NULL: the task was created
  to_status task_status NOT NULL,
  actor_type text NOT NULL CHECK (actor_type IN ('SMITH', 'ROBOT', 'SYSTEM')),
  smith_id uuid REFERENCES smiths(id) ON DELETE SET NULL,
  robot_id uuid REFERENCES robots(id) ON DELETE SET NULL,
  reason text,
  at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX task_transitions_task_idx ON task_transitions (task_id, id);

CREATE TABLE scheduled_tasks (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  fleet_id uuid NOT NULL REFERENCES fleets(id),
  name text NOT NULL,
  description text,
  type task_type NOT NULL,
  parameters jsonb,
  priority task_priority NOT NULL DEFAULT 'NORMAL',
  cron text,
  timezone text NOT NULL DEFAULT 'UTC',
  run_at timestamptz,
  next_run_at timestamptz,
  last_run_at timestamptz,
  fired integer NOT NULL DEFAULT 0,
  active boolean NOT NULL DEFAULT true,
  created_by uuid NOT NULL REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((cron IS NULL) <> (run_at IS NULL))
);
CREATE INDEX scheduled_tasks_due_idx ON scheduled_tasks (next_run_at) WHERE active;
CREATE TRIGGER scheduled_tasks_touch BEFORE UPDATE ON scheduled_tasks
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

ALTER TABLE tasks
  ADD COLUMN scheduled_task_id uuid REFERENCES scheduled_tasks(id) ON DELETE SET NULL,
  ADD COLUMN scheduled_for timestamptz;
-- A schedule's occurrence becomes one task, however many workers fire it.
CREATE UNIQUE INDEX tasks_one_per_occurrence ON tasks (scheduled_task_id, scheduled_for)
  WHERE scheduled_task_id IS NOT NULL;

-- Wake-ups for the task worker (it also polls): what robots report about their tasks arrives
-- through the ingest, which need not know about tasks.
CREATE FUNCTION notify_task_worker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('task_worker', '');
  RETURN NULL;
END;
$$;
CREATE TRIGGER robot_events_task_report AFTER INSERT ON robot_events
  FOR EACH ROW WHEN (NEW.type LIKE 'TASK\_%') EXECUTE FUNCTION notify_task_worker();
CREATE TRIGGER robot_commands_dispatch_ack AFTER UPDATE OF state ON robot_commands
  FOR EACH ROW WHEN (NEW.type = 'DISPATCH_TASK' AND NEW.state IS DISTINCT FROM OLD.state)
  EXECUTE FUNCTION notify_task_worker();
CREATE TRIGGER robots_status_change AFTER UPDATE OF status ON robots
  FOR EACH ROW WHEN (NEW.status IS DISTINCT FROM OLD.status) EXECUTE FUNCTION notify_task_worker();

-- migrate: rollback
DROP TRIGGER IF EXISTS robots_status_change ON robots;
DROP TRIGGER IF EXISTS robot_commands_dispatch_ack ON robot_commands;
DROP TRIGGER IF EXISTS robot_events_task_report ON robot_events;
DROP FUNCTION IF EXISTS notify_task_worker();
DROP INDEX IF EXISTS tasks_one_per_occurrence;
ALTER TABLE tasks DROP COLUMN IF EXISTS scheduled_task_id, DROP COLUMN IF EXISTS scheduled_for;
DROP TABLE IF EXISTS scheduled_tasks;
DROP TABLE IF EXISTS task_transitions;
DROP INDEX IF EXISTS tasks_queue_idx;
DROP INDEX IF EXISTS runs_command_idx;
DROP INDEX IF EXISTS runs_one_open_per_task;
DROP INDEX IF EXISTS runs_one_open_per_robot;
ALTER TABLE runs DROP COLUMN IF EXISTS command_id, DROP COLUMN IF EXISTS attempt,
  DROP COLUMN IF EXISTS failure_reason, DROP COLUMN IF EXISTS progress_percent,
  DROP COLUMN IF EXISTS progress_step, DROP COLUMN IF EXISTS progress_at,
  DROP COLUMN IF EXISTS progress_event_id;
ALTER TABLE tasks DROP COLUMN IF EXISTS started_at, DROP COLUMN IF EXISTS completed_at,
  DROP COLUMN IF EXISTS failure_reason, DROP COLUMN IF EXISTS progress_percent,
  DROP COLUMN IF EXISTS progress_step, DROP COLUMN IF EXISTS progress_at;
