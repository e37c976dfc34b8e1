"""Robots' MQTT credentials, kept in Mosquitto's dynamic security plugin in step with their API keys.

With `SEPULKI_MQTT_ADMIN_URL` (a dynsec admin of the broker, `mqtt://user:password@host:1883`), each
robot API key is also a broker account: username = the key's prefix (`sk_robot_xxxxxxxx`, shown
with the key), password = the key. A robot may hold several keys (a rotation's old and new), hence
one account per key rather than per robot. Every account of a robot has the role `robot-{robotId}`,
which allows publishing only on `robots/{robotId}/telemetry|status|events|commands/ack` and
subscribing only to `robots/{robotId}/commands`; the broker's default access denies the rest, so a
robot cannot publish as another one. (Mosquitto 2.0's dynsec has no `%u` patterns in ACLs: one role
per robot.) Every account is also bound to the client id `{robotId}`: the broker refuses it under
any other, so one robot's key cannot connect as another robot, end that robot's connection (a
second connection with a client id takes it over), resume its persistent session or receive the
commands queued for it.

Consistency with the `api_keys` table, the source of truth:
- creating or rotating a key creates its account before the transaction commits; if the broker
  cannot be reached the mutation fails with SERVICE_UNAVAILABLE and no key exists;
- revoking deletes the account after the commit (the broker disconnects a robot connected with it);
- `reconcile`, every minute, deletes every account of a key that is revoked, expired, unknown, or
  whose robot was deleted, and binds every other account whose client id is not its robot's (accounts
  made before they carried one). It cannot create missing accounts: only a hash of each key is
  stored, so a key issued while this was off has no broker account until it is rotated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from gmqtt import Client

from app.core.errors import Unavailable
from app.infra.mqtt import connect

log = logging.getLogger("sepulki.broker_accounts")

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ACCOUNT_PREFIX = "sk_robot_"
TIMEOUT_S = 5.0
ROBOT_TOPICS = ("telemetry", "status", "events", "commands/ack")


def role_of(robot_id: str) -> str:
    return f"robot-{robot_id}"


def robot_role(robot_id: str) -> dict[str, Any]:
    acls = [
        {"acltype": "publishClientSend", "topic": f"robots/{robot_id}/{topic}", "allow": True}
        for topic in ROBOT_TOPICS
    ]
    acls.append({"acltype": "subscribeLiteral", "topic": f"robots/{robot_id}/commands", "allow": True})
    return {"command": "createRole", "rolename": role_of(robot_id), "acls": acls}


class DynsecSession:
    """One admin connection to the broker's `$CONTROL/dynamic-security/v1` API."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def _on_message(self, _client: Client, _topic: str, payload: bytes, _qos: int, _props: Any) -> int:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            for response in orjson.loads(payload).get("responses", []):
                waiter = self._waiting.pop(str(response.get("correlationData")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(response)
        return 0

    async def run(self, *commands: dict[str, Any]) -> list[dict[str, Any]]:
        """The broker's response to each command (with its `error`, if any), in order."""
        loop = asyncio.get_running_loop()
        waiters = []
        tagged = []
        for command in commands:
            tag = uuid.uuid4().hex
            self._waiting[tag] = waiter = loop.create_future()
            waiters.append(waiter)
            tagged.append({**command, "correlationData": tag})
        self._client.publish(CONTROL_TOPIC, orjson.dumps({"commands": tagged}), qos=1)
        try:
            async with asyncio.timeout(TIMEOUT_S):
                return list(await asyncio.gather(*waiters))
        except TimeoutError as exc:
            raise Unavailable("The MQTT broker did not answer; try again") from exc

    async def grant(self, robot_id: str, prefix: str, key: str) -> None:
        """An account for this key with the robot's role (created on first use), usable only with
        the robot's id as client id."""
        role, client = await self.run(
            robot_role(robot_id),
            {"command": "createClient", "username": prefix, "password": key, "clientid": robot_id,
             "roles": [{"rolename": role_of(robot_id)}]},
        )  # fmt: skip
        for response, tolerated in ((role, "Role already exists"), (client, None)):
            error = response.get("error")
            if error and error != tolerated:
                raise Unavailable(f"The MQTT broker refused the robot's account: {error}")

    async def revoke(self, *prefixes: str) -> None:
        """Deletes these accounts (and disconnects robots using them); missing ones are fine."""
        if not prefixes:
            return
        responses = await self.run(*({"command": "deleteClient", "username": p} for p in prefixes))
        for response in responses:
            error = response.get("error")
            if error and error != "Client not found":
                raise Unavailable(f"The MQTT broker refused to delete an account: {error}")

    async def bind(self, bindings: dict[str, str]) -> None:
        """Binds these accounts {username: client id}; the broker disconnects a robot connected
        with one of them, which reconnects under the binding. Missing accounts are fine."""
        if not bindings:
            return
        responses = await self.run(
            *({"command": "setClientId", "username": u, "clientid": c} for u, c in bindings.items())
        )
        for response in responses:
            error = response.get("error")
            if error and error != "Client not found":
                raise Unavailable(f"The MQTT broker refused to bind an account: {error}")

    async def accounts(self) -> dict[str, str | None]:
        """The robot accounts the broker holds: {username: the client id it is bound to, or None}."""
        accounts: dict[str, str | None] = {}
        offset = 0
        while True:
            (response,) = await self.run(
                {"command": "listClients", "verbose": True, "count": 1000, "offset": offset}
            )
            page = (response.get("data") or {}).get("clients") or []
            offset += len(page)
            for client in page:
                username = client.get("username") if isinstance(client, dict) else None
                if isinstance(username, str) and username.startswith(ACCOUNT_PREFIX):
                    clientid = client.get("clientid")
                    accounts[username] = clientid if isinstance(clientid, str) and clientid else None
            if len(page) < 1000:
                return accounts


@contextlib.asynccontextmanager
async def session(admin_url: str) -> AsyncIterator[DynsecSession]:
    """A short admin connection: key changes are rare, a standing one would only need watching."""
    client = Client(f"sepulki-dynsec-{uuid.uuid4().hex[:8]}", clean_session=True)
    client.set_config({"reconnect_retries": 0})
    dynsec = DynsecSession(client)
    client.on_message = dynsec._on_message
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await connect(client, admin_url, protocol=5)
            client.subscribe(RESPONSE_TOPIC, qos=1)
            await subscribed.wait()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await client.disconnect()
        raise Unavailable("The MQTT broker cannot be reached to manage robot accounts") from exc
    try:
        yield dynsec
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def grant(admin_url: str | None, accounts: list[tuple[str, str, str]]) -> None:
    """Broker accounts for these (robot id, prefix, key); nothing when the service does not manage
    the broker. Raises Unavailable if the broker cannot take them."""
    if not admin_url or not accounts:
        return
    async with session(admin_url) as dynsec:
        for robot_id, prefix, key in accounts:
            await dynsec.grant(robot_id, prefix, key)


async def revoke_quietly(admin_url: str | None, *prefixes: str) -> None:
    """After a revocation has committed: delete the accounts now if the broker answers, else the
    next `reconcile` does (within a minute)."""
    if not admin_url or not prefixes:
        return
    try:
        async with session(admin_url) as dynsec:
            await dynsec.revoke(*prefixes)
    except Unavailable as exc:
        log.warning("robot MQTT accounts %s not deleted yet (%s); the next reconcile will", prefixes, exc)


async def reconcile(admin_url: str, live_keys: Callable[[], Awaitable[dict[str, str]]]) -> list[str]:
    """Deletes every robot account whose key may no longer be used, and binds every other one to
    its robot's client id; returns the deleted usernames. `live_keys` gives {prefix: robot id}.
    The broker's accounts are read before the live keys, so a key created meanwhile is kept."""
    async with session(admin_url) as dynsec:
        held = await dynsec.accounts()
        live = await live_keys()
        stale = [name for name in held if name not in live]
        unbound = {name: live[name] for name, bound in held.items() if name in live and bound != live[name]}
        await dynsec.revoke(*stale)
        await dynsec.bind(unbound)
    if stale:
        log.info("deleted %d robot MQTT accounts of revoked, expired or deleted keys", len(stale))
    if unbound:
        log.info("bound %d robot MQTT accounts to their robot's client id", len(unbound))
    return stale
