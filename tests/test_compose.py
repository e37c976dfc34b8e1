"""docker-compose.yml as an operator deploys it: valid against the Compose Specification's JSON
schema, every long-running service restarted and health-checked, every `depends_on` condition
one its target can meet, robots on TLS only, and the broker bounded in bytes and persisted.

tests/compose-spec.json is the Compose Specification's schema, vendored unchanged (Apache-2.0)
from https://raw.githubusercontent.com/compose-spec/compose-spec/170098ba07d9f53c383a41bfd4c5166b0a4529a6/schema/compose-spec.json
(upgrade: download the newer file over it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.support import ROOT

SCHEMA = Path(__file__).with_name("compose-spec.json")
# Services that run to completion: depended on with service_completed_successfully.
JOBS = {"mosquitto-init", "mosquitto-accounts", "migrate"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(SCHEMA.read_text())
    # The schema names draft 07 by a URL jsonschema does not map ("...draft-07/schema", no "#").
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(compose())


def test_every_long_running_service_restarts_and_has_a_healthcheck() -> None:
    services = compose()["services"]
    assert set(JOBS) < set(services)
    for name, service in services.items():
        if name in JOBS:
            assert service.get("restart", "no") in ("no", "on-failure"), name
            continue
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("api", "ingest", "worker"):
        assert "/health/ready" in " ".join(services[name]["healthcheck"]["test"]), name


def test_every_depends_on_condition_can_become_true() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            condition = rule["condition"]
            if target in JOBS:
                assert condition == "service_completed_successfully", (name, target)
            else:
                assert condition == "service_healthy", (name, target)
                assert services[target].get("healthcheck"), (name, target)
    # The roles that talk to the broker wait for the backend's account to exist.
    for name in ("api", "ingest", "worker"):
        assert (
            services[name]["depends_on"]["mosquitto-accounts"]["condition"]
            == "service_completed_successfully"
        )
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_robots_reach_the_broker_over_tls_only_and_it_is_bounded_and_persisted() -> None:
    spec = compose()
    assert spec["services"]["mosquitto"]["ports"] == ["8883:8883"]
    published = [port for service in spec["services"].values() for port in service.get("ports", [])]
    assert not any(str(port).split(":")[0] == "1883" for port in published)
    config = spec["configs"]["mosquitto_conf"]["content"]
    lines = [
        line.strip() for line in config.splitlines() if line.strip() and not line.strip().startswith("#")
    ]
    assert "listener 8883" in lines and "certfile /mosquitto/certs/server.crt" in lines
    assert "persistence true" in lines and "autosave_interval 60" in lines
    for setting in ("max_queued_bytes", "max_inflight_bytes", "memory_limit", "max_queued_messages"):
        assert any(line.startswith(setting + " ") for line in lines), setting


def test_production_settings_a_deployment_needs_are_wired() -> None:
    services = compose()["services"]
    api = services["api"]["environment"]
    # The proxy addresses whose X-Forwarded-For is believed (uvicorn's forwarded_allow_ips).
    assert api["SEPULKI_TRUSTED_PROXIES"] == "${SEPULKI_TRUSTED_PROXIES:-}"
    assert api["SEPULKI_MAIL_TO_FILES"] == "${SEPULKI_MAIL_TO_FILES:-false}"
    assert services["ingest"]["environment"]["SEPULKI_MQTT_SUBSCRIPTION"] == "exclusive"


def test_production_refuses_to_start_without_a_mail_transport_unless_told_to_write_files() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPULKI_")}
    env |= {"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": "p" * 40}
    for command in ("serve", "worker"):
        refused = subprocess.run(
            [sys.executable, "-m", "app.cli", command],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode != 0
        assert "SEPULKI_SMTP_URL" in refused.stderr and "SEPULKI_MAIL_TO_FILES=true" in refused.stderr
    # Told to write mails as files, it gets past that check (and stops at the next: no database).
    allowed = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=ROOT,
        env={**env, "SEPULKI_MAIL_TO_FILES": "true"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SEPULKI_SMTP_URL" not in allowed.stderr
    assert "SEPULKI_DATABASE_URL" in allowed.stderr
