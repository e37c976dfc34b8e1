"""What the logs may carry: emails masked, never passwords, tokens or API keys.

`RedactingFilter` sits on every handler the command line configures, uvicorn's access log
included, so a secret that slips into a message, its arguments, a request line's query string
or a traceback is replaced before anything is written.

`access()` writes the access log, one line per HTTP request (`sepulki.access`: method, path,
status, duration, client, request id), built already redacted so the filter passes it by; it
replaces uvicorn's access log, which had no duration and cost several regex passes per request.

`ContextFilter` adds `request_id` (set per HTTP request by `app.web.metrics.RequestObserver`)
and `robot_id` (set where a robot's message is handled) to every record; SEPULKI_LOG_FORMAT=json
writes records as one JSON object per line through python-json-logger, those fields included."""

from __future__ import annotations

import contextvars
import copy
import logging
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The fields of a JSON record, besides those a call adds with `extra=`.
JSON_FIELDS = ("asctime", "levelname", "name", "message", "request_id", "robot_id")

# The request (HTTP) and the robot (a message being handled) a log line belongs to.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sepulki_request_id", default=None)
robot_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("sepulki_robot_id", default=None)
MASK = "***"

# Keys whose values are secret, compared lower-cased without `_`/`-` (X-API-Key, new_password):
# any key ending with one of these, plus changePassword's `old` and `new` arguments.
SECRET_KEY_SUFFIXES = ("password", "passwd", "token", "secret", "apikey", "authorization", "cookie", "hash")
SECRET_KEYS = frozenset({"old", "new", "pwd"})

# `key: value`, `key=value`, `"key": "value"`, also JSON inside a JSON string (`\"key\": \"value\"`).
_KEYED_VALUE = re.compile(
    r"""(?<![\w-])(?P<name>[A-Za-z_][\w-]*)\\?["']?(?P<sep>\s*[:=]\s*)"""
    r"""(?P<value>\\"(?:[^"\\]|\\[^"])*\\"|"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;&}\])]+)"""
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[\w.~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")
_API_KEY = re.compile(r"\b(sk_robot_[a-z0-9]{8})_[\w-]{16,}")
# Matches start at word boundaries only: a long unbroken string must not cost quadratic time.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_QUERY_STRING = re.compile(r"\?([^\s\"'#]+)")


def mask_email(email: str) -> str:
    """`al***@example.com`: enough to tell accounts apart in a log, not to read the address."""
    local, at, domain = email.partition("@")
    if not at:
        return "***"
    return f"{local[:2]}***@{domain}"


def is_secret_key(name: str) -> bool:
    normal = name.lower().replace("_", "").replace("-", "")
    return normal in SECRET_KEYS or normal.endswith(SECRET_KEY_SUFFIXES)


def _masked(value: str) -> str:
    if value.startswith('\\"'):
        return f'\\"{MASK}\\"'
    if value[0] in "\"'":
        return f"{value[0]}{MASK}{value[0]}"
    return MASK


def _mask_keyed_values(text: str) -> str:
    # By hand rather than re.sub: the value of an ordinary key (a JSON string holding a whole
    # GraphQL document) must be searched for secret keys in turn, not skipped.
    parts: list[str] = []
    position = 0
    while match := _KEYED_VALUE.search(text, position):
        if is_secret_key(match["name"]):
            parts += [text[position : match.start("value")], _masked(match["value"])]
            position = match.end()
        else:
            parts.append(text[position : match.end("sep")])
            position = match.end("sep")
    parts.append(text[position:])
    return "".join(parts)


def _redact_query_string(match: re.Match[str]) -> str:
    pairs = parse_qsl(match[1], keep_blank_values=True) if "=" in match[1] else []
    if not pairs:
        return match[0]
    cleaned = [(key, MASK if is_secret_key(key) else _redact_text(value)) for key, value in pairs]
    return "?" + urlencode(cleaned, quote_via=quote, safe="*")


def _redact_text(text: str) -> str:
    text = _BEARER.sub(rf"\1 {MASK}", text)
    text = _JWT.sub(MASK, text)
    text = _API_KEY.sub(rf"\1_{MASK}", text)
    text = _mask_keyed_values(text)
    return _EMAIL.sub(lambda m: mask_email(m[0]), text)


def redact(text: str) -> str:
    """`text` without secret values (by key, Bearer credentials, JWTs, API keys), with emails
    masked; query strings are decoded first, so URL-encoded variables are covered too."""
    if "?" in text:
        text = _QUERY_STRING.sub(_redact_query_string, text)
    return _redact_text(text)


ACCESS = logging.getLogger("sepulki.access")


class _AccessRecord(logging.LogRecord):
    """An access-log record: its message and fields were made safe where it was built."""


def access(
    method: str,
    path: str,
    query_string: bytes,
    status: int,
    seconds: float,
    client: tuple[str, int] | None,
    request: str | None,
) -> None:
    """One access-log line (INFO on `sepulki.access`); a query string is redacted, the rest
    (method, path, status, address) carries nothing secret."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    target = redact(f"{path}?{query_string.decode('latin-1')}") if query_string else path
    host = client[0] if client else None
    duration_ms = round(seconds * 1000, 2)
    # The record made and handled directly: `info()` would also walk the stack for the caller.
    record = _AccessRecord(
        ACCESS.name, logging.INFO, __file__, 0, '%s "%s %s" %d %.1f ms',
        (host, method, target, status, duration_ms), None,
    )  # fmt: skip
    record.method, record.path, record.status = method, target, status
    record.duration_ms, record.client, record.request_id = duration_ms, host, request
    ACCESS.handle(record)


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class RedactingFilter(logging.Filter):
    """Rewrites each record before its handler formats it; never drops one."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record, _AccessRecord):
            return True
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # uvicorn's AccessFormatter reads the arguments by position: keep their shape.
            record.args = tuple(_redact_arg(arg) for arg in record.args)
        else:
            try:
                message = record.getMessage()
            except Exception:  # a malformed logging call is logging's to report, not ours
                return True
            record.msg, record.args = redact(message), None
        if record.exc_info:
            # A formatter caches the traceback text on the record: redact whichever copy exists.
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_text = redact(text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class ContextFilter(logging.Filter):
    """Adds the current `request_id` and `robot_id` (None outside a request or a message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "robot_id"):
            record.robot_id = robot_id.get()
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, request_id, robot_id, extras."""
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(
        list(JSON_FIELDS), rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}
    )


def configure(level: str | int = "INFO", fmt: str = "text") -> None:
    """Root logging for the command line, every handler behind a `RedactingFilter` and a
    `ContextFilter`; `fmt` "json" writes JSON lines."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
        if not any(isinstance(f, ContextFilter) for f in handler.filters):
            handler.addFilter(ContextFilter())
        if fmt == "json":
            handler.setFormatter(json_formatter())


def uvicorn_log_config(fmt: str = "text") -> dict[str, Any]:
    """uvicorn's own logging configuration with the filters on its handlers (access log
    included); `fmt` "json" formats its records like ours."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactingFilter}, "context": {"()": ContextFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact", "context"]
    if fmt == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": json_formatter}
    return config
