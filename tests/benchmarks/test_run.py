"""The in-process bench: its table, its section check, and the baseline and batching rows, with a
stand-in model (the real runs are what `embedfleet bench` itself measures)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from benchmarks.common import BenchReport
from benchmarks.run import bench_batching, bench_direct, print_table, run_bench
from embedfleet.corpus.records import FieldSpec
from tests.conftest import SAMPLE


class StandIn:
    """encode() costs a fixed time per call plus per text, like a model with call overhead."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def encode(self, texts, batch_size: int = 32, normalize_embeddings: bool = False):
        texts = [texts] if isinstance(texts, str) else texts
        calls = max(1, -(-len(texts) // batch_size))
        self.calls.append(len(texts))
        time.sleep(0.0005 * calls + 0.00001 * len(texts))
        return np.ones((len(texts), 4), dtype=np.float32) / 2


def test_the_table_shows_every_row_with_ratio_and_extras(capsys: pytest.CaptureFixture[str]) -> None:
    """One header and one line per row: section, what, seconds, rate, ratio with an x, extras."""
    report = BenchReport(corpus="c.jsonl", records=3)
    report.add("direct", "baseline", 2.0, 100, ratio=1.0)
    report.add("memory", "peak", ratio=None, peak_rss_mb=12.5)
    capsys.readouterr()
    print_table(report)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "corpus c.jsonl: 3 records"
    assert lines[1].split() == ["section", "what", "seconds", "rec/s", "ratio", "extra"]
    assert lines[2].split() == ["direct", "baseline", "2.0", "50.0", "1.0x"]
    assert lines[3].split()[:2] == ["memory", "peak"] and lines[3].endswith("{'peak_rss_mb': 12.5}")
    assert "x" not in lines[3].split("peak", 1)[1].split("{")[0]


def test_unknown_sections_are_refused_before_any_work() -> None:
    """A misspelt section is a ValueError listing the valid ones, before records or a model load."""
    with pytest.raises(ValueError, match=r"unknown bench sections \['fleeet'\]: choose from batching, direct"):
        run_bench(str(SAMPLE), FieldSpec(), ["run", "fleeet"], None, "redis://127.0.0.1:1/0", "", False)


def test_the_baseline_row_has_ratio_one_and_returns_the_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    """bench_direct warms up, times one encode of every text at batch size 32, and reports it as the
    1.0 baseline every other ratio divides."""
    model = StandIn()
    report = BenchReport(corpus="c", records=100)
    seconds, vectors = bench_direct(report, model, [f"t{i}" for i in range(100)])
    assert model.calls == [64, 100] and vectors.shape == (100, 4)
    [row] = report.rows
    assert row["ratio"] == 1.0 and row["seconds"] == round(seconds, 3) > 0


def test_batching_rows_compare_against_one_at_a_time(capsys: pytest.CaptureFixture[str]) -> None:
    """One row per text, then one per batch size (1, 8, 16, 32, 64), each with its speedup over
    one at a time: larger batches are faster when calls have overhead."""
    report = BenchReport(corpus="c", records=64)
    bench_batching(report, StandIn(), [f"t{i}" for i in range(64)])
    whats = [row["what"] for row in report.rows]
    assert whats[0].startswith("one at a time") and len(whats) == 6
    assert [w.split("batch_size=")[1].rstrip(")") for w in whats[1:]] == ["1", "8", "16", "32", "64"]
    speedups = [row["speedup"] for row in report.rows]
    assert speedups[0] == 1.0 and all(s > 0 for s in speedups) and speedups[-1] > 2 * speedups[1]


def test_run_rows_time_the_start_and_an_unchanged_rerun(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The real `embedfleet run` (a no-op encoder: no model to wait for): the run section adds
    the command's start to its first chunk encoded, and a rerun that encodes nothing; the
    noop section stores every record."""
    from benchmarks.common import load_records, write_corpus
    from benchmarks.run import NOOP, bench_noop, bench_run

    monkeypatch.setenv("EMBEDFLEET_ENCODER", NOOP)
    records = load_records(str(SAMPLE), FieldSpec("id", ("title",)), 120)
    corpus = tmp_path / "corpus.jsonl"
    ids = write_corpus(records, corpus)
    report = BenchReport(corpus=str(corpus), records=len(ids))
    bench_run(report, corpus, ids, None, None, tmp_path)
    bench_noop(report, records, tmp_path, total=3000)
    rows = {row["what"]: row for row in report.rows}
    job = rows["embedfleet run, job (validation to last commit)"]
    whole = rows["embedfleet run, whole command (imports, model load)"]
    first = rows["command start to first chunk encoded"]["seconds"]
    assert 0 < job["seconds"] < whole["seconds"]
    assert 0 < first < whole["seconds"]
    rerun = rows["unchanged corpus rerun, whole command"]
    assert rerun["skipped"] == len(ids) and rerun["seconds"] > 0
    noop = rows["3,000 one-line records, no-op encoder, embedfleet run, job"]
    assert noop["records_per_s"] > 0 and noop["whole_command_s"] > noop["seconds"]
