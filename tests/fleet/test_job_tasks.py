"""The producers' Celery tasks, called in-process (no broker): beat's reconciler and the
nightly reindex, on a SQLite ledger."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from embedfleet.fleet import job_tasks as ptasks
from embedfleet.settings import Settings, set_settings
from embedfleet.store.collections import claim_reindex, open_collection
from embedfleet.store.engine import get_engine
from embedfleet.store.schema import chunks
from tests.store.helpers import one_chunk_job


@pytest.fixture
def ledger(sqlite_url: str) -> str:
    """Settings pointing the tasks at a fresh SQLite ledger."""
    set_settings(Settings(database_url=sqlite_url))
    return sqlite_url


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The chunks the tasks would have put on the broker."""
    out: dict[str, list] = {"chunks": []}
    monkeypatch.setattr(ptasks, "celery_sender", lambda app: out["chunks"].append)
    return out


def test_reconcile_resends_the_open_chunks_of_a_stalled_job(ledger: str, sent: dict[str, list]) -> None:
    """A running job with no activity for the lease has its open chunks sent again; a live one is left alone."""
    engine = get_engine(ledger)
    job_id, _ = one_chunk_job(engine, ["a", "b"])
    assert ptasks.reconcile() == {}
    with engine.begin() as conn:
        conn.execute(update(chunks).where(chunks.c.job_id == job_id).values(sent_at=time.time() - 3600))
    assert ptasks.reconcile() == {job_id: 1}
    assert [chunk.ids for chunk in sent["chunks"]] == [["a", "b"]]


def test_reindex_already_claimed_within_the_gap_is_skipped(ledger: str, sent: dict[str, list]) -> None:
    """A second beat (or a restart) within reindex_min_gap_seconds submits nothing."""
    engine = get_engine(ledger)
    open_collection(engine, "docs", "m", {}, {})
    assert claim_reindex(engine, "docs", 3600)
    assert ptasks.reindex(collection="docs") is None
    assert sent["chunks"] == []
