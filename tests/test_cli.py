"""An operator asks the `sepulki` command what it is and what each command and option does."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import version

from app.cli import build_parser
from tests.support import ROOT


def sepulki(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_sepulki_version_prints_the_installed_package_version() -> None:
    done = sepulki("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"sepulki {version('sepulki')}"


def test_every_command_and_option_has_a_help_text() -> None:
    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    assert {"dev", "serve", "migrate", "seed", "worker", "ingest", "simulate", "schema"} <= set(helps)
    for name, sub in commands.choices.items():
        assert helps.get(name), f"sepulki {name} has no help"
        assert sub.description, f"sepulki {name} --help describes nothing"
        for action in sub._actions:
            assert action.help, f"sepulki {name} {'/'.join(action.option_strings)} has no help"
    for action in parser._actions:
        assert action.help, f"sepulki {'/'.join(action.option_strings) or action.dest} has no help"
    done = sepulki("simulate", "--help")
    assert done.returncode == 0 and "telemetry messages per robot per second" in done.stdout
