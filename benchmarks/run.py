"""`embedfleet bench`: everything measured side by side in one run, as ratios to a baseline.

In-process sections: batching (the seed's table: one at a time vs batch sizes), direct (a
plain fp32 SentenceTransformer.encode(batch_size=32), the user's alternative), bf16 (a
hand-written bf16 loop against the torch and OpenVINO backends, benchmarks/bf16.py),
run (the embedded default end to end, and the cosine of its vectors to the direct ones),
backends (`run` with EMBEDFLEET_BACKEND=torch against auto), stress
(30,000 one-line records through `run`), noop (60,000 through `run` with a no-op encoder),
memory (producer peak RSS). The run section also times the command's start to its first
chunk encoded, and an unchanged rerun. Fleet sections are in
benchmarks/fleet.py; what they share is in benchmarks/common.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BIN, SECTIONS, BenchReport, cli_env, latest_job, load_records, write_corpus
from embedfleet.corpus.records import FieldSpec, Record
from embedfleet.settings import Settings


def fp32_model():  # type: ignore[no-untyped-def]
    import torch
    from sentence_transformers import SentenceTransformer

    from embedfleet.encode.encoder import model_path, silence_progress_bars

    torch.set_num_threads(os.cpu_count() or 1)
    silence_progress_bars()  # no "Loading weights" bar in the bench's report
    return SentenceTransformer(model_path(Settings().model), device="cpu")


def bench_batching(report: BenchReport, model: Any, texts: list[str]) -> None:
    """The seed's table: one call per text against batches of 1, 8, 16, 32 and 64 (fp32)."""
    sample = texts[:256]
    model.encode(sample[:16])
    started = time.perf_counter()
    for text in sample:
        model.encode(text)
    one = (time.perf_counter() - started) / len(sample)
    report.add("batching", "one at a time (encode(text) per record)", one * len(sample), len(sample),
               ms_per_record=round(one * 1000, 2), speedup=1.0)
    for size in (1, 8, 16, 32, 64):
        started = time.perf_counter()
        model.encode(sample, batch_size=size)
        per = (time.perf_counter() - started) / len(sample)
        report.add("batching", f"encode(texts, batch_size={size})", per * len(sample), len(sample),
                   ms_per_record=round(per * 1000, 2), speedup=round(one / per, 2))


def bench_direct(report: BenchReport, model: Any, texts: list[str]) -> tuple[float, np.ndarray]:
    model.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    report.add("direct", "SentenceTransformer.encode fp32, batch_size=32 (baseline)", seconds, len(texts), ratio=1.0)
    return seconds, vectors



def embedded_run(corpus: Path, db: str, **env: str) -> tuple[float, dict[str, Any]]:
    """`embedfleet run` as a user runs it: (wall seconds of the command, the job's figures,
    with `first_encoded_after`: seconds from the command's start to its first chunk encoded)."""
    started_at, started = time.time(), time.perf_counter()
    subprocess.run([str(BIN / "embedfleet"), "run", str(corpus), "--collection", "bench", "--db", db],
                   check=True, capture_output=True, text=True, env=cli_env(**env))
    wall = time.perf_counter() - started
    stats = latest_job(db)
    first = first_chunk_encoded(db, stats["job_id"])
    return wall, {**stats, "first_encoded_after": None if first is None else round(first - started_at, 2)}


def first_chunk_encoded(db: str, job_id: str) -> float | None:
    """When the job's first chunk came out of the encoder (epoch seconds): the ledger's
    encode start plus encode time, earliest first; None when no chunk was encoded."""
    from sqlalchemy import func, select

    from embedfleet.store.engine import get_engine
    from embedfleet.store.schema import chunks

    with get_engine(db).connect() as conn:
        return conn.execute(select(func.min(chunks.c.started_at + chunks.c.encode_seconds))
                            .where(chunks.c.job_id == job_id)).scalar()


def bench_run(report: BenchReport, corpus: Path, ids: list[str], baseline: float | None, reference: np.ndarray | None,
              work: Path, section: str = "run", bf16_baseline: float | None = None) -> None:
    """The embedded default (EMBEDFLEET_BACKEND=auto: OpenVINO on an x86 CPU): ratio
    to the fp32 baseline, and vs_bf16_loop to the hand-written bf16 loop when that was measured."""
    db = f"sqlite:///{work / f'{section}.db'}"
    wall, stats = embedded_run(corpus, db)
    if stats["stored"] != len(ids):
        raise RuntimeError(f"run stored {stats['stored']} of {len(ids)} records: {stats}")
    for what, seconds in (("job (validation to last commit)", stats["seconds"]),
                          ("whole command (imports, model load)", wall)):
        report.add(section, f"embedfleet run, {what}", seconds, len(ids),
                   ratio=round(baseline / seconds, 2) if baseline else None,
                   vs_bf16_loop=round(bf16_baseline / seconds, 2) if bf16_baseline else None)
    report.add(section, "command start to first chunk encoded", stats["first_encoded_after"], None)
    # The same corpus again: nothing to encode, so no model is imported or loaded.
    rerun, again = embedded_run(corpus, db)
    if again["stored"]:
        raise RuntimeError(f"an unchanged rerun encoded records: {again}")
    report.add(section, "unchanged corpus rerun, whole command", rerun, len(ids), skipped=again["skipped"])
    if reference is not None:
        out = work / f"{section}.npy"
        subprocess.run([str(BIN / "embedfleet"), "export", "--collection", "bench", "--out", str(out), "--db", db],
                       check=True, capture_output=True, env=cli_env())
        from embedfleet.store.export import ids_path_for, read_ids

        assert read_ids(ids_path_for(out)) == ids, "export is not in corpus order"
        cosine = (np.load(out) * reference).sum(axis=1)
        report.add(section, "cosine of run's vectors to fp32, every record", None, None,
                   min=round(float(cosine.min()), 6), mean=round(float(cosine.mean()), 6),
                   below_0_999=int((cosine < 0.999).sum()))


_MEMORY_PROBE = """
import sys
from embedfleet.cli import main
try:
    main()
finally:
    # VmHWM: this process's own peak RSS. (ru_maxrss would include the parent's pages
    # counted in the forked child before exec.)
    peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
    print("PEAK_KB", peak, file=sys.stderr)
"""


def bench_memory(report: BenchReport, records: list[Record], work: Path, broker_url: str) -> None:
    """Producer peak RSS submitting 10,000 and 100,000 records to the broker."""
    from celery import Celery

    from embedfleet.fleet.celeryconfig import celery_config

    control = Celery("bench-control")
    control.conf.update(celery_config(Settings(broker_url=broker_url)))
    peaks = {}
    try:
        for size in (10_000, 100_000):
            path = work / f"memory-{size}.jsonl"
            write_corpus(records, path, total=size)
            database = f"sqlite:///{work / f'memory-{size}.db'}"
            env = cli_env(EMBEDFLEET_BROKER_URL=broker_url, EMBEDFLEET_DATABASE_URL=database)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "submit", str(path), "--collection", "mem"],
                                  check=True, capture_output=True, text=True, env=env)
            seconds = time.perf_counter() - started
            peaks[size] = int(done.stderr.rsplit("PEAK_KB", 1)[1].split()[0]) / 1024
            report.add("memory", f"producer submit of {size:,} records", seconds, size,
                       peak_rss_mb=round(peaks[size], 1))
            control.control.purge()
    finally:
        control.close()
    report.add("memory", "producer peak RSS, 100k / 10k", ratio=round(peaks[100_000] / peaks[10_000], 3))


def one_liners_run(records: list[Record], work: Path, name: str, total: int,
                   **env: str) -> tuple[list[str], float, dict[str, Any]]:
    """`run` over `total` one-line records cycled from the corpus's (all records if it has
    none): (ids, wall seconds, the job's figures)."""
    one_liners = [r for r in records if "\n" not in r.text] or records
    corpus = work / f"{name}.jsonl"
    ids = write_corpus(one_liners, corpus, total=total)
    wall, stats = embedded_run(corpus, f"sqlite:///{work / f'{name}.db'}", **env)
    return ids, wall, stats


def bench_stress(report: BenchReport, records: list[Record], work: Path) -> None:
    """The seed's stress test: 30,000 one-line records embedded and stored by `run`."""
    ids, wall, stats = one_liners_run(records, work, "stress", 30_000)
    assert stats["stored"] + stats["skipped"] == len(ids), stats
    report.add("stress", "30,000 one-line records, embedfleet run, whole command", wall, len(ids),
               job_seconds=stats["seconds"], stored=stats["stored"], deduplicated=stats["deduplicated"])


NOOP = "embedfleet.encode.encoder:NoopEncoder"


def bench_noop(report: BenchReport, records: list[Record], work: Path, total: int = 60_000) -> None:
    """`embedfleet run` with a no-op encoder (a fixed vector per text, no model): what the
    embedded pipeline itself carries (reading, validation, chunking, the in-process broker,
    the collector and SQLite), the ceiling a faster encoder would meet."""
    ids, wall, stats = one_liners_run(records, work, "noop", total, EMBEDFLEET_ENCODER=NOOP)
    if stats["stored"] + stats["skipped"] != len(ids):
        raise RuntimeError(f"the no-op run stored {stats['stored']} of {len(ids)} records: {stats}")
    report.add("noop", f"{total:,} one-line records, no-op encoder, embedfleet run, job", stats["seconds"], len(ids),
               whole_command_s=round(wall, 2))


def print_table(report: BenchReport) -> None:
    print(f"corpus {report.corpus}: {report.records} records")
    width = max([4] + [len(row["what"]) for row in report.rows])  # every row's whole description
    print(f"{'section':9} {'what':{width}} {'seconds':>9} {'rec/s':>9} {'ratio':>7}  extra")
    for row in report.rows:
        extra = {k: v for k, v in row.items() if k not in ("section", "what", "seconds", "records_per_s", "ratio")}
        ratio = row.get("ratio")
        print(f"{row['section']:9} {row['what']:{width}} {row.get('seconds', ''):>9} {row.get('records_per_s', ''):>9} "
              f"{'' if ratio is None else str(ratio) + 'x':>7}  {extra or ''}")


def run_bench(corpus: str, spec: FieldSpec, sections: list[str], limit: int | None, broker_url: str, pg_url: str,
              as_json: bool, pgvector_url: str | None = None, vectors: int = 100_000) -> BenchReport:
    from benchmarks import fleet as bench_fleet

    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    records = load_records(corpus, spec, limit)
    report = BenchReport(corpus=corpus, records=len(records))
    texts = [r.text for r in records]
    with tempfile.TemporaryDirectory(prefix="embedfleet-bench-") as tmp:
        work = Path(tmp)
        bench_corpus = work / "bench.jsonl"
        ids = write_corpus(records, bench_corpus)
        baseline, reference = None, None
        if {"batching", "direct"} & set(sections):
            model = fp32_model()
            if "batching" in sections:
                bench_batching(report, model, texts)
            if "direct" in sections:
                baseline, reference = bench_direct(report, model, texts)
            del model
        bf16_baseline = None
        if "bf16" in sections:
            from benchmarks.bf16 import bench_bf16

            bf16_baseline = bench_bf16(report, texts, reference)
        if "run" in sections:
            bench_run(report, bench_corpus, ids, baseline, reference, work, bf16_baseline=bf16_baseline)
        if "backends" in sections:
            from benchmarks.bf16 import bench_backends

            bench_backends(report, bench_corpus, len(ids), bf16_baseline, work)
        if "encoders" in sections:
            from benchmarks.bf16 import bench_encoders

            bench_encoders(report, bench_corpus, len(ids), work)
        if "fleet" in sections:
            bench_fleet.bench_fleet(report, bench_corpus, len(ids), baseline, work, broker_url, processes=2, threads=1)
        if "layout" in sections:
            bench_fleet.bench_layout(report, records, work, broker_url)
        if "pipeline" in sections:
            bench_fleet.bench_pipeline(report, records, work, broker_url, pg_url)
        if "storage" in sections:
            bench_fleet.bench_storage(report, work, pg_url)
        if "stress" in sections:
            bench_stress(report, records, work)
        if "noop" in sections:
            bench_noop(report, records, work)
        if "memory" in sections:
            bench_memory(report, records, work, broker_url)
        if "pgvector" in sections:
            from benchmarks.vectors import bench_pgvector

            bench_pgvector(report, work, pgvector_url, total=vectors, queries_text=texts[:51], broker_url=broker_url)
    if as_json:
        print(json.dumps({"corpus": report.corpus, "records": report.records, "rows": report.rows}, indent=2))
    else:
        print_table(report)
    return report
