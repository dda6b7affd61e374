"""The `integration` marker means what it says: only a marked test may start a process."""

import subprocess
import sys

import pytest
from conftest import UnmarkedProcessError


def test_a_test_not_marked_integration_cannot_start_a_process() -> None:
    with pytest.raises(UnmarkedProcessError, match="integration"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.integration
def test_a_test_marked_integration_may_start_a_process() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_the_marker_is_registered(pytestconfig: pytest.Config) -> None:
    assert any(line.startswith("integration:") for line in pytestconfig.getini("markers"))
