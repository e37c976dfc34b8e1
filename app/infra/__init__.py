"""One external system per module: PostgreSQL, the event log and bus, Redis, MQTT, broker accounts,
mail, rate limits, security, logs, the embedded servers.

Rule: imports core and settings only (never domains, context, resources or resolvers)."""
