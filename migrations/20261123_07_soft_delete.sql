-- Soft delete: a fleet is deleted only once it is empty
-- depends: 20261123_04_accounts

-- migrate: apply
-- Queries hide rows whose deleted_at is set. A live robot must never point at a hidden fleet
-- (Robot.fleetId is non-null and robots are listed by fleet), so deleting a fleet that still has
-- live robots is refused here, whichever code path tries it: move or delete the robots first.
CREATE FUNCTION refuse_deleting_fleet_with_robots() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM robots WHERE fleet_id = NEW.id AND deleted_at IS NULL) THEN
    RAISE EXCEPTION 'fleet % still has robots', NEW.id USING ERRCODE = 'foreign_key_violation';
  END IF;
  RETURN NEW;
END;
$$;
CREATE TRIGGER fleets_soft_delete BEFORE UPDATE OF deleted_at ON fleets
  FOR EACH ROW WHEN (OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL)
  EXECUTE FUNCTION refuse_deleting_fleet_with_robots();

-- migrate: rollback
DROP TRIGGER IF EXISTS fleets_soft_delete ON fleets;
DROP FUNCTION IF EXISTS refuse_deleting_fleet_with_robots();
