"""Fleet fixtures: the fault encoders' settings, and recovery times checked per test (and
reported once at the end of the run: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fleet.checks import FAULTS


@pytest.fixture
def kill_env() -> dict[str, str]:
    """The default timeouts (a chunk held by a killed worker comes back through the heartbeat
    sweep in seconds, not after the hour-long visibility timeout), and a slow encoder, so the
    kill lands while chunks are in flight."""
    return {"EMBEDFLEET_TORCH_THREADS": "1", "EMBEDFLEET_ENCODER": f"{FAULTS}:SlowEncoder",
            "EMBEDFLEET_TEST_DELAY": "0.4"}


@pytest.fixture
def recovery(request: pytest.FixtureRequest) -> Callable[[str, float, float], None]:
    """Records how long a fault took to recover from, and fails the test past its bound: each
    test checks its own time, so running one test alone checks it too. The time travels in the
    test's report (user_properties), so a run on several processes (pytest-xdist) lists it too."""
    # A test run on both brokers records one time per broker.
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    broker = params.get("broker_url") or params.get("fleet")  # the multi-host fleet's broker

    def record(name: str, seconds: float, bound: float) -> None:
        request.node.user_properties.append(("recovery", (f"{name} [{broker}]" if broker else name, seconds)))
        assert seconds < bound, f"{name}: recovered in {seconds:.1f}s, bound {bound}s"

    return record
