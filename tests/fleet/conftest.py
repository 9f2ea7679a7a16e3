"""Fleet fixtures: the fault encoders' settings, and recovery times checked per test and
reported once at the end of the run."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fleet.checks import FAULTS

RECOVERY_KEY = pytest.StashKey[dict[str, float]]()


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
    test checks its own time, so running one test alone checks it too."""
    times = request.config.stash.setdefault(RECOVERY_KEY, {})
    # A test run on both brokers records one time per broker.
    broker = getattr(getattr(request.node, "callspec", None), "params", {}).get("broker_url")

    def record(name: str, seconds: float, bound: float) -> None:
        times[f"{name} [{broker}]" if broker else name] = seconds
        assert seconds < bound, f"{name}: recovered in {seconds:.1f}s, bound {bound}s"

    return record


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    """The recovery times of the tests that ran, for the closing note."""
    times = config.stash.get(RECOVERY_KEY, {})
    if times:
        terminalreporter.write_sep("-", "recovery seconds")
        for name, seconds in sorted(times.items()):
            terminalreporter.write_line(f"{name}: {seconds:.1f}")
