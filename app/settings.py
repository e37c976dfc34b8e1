"""Typed settings, read once from the environment (`SEPULKI_*`).

Each variable is declared once, below: its name, type, default and description. `.env.example`
is generated from these declarations (`sepulki env-example`; a test keeps it current). A value
the type refuses stops the start with one line naming the variable and what it accepts.

Over 400 lines on purpose: it is the one list of every variable (about seventy), each with its
description; splitting it would split that list.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource
from pydantic_settings import SettingsConfigDict as _Config
from pydantic_settings.sources.utils import parse_env_vars

# Development-only secret: refused when SEPULKI_ENV=production.
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"  # noqa: S105
DEV_CORS_ORIGINS = ("http://localhost:3000", "http://127.0.0.1:3000")
PREFIX = "SEPULKI_"


def _assets() -> Path:
    """Where schema/, migrations/, seed/ and client-examples/ are: inside the installed package
    (the wheel carries them under app/_assets), or the checkout this module runs from."""
    packaged = Path(__file__).resolve().parent / "_assets"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent


ASSETS = _assets()


class SettingsError(RuntimeError):
    """The environment describes a configuration the service refuses to run with."""


_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("sepulki_environ", default=None)


class _Environ(EnvSettingsSource):
    """The process environment, or the mapping `Settings.from_env` was given."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        source = os.environ if environ is None else environ
        return parse_env_vars(source, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


# A setting the commands set themselves, not a variable of .env.example.
_INTERNAL: Any = {"internal": True}


class Settings(BaseSettings):
    model_config = _Config(
        env_prefix=PREFIX,
        # An empty variable means "not set" (compose files and .env copies leave many empty).
        env_ignore_empty=True,
        frozen=True,
        extra="ignore",
        validate_default=True,
        populate_by_name=True,
    )

    env: Literal["development", "production", "test"] = Field(
        "development",
        description="development | production | test. Production refuses the development JWT secret,\n"
        "turns off introspection and GraphiQL, and does not load the development seed.",
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL. Empty: an embedded PostgreSQL with its data under SEPULKI_DATA_DIR/pg.",
    )
    broadcast_url: str = Field(
        "memory://",
        validation_alias="SEPULKI_REDIS_URL",
        description="Redis URL for the event bus across replicas (redis://host:6379). Empty: in-process "
        "memory bus.",
    )
    data_dir: Path = Field(
        Path(".sepulki"), description="Embedded PostgreSQL, uploads and development mail live here."
    )
    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(4000, ge=1, le=65535, description="Port the API listens on.")
    jwt_secret: str = Field(
        DEV_JWT_SECRET,
        min_length=32,
        description="REQUIRED in production: at least 32 random characters. The default is for "
        "development only.",
    )
    jwt_algorithm: Literal["HS256"] = Field(
        "HS256", description="Signing algorithm of access tokens (pinned)."
    )
    access_token_ttl_s: int = Field(15 * 60, ge=1, description="Lifetime of an access token (seconds).")
    refresh_token_ttl_s: int = Field(
        7 * 24 * 3600,
        ge=1,
        description="Refresh tokens: single use, rotated on every refresh; the session ends this long after "
        "its last use.",
    )
    open_registration: bool = Field(
        False,
        description="Accounts are created from admins' invitations; true lets anyone sign up with the "
        "SMITH role.",
    )
    invitation_ttl_s: int = Field(7 * 24 * 3600, ge=1, description="How long an invitation link stays valid.")
    password_reset_ttl_s: int = Field(3600, ge=1, description="How long a password-reset link stays valid.")
    public_url: str = Field(
        "http://localhost:3000", description="Base URL of the web frontend, used in the links mails carry."
    )
    smtp_url: str | None = Field(
        None,
        description="Outgoing mail: smtp://user:pass@host:587 (STARTTLS), smtps://user:pass@host:465 (TLS),\n"
        "smtp+plain://host:25 (no TLS). Empty: mails are written as files under SEPULKI_DATA_DIR/mail.",
    )
    mail_from: str = Field("Sepulki Hammer <no-reply@sepulki.local>", description="Sender of every mail.")
    rate_limit_storage_url: str | None = Field(
        None,
        description="Where rate-limit counters live: async+memory:// (one process) or "
        "async+redis://host:6379.\n"
        "Empty: Redis at SEPULKI_REDIS_URL when set, else memory.",
    )
    login_rate_limit_ip: str = Field(
        "100/15 minutes", description='Limits in `limits` notation ("N/period"; "0" turns one off).'
    )
    login_rate_limit_account: str = Field("20/15 minutes", description="Login attempts per account.")
    login_lockout: str = Field(
        "5/15 minutes",
        description="More than this many failed logins for one email lock it until the window has passed.",
    )
    mail_rate_limit_ip: str = Field("20/hour", description="Invitation and reset mails per IP.")
    mail_rate_limit_account: str = Field("3/hour", description="Invitation and reset mails per target email.")
    request_rate_limit_ip: str = Field("1200/minute", description="GraphQL requests per IP (0 disables).")
    viewer_cache_s: float = Field(
        5.0,
        ge=0,
        le=60,
        description=(
            "Seconds an API process reuses a verified access token's session check (0 checks every "
            "request); revocations and role changes drop it at once."
        ),
    )
    rate_limit_retry_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="While the rate-limit storage (Redis) fails, limits count in each process's memory at "
        "half;\nit is tried again this often (seconds).",
    )
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        DEV_CORS_ORIGINS,
        description="Comma-separated browser origins allowed by CORS (the reference web frontend runs "
        "on :3000).",
    )
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated IPs or CIDRs of the reverse proxies in front of the API "
        "(10.0.0.5,172.16.0.0/12):\n"
        "only from them are X-Forwarded-For and X-Forwarded-Proto believed. Empty: both headers are "
        "ignored\n"
        "and the client's address is the socket peer's.",
    )
    debug: bool = Field(
        False,
        description="Debug adds exception details to INTERNAL_SERVER_ERROR responses. Never in production.",
    )
    db_pool_min: int = Field(2, ge=0, description="Smallest size of the API's connection pool.")
    db_pool_max: int = Field(10, ge=1, description="Largest size of the API's connection pool.")
    mqtt_url: str | None = Field(
        None,
        description="MQTT broker of the robots (mqtt://user:pass@host:1883). Empty: `./run dev` embeds "
        "an amqtt\n"
        "broker on 127.0.0.1:SEPULKI_MQTT_PORT; `serve` then runs no MQTT ingest.",
    )
    mqtt_port: int = Field(
        1883,
        ge=1,
        le=65535,
        description="Port of the embedded broker `./run dev` starts when SEPULKI_MQTT_URL is empty.",
    )
    mqtt_protocol: Literal[4, 5] = Field(
        5,
        description="5 (Mosquitto, EMQX: shared subscriptions, acknowledged after commit) or 4 (MQTT 3.1.1).",
    )
    mqtt_client_id: str = Field(
        "sepulki-ingest",
        min_length=1,
        description="MQTT client id of the ingest, stable across restarts (its session lives under it); "
        "one per\ningest replica. Command publishers add `-commands-<role>-<pid>-<random>`.",
    )
    mqtt_subscription: Literal["shared", "exclusive"] = Field(
        "shared",
        description="shared: ingest replicas split the robots' topics ($share/sepulki/...). exclusive: "
        "a plain\npersistent subscription, kept across Mosquitto 2.0 restarts (docs/ingest.md, "
        '"Broker restarts").',
    )
    mqtt_admin_url: str | None = Field(
        None,
        description="A dynamic-security admin of the robots' Mosquitto "
        "(mqtt://admin:<password>@localhost:1883):\n"
        "robot API keys become MQTT accounts limited to their own topics (docs/deployment.md).\n"
        "Empty: robots' broker access is managed elsewhere.",
    )
    embedded_broker: bool = Field(False, json_schema_extra=_INTERNAL, description="Set by `sepulki dev`.")
    ingest_in_api: bool = Field(
        True,
        description="Run the MQTT ingest inside the API process; set false when `sepulki ingest` runs "
        "separately.",
    )
    ingest_batch_size: int = Field(1000, ge=1, description="Messages per ingest batch (one transaction).")
    ingest_batch_ms: int = Field(
        25,
        ge=1,
        description="The ingest writer starts at most one batch per this many ms: a partial batch waits "
        "until this long after the previous one began, so a message that finds the writer idle is "
        "written at once.",
    )
    ingest_max_payload_bytes: int = Field(65536, ge=1, description="Largest robot message accepted (bytes).")
    dead_letter_retention_s: int = Field(
        604800,
        ge=0,
        description="How long rejected robot messages stay in dead_letters (seconds; 7 days; 0 keeps "
        "them forever).",
    )
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Port of GET /metrics and /health/live|ready of `sepulki ingest` and `sepulki worker` "
        "(0: off).",
    )
    metrics_token: str | None = Field(
        None,
        min_length=16,
        description="Bearer token GET /metrics of the API requires (Authorization: Bearer <token>). "
        "Empty: /metrics\n"
        "is open in development and answers 404 in production.",
    )
    command_ttl_s: int = Field(
        300,
        ge=1,
        description="Commands expire unsent after this; sent ones not acknowledged in time become TIMED_OUT.",
    )
    command_ack_timeout_s: int = Field(30, ge=1, description="How long a sent command may go unacknowledged.")
    robot_offline_after_s: int = Field(
        120,
        ge=0,
        description="Seconds without any MQTT or HTTP message before a robot is marked OFFLINE; 0: never.",
    )
    robot_liveness_interval_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Seconds between looks for silent robots (and fleets following their robots' status).",
    )
    task_worker_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often the task worker fires due schedules, dispatches queued tasks and applies "
        "robots' reports (it also wakes on NOTIFY).",
    )
    task_max_attempts: int = Field(
        3, ge=1, le=20, description="Runs a task gets in all: a failed run is retried until this many ran."
    )
    task_run_timeout_s: int = Field(
        3600, ge=1, description="A run RUNNING longer than this without finishing fails (and may be retried)."
    )
    task_min_battery: float = Field(
        15.0, ge=0, le=100, description="Robots below this battery level (percent) are not given tasks."
    )
    edict_reload_s: float = Field(
        2.0, gt=0, le=300, description="How often the rule evaluator reloads active edicts and robots' scope."
    )
    edict_missing_check_s: float = Field(
        5.0, gt=0, le=3600, description="How often robots are checked against missing-data rules."
    )
    notify_in_api: bool = Field(
        True,
        description=(
            "Whether `sepulki serve` delivers alert mails and webhook calls too (`sepulki worker` does)."
        ),
    )
    notify_poll_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="How often the notification worker looks for due mails and webhook calls.",
    )
    notify_lease_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "How long a claimed delivery stays with its worker; after a crash another retries it then."
        ),
    )
    notify_max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts of one e-mail or webhook call before it is marked FAILED."
    )
    notify_backoff_s: float = Field(
        2.0, gt=0, le=3600, description="Wait before the first retry of a delivery; doubles at each attempt."
    )
    notify_backoff_max_s: float = Field(
        900.0, gt=0, le=86400, description="Longest wait between two attempts of a delivery."
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, le=120, description="How long a webhook endpoint may take to answer one call."
    )
    webhook_disable_after: int = Field(
        10, ge=1, le=1000, description="Consecutive failed calls after which a webhook endpoint is disabled."
    )
    simulate_task_duration_s: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="How long a simulated robot takes to run a dispatched task (seconds).",
    )
    simulate_task_failure_rate: float = Field(
        0.1, ge=0, le=1, description="Share of dispatched tasks a simulated robot fails, with a reason."
    )
    build_poll_s: float = Field(
        1.0, gt=0, le=60, description="How often workers look for queued build and temper jobs (seconds)."
    )
    build_lease_s: int = Field(
        300,
        ge=1,
        description="A running build or temper job whose worker went silent this long is run again "
        "(seconds).",
    )
    build_max_attempts: int = Field(
        3, ge=1, le=20, description="Runs of one build or temper job before it fails for good."
    )
    temper_iterations: int = Field(
        200, ge=1, le=100000, description="Candidate parameter sets one temperIngot job evaluates."
    )
    deployment_poll_s: float = Field(
        1.0, gt=0, le=60, description="How often workers fold robots' update results into their deployments."
    )
    upload_max_bytes: int = Field(
        1_048_576, ge=1, le=20 * 1024 * 1024, description="Largest program or route file accepted (bytes)."
    )
    upload_program_types: Annotated[tuple[str, ...], NoDecode] = Field(
        ("json", "yaml", "yml"),
        description="File extensions uploadProgram accepts (comma-separated, without dots).",
    )
    upload_route_types: Annotated[tuple[str, ...], NoDecode] = Field(
        ("json", "gpx", "yaml", "yml"),
        description="File extensions uploadRoute accepts (comma-separated, without dots).",
    )
    simulate_update_failure_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Share of UPDATE_INGOT commands the simulated robots of `./run dev` fail (0..1).",
    )
    ws_queue_size: int = Field(
        1000,
        ge=1,
        description="Events a websocket may fall behind before it is closed (it resumes with `after`).",
    )
    ws_init_timeout_s: int = Field(
        10,
        ge=1,
        le=600,
        description="A websocket that sends no connection_init this long after opening is closed "
        '(4408 "Connection initialisation timeout").',
    )
    ws_anonymous_idle_s: int = Field(
        30,
        ge=1,
        le=86400,
        description='An anonymous websocket running no operation is closed (1000 "Idle") this long '
        "after its last subscribe message.",
    )
    ws_message_rate: float = Field(
        20.0,
        ge=0,
        description="Messages per second one websocket may send, on average (a token bucket of "
        'SEPULKI_WS_MESSAGE_BURST);\nover it the socket is closed (4429 "Too many messages"). 0 disables.',
    )
    ws_message_burst: int = Field(
        100,
        ge=1,
        description="Messages one websocket may send at once before SEPULKI_WS_MESSAGE_RATE applies.",
    )
    ws_max_subscriptions_per_socket: int = Field(
        100,
        ge=0,
        description="Subscriptions one websocket may run at once; more answer an error with code "
        "RATE_LIMITED (0: no cap).",
    )
    ws_max_subscriptions_per_smith: int = Field(
        500, ge=0, description="Subscriptions one smith may run at once over all its websockets (0: no cap)."
    )
    ws_max_sockets_per_ip: int = Field(
        200,
        ge=0,
        description='Websockets one client IP may hold open in this process; more are closed (4429 "Too '
        'many connections") (0: no cap).',
    )
    ws_max_sockets_per_smith: int = Field(
        50,
        ge=0,
        description="Signed-in websockets one smith may hold open in this process; more are closed at "
        "connection_init (4429) (0: no cap).",
    )
    http_header_timeout_s: int = Field(
        10,
        ge=0,
        le=3600,
        description="A connection must send a request's complete headers this long after it opens or the "
        "request\nbegins, or it is closed (0: no bound; a reverse proxy's client_header_timeout then "
        "covers it).",
    )
    http_max_header_bytes: int = Field(
        65536,
        ge=1024,
        description="Largest request line plus headers accepted (bytes); larger ones answer 431.",
    )
    http_keep_alive_s: int = Field(
        5, ge=1, le=3600, description="An idle keep-alive HTTP connection is closed after this many seconds."
    )
    event_retention_s: int = Field(
        86400,
        ge=0,
        description="How long events stay replayable with `after` / Last-Event-ID (seconds; 0 keeps "
        "them forever).",
    )
    telemetry_partition_interval: Literal["month", "week", "day"] = Field(
        "month", description="Time range of one partition of telemetry, robot events and rollups (UTC)."
    )
    telemetry_partitions_ahead: int = Field(
        2, ge=1, le=60, description="Partitions the worker keeps created ahead of the current one."
    )
    telemetry_raw_retention_days: int = Field(
        30, ge=0, description="Days raw telemetry samples are kept (whole partitions dropped; 0: forever)."
    )
    telemetry_1m_retention_days: int = Field(
        90, ge=0, description="Days 1-minute rollups are kept (0: forever)."
    )
    telemetry_1h_retention_days: int = Field(
        365, ge=0, description="Days 1-hour rollups are kept (0: forever)."
    )
    telemetry_1d_retention_days: int = Field(0, ge=0, description="Days 1-day rollups are kept (0: forever).")
    robot_events_retention_days: int = Field(
        0, ge=0, description="Days robot events are kept (whole partitions dropped; 0: forever)."
    )
    telemetry_rollup_interval_s: float = Field(
        10.0, gt=0, description="How often the worker brings the telemetry rollups up to date (seconds)."
    )
    telemetry_maintenance_interval_s: float = Field(
        3600.0,
        gt=0,
        description="How often the worker creates partitions ahead and applies retention (seconds).",
    )
    utilization_refresh_s: float = Field(
        300.0, gt=0, description="How often robot_utilization_daily is refreshed (seconds)."
    )
    simulate_robots: int = Field(4, ge=0, description="Simulated robots `./run dev` starts (0: none).")
    max_query_cost: int = Field(5000, ge=1, description="Largest estimated cost of one GraphQL operation.")
    max_query_depth: int = Field(12, ge=1, description="Deepest selection of one GraphQL operation.")
    max_query_aliases: int = Field(30, ge=0, description="Most aliases in one GraphQL operation.")
    max_query_tokens: int = Field(5000, ge=1, description="Most lexical tokens in one GraphQL document.")
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest request body accepted (bytes); larger ones answer 413."
    )
    max_batch_operations: int = Field(
        1,
        ge=1,
        description="Operations per batched request (a JSON array of operations); 1 turns batching off.",
    )
    argon2_time_cost: int = Field(3, ge=1, description="argon2id cost: iterations.")
    argon2_memory_kib: int = Field(65536, ge=8, description="argon2id cost: memory in KiB.")
    seed_on_start: bool | None = Field(
        None, description="Load the development seed on start (default: true outside production)."
    )
    migrate_on_start: bool | None = Field(
        None,
        description="Apply migrations on start (default: true outside production, where `sepulki "
        "migrate` runs once).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Log level."
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text, or json: one JSON object per line (python-json-logger) with request_id and "
        "robot_id\nfields where known.",
    )
    tracing: bool = Field(
        False,
        description="Trace GraphQL operations and their resolvers with OpenTelemetry (Ariadne's "
        "extension; needs\n`pip install 'sepulki[tracing]'` and an exporter from the OTEL_* variables). "
        "Off: it wraps every resolver.",
    )
    mail_to_files: bool = Field(
        False,
        description="In production with SEPULKI_SMTP_URL empty, write mails as files under "
        "SEPULKI_DATA_DIR/mail;\nwithout it a production process refuses to start with no mail "
        "transport.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("upload_program_types", "upload_route_types", mode="before")
    @classmethod
    def _split_extensions(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            return value
        return tuple(str(item).strip().lower().lstrip(".") for item in items if str(item).strip())

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            return value
        proxies = []
        for item in (str(item).strip() for item in items):
            if not item:
                continue
            try:
                proxies.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return tuple(proxies)

    @field_validator("data_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _defaults_by_env(self) -> Settings:
        # Outside production the service migrates and seeds itself; production runs
        # `sepulki migrate` once per release (replicas must not race) and never seeds.
        for name in ("seed_on_start", "migrate_on_start"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, not self.production)
        if self.production and self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError(
                "SEPULKI_JWT_SECRET must be set in production; the development secret is refused"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environ(settings_cls)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of `environ` (default: the process environment); SettingsError when a
        value is refused, naming the variable and what it accepts."""
        token = _ENVIRON.set(environ)
        try:
            return cls()
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None
        finally:
            _ENVIRON.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, validated like the original."""
        return type(self).model_validate({**self.model_dump(), **changes})


def env_name(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else f"{PREFIX}{name.upper()}"


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        loc = error.get("loc") or ()
        name = str(loc[0]) if loc else ""
        field = Settings.model_fields.get(name)
        variable = env_name(name, field) if field is not None else name or "configuration"
        message = error["msg"].removeprefix("Value error, ")
        # Values of URLs and secrets may hold credentials: never echoed.
        if "input" in error and loc and not any(part in name for part in ("url", "secret", "token")):
            problems.append(f"{variable}={error['input']!r}: {message}")
        else:
            problems.append(message if not loc else f"{variable}: {message}")
    return "; ".join(problems)


def _env_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def env_example() -> str:
    """The text of .env.example: every variable with its description and default."""
    lines = [
        "# Sepulki Hammer configuration, generated by `sepulki env-example` from app/settings.py.",
        "# Every variable is optional in development (`./run dev`). Values shown are the defaults.",
        "",
    ]
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("internal"):
            continue
        for line in (info.description or "").splitlines():
            lines.append(f"# {line}")
        lines.append(f"{env_name(name, info)}={_env_value(info.default)}")
    return "\n".join(lines) + "\n"


def _type_name(info: FieldInfo) -> str:
    """The accepted values as an operator reads them: `int 1..65535`, `a \\| b`, `str or empty`."""
    annotation = info.annotation
    args = getattr(annotation, "__args__", ())
    origin = getattr(annotation, "__origin__", None)
    optional = type(None) in args
    if origin is Literal:
        name = " \\| ".join(str(arg) for arg in args)
    elif origin is tuple or annotation is tuple:
        name = "comma-separated list"
    else:
        inner = [arg for arg in args if arg is not type(None)] or [annotation]
        base = inner[0]
        name = getattr(base, "__name__", str(base))
        if name == "Literal":  # Literal[...] | None
            name = " \\| ".join(str(arg) for arg in getattr(base, "__args__", ()))
    bounds = {type(m).__name__: m for m in info.metadata}
    low = next((getattr(bounds[k], k.lower()) for k in ("Ge", "Gt") if k in bounds), None)
    high = next((getattr(bounds[k], k.lower()) for k in ("Le", "Lt") if k in bounds), None)
    if low is not None or high is not None:
        name += f" {'' if low is None else low}..{'' if high is None else high}"
    if "MinLen" in bounds:
        name += f", {bounds['MinLen'].min_length}+ characters"
    return name + (" or empty" if optional else "")


def settings_table() -> str:
    """The configuration as a Markdown table (variable, type, default, description), for
    docs/operations.md: `sepulki env-example --markdown` prints it; a test keeps the doc current."""
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("internal"):
            continue
        default = _env_value(info.default)
        cells = [
            f"`{env_name(name, info)}`",
            _type_name(info),
            f"`{default}`" if default else "(empty)",
            " ".join((info.description or "").split()),
        ]
        cells[3] = cells[3].replace("|", "\\|")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@contextmanager
def environ(values: Mapping[str, str]) -> Iterator[None]:
    """Settings read inside the block see `values` instead of the process environment."""
    token = _ENVIRON.set(values)
    try:
        yield
    finally:
        _ENVIRON.reset(token)
