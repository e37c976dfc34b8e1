"""Sign in and list fleets with their robots over HTTP.

.venv/bin/python client-examples/query_fleets.py [http://127.0.0.1:4000/graphql]
"""

from __future__ import annotations

import sys

import httpx

URL = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:4000/graphql"
LOGIN = """
mutation($email: String!, $password: String!) {
  login(credentials: {email: $email, password: $password}) { session { token } errors { message } }
}
"""
FLEETS = "{ fleets { name status robots { name status batteryLevel pose { orientation } } } }"


def main() -> None:
    with httpx.Client(timeout=10) as client:
        # Development seed credentials.
        login = client.post(
            URL, json={"query": LOGIN, "variables": {"email": "admin@sepulki.com", "password": "admin123"}}
        ).json()
        token = login["data"]["login"]["session"]["token"]
        fleets = client.post(URL, json={"query": FLEETS}, headers={"Authorization": f"Bearer {token}"})
        for fleet in fleets.json()["data"]["fleets"]:
            print(f"{fleet['name']} ({fleet['status']})")
            for robot in fleet["robots"]:
                print(f"  {robot['name']:24} {robot['status']:12} battery {robot['batteryLevel']}")


if __name__ == "__main__":
    main()
