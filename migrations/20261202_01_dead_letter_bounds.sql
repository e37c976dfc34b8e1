-- Dead letters keep a bounded prefix of the payload, with the whole payload's size and SHA-256
-- depends: 20261123_07_soft_delete

-- migrate: apply
-- One rejected message must not cost the database what it weighed: `payload` holds its first
-- 4 KiB (app/ingest/writer.py), `payload_size` and `payload_sha256` describe all of it, enough to
-- see what a robot sent and to recognise copies. Rows written before are cut down the same way.
ALTER TABLE dead_letters ADD COLUMN payload_size bigint, ADD COLUMN payload_sha256 bytea;
UPDATE dead_letters
SET payload_size = length(payload), payload_sha256 = sha256(payload), payload = substring(payload FROM 1 FOR 4096);
ALTER TABLE dead_letters
  ALTER COLUMN payload_size SET NOT NULL,
  ALTER COLUMN payload_sha256 SET NOT NULL;

-- migrate: rollback
-- The bytes past the prefix are gone; rolling back only drops the columns.
ALTER TABLE dead_letters DROP COLUMN IF EXISTS payload_size, DROP COLUMN IF EXISTS payload_sha256;
