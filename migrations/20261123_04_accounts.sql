-- Accounts: refresh-token families, invitations, password resets, audit browsing
-- depends: 20261123_03_realtime

-- migrate: apply
-- A session is one refresh-token family: each rotation retires the presented token here, so a
-- retired token presented again is recognised as reuse and revokes its whole session.
ALTER TABLE sessions ADD COLUMN revoked_reason text;
CREATE TABLE retired_refresh_tokens (
  token_hash text PRIMARY KEY,
  session_id uuid NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
  retired_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retired_refresh_tokens_session_idx ON retired_refresh_tokens (session_id);

ALTER TABLE smiths ADD COLUMN password_changed_at timestamptz;
ALTER TABLE smiths ADD COLUMN deactivated_at timestamptz;

-- Accounts are created by invitation (open sign-up is off unless configured).
CREATE TABLE invitations (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  email text NOT NULL,
  role smith_role NOT NULL DEFAULT 'SMITH',
  token_hash text NOT NULL UNIQUE,
  invited_by uuid REFERENCES smiths(id) ON DELETE SET NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  accepted_at timestamptz,
  revoked_at timestamptz
);
CREATE INDEX invitations_email_idx ON invitations (lower(email));

-- Single-use, expiring password reset tokens (stored hashed).
CREATE TABLE password_resets (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  smith_id uuid NOT NULL REFERENCES smiths(id) ON DELETE CASCADE,
  token_hash text NOT NULL UNIQUE,
  requested_ip text,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  used_at timestamptz
);
CREATE INDEX password_resets_smith_idx ON password_resets (smith_id);

-- The audit connection pages newest first by (created_at, id).
CREATE INDEX idx_audit_time ON audit_logs (created_at DESC, id DESC);
CREATE INDEX idx_audit_action ON audit_logs (action, created_at DESC);

-- migrate: rollback
DROP INDEX IF EXISTS idx_audit_action;
DROP INDEX IF EXISTS idx_audit_time;
DROP TABLE IF EXISTS password_resets, invitations, retired_refresh_tokens;
ALTER TABLE smiths DROP COLUMN IF EXISTS deactivated_at;
ALTER TABLE smiths DROP COLUMN IF EXISTS password_changed_at;
ALTER TABLE sessions DROP COLUMN IF EXISTS revoked_reason;
