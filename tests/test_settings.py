"""Configuration as an operator meets it: every variable declared once, refused values named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.settings import Settings, SettingsError, env_example
from tests.support import ROOT


def test_env_example_is_generated_from_the_settings_and_current() -> None:
    assert (ROOT / ".env.example").read_text() == env_example(), "run `sepulki env-example > .env.example`"


def test_every_declared_variable_is_in_env_example_with_a_description() -> None:
    text = env_example()
    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("internal"):
            continue
        variable = (
            info.validation_alias if isinstance(info.validation_alias, str) else f"SEPULKI_{name.upper()}"
        )
        assert f"\n{variable}=" in text, variable
        assert info.description, f"{variable} has no description"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SEPULKI_PORT": "abc"}, "SEPULKI_PORT='abc'"),
        ({"SEPULKI_PORT": "70000"}, "SEPULKI_PORT"),
        (
            {"SEPULKI_ENV": "prod"},
            "SEPULKI_ENV='prod': Input should be 'development', 'production' or 'test'",
        ),
        ({"SEPULKI_MQTT_PROTOCOL": "3"}, "SEPULKI_MQTT_PROTOCOL"),
        ({"SEPULKI_OPEN_REGISTRATION": "perhaps"}, "SEPULKI_OPEN_REGISTRATION"),
        ({"SEPULKI_LOG_LEVEL": "LOUD"}, "SEPULKI_LOG_LEVEL"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=None) as refused:
        Settings.from_env(environ)
    assert named in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_refused_url_or_secret_is_not_echoed() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SEPULKI_JWT_SECRET": "short-but-secret"})
    assert "SEPULKI_JWT_SECRET" in str(refused.value) and "short-but-secret" not in str(refused.value)


def test_production_is_what_it_says_and_development_stays_development() -> None:
    secret = "a-production-secret-of-more-than-32-characters"
    production = Settings.from_env({"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": secret})
    assert production.production and not production.seed_on_start and not production.migrate_on_start
    development = Settings.from_env({})
    assert not development.production and development.seed_on_start and development.migrate_on_start
    assert Settings.from_env(
        {"SEPULKI_ENV": "production", "SEPULKI_JWT_SECRET": secret, "SEPULKI_SEED_ON_START": "true"}
    ).seed_on_start


def test_empty_variables_mean_the_default_and_lists_are_comma_separated() -> None:
    settings = Settings.from_env(
        {"SEPULKI_DATABASE_URL": "", "SEPULKI_CORS_ORIGINS": "https://a.example, https://b.example"}
    )
    assert settings.database_url is None
    assert settings.cors_origins == ("https://a.example", "https://b.example")


def test_the_cli_stops_with_one_line_on_a_bad_value() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPULKI_")} | {"SEPULKI_PORT": "abc"}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "sepulki: configuration refused: SEPULKI_PORT='abc': Input should be a valid integer, "
        "unable to parse string as an integer"
    ], done.stderr
