"""The ASGI app: factory and lifespan, GraphQL app and error formatter, directives, query limits,
HTTP security, SSE, websockets and their limits, the HTTP protocol uvicorn runs (header bounds).

Rule: may import any layer below; only the CLI imports it."""
