"""The ``slow`` marker: registered (``--strict-markers`` is on) and never deselected by the configuration."""

from __future__ import annotations

import pytest


def test_slow_is_a_registered_marker(pytestconfig: pytest.Config):
    assert any(line.split(":")[0].strip() == "slow" for line in pytestconfig.getini("markers"))


def test_plain_pytest_runs_the_slow_tests_too(pytestconfig: pytest.Config):
    """CI runs plain ``pytest``: the configuration must not select markers, so slow tests stay in CI."""
    addopts = pytestconfig.getini("addopts")
    assert "--strict-markers" in addopts
    assert "-m" not in addopts
    assert not any("not slow" in option for option in addopts)
