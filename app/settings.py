"""Typed settings, read once from the environment (`SEPULKI_*`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Development-only secret: refused when SEPULKI_ENV=production.
DEV_JWT_SECRET = "dev-only-insecure-jwt-secret-change-me"  # noqa: S105
DEV_CORS_ORIGINS = ("http://localhost:3000", "http://127.0.0.1:3000")

# Where schema/, migrations/ and seed/ live: the checkout, or SEPULKI_HOME for installed copies.
ROOT = Path(os.environ.get("SEPULKI_HOME") or Path(__file__).resolve().parent.parent)


class SettingsError(RuntimeError):
    """The environment describes a configuration the service refuses to run with."""


def _bool(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


@dataclass(frozen=True, slots=True)
class Settings:
    env: str = "development"
    database_url: str | None = None
    # memory:// serves one process (development); redis://host:6379 for several replicas.
    broadcast_url: str = "memory://"
    data_dir: Path = ROOT / ".sepulki"
    host: str = "127.0.0.1"
    port: int = 4000
    jwt_secret: str = DEV_JWT_SECRET
    jwt_algorithm: str = "HS256"
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 7 * 24 * 3600
    # Off: accounts are created from admins' invitations only (docs/accounts.md).
    open_registration: bool = False
    invitation_ttl_s: int = 7 * 24 * 3600
    password_reset_ttl_s: int = 3600
    # Where links in mails point (the web frontend), e.g. https://fleet.example.com
    public_url: str = "http://localhost:3000"
    # smtp://user:pass@host:587 (STARTTLS), smtps://...:465 (TLS), smtp+plain://host:25 (no TLS).
    # None: mails are written as .eml files under data_dir/mail (development).
    smtp_url: str | None = None
    mail_from: str = "Sepulki Hammer <no-reply@sepulki.local>"
    # limits storage: memory:// (one process) or async+redis://host:6379 (shared by replicas).
    # None: async+redis on SEPULKI_REDIS_URL when set, else memory://.
    rate_limit_storage_url: str | None = None
    # `limits` notation. The login limit per IP is seed 000's default.
    login_rate_limit_ip: str = "100/15 minutes"
    login_rate_limit_account: str = "20/15 minutes"
    # More than 5 failed logins for one email within 15 minutes lock it for the rest of the window.
    login_lockout: str = "5/15 minutes"
    # Mails asking for a password reset or invitation, per IP and per target email.
    mail_rate_limit_ip: str = "20/hour"
    mail_rate_limit_account: str = "3/hour"
    # Every GraphQL request, per IP (0 disables).
    request_rate_limit_ip: str = "1200/minute"
    cors_origins: tuple[str, ...] = DEV_CORS_ORIGINS
    debug: bool = False
    db_pool_min: int = 2
    db_pool_max: int = 10
    # MQTT broker of the robots. None: `sepulki dev` embeds an amqtt broker; `serve` runs no ingest.
    mqtt_url: str | None = None
    # 5 for Mosquitto/EMQX (shared subscriptions, ack after commit); 4 = MQTT 3.1.1 (amqtt).
    mqtt_protocol: int = 5
    mqtt_client_id: str = "sepulki-ingest"
    # A dynamic-security admin of the robots' Mosquitto: robot API keys become broker accounts
    # limited to their own topics (app/broker_accounts.py). None: robots' broker access is managed
    # outside the service.
    mqtt_admin_url: str | None = None
    # Run the development MQTT broker (amqtt) on mqtt_url's port in this process; set by `sepulki dev`.
    embedded_broker: bool = False
    # Run the MQTT ingest inside the API process (dev and single-process deployments).
    ingest_in_api: bool = True
    ingest_batch_size: int = 1000
    ingest_batch_ms: int = 25
    ingest_max_payload_bytes: int = 65536
    # GET /metrics of a standalone `sepulki ingest` on host:this port (0: not served).
    metrics_port: int = 9464
    command_ttl_s: int = 300
    command_ack_timeout_s: int = 30
    # Per-subscription queue bound; a subscription this far behind is ended (it resumes with `after`).
    ws_queue_size: int = 1000
    # How long event_log keeps events for `after` / Last-Event-ID replay (0: forever).
    event_retention_s: int = 86400
    # Simulated robots started by `sepulki dev` (0: none).
    simulate_robots: int = 4
    max_query_cost: int = 5000
    max_query_depth: int = 12
    max_query_aliases: int = 30
    max_query_tokens: int = 5000
    max_body_bytes: int = 1_048_576
    # Operations per batched HTTP request (a JSON array); 1 turns batching off.
    max_batch_operations: int = 1
    # argon2id cost; tests lower it, production keeps the library defaults.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    seed_on_start: bool = True
    # Production runs `sepulki migrate` once per release instead: replicas must not race.
    migrate_on_start: bool = True

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] | None = None) -> Settings:
        env = dict(environ if environ is not None else os.environ)

        def get(name: str, default: str) -> str:
            return env.get(f"SEPULKI_{name}", default)

        mode = get("ENV", "development")
        settings = cls(
            env=mode,
            database_url=env.get("SEPULKI_DATABASE_URL") or None,
            broadcast_url=env.get("SEPULKI_REDIS_URL") or "memory://",
            data_dir=Path(get("DATA_DIR", str(ROOT / ".sepulki"))),
            host=get("HOST", "127.0.0.1"),
            port=int(get("PORT", "4000")),
            jwt_secret=get("JWT_SECRET", DEV_JWT_SECRET),
            access_token_ttl_s=int(get("ACCESS_TOKEN_TTL_S", str(15 * 60))),
            refresh_token_ttl_s=int(get("REFRESH_TOKEN_TTL_S", str(7 * 24 * 3600))),
            open_registration=_bool(get("OPEN_REGISTRATION", "false")),
            invitation_ttl_s=int(get("INVITATION_TTL_S", str(7 * 24 * 3600))),
            password_reset_ttl_s=int(get("PASSWORD_RESET_TTL_S", "3600")),
            public_url=get("PUBLIC_URL", "http://localhost:3000"),
            smtp_url=env.get("SEPULKI_SMTP_URL") or None,
            mail_from=get("MAIL_FROM", "Sepulki Hammer <no-reply@sepulki.local>"),
            rate_limit_storage_url=env.get("SEPULKI_RATE_LIMIT_STORAGE_URL") or None,
            login_rate_limit_ip=get("LOGIN_RATE_LIMIT_IP", "100/15 minutes"),
            login_rate_limit_account=get("LOGIN_RATE_LIMIT_ACCOUNT", "20/15 minutes"),
            login_lockout=get("LOGIN_LOCKOUT", "5/15 minutes"),
            mail_rate_limit_ip=get("MAIL_RATE_LIMIT_IP", "20/hour"),
            mail_rate_limit_account=get("MAIL_RATE_LIMIT_ACCOUNT", "3/hour"),
            request_rate_limit_ip=get("REQUEST_RATE_LIMIT_IP", "1200/minute"),
            cors_origins=_list(get("CORS_ORIGINS", ",".join(DEV_CORS_ORIGINS))),
            debug=_bool(get("DEBUG", "false")),
            db_pool_min=int(get("DB_POOL_MIN", "2")),
            db_pool_max=int(get("DB_POOL_MAX", "10")),
            mqtt_url=env.get("SEPULKI_MQTT_URL") or None,
            mqtt_protocol=int(get("MQTT_PROTOCOL", "5")),
            mqtt_client_id=get("MQTT_CLIENT_ID", "sepulki-ingest"),
            mqtt_admin_url=env.get("SEPULKI_MQTT_ADMIN_URL") or None,
            ingest_in_api=_bool(get("INGEST_IN_API", "true")),
            ingest_batch_size=int(get("INGEST_BATCH_SIZE", "1000")),
            ingest_batch_ms=int(get("INGEST_BATCH_MS", "25")),
            ingest_max_payload_bytes=int(get("INGEST_MAX_PAYLOAD_BYTES", "65536")),
            metrics_port=int(get("METRICS_PORT", "9464")),
            command_ttl_s=int(get("COMMAND_TTL_S", "300")),
            command_ack_timeout_s=int(get("COMMAND_ACK_TIMEOUT_S", "30")),
            ws_queue_size=int(get("WS_QUEUE_SIZE", "1000")),
            event_retention_s=int(get("EVENT_RETENTION_S", "86400")),
            simulate_robots=int(get("SIMULATE_ROBOTS", "4")),
            max_query_cost=int(get("MAX_QUERY_COST", "5000")),
            max_query_depth=int(get("MAX_QUERY_DEPTH", "12")),
            max_query_aliases=int(get("MAX_QUERY_ALIASES", "30")),
            max_query_tokens=int(get("MAX_QUERY_TOKENS", "5000")),
            max_body_bytes=int(get("MAX_BODY_BYTES", "1048576")),
            max_batch_operations=int(get("MAX_BATCH_OPERATIONS", "1")),
            argon2_time_cost=int(get("ARGON2_TIME_COST", "3")),
            argon2_memory_kib=int(get("ARGON2_MEMORY_KIB", "65536")),
            seed_on_start=_bool(get("SEED_ON_START", "true" if mode != "production" else "false")),
            migrate_on_start=_bool(get("MIGRATE_ON_START", "true" if mode != "production" else "false")),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if self.production and self.jwt_secret == DEV_JWT_SECRET:
            raise SettingsError(
                "SEPULKI_JWT_SECRET must be set in production; the development secret is refused"
            )
        if len(self.jwt_secret) < 32:
            raise SettingsError("SEPULKI_JWT_SECRET must be at least 32 characters")
