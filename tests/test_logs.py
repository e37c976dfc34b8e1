"""Logs never carry passwords, tokens or API keys, and show emails masked: the filter the
command line puts on every handler (uvicorn's access log included) rewrites what slips in."""

from __future__ import annotations

import io
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from app.infra import logs
from tests.support import DEV, LOGIN, Api

PASSWORD = DEV[1]
API_KEY = "sk_robot_ab12cd34_" + "Q" * 43

REFRESH = """
mutation($refreshToken: String!) {
  refreshToken(refreshToken: $refreshToken) { session { token refreshToken } errors { code } }
}
"""


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Root logging as `sepulki` sets it up (one handler, via app.logs.configure), at DEBUG so
    every library's chatter is captured too."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logs.LOG_FORMAT))
    root = logging.getLogger()
    others, level = root.handlers[:], root.level
    root.handlers = [handler]
    logs.configure("DEBUG")
    assert any(isinstance(f, logs.RedactingFilter) for f in handler.filters)
    root.handlers = [*others, handler]  # pytest's own capture handlers come and go around the test
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def access_log() -> Iterator[io.StringIO]:
    """uvicorn's access logger configured as `sepulki serve` configures it."""
    stream = io.StringIO()
    config = logs.uvicorn_log_config()
    config["handlers"]["access"]["stream"] = stream
    config["handlers"]["default"]["stream"] = stream
    names = ("uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).level) for name in names}
    logging.config.dictConfig(config)
    try:
        yield stream
    finally:
        for name, (handlers, level) in saved.items():
            logging.getLogger(name).handlers = handlers
            logging.getLogger(name).setLevel(level)


async def test_a_login_and_a_token_refresh_leave_no_secret_in_the_logs(
    api: Api, log_output: io.StringIO
) -> None:
    # Given a smith who signs in and refreshes the session
    body = await api.execute(LOGIN, {"email": DEV[0], "password": PASSWORD}, as_=None)
    session = body["data"]["login"]["session"]
    refreshed = await api.execute(REFRESH, {"refreshToken": session["refreshToken"]}, as_=None)
    new_session = refreshed["data"]["refreshToken"]["session"]
    # and code that carelessly logs what it handled, including a failure with a secret inside
    careless = logging.getLogger("sepulki.careless")
    careless.info("login request %s", json.dumps({"query": LOGIN, "variables": {"password": PASSWORD}}))
    careless.info("headers %r", {"authorization": f"Bearer {session['token']}", "x-api-key": API_KEY})
    careless.warning("refresh for %s with refreshToken=%s", DEV[0], session["refreshToken"])
    try:
        raise ValueError(f"could not verify password: {PASSWORD!r}")
    except ValueError:
        careless.exception("sign-in failed")

    # Then the output names what happened but none of the secrets
    output = log_output.getvalue()
    assert "login request" in output and "sign-in failed" in output and "de***@sepulki.com" in output
    secrets = [PASSWORD, session["token"], session["refreshToken"], new_session["refreshToken"], API_KEY]
    for secret in secrets:
        assert secret not in output
    assert DEV[0] not in output


def test_access_log_lines_lose_secrets_from_their_query_strings(access_log: io.StringIO) -> None:
    query = (
        'mutation { login(credentials: {email: "dev@sepulki.com", password: "dev123"}) { errors { code } } }'
    )
    variables = json.dumps({"refreshToken": "rt-abcdef123456", "name": "visible"})
    path = "/graphql?" + urlencode({"query": query, "variables": variables, "token": "tk-987654321"})
    # Exactly what uvicorn's protocol implementations log for each request.
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "203.0.113.9:52000", "GET", path, "1.1", 405
    )
    line = access_log.getvalue()
    assert '203.0.113.9:52000 - "GET /graphql?query=' in line and "405 Method Not Allowed" in line
    assert "visible" in line
    for secret in ("dev123", "rt-abcdef123456", "tk-987654321", "dev@sepulki.com", "dev%40sepulki.com"):
        assert secret not in line


@pytest.mark.parametrize(
    ("raw", "secret", "kept"),
    [
        ('{"password": "two words", "user": "kim"}', "two words", '"user": "kim"'),
        ("{'newPassword': 'pw-9'}", "pw-9", "newPassword"),
        ('changePassword(old: "first-pw", new: "second-pw")', "second-pw", "changePassword(old:"),
        ('changePassword(old: "first-pw", new: "second-pw")', "first-pw", "new:"),
        ("X-API-Key: sk_robot_ab12cd34_" + "z" * 43, "sk_robot", "X-API-Key: ***"),
        ("robot signed in with sk_robot_ab12cd34_" + "z" * 43, "z" * 43, "sk_robot_ab12cd34_***"),
        ("inviteToken=inv-123&next=/home", "inv-123", "next=/home"),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi", "Authorization:"),
        ("token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln seen", "eyJzdWIiOiIxIn0", "seen"),
        ('{"query": "{ x(apiKey: \\"k-42 k\\") }"}', "k-42", "x(apiKey:"),
        ("mail to someone.else+tag@example.org failed", "someone.else", "so***@example.org"),
    ],
)
def test_redaction_covers_keys_credentials_and_emails(raw: str, secret: str, kept: str) -> None:
    redacted = logs.redact(raw)
    assert secret not in redacted
    assert kept in redacted


def test_redaction_stays_linear_on_long_unbroken_input() -> None:
    import time

    started = time.perf_counter()
    for text in ("a" * 200_000, "a?" * 100_000, "a." * 100_000 + "@", "key-" * 50_000):
        logs.redact(text)
    assert time.perf_counter() - started < 2


async def test_the_server_writes_one_json_access_line_per_request_with_its_id_and_duration(
    database_url: str, tmp_path: Path
) -> None:
    from tests.processes import sepulki_serve

    # Given `sepulki serve` writing JSON logs
    async with sepulki_serve(database_url, tmp_path, log_format="json") as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            # when a client sends a query with a token in its URL, and another with its own request id,
            leaky = await client.get(
                "/graphql", params={"query": "{ __typename }", "access_token": "tk-55667788"}
            )
            named = await client.post(
                "/graphql", json={"query": "{ __typename }"}, headers={"x-request-id": "req-from-client-1"}
            )
    assert leaky.status_code == 200 and named.status_code == 200
    lines = [
        json.loads(line)
        for line in (tmp_path / f"serve-{port}.log").read_text().splitlines()
        if line.startswith("{")
    ]
    access = [line for line in lines if line["logger"] == "sepulki.access"]
    # then each request has one access line with its method, path, status, duration and id,
    [get] = [line for line in access if line["method"] == "GET" and line["path"].startswith("/graphql")]
    [post] = [line for line in access if line["request_id"] == "req-from-client-1"]
    assert get["status"] == 200 and get["client"] == "127.0.0.1" and get["duration_ms"] >= 0
    assert get["request_id"] == leaky.headers["x-request-id"]
    assert post["method"] == "POST" and post["path"] == "/graphql" and post["status"] == 200
    # the token in the query string is masked, and uvicorn writes no access line of its own.
    assert "tk-55667788" not in get["path"] and "access_token=***" in get["path"]
    assert "tk-55667788" not in (tmp_path / f"serve-{port}.log").read_text()
    assert not [line for line in lines if line["logger"] == "uvicorn.access"]
