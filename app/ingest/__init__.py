"""Ingestion of robot messages (MQTT and HTTP): validation, batched idempotent writes, publish after commit.

- `messages`: topics and payloads -> typed items or a `Rejected(reason, detail)`.
- `writer`: one batch in one transaction (telemetry, events, robot rows, acks, dead letters, event log).
- `pipeline`: `Pipeline.submit(...)` batches by size or time and answers after the commit.
- `mqtt`: the gmqtt consumer (MQTT 5, persistent session, PUBACK after commit).
- `metrics`: counters, rendered in the Prometheus text format.
"""
