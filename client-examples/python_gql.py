"""The API from Python with `gql`: a mutation, a query and a subscription.

1. `login` (a mutation) over HTTP (aiohttp), for the access token;
2. a query with the token in `Authorization: Bearer <token>`: the fleets and their robots;
3. a subscription over graphql-transport-ws (websockets), the token in the connection_init
   payload: `robotStatus` of one robot, while the script changes that robot's status with the
   `updateRobotStatus` mutation; each event's cursor is in `extensions.eventId` (pass it as `after`
   to resume after a reconnect).

    .venv/bin/python client-examples/python_gql.py

SEPULKI_API_URL (http://127.0.0.1:4000/graphql), SEPULKI_EMAIL and SEPULKI_PASSWORD (the
development seed's admin), SEPULKI_ROBOT_ID (the seed's DevBot-Beta). Prints one JSON object a line.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from gql import Client, GraphQLRequest, gql
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.websockets import WebsocketsTransport

API_URL = os.environ.get("SEPULKI_API_URL", "http://127.0.0.1:4000/graphql")
EMAIL = os.environ.get("SEPULKI_EMAIL", "admin@sepulki.com")
PASSWORD = os.environ.get("SEPULKI_PASSWORD", "admin123")
ROBOT_ID = os.environ.get("SEPULKI_ROBOT_ID", "70000000-0000-4000-8000-000000000002")

LOGIN = gql("""
mutation Login($email: String!, $password: String!) {
  login(credentials: {email: $email, password: $password}) {
    session { token expiresAt }
    smith { email role }
    errors { code message }
  }
}
""")
FLEETS = gql("query Fleets { fleets { name status robots { id name status batteryLevel } } }")
SET_STATUS = gql("""
mutation SetStatus($robotId: ID!, $status: RobotStatus!) {
  updateRobotStatus(robotId: $robotId, status: $status) { id name status }
}
""")
ROBOT_STATUS = gql("""
subscription RobotStatus($robotId: ID, $after: String) {
  robotStatus(robotId: $robotId, after: $after) { id name status lastSeen }
}
""")


def say(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def request(document: GraphQLRequest, **variables: Any) -> GraphQLRequest:
    return GraphQLRequest(document, variable_values=variables)


async def sign_in() -> str:
    async with Client(transport=AIOHTTPTransport(url=API_URL)) as session:
        result = await session.execute(request(LOGIN, email=EMAIL, password=PASSWORD))
    login = result["login"]
    if login["session"] is None:
        raise SystemExit(f"login failed: {login['errors']}")
    say("login", email=login["smith"]["email"], role=login["smith"]["role"])
    token: str = login["session"]["token"]
    return token


async def main() -> None:
    token = await sign_in()
    http = AIOHTTPTransport(url=API_URL, headers={"Authorization": f"Bearer {token}"})
    websocket = WebsocketsTransport(
        url=API_URL.replace("http", "ws", 1),
        init_payload={"authorization": f"Bearer {token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],  # graphql-transport-ws
    )
    async with Client(transport=http) as api, Client(transport=websocket) as live:
        fleets = (await api.execute(FLEETS))["fleets"]
        for fleet in fleets:
            say(
                "fleet",
                name=fleet["name"],
                status=fleet["status"],
                robots=[r["name"] for r in fleet["robots"]],
            )
        robot = next(r for fleet in fleets for r in fleet["robots"] if r["id"] == ROBOT_ID)
        wanted = "MAINTENANCE" if robot["status"] != "MAINTENANCE" else "IDLE"

        async def change() -> None:
            # A live subscription sees what happens after the server has it; until the first
            # event proves it does, set the status again (the same value publishes nothing).
            for attempt in range(10):
                status = wanted if attempt % 2 == 0 else robot["status"]
                changed = await api.execute(request(SET_STATUS, robotId=ROBOT_ID, status=status))
                say("mutation", robot=changed["updateRobotStatus"]["name"], status=status)
                await asyncio.sleep(1)

        events = live.subscribe(request(ROBOT_STATUS, robotId=ROBOT_ID), get_execution_result=True)
        changer = asyncio.create_task(change())
        try:
            async with asyncio.timeout(15):
                async for result in events:
                    update = result.data["robotStatus"] if result.data else None
                    event_id = (result.extensions or {}).get("eventId")
                    say(
                        "event",
                        eventId=event_id,
                        robot=update and update["name"],
                        status=update and update["status"],
                    )
                    if update and update["status"] == wanted:
                        break
        finally:
            changer.cancel()
            await events.aclose()
        # Leave the robot as it was.
        await api.execute(request(SET_STATUS, robotId=ROBOT_ID, status=robot["status"]))
        say("done", restored=robot["status"])


if __name__ == "__main__":
    asyncio.run(main())
