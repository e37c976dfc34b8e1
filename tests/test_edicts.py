"""Policy managers read, add, replace and deactivate edicts; only the creator or an ADMIN changes one."""

from __future__ import annotations

from typing import Any

from tests.seed_ids import ALPHA, DEV_FLEET, FORCE_EDICT, SPEED_EDICT
from tests.support import DEV, Api

EDICTS = """
query($type: EdictType, $active: Boolean) {
  edicts(type: $type, active: $active) { id name type severity active rules appliesTo }
}
"""
EDICT = "query($id: ID!) { edict(id: $id) { id name active appliesTo } }"
ADD = """
mutation($input: EdictInput!) {
  addEdict(input: $input) { id name description type severity active rules appliesTo }
}
"""
UPDATE = """
mutation($id: ID!, $input: EdictInput!) {
  updateEdict(id: $id, input: $input) { id name severity active appliesTo }
}
"""
DEACTIVATE = "mutation($id: ID!) { deactivateEdict(id: $id) { id active appliesTo } }"

RULES: dict[str, Any] = {
    "condition": {
        "type": "metric",
        "operator": "AND",
        "rules": [{"metric": "CPU_USAGE", "op": "gt", "value": 90}],
    },
    "actions": [{"type": "WARN", "parameters": {}, "immediate": False}, {"type": "ALERT"}],
}


def edict_input(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "CPU ceiling",
        "description": "Warn on a busy CPU",
        "type": "PERFORMANCE",
        "rules": RULES,
        "severity": "WARNING",
        "appliesTo": {"fleets": [DEV_FLEET], "taskTypes": ["ASSEMBLY"]},
    } | overrides


async def test_smith_with_view_edicts_lists_them_and_others_are_refused(api: Api) -> None:
    body = await api.data(EDICTS, as_=DEV)
    assert {e["name"] for e in body["edicts"]} == {
        "Maximum Speed Limit",
        "Battery Level Warning",
        "Force Limit Safety",
    }
    force = next(e for e in body["edicts"] if e["id"] == FORCE_EDICT)
    assert force["appliesTo"]["taskTypes"] == ["ASSEMBLY"]
    assert force["rules"]["actions"][0]["type"] == "EMERGENCY_STOP"
    smith = await api.create_smith("s@sepulki.com", "SMITH")
    assert await api.error_codes(EDICTS, as_=smith) == ["FORBIDDEN"]
    assert await api.error_codes(EDICTS, as_=None) == ["UNAUTHENTICATED"]


async def test_edicts_filter_by_type_and_active_and_hide_deleted(api: Api) -> None:
    safety = await api.data(EDICTS, {"type": "SAFETY"})
    assert {e["id"] for e in safety["edicts"]} == {SPEED_EDICT, FORCE_EDICT}
    await api.resources.db.execute("UPDATE edicts SET deleted_at = now() WHERE id = $1", SPEED_EDICT)
    await api.resources.db.execute("UPDATE edicts SET active = false WHERE id = $1", FORCE_EDICT)
    assert (await api.data(EDICTS, {"type": "SAFETY"}))["edicts"][0]["id"] == FORCE_EDICT
    assert [e["name"] for e in (await api.data(EDICTS, {"active": True}))["edicts"]] == [
        "Battery Level Warning"
    ]
    assert (await api.data(EDICT, {"id": SPEED_EDICT}))["edict"] is None
    assert await api.error_codes(EDICT, {"id": "speed"}) == ["BAD_USER_INPUT"]


async def test_add_edict_stores_it_with_its_creator_and_audit(api: Api) -> None:
    body = await api.data(ADD, {"input": edict_input()}, as_=DEV)
    edict = body["addEdict"]
    assert edict["active"] is True
    assert edict["rules"] == RULES
    assert edict["appliesTo"] == {"fleets": [DEV_FLEET], "taskTypes": ["ASSEMBLY"]}
    db = api.resources.db
    row = await db.fetchrow(
        "SELECT s.email, e.type::text AS type FROM edicts e "
        "JOIN smiths s ON s.id = e.created_by WHERE e.id = $1",
        edict["id"],
    )
    assert (row["email"], row["type"]) == (DEV[0], "PERFORMANCE")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM audit_logs WHERE action = 'addEdict' AND resource_id = $1", edict["id"]
        )
        == 1
    )


async def test_malformed_rules_or_applies_to_are_bad_user_input(api: Api) -> None:
    bad_rules = [
        {"condition": {"type": "metric", "operator": "AND"}, "actions": []},
        {"condition": {"type": "metric", "operator": "AND", "rules": []}, "actions": [{"parameters": {}}]},
        {"condition": {"type": "metric", "operator": "AND", "rules": []}, "actions": {"type": "WARN"}},
        {
            "condition": {"type": "metric", "operator": "AND", "rules": []},
            "actions": [{"type": "WARN", "immediate": "yes"}],
        },
        ["not", "an", "object"],
    ]
    for rules in bad_rules:
        body = await api.execute(ADD, {"input": edict_input(rules=rules)})
        error = body["errors"][0]
        assert (error["extensions"]["code"], error["extensions"]["field"]) == ("BAD_USER_INPUT", "rules"), (
            rules
        )
    for applies_to in ({"planets": []}, {"fleets": "all"}, ["x"]):
        body = await api.execute(ADD, {"input": edict_input(appliesTo=applies_to)})
        assert body["errors"][0]["extensions"]["field"] == "appliesTo"
    assert await api.error_codes(ADD, {"input": edict_input(name=" ")}) == ["BAD_USER_INPUT"]
    assert await api.resources.db.fetchval("SELECT count(*) FROM edicts") == 3


async def test_update_replaces_the_edict_for_its_creator_and_admin(api: Api) -> None:
    body = await api.data(
        UPDATE, {"id": FORCE_EDICT, "input": edict_input(name="Force v2", severity="INFO")}, as_=DEV
    )
    assert body["updateEdict"]["name"] == "Force v2"
    row = await api.resources.db.fetchrow(
        "SELECT name, severity::text AS severity, description FROM edicts WHERE id = $1", FORCE_EDICT
    )
    assert dict(row) == {"name": "Force v2", "severity": "INFO", "description": "Warn on a busy CPU"}
    # Full replace: appliesTo left out becomes null.
    no_scope = edict_input(name="Force v3")
    del no_scope["appliesTo"]
    body = await api.data(UPDATE, {"id": FORCE_EDICT, "input": no_scope})
    assert body["updateEdict"]["appliesTo"] is None
    assert await api.resources.db.fetchval("SELECT applies_to FROM edicts WHERE id = $1", FORCE_EDICT) is None


async def test_update_by_someone_else_is_forbidden_and_unknown_is_not_found(api: Api) -> None:
    other = await api.create_smith(
        "o@sepulki.com", "OVER_SMITH", permissions=["MANAGE_EDICTS", "VIEW_EDICTS"]
    )
    assert await api.error_codes(UPDATE, {"id": FORCE_EDICT, "input": edict_input()}, as_=other) == [
        "FORBIDDEN"
    ]
    assert (
        await api.resources.db.fetchval("SELECT name FROM edicts WHERE id = $1", FORCE_EDICT)
        == "Force Limit Safety"
    )
    assert await api.error_codes(UPDATE, {"id": SPEED_EDICT, "input": edict_input()}, as_=DEV) == [
        "FORBIDDEN"
    ]
    assert await api.error_codes(DEACTIVATE, {"id": FORCE_EDICT}, as_=other) == ["FORBIDDEN"]
    unknown = "a0000000-0000-4000-8000-000000000099"
    assert await api.error_codes(UPDATE, {"id": unknown, "input": edict_input()}) == ["NOT_FOUND"]
    assert await api.error_codes(DEACTIVATE, {"id": unknown}) == ["NOT_FOUND"]
    plain = await api.create_smith("p@sepulki.com", "OVER_SMITH")
    assert await api.error_codes(ADD, {"input": edict_input()}, as_=plain) == ["FORBIDDEN"]


async def test_deactivate_clears_scope_and_resolves_open_violations(api: Api) -> None:
    db = api.resources.db
    open_id = await db.fetchval(
        "INSERT INTO policy_violations (edict_id, robot_id, fleet_id, severity, message) "
        "VALUES ($1, $2, $3, 'CRITICAL', 'Force 180 N') RETURNING id",
        FORCE_EDICT,
        ALPHA,
        DEV_FLEET,
    )
    other_id = await db.fetchval(
        "INSERT INTO policy_violations (edict_id, severity, message) "
        "VALUES ($1, 'CRITICAL', 'Too fast') RETURNING id",
        SPEED_EDICT,
    )
    body = await api.data(DEACTIVATE, {"id": FORCE_EDICT}, as_=DEV)
    assert body["deactivateEdict"] == {"id": FORCE_EDICT, "active": False, "appliesTo": None}
    violation = await db.fetchrow(
        "SELECT v.resolved, v.resolved_at, s.email FROM policy_violations v "
        "JOIN smiths s ON s.id = v.resolved_by WHERE v.id = $1",
        open_id,
    )
    assert violation["resolved"] is True and violation["resolved_at"] is not None
    assert violation["email"] == DEV[0]
    assert await db.fetchval("SELECT resolved FROM policy_violations WHERE id = $1", other_id) is False
    row = await db.fetchrow("SELECT active, applies_to FROM edicts WHERE id = $1", FORCE_EDICT)
    assert (row["active"], row["applies_to"]) == (False, None)
    assert await db.fetchval("SELECT count(*) FROM audit_logs WHERE action = 'deactivateEdict'") == 1


# --- rules that act: validation at save time, then evaluation of live telemetry ---------------


def metric_rules(*rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    condition = {"type": "metric", "operator": "AND", "rules": list(rules)}
    return {"condition": condition, "actions": [{"type": "ALERT"}]} | extra


async def test_a_bad_rule_is_refused_naming_its_bad_part_on_add_and_update(api: Api) -> None:
    threshold = {"metric": "battery_level", "op": "lt", "value": 20}
    cases = [
        (metric_rules({**threshold, "op": "below"}), "rules.condition.rules[0].op"),
        (metric_rules(threshold, {"metric": "FORCE", "op": "gt"}), "rules.condition.rules[1].value"),
        (metric_rules({**threshold, "metric": ""}), "rules.condition.rules[0].metric"),
        (metric_rules({"kind": "sometimes", "metric": "FORCE"}), "rules.condition.rules[0].kind"),
        (metric_rules({"kind": "missing"}), "rules.condition.rules[0].seconds"),
        (
            metric_rules({"kind": "anomaly", "metric": "FORCE", "tiers": [{"z": 3, "severity": "LOUD"}]}),
            "rules.condition.rules[0].tiers[0]",
        ),
        (
            metric_rules({**threshold, "overrides": {"DevBot-Alpha": 30}}),
            "rules.condition.rules[0].overrides",
        ),
        (metric_rules(threshold, debounce={"samples": 0}), "rules.debounce.samples"),
        (metric_rules(threshold, cooldownSeconds=-1), "rules.cooldownSeconds"),
        (metric_rules(threshold, hysteresis="wide"), "rules.hysteresis"),
        ({**metric_rules(threshold), "actions": [{"type": "SELF_DESTRUCT"}]}, "rules.actions[0].type"),
        (
            {"condition": {"type": "metric", "operator": "XOR", "rules": [threshold]}, "actions": []},
            "rules.condition.operator",
        ),
    ]
    for rules, part in cases:
        for query, variables in (
            (ADD, {"input": edict_input(rules=rules)}),
            (UPDATE, {"id": FORCE_EDICT, "input": edict_input(rules=rules)}),
        ):
            error = (await api.execute(query, variables))["errors"][0]
            assert error["extensions"]["code"] == "BAD_USER_INPUT", (part, error)
            assert error["extensions"]["field"] == "rules" and part in error["message"], (part, error)
    assert await api.resources.db.fetchval("SELECT count(*) FROM edicts") == 3
    assert (await api.resources.db.fetchval("SELECT rules FROM edicts WHERE id = $1", FORCE_EDICT))[
        "condition"
    ]["rules"][0]["metric"] == "FORCE"


async def test_update_without_active_leaves_an_inactive_edict_inactive(api: Api) -> None:
    await api.resources.db.execute("UPDATE edicts SET active = false WHERE id = $1", FORCE_EDICT)
    no_active = edict_input(name="Force v2")
    body = await api.data(UPDATE, {"id": FORCE_EDICT, "input": no_active})
    assert body["updateEdict"]["active"] is False
    body = await api.data(UPDATE, {"id": FORCE_EDICT, "input": edict_input(active=True)})
    assert body["updateEdict"]["active"] is True
    body = await api.data(UPDATE, {"id": FORCE_EDICT, "input": no_active})
    assert body["updateEdict"]["active"] is True
