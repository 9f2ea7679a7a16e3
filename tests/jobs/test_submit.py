"""submit(): ledger row before each send, chunk contents, refusal paths; and flat streaming memory."""

from __future__ import annotations

import json
import time
import tracemalloc

import kombu.exceptions
import msgpack
import pytest
from sqlalchemy import func, select

from embedfleet.chunks.messages import ChunkTexts
from embedfleet.corpus.chunking import chunk_records
from embedfleet.corpus.readers import Corpus
from embedfleet.corpus.records import FieldSpec, Record
from embedfleet.corpus.validation import InvalidInput, UnknownField, scan_corpus, valid_records
from embedfleet.errors import JobEnded
from embedfleet.jobs.stats import job_stats
from embedfleet.jobs.submit import EmptyCorpus, JobRequest, Submission, submit
from embedfleet.store.engine import get_engine
from embedfleet.store.ledger import LedgerError, cancel_job
from embedfleet.store.schema import chunks, collections, jobs


def write_jsonl(tmp_path, rows, name="corpus.jsonl") -> Corpus:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return Corpus(str(path))


@pytest.fixture
def engine(tmp_path):
    return get_engine(f"sqlite:///{tmp_path}/t.db")


def chunk_row(engine, job_id, seq):
    with engine.connect() as conn:
        return conn.execute(select(chunks).where(chunks.c.job_id == job_id, chunks.c.seq == seq)).first()


def job_rows(engine):
    with engine.connect() as conn:
        return conn.execute(select(jobs)).all()


class Recorder:
    """A plain sender: keeps each ChunkTexts and, at send time, the chunk's ledger row."""

    def __init__(self, engine=None):
        self.engine = engine
        self.sent: list[ChunkTexts] = []
        self.rows_at_send = []

    def __call__(self, message: ChunkTexts) -> None:
        if self.engine is not None:
            self.rows_at_send.append(chunk_row(self.engine, message.job_id, message.seq))
        self.sent.append(message)


def seven_records(tmp_path) -> Corpus:
    return write_jsonl(tmp_path, [{"id": f"r{i}", "text": f"text {i}"} for i in range(7)])


def test_sender_called_once_per_chunk_in_seq_order(tmp_path, engine):
    """With chunk_size=3, seven records go out as three messages, seq 0, 1, 2, sizes 3, 3, 1."""
    send = Recorder()
    result = submit(engine, JobRequest(corpus=seven_records(tmp_path), collection="c1", model="m", chunk_size=3), send)
    assert [m.seq for m in send.sent] == [0, 1, 2]
    assert [len(m.ids) for m in send.sent] == [3, 3, 1]
    assert isinstance(result, Submission)
    assert result.chunks == 3
    assert result.records_read == 7
    assert result.records_sent == 7
    assert result.skipped_invalid == 0
    assert {m.job_id for m in send.sent} == {result.job_id}
    assert {m.version_key for m in send.sent} == {"c1"}


def test_ledger_row_exists_when_sender_is_called(tmp_path, engine):
    """At the moment each chunk is sent its row is already in the chunks table, queued, holding that message."""
    send = Recorder(engine)
    submit(engine, JobRequest(corpus=seven_records(tmp_path), collection="c1", model="m", chunk_size=3), send)
    assert len(send.rows_at_send) == 3
    for message, row in zip(send.sent, send.rows_at_send):
        assert row is not None, f"chunk {message.seq} was sent before its ledger row was written"
        assert row.state == "queued"
        assert row.records == len(message.ids)
        assert msgpack.unpackb(row.payload) == message.to_wire()


def test_job_is_submitting_while_sending_and_running_after(tmp_path, engine):
    """The job row exists (state 'submitting') during sends and is 'running' with chunks_total once all are in."""
    states = []

    def send(message: ChunkTexts) -> None:
        with engine.connect() as conn:
            states.append(conn.execute(select(jobs.c.state).where(jobs.c.id == message.job_id)).scalar_one())

    result = submit(engine, JobRequest(corpus=seven_records(tmp_path), collection="c1", model="m", chunk_size=3), send)
    assert states == ["submitting"] * 3
    [job] = job_rows(engine)
    assert job.id == result.job_id
    assert job.state == "running"
    assert job.chunks_total == 3
    assert job.records_read == 7
    assert job.collection == "c1" and job.model == "m"


def test_chunks_carry_ids_texts_positions_in_corpus_order(tmp_path, engine):
    """Across the chunks, ids and texts are in corpus order and positions are consecutive from 0."""
    send = Recorder()
    submit(engine, JobRequest(corpus=seven_records(tmp_path), collection="c1", model="m", chunk_size=3), send)
    assert [i for m in send.sent for i in m.ids] == [f"r{i}" for i in range(7)]
    assert [t for m in send.sent for t in m.texts] == [f"text {i}" for i in range(7)]
    assert [p for m in send.sent for p in m.positions] == list(range(7))
    for m in send.sent:
        assert len(m.ids) == len(m.positions) == len(m.texts) == len(m.hashes)


def test_invalid_record_without_skip_raises_and_sends_nothing(tmp_path, engine):
    """An invalid record with skip_invalid=False raises InvalidInput; no message and no job row."""
    rows = [{"id": "a", "text": "x"}, {"id": "b", "text": ""}, {"id": "c", "text": "z"}]
    send = Recorder()
    with pytest.raises(InvalidInput, match="line 2"):
        submit(engine, JobRequest(corpus=write_jsonl(tmp_path, rows), collection="c1", model="m", chunk_size=3), send)
    assert send.sent == []
    assert job_rows(engine) == []


def test_skip_invalid_sends_all_valid_records_and_counts_the_bad(tmp_path, engine):
    """With skip_invalid=True every valid record is sent, in order, and skipped_invalid counts the bad ones."""
    rows = [
        {"id": "a", "text": "x"},
        {"id": "b", "text": ""},
        "not json",
        {"id": "c", "text": "z"},
        {"id": "a", "text": "dup"},
        {"id": "d", "text": "w"},
    ]
    send = Recorder(engine)
    request = JobRequest(corpus=write_jsonl(tmp_path, rows), collection="c1", model="m", chunk_size=3, skip_invalid=True)
    result = submit(engine, request, send)
    assert result.records_read == 6
    assert result.skipped_invalid == 3
    assert result.records_sent == 3
    assert [i for m in send.sent for i in m.ids] == ["a", "c", "d"]
    assert [t for m in send.sent for t in m.texts] == ["x", "z", "w"]
    assert [p for m in send.sent for p in m.positions] == [0, 3, 5]
    assert all(row is not None for row in send.rows_at_send)
    assert "duplicate id (first at line 1)" in result.invalid_report
    [job] = job_rows(engine)
    assert job.skipped_invalid == 3


def test_bad_collection_name_raises_ledger_error_before_sending(tmp_path, engine):
    """A collection name like 'x; drop table' is refused with LedgerError; nothing sent, no job written."""
    send = Recorder()
    with pytest.raises(LedgerError, match="invalid collection name"):
        submit(engine, JobRequest(corpus=seven_records(tmp_path), collection="x; drop table", model="m"), send)
    assert send.sent == []
    assert job_rows(engine) == []


def test_wait_for_room_is_called_before_each_chunk_row(tmp_path, engine):
    """The back-pressure hook runs once per chunk, with the job id, before that chunk's row is written."""
    seen = []

    def wait_for_room(job_id: str) -> None:
        with engine.connect() as conn:
            count = conn.execute(select(chunks.c.seq).where(chunks.c.job_id == job_id)).all()
        seen.append((job_id, len(count)))

    send = Recorder()
    result = submit(
        engine, JobRequest(corpus=seven_records(tmp_path), collection="c1", model="m", chunk_size=3), send, wait_for_room
    )
    assert seen == [(result.job_id, 0), (result.job_id, 1), (result.job_id, 2)]


def _write_big_corpus(path, n: int) -> None:
    with path.open("w") as out:
        for i in range(n):
            out.write(f'{{"id": "rec-{i:07d}", "text": "record number {i} with a little text"}}\n')


def _streaming_peak(path) -> tuple[int, int, int]:
    """Peak traced bytes of scan + chunking over valid_records, with records and chunks seen."""
    corpus = Corpus(str(path))
    spec = FieldSpec()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        scan = scan_corpus(corpus, spec)
        records = (r for r in valid_records(corpus, spec, scan) if isinstance(r, Record))
        seen = n_chunks = 0
        for chunk in chunk_records(records, max_records=256, token_budget=16384, window=256):
            seen += len(chunk)
            n_chunks += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scan.invalid_count == 0
    return peak, seen, n_chunks


@pytest.mark.slow
def test_streaming_memory_stays_flat_with_corpus_size(tmp_path):
    """Validation plus chunking of 100k records peaks under 3 MB above 10k records: memory does not grow per record."""
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    _write_big_corpus(small, 10_000)
    _write_big_corpus(big, 100_000)
    started = time.monotonic()
    small_peak, small_seen, _ = _streaming_peak(small)
    big_peak, big_seen, big_chunks = _streaming_peak(big)
    assert (small_seen, big_seen) == (10_000, 100_000)
    assert big_chunks == 100_000 // 256 + 1
    assert big_peak < small_peak + 3 * 1024 * 1024, f"10k peak {small_peak} B, 100k peak {big_peak} B"
    assert time.monotonic() - started < 60


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


@pytest.mark.parametrize(("rows", "refusal", "words"), [
    ([], EmptyCorpus, "no valid records"),
    (['{"id": "a"}'], UnknownField, "the text field 'text' is in none of the records"),
    (['{"text": "no id"}'], UnknownField, "the id field 'id' is in none of the records"),
    (['{"id": "a", "text": ""}'], EmptyCorpus, "no valid records"),
])
def test_an_empty_corpus_writes_nothing(tmp_path, rows, refusal, words) -> None:
    """No valid record (none at all, none with the job's fields, or none valid with skip_invalid): refused
    before any row is written."""
    engine = get_engine(f"sqlite:///{tmp_path}/t.db")
    with pytest.raises(refusal, match=words):
        submit(engine, _request(write_jsonl(tmp_path, rows), skip_invalid=True), lambda m: None)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(collections)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
