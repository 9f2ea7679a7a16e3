"""submit() at its edges: the job id is announced before the first send, a broker lost
mid-submission abandons the job, a cancel mid-submission stops it, an empty corpus writes nothing."""

from __future__ import annotations

import kombu.exceptions
import pytest
from sqlalchemy import func, select

from embedfleet.config.messages import ChunkTexts
from embedfleet.producers.records import FieldSpec
from embedfleet.producers.submit import EmptyCorpus, JobRequest, submit
from embedfleet.storage.engine import get_engine
from embedfleet.storage.errors import JobEnded
from embedfleet.storage.jobs import job_stats
from embedfleet.storage.ledger import cancel_job
from embedfleet.storage.schema import collections, jobs
from tests.producers.test_submit import seven_records, write_jsonl


def _request(corpus, **kw) -> JobRequest:
    return JobRequest(corpus=corpus, collection="c", model="m", spec=FieldSpec(), chunk_size=2, **kw)


def test_the_job_id_is_announced_before_the_first_chunk_is_sent(tmp_path) -> None:
    """on_job hears the job id once, before any message leaves."""
    engine = get_engine(f"sqlite:///{tmp_path}/t.db")
    events: list[str] = []
    submission = submit(engine, _request(seven_records(tmp_path)), lambda m: events.append(f"send {m.seq}"),
                        on_job=lambda job_id: events.append(f"job {job_id}"))
    assert events[0] == f"job {submission.job_id}" and events[1:] == [f"send {i}" for i in range(4)]


def test_a_broker_lost_mid_submission_abandons_the_job(tmp_path) -> None:
    """The third send fails: JobEnded says abandoned and how to go on; the job is not left submitting."""
    engine = get_engine(f"sqlite:///{tmp_path}/t.db")

    def send(message: ChunkTexts) -> None:
        if message.seq == 2:
            raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    with pytest.raises(JobEnded, match=r"abandoned after 2 chunks.*Submit the corpus again") as raised:
        submit(engine, _request(seven_records(tmp_path)), send, broker="the broker at redis://x")
    assert "the broker at redis://x failed" in str(raised.value)
    with engine.connect() as conn:
        assert conn.execute(select(jobs.c.state)).scalars().all() == ["abandoned"]


def test_a_job_cancelled_mid_submission_stops_sending(tmp_path) -> None:
    """A cancel between two chunks: the producer sends no more and the job stays cancelled."""
    engine = get_engine(f"sqlite:///{tmp_path}/t.db")
    sent: list[int] = []

    def send(message: ChunkTexts) -> None:
        sent.append(message.seq)
        if message.seq == 1:
            cancel_job(engine, message.job_id)

    with pytest.raises(JobEnded, match="cancelled"):
        submit(engine, _request(seven_records(tmp_path)), send)
    with engine.connect() as conn:
        job_id = conn.execute(select(jobs.c.id)).scalar_one()
    assert sent == [0, 1] and job_stats(engine, job_id).state == "cancelled"


@pytest.mark.parametrize("rows", [[], ['{"id": "a"}'], ['{"text": "no id"}']])
def test_an_empty_corpus_writes_nothing(tmp_path, rows) -> None:
    """No valid record (none at all, or none valid with skip_invalid): refused before any row is written."""
    engine = get_engine(f"sqlite:///{tmp_path}/t.db")
    with pytest.raises(EmptyCorpus, match="no valid records"):
        submit(engine, _request(write_jsonl(tmp_path, rows), skip_invalid=True), lambda m: None)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(collections)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
