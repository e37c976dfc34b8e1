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
    access_token_ttl_s: int = 24 * 3600
    cors_origins: tuple[str, ...] = DEV_CORS_ORIGINS
    debug: bool = False
    db_pool_min: int = 2
    db_pool_max: int = 10
    # MQTT broker of the robots. None: `sepulki dev` embeds an amqtt broker; `serve` runs no ingest.
    mqtt_url: str | None = None
    # 5 for Mosquitto/EMQX (shared subscriptions, ack after commit); 4 = MQTT 3.1.1 (amqtt).
    mqtt_protocol: int = 5
    mqtt_client_id: str = "sepulki-ingest"
    # Run the development MQTT broker (amqtt) on mqtt_url's port in this process; set by `sepulki dev`.
    embedded_broker: bool = False
    # Run the MQTT ingest inside the API process (dev and single-process deployments).
    ingest_in_api: bool = True
    ingest_batch_size: int = 1000
    ingest_batch_ms: int = 25
    ingest_max_payload_bytes: int = 65536
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
            access_token_ttl_s=int(get("ACCESS_TOKEN_TTL_S", str(24 * 3600))),
            cors_origins=_list(get("CORS_ORIGINS", ",".join(DEV_CORS_ORIGINS))),
            debug=_bool(get("DEBUG", "false")),
            db_pool_min=int(get("DB_POOL_MIN", "2")),
            db_pool_max=int(get("DB_POOL_MAX", "10")),
            mqtt_url=env.get("SEPULKI_MQTT_URL") or None,
            mqtt_protocol=int(get("MQTT_PROTOCOL", "5")),
            mqtt_client_id=get("MQTT_CLIENT_ID", "sepulki-ingest"),
            ingest_in_api=_bool(get("INGEST_IN_API", "true")),
            ingest_batch_size=int(get("INGEST_BATCH_SIZE", "1000")),
            ingest_batch_ms=int(get("INGEST_BATCH_MS", "25")),
            ingest_max_payload_bytes=int(get("INGEST_MAX_PAYLOAD_BYTES", "65536")),
            command_ttl_s=int(get("COMMAND_TTL_S", "300")),
            command_ack_timeout_s=int(get("COMMAND_ACK_TIMEOUT_S", "30")),
            ws_queue_size=int(get("WS_QUEUE_SIZE", "1000")),
            event_retention_s=int(get("EVENT_RETENTION_S", "86400")),
            simulate_robots=int(get("SIMULATE_ROBOTS", "4")),
            max_query_cost=int(get("MAX_QUERY_COST", "5000")),
            max_query_depth=int(get("MAX_QUERY_DEPTH", "12")),
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
