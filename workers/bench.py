"""`embedfleet bench`: measured side by side in one run, as ratios against a baseline.

Sections: direct (plain SentenceTransformer fp32 encode, the user's alternative), run (the
embedded default end to end), fleet (two worker processes on a real broker), memory
(producer peak RSS for two corpus sizes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.settings import Settings
from producers.readers import Corpus
from producers.records import FieldSpec, Record
from producers.validation import valid_records

BIN = Path(sys.executable).parent


@dataclass
class BenchReport:
    corpus: str
    records: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, section: str, what: str, seconds: float | None, records: int | None, **extra: Any) -> dict[str, Any]:
        row: dict[str, Any] = {"section": section, "what": what}
        if seconds is not None:
            row["seconds"] = round(seconds, 3)
        if seconds and records:
            row["records_per_s"] = round(records / seconds, 1)
        row.update(extra)
        self.rows.append(row)
        return row


def load_texts(corpus: str, spec: FieldSpec, limit: int | None) -> list[Record]:
    records = [r for r in valid_records(Corpus(corpus), spec) if isinstance(r, Record)]
    return records[:limit] if limit else records


def write_corpus(records: list[Record], path: Path, copies: int = 1, total: int | None = None) -> None:
    """A JSONL corpus of the given records' texts (cycled, with fresh ids, up to total)."""
    total = total or len(records) * copies
    with path.open("w", encoding="utf-8") as out:
        for i in range(total):
            record = records[i % len(records)]
            out.write(json.dumps({"id": f"{record.record_id}-{i}", "text": record.text}) + "\n")


def bench_direct(report: BenchReport, texts: list[str]) -> float:
    """The baseline: one process calling SentenceTransformer.encode(batch_size=32) in fp32."""
    import torch
    from sentence_transformers import SentenceTransformer

    from workers.encoder import model_path

    torch.set_num_threads(os.cpu_count() or 1)
    model = SentenceTransformer(model_path(Settings().model), device="cpu")
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    report.add("direct", "SentenceTransformer.encode fp32 batch 32", seconds, len(texts), ratio=1.0)
    return seconds


def _job_seconds(db_url: str) -> tuple[float, dict[str, Any]]:
    from sqlalchemy import select

    from storage.engine import get_engine
    from storage.ledger import job_stats
    from storage.schema import jobs

    engine = get_engine(db_url)
    with engine.connect() as conn:
        job_id = conn.execute(select(jobs.c.id).order_by(jobs.c.created_at.desc())).scalars().first()
    stats = job_stats(engine, job_id)
    return stats.elapsed, stats.as_dict()


def bench_run(report: BenchReport, corpus: Path, records: int, baseline: float | None, work: Path) -> None:
    db = f"sqlite:///{work / 'run.db'}"
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / "embedfleet"), "run", str(corpus), "--collection", "bench", "--db", db],
        check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    wall = time.perf_counter() - started
    job_seconds, stats = _job_seconds(db)
    assert stats["stored"] == records, stats
    report.add("run", "embedfleet run, job (submit to last commit)", job_seconds, records,
               ratio=round(baseline / job_seconds, 2) if baseline else None)
    report.add("run", "embedfleet run, whole command (with imports and model load)", wall, records,
               ratio=round(baseline / wall, 2) if baseline else None)


def bench_fleet(report: BenchReport, corpus: Path, records: int, baseline: float | None, work: Path,
                broker_url: str, processes: int = 2) -> None:
    """`processes` single-process workers on the broker, torch threads split between them."""
    from celery import Celery

    from config.celeryconfig import celery_config

    db = f"sqlite:///{work / 'fleet.db'}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDFLEET_BROKER_URL": broker_url, "EMBEDFLEET_DATABASE_URL": db,
           "EMBEDFLEET_TORCH_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
    control = Celery("bench-control")
    control.conf.update(celery_config(Settings(broker_url=broker_url)))
    control.control.purge()
    workers = [
        subprocess.Popen([str(BIN / "embedfleet"), "worker", "-c", "1", "-n", f"bench{i}@%h", "--without-mingle",
                          "--without-gossip", "-l", "WARNING"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        for i in range(processes)
    ]
    try:
        deadline = time.monotonic() + 180
        while len(control.control.ping(timeout=1.0) or []) < processes:
            if time.monotonic() > deadline:
                raise RuntimeError("bench workers did not start")
        subprocess.run([str(BIN / "embedfleet"), "submit", str(corpus), "--collection", "bench", "--wait"],
                       check=True, capture_output=True, text=True, env=env)
        job_seconds, stats = _job_seconds(db)
        assert stats["stored"] == records, stats
        report.add("fleet", f"{processes} worker processes on Redis, job", job_seconds, records,
                   ratio=round(baseline / job_seconds, 2) if baseline else None)
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=30)
        control.control.purge()
        control.close()


_MEMORY_PROBE = """
import resource, sys
from producers.cli import main
try:
    main()
finally:
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def bench_memory(report: BenchReport, records: list[Record], work: Path, broker_url: str) -> None:
    """Producer peak RSS submitting 10,000 and 100,000 records (nothing consumes them)."""
    from celery import Celery

    from config.celeryconfig import celery_config

    control = Celery("bench-control")
    control.conf.update(celery_config(Settings(broker_url=broker_url)))
    peaks = {}
    try:
        for size in (10_000, 100_000):
            path = work / f"memory-{size}.jsonl"
            write_corpus(records, path, total=size)
            env = {**os.environ, "EMBEDFLEET_BROKER_URL": broker_url,
                   "EMBEDFLEET_DATABASE_URL": f"sqlite:///{work / f'memory-{size}.db'}"}
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "submit", str(path), "--collection", "mem"],
                                  check=True, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            peaks[size] = int(done.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0]) / 1024
            report.add("memory", f"producer submit of {size} records", seconds, size, peak_rss_mb=round(peaks[size], 1))
            control.control.purge()
    finally:
        control.close()
    report.add("memory", "peak RSS 100k / 10k", None, None, ratio=round(peaks[100_000] / peaks[10_000], 3))


def print_table(report: BenchReport) -> None:
    print(f"corpus {report.corpus}: {report.records} records")
    print(f"{'section':8} {'what':62} {'seconds':>9} {'rec/s':>9} {'ratio':>7}  extra")
    for row in report.rows:
        extra = {k: v for k, v in row.items() if k not in ("section", "what", "seconds", "records_per_s", "ratio")}
        ratio = row.get("ratio")
        print(f"{row['section']:8} {row['what']:62} {row.get('seconds', ''):>9} {row.get('records_per_s', ''):>9} "
              f"{'' if ratio is None else str(ratio) + 'x':>7}  {extra or ''}")


def run_bench(corpus: str, spec: FieldSpec, sections: list[str], limit: int | None, broker_url: str,
              as_json: bool) -> BenchReport:
    records = load_texts(corpus, spec, limit)
    report = BenchReport(corpus=corpus, records=len(records))
    with tempfile.TemporaryDirectory(prefix="embedfleet-bench-") as tmp:
        work = Path(tmp)
        bench_corpus = work / "bench.jsonl"
        write_corpus(records, bench_corpus)
        baseline = bench_direct(report, [r.text for r in records]) if "direct" in sections else None
        if "run" in sections:
            bench_run(report, bench_corpus, len(records), baseline, work)
        if "fleet" in sections:
            bench_fleet(report, bench_corpus, len(records), baseline, work, broker_url)
        if "memory" in sections:
            bench_memory(report, records, work, broker_url)
    if as_json:
        print(json.dumps({"corpus": report.corpus, "records": report.records, "rows": report.rows}, indent=2))
    else:
        print_table(report)
    return report
