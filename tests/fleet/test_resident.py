"""The process's resident encoders: one load per model name for the process's life, the
configured model loaded after fork (not by a collector-only worker), and a model that cannot
load stopping the worker instead of looping."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import ClassVar

import pytest

from embedfleet.encode.encoder import EncoderConfigError
from embedfleet.fleet import heartbeat, resident
from embedfleet.settings import Settings, set_settings
from tests.conftest import REPO
from tests.encode.fake_encoders import HashEncoder

COUNTING = "tests.fleet.test_resident:CountingEncoder"


class CountingEncoder(HashEncoder):
    """The HashEncoder, counting how many times a model is loaded."""

    loads: ClassVar[list[str]] = []

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        CountingEncoder.loads.append(settings.model)


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No encoder resident yet, and the counting encoder configured."""
    monkeypatch.setattr(resident, "_encoders", {})
    monkeypatch.setattr(CountingEncoder, "loads", [])
    set_settings(Settings(encoder=COUNTING, model="configured"))


def _app_consuming(*queue_names: str) -> SimpleNamespace:
    return SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from=dict.fromkeys(queue_names))))


@pytest.mark.usefixtures("fresh")
def test_one_load_per_model_name() -> None:
    """The configured model loads once however often it is asked for; another model (a migration's)
    loads once too, and both stay resident."""
    first = resident.get_encoder()
    assert resident.get_encoder() is first and resident.get_encoder("configured") is first
    other = resident.get_encoder("migration-model")
    assert other is not first and resident.get_encoder("migration-model") is other
    assert CountingEncoder.loads == ["configured", "migration-model"]
    assert (first.model_name, other.model_name) == ("configured", "migration-model")


@pytest.mark.usefixtures("fresh")
def test_a_model_that_cannot_load_is_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed load raises and leaves nothing resident, so a later call tries again."""
    set_settings(Settings(model="no-such-model"))
    with pytest.raises(EncoderConfigError, match="neither a directory nor a model name"):
        resident.get_encoder()
    assert resident._encoders == {}


@pytest.mark.usefixtures("fresh")
def test_an_encode_worker_loads_its_model_after_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool process of a fleet worker consuming the embed queue loads the configured model at start."""
    monkeypatch.setattr(resident, "app", _app_consuming("embed", "collect"))
    monkeypatch.setattr(heartbeat, "INCARNATION", "node-1")
    resident._load_after_fork()
    assert CountingEncoder.loads == ["configured"]


@pytest.mark.usefixtures("fresh")
def test_a_collector_only_worker_loads_no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started with -Q collect never needs the model: its processes load none."""
    monkeypatch.setattr(resident, "app", _app_consuming("collect"))
    resident._load_after_fork()
    assert CountingEncoder.loads == [] and resident._encoders == {}


@pytest.mark.usefixtures("fresh")
def test_outside_a_fleet_worker_nothing_loads_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded run's in-process worker (no heartbeat incarnation) loads nothing when it starts: the
    run loads the model when a chunk needs it (a rerun with nothing to encode never imports torch),
    and a model that cannot load fails there, in the caller's thread."""
    monkeypatch.setattr(resident, "app", _app_consuming("embed"))
    monkeypatch.setattr(heartbeat, "INCARNATION", None)
    set_settings(Settings(model="no-such-model"))
    resident._load_after_fork()
    assert resident._encoders == {} and not resident.model_load_failed()
    with pytest.raises(EncoderConfigError):
        resident.get_encoder()


def test_a_fleet_pool_process_that_cannot_load_stops_its_worker(tmp_path) -> None:
    """In a fleet worker's pool process, a model that cannot load sends SIGQUIT to the worker (its
    parent), exits 1, and flags the failure in memory shared with the parent (so `embedfleet
    worker` exits 1). Run in a throwaway parent process that stands in for the worker."""
    script = textwrap.dedent("""
        import os, signal, sys
        from types import SimpleNamespace
        from embedfleet.settings import Settings, set_settings
        from embedfleet.fleet import heartbeat, resident

        quit_signals = []
        signal.signal(signal.SIGQUIT, lambda *_: quit_signals.append(1))
        resident.app = SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(consume_from={"embed": None})))
        set_settings(Settings(model="no-such-model"))
        assert not resident.model_load_failed()
        pid = os.fork()
        if pid == 0:
            heartbeat.INCARNATION = "pool-process-of-a-fleet-worker"
            resident._load_after_fork()
            os._exit(0)  # not reached: the failure exits 1
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), len(quit_signals), resident.model_load_failed())
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "True"]
    assert "cannot load model 'no-such-model', stopping the worker" in result.stderr


def test_the_real_model_is_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the default settings the resident encoder is the packaged all-MiniLM-L6-v2 (384 dims),
    loaded once and returned again without a second load."""
    monkeypatch.setattr(resident, "_encoders", {})
    set_settings(Settings(device="cpu"))
    encoder = resident.get_encoder()
    assert encoder.dimension == 384
    assert resident.get_encoder() is encoder and list(resident._encoders) == [Settings().model]
