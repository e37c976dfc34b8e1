-- Edicts that act: rule state, breaches linked to alerts and commands, notifications, webhooks
-- depends: 20261202_01_dead_letter_bounds

-- migrate: apply
-- The evaluator's memory of one (edict, robot) pair (docs/edicts.md): debounce counters, the
-- breached flag, the last firing (cooldown), previous values (rate rules) and EWMA baselines.
-- A pair with nothing to remember has no row.
CREATE TABLE edict_rule_state (
  edict_id uuid NOT NULL REFERENCES edicts(id) ON DELETE CASCADE,
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  state jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (robot_id, edict_id)
);

CREATE TABLE alerts (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  edict_id uuid NOT NULL REFERENCES edicts(id) ON DELETE CASCADE,
  robot_id uuid NOT NULL REFERENCES robots(id) ON DELETE CASCADE,
  fleet_id uuid REFERENCES fleets(id) ON DELETE SET NULL,
  severity edict_severity NOT NULL,
  state text NOT NULL DEFAULT 'OPEN' CHECK (state IN ('OPEN', 'ACKNOWLEDGED', 'RESOLVED')),
  message text NOT NULL,
  data jsonb,
  occurrences integer NOT NULL DEFAULT 1,
  first_at timestamptz NOT NULL DEFAULT now(),
  last_at timestamptz NOT NULL DEFAULT now(),
  acknowledged_by uuid REFERENCES smiths(id),
  acknowledged_at timestamptz,
  resolved_by uuid REFERENCES smiths(id),
  resolved_at timestamptz,
  resolution_note text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- One alert that is not resolved per (edict, robot): a repeat counts on it.
CREATE UNIQUE INDEX alerts_one_open_idx ON alerts (edict_id, robot_id) WHERE state <> 'RESOLVED';
CREATE INDEX alerts_page_idx ON alerts (created_at DESC, id DESC);
CREATE INDEX alerts_fleet_idx ON alerts (fleet_id, created_at DESC);

ALTER TABLE policy_violations
  ADD COLUMN alert_id uuid REFERENCES alerts(id) ON DELETE SET NULL,
  ADD COLUMN command_ids uuid[] NOT NULL DEFAULT '{}';
CREATE INDEX policy_violations_alert_idx ON policy_violations (alert_id);

-- Who wants what: absent row = every severity, every fleet, IN_APP only.
CREATE TABLE notification_preferences (
  smith_id uuid PRIMARY KEY REFERENCES smiths(id) ON DELETE CASCADE,
  severities text[] NOT NULL DEFAULT '{INFO,WARNING,CRITICAL}',
  fleets uuid[] NOT NULL DEFAULT '{}',
  channels text[] NOT NULL DEFAULT '{IN_APP}',
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  smith_id uuid NOT NULL REFERENCES smiths(id) ON DELETE CASCADE,
  alert_id uuid REFERENCES alerts(id) ON DELETE CASCADE,
  severity edict_severity NOT NULL,
  title text NOT NULL,
  body text NOT NULL,
  data jsonb,
  read_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_smith_idx ON notifications (smith_id, created_at DESC, id DESC);
CREATE INDEX notifications_unread_idx ON notifications (smith_id) WHERE read_at IS NULL;

CREATE TABLE webhooks (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  url text NOT NULL,
  secret text NOT NULL,
  description text,
  severities text[] NOT NULL DEFAULT '{INFO,WARNING,CRITICAL}',
  fleets uuid[] NOT NULL DEFAULT '{}',
  active boolean NOT NULL DEFAULT true,
  consecutive_failures integer NOT NULL DEFAULT 0,
  disabled_at timestamptz,
  created_by uuid REFERENCES smiths(id),
  created_at timestamptz NOT NULL DEFAULT now()
);

-- The outbox of e-mails and webhook calls: written with the alert, delivered by the worker at
-- least once (claimed with SKIP LOCKED and a lease; a worker that dies leaves the lease to run out).
CREATE TABLE notification_deliveries (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  channel text NOT NULL CHECK (channel IN ('EMAIL', 'WEBHOOK')),
  webhook_id uuid REFERENCES webhooks(id) ON DELETE CASCADE,
  smith_id uuid REFERENCES smiths(id) ON DELETE CASCADE,
  alert_id uuid REFERENCES alerts(id) ON DELETE SET NULL,
  event text NOT NULL,
  payload jsonb NOT NULL,
  state text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  leased_until timestamptz,
  last_status integer,
  last_error text,
  created_at timestamptz NOT NULL DEFAULT now(),
  delivered_at timestamptz
);
CREATE INDEX notification_deliveries_due_idx ON notification_deliveries (next_attempt_at)
  WHERE state = 'PENDING';
CREATE INDEX notification_deliveries_webhook_idx ON notification_deliveries (webhook_id, created_at DESC);

-- Every attempt, for the delivery log.
CREATE TABLE notification_attempts (
  id bigserial PRIMARY KEY,
  delivery_id uuid NOT NULL REFERENCES notification_deliveries(id) ON DELETE CASCADE,
  attempt integer NOT NULL,
  status integer,
  error text,
  duration_ms double precision NOT NULL,
  at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notification_attempts_delivery_idx ON notification_attempts (delivery_id, id);

-- migrate: rollback
DROP TABLE IF EXISTS notification_attempts, notification_deliveries, webhooks, notifications,
  notification_preferences CASCADE;
ALTER TABLE policy_violations DROP COLUMN IF EXISTS alert_id, DROP COLUMN IF EXISTS command_ids;
DROP TABLE IF EXISTS alerts, edict_rule_state CASCADE;
