"""The README's set-up is what CI runs: the two must never drift apart."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_commands() -> list[str]:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "set ", "cd "))]


def test_ci_runs_exactly_the_readme_test_command_last() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = _ci_commands()
    assert commands[-1] in readme.splitlines(), commands
    assert [c for c in commands if "pytest" in c] == [commands[-1]], "the README's command is the one that runs tests"


def test_ci_runs_ruff_and_mypy_before_the_tests() -> None:
    checks = _ci_commands()[:-1]
    assert "python3 -m ruff check ." in checks, checks
    assert "python3 -m mypy" in checks, checks
    install = "python3 -m pip install -q -e '.[test]'"
    assert install in checks and checks.index(install) < checks.index("python3 -m ruff check ."), checks


def test_the_test_extra_brings_the_checkers_ci_runs() -> None:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {req.split(">")[0].split("=")[0].split("<")[0].strip() for req in extra}
    assert {"ruff", "mypy"} <= names, extra


def test_readme_setup_is_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Set-up: two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 2, commands
