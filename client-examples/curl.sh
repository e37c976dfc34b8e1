#!/usr/bin/env bash
# The API with curl: sign in, a query, then HTTP ingest as a robot with its API key.
#
#   client-examples/curl.sh
#
# 1. `login` for an access token (an admin: issuing robot keys needs SYSTEM_CONFIG);
# 2. a query with `Authorization: Bearer <token>`: the robot;
# 3. `createRobotApiKey` for the robot: the key is shown once, in that answer;
# 4. POST /telemetry/{robotId} with `X-API-Key`: one telemetry sample, `{eventType, data}`, where
#    `data` is what the robot would publish on MQTT (docs/ingest.md); the answer tells per item
#    whether it was stored, a duplicate or rejected (and why);
# 5. the same sample again: a duplicate, stored once.
#
# SEPULKI_API_URL (http://127.0.0.1:4000/graphql), SEPULKI_EMAIL / SEPULKI_PASSWORD (the development
# seed's admin), SEPULKI_ROBOT_ID (the seed's DevBot-Alpha). JSON is read with python3 (jq may be
# missing); the answers are printed as they come.
set -euo pipefail

API_URL=${SEPULKI_API_URL:-http://127.0.0.1:4000/graphql}
BASE_URL=${API_URL%/graphql}
EMAIL=${SEPULKI_EMAIL:-admin@sepulki.com}
PASSWORD=${SEPULKI_PASSWORD:-admin123}
ROBOT_ID=${SEPULKI_ROBOT_ID:-70000000-0000-4000-8000-000000000001}

# json_get '<python expression over d>' < document: one value out of a JSON document.
json_get() {
  python3 -c 'import json, sys; d = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

# graphql '<request body as JSON>' [token]: POSTs one GraphQL request, prints the answer.
graphql() {
  local auth=()
  [ -n "${2:-}" ] && auth=(-H "Authorization: Bearer $2")
  curl -sS --fail-with-body -X POST "$API_URL" -H 'Content-Type: application/json' "${auth[@]}" -d "$1"
}

# The variables as JSON built by python3, so any character in a password is quoted right.
login_body=$(EMAIL=$EMAIL PASSWORD=$PASSWORD python3 -c '
import json, os
print(json.dumps({
    "query": "mutation($email: String!, $password: String!) { login(credentials: {email: $email, password: $password}) { session { token } errors { code message } } }",
    "variables": {"email": os.environ["EMAIL"], "password": os.environ["PASSWORD"]},
}))')
login=$(graphql "$login_body")
TOKEN=$(json_get 'd["data"]["login"]["session"]["token"] if d["data"]["login"]["session"] else ""' <<<"$login")
if [ -z "$TOKEN" ]; then
  echo "login failed: $login" >&2
  exit 1
fi
echo "login: signed in as $EMAIL"

robot=$(graphql "{\"query\": \"query(\$id: ID!) { robot(id: \$id) { id name status batteryLevel lastSeen } }\", \"variables\": {\"id\": \"$ROBOT_ID\"}}" "$TOKEN")
echo "query: $robot"

key_answer=$(graphql "{\"query\": \"mutation(\$id: ID!) { createRobotApiKey(robotId: \$id, name: \\\"curl example\\\") { key apiKey { id prefix } errors { code message } } }\", \"variables\": {\"id\": \"$ROBOT_ID\"}}" "$TOKEN")
API_KEY=$(json_get 'd["data"]["createRobotApiKey"]["key"] or ""' <<<"$key_answer")
if [ -z "$API_KEY" ]; then
  echo "createRobotApiKey failed: $key_answer" >&2
  exit 1
fi
echo "api key: $(json_get 'd["data"]["createRobotApiKey"]["apiKey"]["prefix"]' <<<"$key_answer")... (shown once)"

# A seq that never repeats within a day: the time in milliseconds.
SEQ=$(python3 -c 'import time; print(int(time.time() * 1000))')
TS=$(python3 -c 'from datetime import UTC, datetime; print(datetime.now(UTC).isoformat(timespec="milliseconds"))')
sample="{\"eventType\": \"telemetry\", \"data\": {\"seq\": $SEQ, \"ts\": \"$TS\", \"batteryLevel\": 87.5, \"healthScore\": 96.0, \"metrics\": {\"CPU_USAGE\": 31.5, \"MOTOR_TEMPERATURE\": 44.0}}}"
for attempt in first again; do
  answer=$(curl -sS --fail-with-body -X POST "$BASE_URL/telemetry/$ROBOT_ID" \
    -H "X-API-Key: $API_KEY" -H 'Content-Type: application/json' -d "$sample")
  echo "ingest ($attempt, seq $SEQ): $answer"
done
