"""Sign in, then print every robot status change (graphql-transport-ws over websockets).

.venv/bin/python client-examples/subscribe_robot_status.py [http://127.0.0.1:4000/graphql]
"""

from __future__ import annotations

import asyncio
import json
import sys

import httpx
import websockets

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:4000/graphql"
# Development seed credentials.
LOGIN = (
    'mutation { login(credentials: {email: "admin@sepulki.com", password: "admin123"})'
    " { session { token } } }"
)
STATUS = "subscription { robotStatus { id name status batteryLevel healthScore lastSeen } }"


async def main() -> None:
    async with httpx.AsyncClient() as client:
        token = (await client.post(URL, json={"query": LOGIN})).json()["data"]["login"]["session"]["token"]
    ws_url = URL.replace("http", "ws", 1)
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": STATUS}}))
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "next":
                print(message["payload"])
            elif message["type"] in ("error", "complete"):
                print(message)
                break


if __name__ == "__main__":
    asyncio.run(main())
