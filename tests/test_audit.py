"""Admins read the audit trail: who changed what, when, from where, and how; and every mutation
that succeeds leaves its row there."""

from __future__ import annotations

import asyncio
import email
import json
import re
import time
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

from app.web.graphql_app import build_schema
from tests.seed_ids import (
    ALPHA,
    ARM_PATTERN,
    ASSEMBLY_FLEET,
    ASSEMBLY_SEPULKA,
    BETA,
    DEV_FLEET,
    DEV_FLOOR,
    DEV_ID,
    DEVBOT_INGOT,
    DEVBOT_SEPULKA,
    GEARBOX_TASK,
    SERVO,
    WAREHOUSE_FLEET,
    WAREHOUSE_INGOT,
    WAREHOUSE_SEPULKA,
)
from tests.support import ADMIN, DEV, Api, request_work

STRONG = "Quartz-Lantern-Meadow-42"
STRONGER = "Violet-Harbor-Tundra-1187"

AUDIT_LOGS = """
query($first: Int, $after: String, $filter: AuditLogFilter) {
  auditLogs(first: $first, after: $after, filter: $filter) {
    edges {
      cursor
      node { id action resourceType resourceId changes ipAddress userAgent createdAt smith { id email } }
    }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""
SET_STATUS = "mutation($id: ID!) { updateRobotStatus(robotId: $id, status: CHARGING) { id status } }"


async def test_admin_sees_who_changed_a_robot_when_from_where_and_how(api: Api) -> None:
    before = datetime.now(UTC)
    response = await api.client.post(
        "/graphql",
        json={"query": SET_STATUS, "variables": {"id": BETA}},
        headers={"authorization": f"Bearer {await api.token(*DEV)}", "user-agent": "fleet-console/2.1"},
    )
    assert response.json()["data"]["updateRobotStatus"]["status"] == "CHARGING"

    page = (await api.data(AUDIT_LOGS, {"filter": {"resourceId": BETA}}))["auditLogs"]
    (edge,) = page["edges"]
    row = edge["node"]
    assert (row["action"], row["resourceType"], row["resourceId"]) == ("updateRobotStatus", "Robot", BETA)
    assert row["smith"] == {"id": DEV_ID, "email": "dev@sepulki.com"}
    assert (row["ipAddress"], row["userAgent"]) == ("127.0.0.1", "fleet-console/2.1")
    assert row["changes"] == {"status": {"from": "IDLE", "to": "CHARGING"}}
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(row["createdAt"]) <= datetime.now(UTC)
    assert page["pageInfo"]["hasNextPage"] is False


async def _write_rows(api: Api, count: int, *, resource_type: str, smiths: list[str] | None = None) -> None:
    """`count` audit rows, the first half sharing one timestamp (as rows of one transaction do)."""
    shared = count // 2
    await api.resources.db.execute(
        """
        INSERT INTO audit_logs (smith_id, action, resource_type, resource_id, changes, created_at)
        SELECT ($3::uuid[])[1 + (i - 1) % greatest(cardinality($3::uuid[]), 1)],
               CASE WHEN i % 3 = 0 THEN 'updateEdict' ELSE 'addEdict' END, $1, 'r' || i,
               jsonb_build_object('n', i),
               CASE WHEN i <= $4 THEN timestamptz '2026-11-20 12:00:00+00'
                    ELSE timestamptz '2026-11-20 12:00:00+00' + i * interval '1 minute' END
        FROM generate_series(1, $2::int) AS i
        """,
        resource_type,
        count,
        smiths or [],
        shared,
    )


async def _pages(api: Api, first: int, filter: dict[str, Any]) -> list[list[dict[str, Any]]]:
    pages, after = [], None
    while True:
        page = (await api.data(AUDIT_LOGS, {"first": first, "after": after, "filter": filter}))["auditLogs"]
        pages.append([e["node"] for e in page["edges"]])
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not page["pageInfo"]["hasNextPage"]:
            return pages
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]


async def test_admin_pages_through_the_trail_newest_first_without_gaps_or_duplicates(api: Api) -> None:
    await _write_rows(api, 23, resource_type="PagingTest")
    expected = [
        str(r["id"])
        for r in await api.resources.db.fetch(
            "SELECT id FROM audit_logs WHERE resource_type = 'PagingTest' ORDER BY created_at DESC, id DESC"
        )
    ]
    pages = await _pages(api, 5, {"resourceType": "PagingTest"})
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [row["id"] for page in pages for row in page] == expected

    # A row written meanwhile is newer than every cursor: the pages still to read do not shift.
    first = (await api.data(AUDIT_LOGS, {"first": 5, "filter": {"resourceType": "PagingTest"}}))["auditLogs"]
    await api.resources.db.execute(
        "INSERT INTO audit_logs (action, resource_type) VALUES ('addEdict', 'PagingTest')"
    )
    after = first["pageInfo"]["endCursor"]
    rest = await api.data(
        AUDIT_LOGS, {"first": 200, "after": after, "filter": {"resourceType": "PagingTest"}}
    )
    assert [e["node"]["id"] for e in rest["auditLogs"]["edges"]] == expected[5:]


async def test_admin_filters_by_smith_action_resource_and_time(api: Api) -> None:
    admin_id = "00000000-0000-4000-8000-000000000001"
    await _write_rows(api, 12, resource_type="FilterTest", smiths=[admin_id, DEV_ID])
    base = {"resourceType": "FilterTest"}

    async def ids(**extra: Any) -> set[str]:
        page = await api.data(AUDIT_LOGS, {"first": 200, "filter": base | extra})
        return {e["node"]["resourceId"] for e in page["auditLogs"]["edges"]}

    assert await ids(smithId=DEV_ID) == {f"r{i}" for i in range(2, 13, 2)}
    assert await ids(action="updateEdict") == {"r3", "r6", "r9", "r12"}
    assert await ids(resourceId="r7") == {"r7"}
    assert await ids(resourceId="r7", action="updateEdict") == set()
    # r1..r6 share 12:00; r7..r12 follow at 12:07..12:12. `from` is inclusive, `to` exclusive.
    window = {"from": "2026-11-20T12:07:00Z", "to": "2026-11-20T12:10:00Z"}
    assert await ids(**window) == {"r7", "r8", "r9"}
    assert await ids() == {f"r{i}" for i in range(1, 13)}


async def test_bad_page_sizes_filters_and_cursors_are_user_errors(api: Api) -> None:
    for first in (0, -1, 201):
        assert await api.error_codes(AUDIT_LOGS, {"first": first}) == ["BAD_USER_INPUT"]
    for cursor in ("garbage", "bm90LWEtY3Vyc29y", "MjAyNi0xMS0yMFQxMjowMDowMHwxMg"):
        assert await api.error_codes(AUDIT_LOGS, {"after": cursor}) == ["BAD_USER_INPUT"]
    assert await api.error_codes(AUDIT_LOGS, {"filter": {"smithId": "someone"}}) == ["BAD_USER_INPUT"]
    backwards = {"from": "2026-11-20T12:00:00Z", "to": "2026-11-20T11:00:00Z"}
    assert await api.error_codes(AUDIT_LOGS, {"filter": backwards}) == ["BAD_USER_INPUT"]
    assert len((await api.data(AUDIT_LOGS, {"first": 200}))["auditLogs"]["edges"]) <= 200


async def test_only_holders_of_audit_logs_read_the_trail(api: Api) -> None:
    smith = await api.create_smith("reader@sepulki.com", "SMITH")
    over_smith = await api.create_smith("foreman@sepulki.com", "OVER_SMITH")
    granted = await api.create_smith("auditor@sepulki.com", "SMITH", permissions=["AUDIT_LOGS"])
    assert await api.error_codes(AUDIT_LOGS, as_=smith) == ["FORBIDDEN"]
    assert await api.error_codes(AUDIT_LOGS, as_=over_smith) == ["FORBIDDEN"]
    assert await api.error_codes(AUDIT_LOGS, as_=None) == ["UNAUTHENTICATED"]
    by_name = AUDIT_LOGS.replace("smith { id email }", "smith { id name }")
    assert await api.error_codes(by_name, as_=granted) == []
    # Without MANAGE_SMITHS, the other smiths of the trail show their id and name only.
    body = await api.execute(AUDIT_LOGS, as_=granted)
    others = [e for e in body["errors"] if e["path"][-1] == "email"]
    assert others and {e["extensions"]["code"] for e in body["errors"]} == {"FORBIDDEN"}
    assert len(others) == len(body["errors"])


async def _statements(api: Api, first: int) -> tuple[int, int]:
    variables = {"first": first, "filter": {"resourceType": "LoaderTest"}}
    await api.data(AUDIT_LOGS, variables)  # warm: token, pool connections
    with api.count_statements() as statements:
        page = await api.data(AUDIT_LOGS, variables)
    rows = page["auditLogs"]["edges"]
    assert all(e["node"]["smith"]["email"].startswith("auditee") for e in rows)
    ours = request_work(statements)
    return len(ours), len({e["node"]["smith"]["id"] for e in rows})


async def test_statement_count_does_not_grow_with_the_page(api: Api) -> None:
    smiths = await api.resources.db.fetch(
        """
        INSERT INTO smiths (email, name, password_hash)
        SELECT 'auditee' || i || '@sepulki.com', 'Auditee ' || i, 'x' FROM generate_series(1, 80) AS i
        RETURNING id
        """
    )
    await _write_rows(api, 80, resource_type="LoaderTest", smiths=[r["id"] for r in smiths])
    few, few_smiths = await _statements(api, 3)
    many, many_smiths = await _statements(api, 80)
    assert (few_smiths, many_smiths) == (3, 80)
    assert few == many, f"{few} statements for 3 rows, {many} for 80"


# --- every successful mutation is audited ------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PLAN = ("plan.png", PNG, "image/png")
ROUTE = ("route.json", b'{"waypoints": [{"position": {"latitude": 1, "longitude": 2}}]}', "application/json")


class Auditor:
    """Runs one successful call per mutation and checks the rows it wrote."""

    def __init__(self, api: Api, mail_dir: Path) -> None:
        self.api = api
        self.mail_dir = mail_dir
        self.rows: dict[str, int] = {}

    async def post(
        self,
        document: str,
        variables: dict[str, Any] | None,
        token: str | None,
        upload: str | None = None,
        file: tuple[str, bytes, str] = PLAN,
    ) -> dict[str, Any]:
        """A JSON request, or a multipart one carrying a file for the `upload` variable."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if upload is None:
            response = await self.api.client.post(
                "/graphql", json={"query": document, "variables": variables or {}}, headers=headers
            )
        else:
            operations = json.dumps({"query": document, "variables": {**(variables or {}), upload: None}})
            response = await self.api.client.post(
                "/graphql",
                data={"operations": operations, "map": json.dumps({"0": [f"variables.{upload}"]})},
                files={"0": file},
                headers=headers,
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def call(
        self,
        field: str,
        document: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None,
        upload: str | None = None,
        file: tuple[str, bytes, str] = PLAN,
    ) -> Any:
        db = self.api.resources.db
        last = await db.fetchval("SELECT coalesce(max(id), 0) FROM audit_logs")
        body = await self.post(document, variables, token, upload, file)
        assert not body.get("errors"), f"{field}: {body}"
        result = body["data"][field]
        assert result is not None and result is not False, f"{field} did not succeed: {body}"
        if isinstance(result, dict):
            assert not result.get("errors"), f"{field} answered payload errors: {result}"
        written = await db.fetch("SELECT action, smith_id, ip_address FROM audit_logs WHERE id > $1", last)
        mine = [r for r in written if r["action"] == field]
        assert mine, f"{field} succeeded but wrote no audit row (rows: {[r['action'] for r in written]})"
        # From where, and who whenever a signed-in smith did it.
        assert all(r["ip_address"] == "127.0.0.1" for r in mine), mine
        assert token is None or all(r["smith_id"] is not None for r in mine), mine
        self.rows[field] = len(mine)
        return result

    async def mail_token(self, to: str, param: str) -> str:
        """The token in the newest mail to `to` (mail is written to files in tests)."""
        deadline = time.monotonic() + 10
        while True:
            # Some mails are sent in the background (password resets): until the one carrying
            # `param` is written, the newest mail to `to` may be an earlier one (the invitation).
            for path in sorted(self.mail_dir.glob("*.eml"), reverse=True):
                message: Message = email.message_from_bytes(path.read_bytes())
                if message["To"] == to:
                    body = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
                    found = re.search(rf"[?&]{param}=([A-Za-z0-9_\-]+)", body)
                    if found:
                        return found[1]
            assert time.monotonic() < deadline, f"no mail to {to}"
            await asyncio.sleep(0.05)


LOGIN = """
mutation($email: String!, $password: String!) {
  login(credentials: {email: $email, password: $password}) {
    session { token refreshToken } errors { code message }
  }
}
"""
SMITH_PAYLOAD = "{ smith { id } errors { code message } }"


async def _accounts(audit: Auditor, admin: str) -> None:
    invite_to = "newcomer@sepulki.com"
    await audit.call(
        "inviteSmith",
        "mutation($e: String!) { inviteSmith(email: $e, role: SMITH) { invitation { id } errors { code } } }",
        {"e": invite_to},
        token=admin,
    )
    invite = await audit.mail_token(invite_to, "invite")
    registered = await audit.call(
        "register",
        "mutation($i: RegisterInput!) { register(input: $i) { session { token } errors { code message } } }",
        {"i": {"email": invite_to, "name": "Newcomer", "password": STRONG, "inviteToken": invite}},
        token=None,
    )
    assert registered["session"]["token"]
    await audit.call("resetPassword", f'mutation {{ resetPassword(email: "{invite_to}") }}', token=None)
    reset = await audit.mail_token(invite_to, "token")
    await audit.call(
        "confirmPasswordReset",
        "mutation($t: String!, $p: String!) { confirmPasswordReset(token: $t, newPassword: $p) "
        f"{SMITH_PAYLOAD} }}",
        {"t": reset, "p": STRONGER},
        token=None,
    )
    credentials = {"email": invite_to, "password": STRONGER}
    first = (await audit.call("login", LOGIN, credentials, token=None))["session"]
    refreshed = await audit.call(
        "refreshToken",
        "mutation($r: String!) { refreshToken(refreshToken: $r) { session { token } errors { code } } }",
        {"r": first["refreshToken"]},
        token=None,
    )
    token = refreshed["session"]["token"]
    await audit.call(
        "updateProfile",
        f'mutation {{ updateProfile(input: {{name: "New Name"}}) {SMITH_PAYLOAD} }}',
        token=token,
    )
    other = (await audit.api.data(LOGIN, credentials, as_=None))["login"]["session"]["token"]
    sessions = (await audit.api.data("{ mySessions { id current } }", token=token))["mySessions"]
    (other_id,) = [s["id"] for s in sessions if not s["current"]]
    await audit.call(
        "revokeSession", "mutation($id: ID!) { revokeSession(id: $id) }", {"id": other_id}, token=token
    )
    assert other
    await audit.call(
        "changePassword",
        f"mutation($o: String!, $n: String!) {{ changePassword(old: $o, new: $n) {SMITH_PAYLOAD} }}",
        {"o": STRONGER, "n": STRONG},
        token=token,
    )
    await audit.call("logout", "mutation { logout }", token=token)
    target = await audit.api.create_smith("target@sepulki.com", "SMITH")
    target_id = await audit.api.resources.db.fetchval("SELECT id FROM smiths WHERE email = $1", target[0])
    await audit.call(
        "updateSmithRole",
        f"mutation($id: ID!) {{ updateSmithRole(smithId: $id, role: OVER_SMITH) {SMITH_PAYLOAD} }}",
        {"id": target_id},
        token=admin,
    )
    await audit.call(
        "deactivateSmith",
        f"mutation($id: ID!) {{ deactivateSmith(smithId: $id) {SMITH_PAYLOAD} }}",
        {"id": target_id},
        token=admin,
    )


EDICT = {
    "name": "Audit me",
    "type": "SAFETY",
    "severity": "WARNING",
    "rules": {"condition": {"type": "threshold", "operator": "AND", "rules": []}, "actions": []},
}


async def _fleet_domain(audit: Auditor, admin: str) -> None:
    call = audit.call
    await call(
        "dispatchTask",
        'mutation($f: ID!) { dispatchTask(fleetId: $f, input: {name: "Audit run", type: CUSTOM}) '
        "{ task { id } errors { code message } } }",
        {"f": DEV_FLEET},
        token=admin,
    )
    await call(
        "cancelTask", "mutation($t: ID!) { cancelTask(taskId: $t) { id } }", {"t": GEARBOX_TASK}, token=admin
    )
    await call(
        "recallFleet",
        'mutation($f: ID!) { recallFleet(fleetId: $f, toVersion: "1.0.0") '
        "{ deployment { id } errors { code } } }",
        {"f": DEV_FLEET},
        token=admin,
    )
    await call(
        "castIngot",
        "mutation($s: ID!) { castIngot(sepulkaId: $s) { ingot { id } errors { code } } }",
        {"s": WAREHOUSE_SEPULKA},
        token=admin,
    )
    forged = await call(
        "forgeSepulka",
        'mutation($a: ID!) { forgeSepulka(input: {name: "Audit bot", alloyIds: [$a]}) '
        "{ sepulka { id } errors { code } } }",
        {"a": SERVO},
        token=admin,
    )
    await call(
        "deleteSepulka",
        "mutation($id: ID!) { deleteSepulka(id: $id) { success errors { code } } }",
        {"id": forged["sepulka"]["id"]},
        token=admin,
    )
    edict = await call(
        "addEdict", "mutation($i: EdictInput!) { addEdict(input: $i) { id } }", {"i": EDICT}, token=admin
    )
    await call(
        "updateEdict",
        "mutation($id: ID!, $i: EdictInput!) { updateEdict(id: $id, input: $i) { id } }",
        {"id": edict["id"], "i": EDICT | {"name": "Audited"}},
        token=admin,
    )
    await call(
        "deactivateEdict", "mutation($id: ID!) { deactivateEdict(id: $id) { id } }", edict, token=admin
    )
    robot = {"r": BETA}
    await call(
        "updateRobotStatus",
        "mutation($r: ID!) { updateRobotStatus(robotId: $r, status: CHARGING) { id } }",
        robot,
        token=admin,
    )
    await call(
        "updateRobotMobility",
        "mutation($r: ID!) { updateRobotMobility(robotId: $r, isMobile: true) { id } }",
        robot,
        token=admin,
    )
    await call(
        "updateRobotLocation",
        "mutation($r: ID!) { updateRobotLocation(robotId: $r, "
        "coordinates: {latitude: 37.78, longitude: -122.41}) { id } }",
        robot,
        token=admin,
    )
    await call(
        "updateFleetLocation",
        "mutation($f: ID!) { updateFleetLocation(fleetId: $f, "
        "coordinates: {latitude: 37.7, longitude: -122.4}) { id } }",
        {"f": WAREHOUSE_FLEET},
        token=admin,
    )
    await call(
        "assignRobotToFloor",
        "mutation($r: ID!, $f: ID!) { assignRobotToFloor(robotId: $r, floorId: $f) { id } }",
        robot | {"f": DEV_FLOOR},
        token=admin,
    )
    await call(
        "updateRobotFloorPosition",
        "mutation($r: ID!) { updateRobotFloorPosition(robotId: $r, "
        "position: {positionX: 1, positionY: 2}) { id } }",
        robot,
        token=admin,
    )
    await call(
        "sendRobotCommand",
        'mutation($r: ID!) { sendRobotCommand(robotId: $r, type: "PING", params: {}) { id } }',
        robot,
        token=admin,
    )
    key = await call(
        "createRobotApiKey",
        "mutation($r: ID!) { createRobotApiKey(robotId: $r) { apiKey { id } errors { code } } }",
        robot,
        token=admin,
    )
    rotated = await call(
        "rotateRobotApiKey",
        "mutation($id: ID!) { rotateRobotApiKey(id: $id) { apiKey { id } errors { code } } }",
        {"id": key["apiKey"]["id"]},
        token=admin,
    )
    await call(
        "revokeRobotApiKey",
        "mutation($id: ID!) { revokeRobotApiKey(id: $id) { id revokedAt } }",
        {"id": rotated["apiKey"]["id"]},
        token=admin,
    )
    floor = await call(
        "createFactoryFloor",
        "mutation($i: FactoryFloorInput!, $file: Upload!) { "
        "createFactoryFloor(input: $i, blueprintFile: $file) { factoryFloor { id } errors { code } } }",
        {"i": {"name": "Audit hall", "widthMeters": 10, "heightMeters": 8, "scaleFactor": 5}},
        token=admin,
        upload="file",
    )
    floor_id = {"id": floor["factoryFloor"]["id"]}
    await call(
        "updateFactoryFloor",
        'mutation($id: ID!) { updateFactoryFloor(id: $id, input: {name: "Audit hall 2"}) '
        "{ factoryFloor { id } errors { code } } }",
        floor_id,
        token=admin,
    )
    await call(
        "deleteFactoryFloor", "mutation($id: ID!) { deleteFactoryFloor(id: $id) }", floor_id, token=admin
    )
    await call(
        "temperIngot",
        'mutation($i: ID!) { temperIngot(ingotId: $i, input: {goals: [{metric: "cycleTime", '
        'target: "MINIMIZE"}]}) { ingot { id } errors { code } } }',
        {"i": DEVBOT_INGOT},
        token=admin,
    )
    await call(
        "quenchToFleet",
        "mutation($i: ID!, $f: ID!) "
        "{ quenchToFleet(ingotId: $i, fleetId: $f) { deployment { id } errors { code } } }",
        {"i": WAREHOUSE_INGOT, "f": WAREHOUSE_FLEET},
        token=admin,
    )
    upload = (
        "mutation($r: ID!, $file: Upload!) "
        "{{ {0}(robotId: $r, file: $file) {{ success errors {{ code }} }} }}"
    )
    for field in ("uploadProgram", "uploadRoute"):
        await call(field, upload.format(field), {"r": ALPHA}, token=admin, upload="file", file=ROUTE)
    await call(
        "updateSepulka",
        "mutation($s: ID!) "
        '{ updateSepulka(id: $s, input: {name: "Audited"}) { sepulka { id } errors { code } } }',
        {"s": ASSEMBLY_SEPULKA},
        token=admin,
    )
    await call(
        "markSepulkaCastReady",
        "mutation($s: ID!) { markSepulkaCastReady(id: $s) { sepulka { id } errors { code } } }",
        {"s": ASSEMBLY_SEPULKA},
        token=admin,
    )
    alloy = await call(
        "createAlloy",
        'mutation { createAlloy(input: {name: "Audit servo", type: ACTUATOR}) '
        "{ alloy { id } errors { code } } }",
        {},
        token=admin,
    )
    await call(
        "updateAlloy",
        "mutation($a: ID!) "
        '{ updateAlloy(id: $a, input: {version: "1.1.0"}) { alloy { id } errors { code } } }',
        {"a": alloy["alloy"]["id"]},
        token=admin,
    )
    await call(
        "createPattern",
        'mutation { createPattern(input: {name: "Audit base", category: CUSTOM}) '
        "{ pattern { id } errors { code } } }",
        {},
        token=admin,
    )
    await call(
        "updatePattern",
        "mutation($p: ID!) "
        '{ updatePattern(id: $p, input: {tags: ["audited"]}) { pattern { id } errors { code } } }',
        {"p": ARM_PATTERN},
        token=admin,
    )
    # Last: it stops the warehouse fleet's robots and cancels its tasks.
    await call(
        "emergencyStop",
        "mutation($f: ID!) { emergencyStop(fleetId: $f) { id } }",
        {"f": WAREHOUSE_FLEET},
        token=admin,
    )


async def _alerting(audit: Auditor, admin: str) -> None:
    call, db = audit.call, audit.api.resources.db
    alert = await db.fetchval(
        "INSERT INTO alerts (edict_id, robot_id, fleet_id, severity, message) "
        "VALUES ($1, $2, $3, 'WARNING', 'Battery 12') RETURNING id",
        "a0000000-0000-4000-8000-000000000002",
        "70000000-0000-4000-8000-000000000001",
        "40000000-0000-4000-8000-000000000002",
    )
    await call(
        "acknowledgeAlert", "mutation($a: ID!) { acknowledgeAlert(id: $a) { id } }", {"a": alert}, token=admin
    )
    await call(
        "resolveAlert",
        'mutation($a: ID!) { resolveAlert(id: $a, note: "ok") { id } }',
        {"a": alert},
        token=admin,
    )
    note = await db.fetchval(
        "INSERT INTO notifications (smith_id, alert_id, severity, title, body) "
        "VALUES ($1, $2, 'WARNING', 't', 'b') RETURNING id",
        "00000000-0000-4000-8000-000000000001",
        alert,
    )
    await call(
        "markNotificationRead",
        "mutation($n: ID!) { markNotificationRead(id: $n) { id } }",
        {"n": note},
        token=admin,
    )
    await call("markAllNotificationsRead", "mutation { markAllNotificationsRead }", token=admin)
    await call(
        "updateNotificationPreferences",
        "mutation { updateNotificationPreferences(input: {channels: [IN_APP, EMAIL]}) { channels } }",
        token=admin,
    )
    hook = await call(
        "addWebhook",
        'mutation { addWebhook(input: {url: "https://hooks.example.com/a"}) { webhook { id } } }',
        token=admin,
    )
    hook_id = hook["webhook"]["id"]
    await call(
        "updateWebhook",
        "mutation($w: ID!) { updateWebhook(id: $w, input: {active: false}) { id } }",
        {"w": hook_id},
        token=admin,
    )
    await call("removeWebhook", "mutation($w: ID!) { removeWebhook(id: $w) }", {"w": hook_id}, token=admin)


ROBOT_PAYLOAD = "{ robot { id } apiKey { id } key errors { code message } }"
TASK_PAYLOAD = "{ task { id status assignedRobots { id } } errors { code message } }"


async def _robot_lifecycle(audit: Auditor, admin: str) -> dict[str, str]:
    """Two robots registered in the empty assembly fleet, updated and calibrated; their ids."""
    robots = {}
    for name in ("Audit arm A", "Audit arm B"):
        registered = await audit.call(
            "registerRobot",
            f"mutation($i: RobotRegistrationInput!) {{ registerRobot(input: $i) {ROBOT_PAYLOAD} }}",
            {"i": {"name": name, "fleetId": ASSEMBLY_FLEET, "sepulkaId": DEVBOT_SEPULKA}},
            token=admin,
        )
        assert registered["key"], registered
        robots[name[-1]] = registered["robot"]["id"]
    robot = {"r": robots["A"]}
    await audit.call(
        "updateRobotFirmware",
        'mutation($r: ID!) { updateRobotFirmware(robotId: $r, version: "2.1.0") { id type } }',
        robot,
        token=admin,
    )
    await audit.call(
        "calibrateRobot",
        "mutation($r: ID!, $p: JSON!) { calibrateRobot(robotId: $r, parameters: $p) { id type } }",
        robot | {"p": {"lidarOffsetMm": 12, "wheelBaseMm": 480}},
        token=admin,
    )
    return robots


async def _task_operations(audit: Auditor, admin: str, robots: dict[str, str]) -> None:
    call, api = audit.call, audit.api
    idle = "mutation($r: ID!) { updateRobotStatus(robotId: $r, status: IDLE) { id } }"
    # A is the fleet's only free robot when the task is dispatched, so it gets it at once; B frees
    # up after, with no task pending in the fleet, and is free to take it over.
    await api.data(idle, {"r": robots["A"]}, token=admin)
    dispatched = await api.data(
        'mutation($f: ID!) { dispatchTask(fleetId: $f, input: {name: "Audit assembly", type: ASSEMBLY}) '
        f"{TASK_PAYLOAD} }}",
        {"f": ASSEMBLY_FLEET},
        token=admin,
    )
    task = dispatched["dispatchTask"]["task"]
    assert task["assignedRobots"] == [{"id": robots["A"]}], task
    await api.data(idle, {"r": robots["B"]}, token=admin)
    await call(
        "updateTaskPriority",
        "mutation($t: ID!) { updateTaskPriority(taskId: $t, priority: HIGH) { id priority } }",
        {"t": task["id"]},
        token=admin,
    )
    moved = await call(
        "reassignTask",
        "mutation($t: ID!, $r: ID!) { reassignTask(taskId: $t, robotId: $r) { id assignedRobots { id } } }",
        {"t": task["id"], "r": robots["B"]},
        token=admin,
    )
    assert {"id": robots["B"]} in moved["assignedRobots"], moved
    await call(
        "cloneTask",
        "mutation($t: ID!) { cloneTask(taskId: $t) { id status } }",
        {"t": task["id"]},
        token=admin,
    )
    run_at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    schedule = await call(
        "scheduleTask",
        "mutation($i: ScheduledTaskInput!) { scheduleTask(input: $i) { id } }",
        {"i": {"fleetId": ASSEMBLY_FLEET, "name": "Audit inspection", "type": "INSPECTION", "runAt": run_at}},
        token=admin,
    )
    await call(
        "unscheduleTask",
        "mutation($s: ID!) { unscheduleTask(id: $s) { id } }",
        {"s": schedule["id"]},
        token=admin,
    )


async def _maintenance(audit: Auditor, admin: str) -> None:
    call = audit.call
    record = await call(
        "createMaintenanceRecord",
        "mutation($i: MaintenanceRecordInput!) { createMaintenanceRecord(input: $i) { id status } }",
        {"i": {"robotId": BETA, "kind": "BATTERY_CHECK"}},
        token=admin,
    )
    await call(
        "completeMaintenance",
        'mutation($m: ID!) { completeMaintenance(id: $m, notes: "cells balanced") { id status } }',
        {"m": record["id"]},
        token=admin,
    )
    schedule = await call(
        "createMaintenanceSchedule",
        "mutation($i: MaintenanceScheduleInput!) { createMaintenanceSchedule(input: $i) { id } }",
        {"i": {"robotId": BETA, "kind": "LUBRICATION", "intervalDays": 30}},
        token=admin,
    )
    planned = await audit.api.data(
        "query($r: ID!) { maintenanceRecords(robotId: $r, status: SCHEDULED) { id schedule { id } } }",
        {"r": BETA},
        token=admin,
    )
    (first,) = [r for r in planned["maintenanceRecords"] if (r["schedule"] or {}).get("id") == schedule["id"]]
    await call(
        "cancelMaintenance",
        'mutation($m: ID!) { cancelMaintenance(id: $m, notes: "moved to the spring") { id status } }',
        {"m": first["id"]},
        token=admin,
    )


async def test_every_mutation_that_succeeds_writes_its_audit_row(api: Api) -> None:
    mutations = set(build_schema().mutation_type.fields)  # type: ignore[union-attr]
    audit = Auditor(api, api.resources.settings.data_dir / "mail")
    admin = await api.token(*ADMIN)
    await _accounts(audit, admin)
    # Before the fleet domain sends the DevBot ingot to TEMPERING: new robots need a built one.
    robots = await _robot_lifecycle(audit, admin)
    await _task_operations(audit, admin, robots)
    await _fleet_domain(audit, admin)
    await _alerting(audit, admin)
    await _maintenance(audit, admin)
    # Last, after the fleet domain's emergency stop of the warehouse fleet.
    await audit.call(
        "releaseEmergencyStop",
        "mutation($f: ID!) { releaseEmergencyStop(fleetId: $f) { id status } }",
        {"f": WAREHOUSE_FLEET},
        token=admin,
    )

    untested = mutations - set(audit.rows)
    assert not untested, f"no successful call of {sorted(untested)} here: add one, with its audit check"
    rows = sum(audit.rows.values())
    print(f"audit: {len(audit.rows)} of {len(mutations)} mutations succeeded and wrote {rows} rows")
