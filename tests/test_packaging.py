"""The wheel users install (and the Dockerfile builds): built from the checkout, installed with
its dependencies into a fresh venv, and run from a directory outside the checkout, without
PYTHONPATH, so nothing can come from the checkout by accident."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.servers import admin_execute

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "resolvers")
# What the wheel carries under app/_assets (pyproject.toml's force-include), from the checkout.
ASSET_DIRS = {"schema": "*.graphql", "migrations": "*.sql", "seed": "*"}
GRAPHIQL_EXAMPLE = "client-examples/graphiql-default.graphql"
ROLES = ("dev", "serve", "migrate", "ingest", "worker")

# Run by the fresh venv's python: imports every module of the installed packages (an ImportError
# anywhere fails, instead of pkgutil's default of skipping the package) and reports their files.
WALK = """
import importlib, json, pkgutil, sys, sysconfig

def fail(name):
    raise

modules = {}
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    modules[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + ".", onerror=fail):
        modules[info.name] = importlib.import_module(info.name).__file__

import app.settings
print(json.dumps({
    "modules": modules,
    "purelib": sysconfig.get_paths()["purelib"],
    "assets": str(app.settings.ASSETS),
    "sys_path": sys.path,
}))
"""


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path
    env: dict[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(
        self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command in the work directory outside the checkout; fails with its output."""
        cmd = [str(arg) for arg in args]
        result = subprocess.run(
            cmd,
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, _describe(cmd, result)
        return result


def _describe(cmd: list[str], result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"{shlex.join(cmd)} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


def _check(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> None:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(_describe(cmd, result), pytrace=False)


def _outside_env(venv: Path | None = None) -> dict[str, str]:
    """The environment without anything pointing at the checkout or its venv."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE"}
        and not key.startswith(("SEPULKI_", "COV_CORE_"))
    }
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and not _in_checkout(Path(p))]
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        path.insert(0, str(venv / "bin"))
    env["PATH"] = os.pathsep.join(path)
    return env


def _in_checkout(path: Path) -> bool:
    return path.resolve().is_relative_to(ROOT)


def _checkout_files(directory: str, pattern: str) -> list[str]:
    """Files of a checkout directory, as paths relative to the checkout, without caches."""
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / directory).rglob(pattern)
        if p.is_file() and "__pycache__" not in p.parts
    )


def _checkout_modules() -> set[str]:
    names = set()
    for package in PACKAGES:
        for file in _checkout_files(package, "*.py"):
            parts = file.removesuffix(".py").split("/")
            if parts[-1] == "__init__":
                parts.pop()
            names.add(".".join(parts))
    return names


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The wheel built from the checkout and pip-installed, dependencies included, into a new venv."""
    base = tmp_path_factory.mktemp("packaging")
    assert not _in_checkout(base)
    dist, venv, workdir = base / "dist", base / "venv", base / "work"
    workdir.mkdir()
    build_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _check(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        cwd=workdir,
        env=build_env,
        timeout=600,
    )
    wheels = list(dist.glob("*.whl"))
    assert len(wheels) == 1, wheels
    _check([sys.executable, "-m", "venv", str(venv)], cwd=workdir, env=_outside_env(), timeout=300)
    env = _outside_env(venv)
    _check(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", str(wheels[0])],
        cwd=workdir,
        env=env,
        timeout=900,
    )
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    yield Installed(wheel=wheels[0], venv=venv, site_packages=Path(purelib), workdir=workdir, env=env)


def test_the_installed_wheel_imports_every_module_from_outside_the_checkout(installed: Installed) -> None:
    result = installed.run(installed.python, "-c", WALK, *PACKAGES)
    report = json.loads(result.stdout)
    site_packages = Path(report["purelib"]).resolve()
    assert site_packages == installed.site_packages.resolve()
    assert site_packages.is_relative_to(installed.venv.resolve())
    assert not any(_in_checkout(Path(entry or installed.workdir)) for entry in report["sys_path"]), report[
        "sys_path"
    ]

    modules: dict[str, str] = report["modules"]
    missing = _checkout_modules() - set(modules)
    assert not missing, f"modules of the checkout the installed packages lack: {sorted(missing)}"
    elsewhere = {
        name: file
        for name, file in modules.items()
        if not Path(file).resolve().is_relative_to(site_packages) or _in_checkout(Path(file))
    }
    assert not elsewhere, f"modules not imported from the fresh venv's site-packages: {elsewhere}"
    # The service reads its schema, migrations and seed from the installed package.
    assert Path(report["assets"]).resolve() == site_packages / "app" / "_assets"


def test_the_wheel_carries_every_module_of_the_checkout_and_the_runtime_assets(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())

    sources = [file for package in PACKAGES for file in _checkout_files(package, "*.py")]
    assert "app/cli.py" in sources and "resolvers/__init__.py" in sources
    missing = sorted(set(sources) - names)
    assert not missing, f"checkout modules missing from the wheel: {missing}"

    for directory, pattern in ASSET_DIRS.items():
        files = _checkout_files(directory, pattern)
        assert files, f"nothing in the checkout's {directory}/"
        assets = {f"app/_assets/{file}" for file in files}
        assert assets <= names, f"missing from the wheel: {sorted(assets - names)}"
    assert any(re.fullmatch(r"app/_assets/schema/[^/]+\.graphql", n) for n in names)
    assert any(re.fullmatch(r"app/_assets/migrations/[^/]+\.sql", n) for n in names)
    assert f"app/_assets/{GRAPHIQL_EXAMPLE}" in names

    # Only the packages and their metadata: no tests, venv, data directory or caches.
    tops = {name.split("/", 1)[0] for name in names}
    extra = tops - set(PACKAGES)
    assert len(extra) == 1 and re.fullmatch(r"sepulki-[^/-]+\.dist-info", extra.pop()), tops
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_installed_sepulki_command_lists_every_role(installed: Installed) -> None:
    result = installed.run(installed.venv / "bin" / "sepulki", "--help")
    assert result.stdout.startswith("usage: sepulki"), result.stdout
    for role in ROLES:
        assert re.search(rf"^\s+{role}\s+\S", result.stdout, re.MULTILINE), f"{role} has no help line"


async def test_the_installed_sepulki_migrates_a_fresh_database(
    installed: Installed, postgres_url: str
) -> None:
    name = f"sepulki_packaging_{os.getpid()}"
    url = f"{postgres_url.rpartition('/')[0]}/{name}"
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    await admin_execute(postgres_url, drop, f'CREATE DATABASE "{name}"')
    try:
        env = {"SEPULKI_DATABASE_URL": url, "SEPULKI_DATA_DIR": str(installed.workdir / "data")}
        sepulki = installed.venv / "bin" / "sepulki"
        result = await asyncio.to_thread(installed.run, sepulki, "migrate", env=env)
        assert "migrations applied" in result.stdout

        conn = await asyncpg.connect(url)
        try:
            tables = {
                row["tablename"]
                for row in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            }
            applied = await conn.fetchval("SELECT count(*) FROM _pogo_migration")
        finally:
            await conn.close()
        expected = {"robots", "telemetry", "event_log", "smiths", "sessions", "api_keys", "robot_commands"}
        assert expected <= tables, f"missing tables: {sorted(expected - tables)}"
        assert applied == len(_checkout_files("migrations", "*.sql"))

        # Idempotent: a second run applies nothing and succeeds.
        await asyncio.to_thread(installed.run, sepulki, "migrate", env=env)
    finally:
        await admin_execute(postgres_url, drop)
