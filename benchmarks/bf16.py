"""The bf16 sections: the runtimes against a hand-written bf16 loop, and `embedfleet run` on
each backend, side by side in one run.

bf16: the user's fast alternative on a bf16 CPU, `SentenceTransformer(path).to(torch.bfloat16)
.encode(texts, batch_size=32)`, is the baseline (1.0); the torch backend's and the OpenVINO
backend's encode_batch are timed against it, alternating, best of ROUNDS each, so load from
other processes falls on every side alike. backends: the whole `embedfleet run` command with
EMBEDFLEET_BACKEND=torch and =auto, alternating too.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BenchReport
from embedfleet.settings import Settings

ROUNDS = 2
BF16_LOOP = "hand-written bf16 loop: SentenceTransformer(path).to(torch.bfloat16).encode(batch_size=32) (baseline)"


def _best(timed: dict[str, Callable[[], Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    """Each callable run ROUNDS times, the sides alternating: (best seconds, that round's result) by name."""
    seconds = {name: float("inf") for name in timed}
    results: dict[str, Any] = {}
    for _ in range(ROUNDS):
        for name, call in timed.items():
            started = time.perf_counter()
            result = call()
            elapsed = time.perf_counter() - started
            if elapsed < seconds[name]:
                seconds[name], results[name] = elapsed, result
    return seconds, results


def _cosine_row(report: BenchReport, what: str, vectors: np.ndarray, reference: np.ndarray | None) -> None:
    if reference is None:
        return
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = (vectors * reference).sum(axis=1)
    report.add("bf16", f"cosine to fp32, {what}", None, None, min=round(float(cosine.min()), 6),
               mean=round(float(cosine.mean()), 6), below_0_999=int((cosine < 0.999).sum()))


def bench_bf16(report: BenchReport, texts: list[str], reference: np.ndarray | None) -> float:
    """The bf16 loop, the torch backend and the OpenVINO backend on the same texts; returns the
    loop's seconds, the baseline `run` is also compared against."""
    import torch
    from sentence_transformers import SentenceTransformer

    from embedfleet.encode.encoder import SentenceTransformerEncoder, load_encoder, model_path, silence_progress_bars
    from embedfleet.encode.precision import cpu_has_fast_bf16

    torch.set_num_threads(os.cpu_count() or 1)
    silence_progress_bars()
    loop = SentenceTransformer(model_path(Settings().model), device="cpu").to(torch.bfloat16)
    torch_backend = SentenceTransformerEncoder(Settings(device="cpu", precision="bf16"))
    started = time.perf_counter()
    # Converts on the first use of this cache (timed here as the load, not in the encode rows).
    openvino = load_encoder(Settings(device="cpu", precision="bf16", backend="openvino"))
    report.add("bf16", "OpenVINO backend load (conversion if the cache was cold)", time.perf_counter() - started,
               converted=getattr(openvino, "converted", None))
    warm = texts[:64]
    loop.encode(warm, batch_size=32)
    torch_backend.encode_batch(warm)
    openvino.encode_batch(warm)
    with torch.inference_mode():
        seconds, vectors = _best({
            "loop": lambda: loop.encode(texts, batch_size=32),
            "torch": lambda: torch_backend.encode_batch(texts),
            "openvino": lambda: openvino.encode_batch(texts),
        })
    baseline = seconds["loop"]
    # Without AMX or AVX-512 BF16, torch emulates bf16 (6-7x slower than fp32 on an AVX2 CPU):
    # there the loop a user who knows their CPU writes is the fp32 one, the `direct` section.
    report.add("bf16", BF16_LOOP, baseline, len(texts), ratio=1.0, cpu_fast_bf16=cpu_has_fast_bf16())
    report.add("bf16", "torch backend encode_batch, bf16 (token-bounded batches)", seconds["torch"], len(texts),
               ratio=round(baseline / seconds["torch"], 2))
    report.add("bf16", f"{type(openvino).__name__} encode_batch, bf16 (EMBEDFLEET_BACKEND=openvino)",
               seconds["openvino"], len(texts), ratio=round(baseline / seconds["openvino"], 2))
    for name in ("loop", "torch", "openvino"):
        _cosine_row(report, name, vectors[name], reference)
    return baseline


def bench_backends(report: BenchReport, corpus: Path, records: int, bf16_baseline: float | None, work: Path) -> None:
    """`embedfleet run`, the whole command, with EMBEDFLEET_BACKEND=torch and =auto, alternating."""
    from benchmarks.run import embedded_run

    runs = dict.fromkeys(("torch", "auto"), 0)

    def run(backend: str) -> Callable[[], Any]:
        def call() -> Any:
            runs[backend] += 1  # a database of its own each time: nothing already stored
            return embedded_run(corpus, f"sqlite:///{work / f'backend-{backend}-{runs[backend]}.db'}",
                                EMBEDFLEET_BACKEND=backend)
        return call

    seconds, results = _best({backend: run(backend) for backend in runs})
    for backend in runs:
        stats = results[backend][1]
        if stats["stored"] != records:
            raise RuntimeError(f"run with backend {backend} stored {stats['stored']} of {records} records: {stats}")
        report.add("backends", f"embedfleet run, whole command, EMBEDFLEET_BACKEND={backend}", seconds[backend],
                   records, ratio=round(seconds["torch"] / seconds[backend], 2), job_seconds=stats["seconds"],
                   vs_bf16_loop=round(bf16_baseline / seconds[backend], 2) if bf16_baseline else None)


def bench_encoders(report: BenchReport, corpus: Path, records: int, work: Path) -> None:
    """`embedfleet run`, the whole command, encoding in its own process
    (EMBEDFLEET_EMBEDDED_ENCODERS=0) against the default encoder processes, alternating."""
    from benchmarks.run import embedded_run
    from embedfleet.encode.cpus import available_cpus

    sides = {"in-process (EMBEDFLEET_EMBEDDED_ENCODERS=0)": {"EMBEDFLEET_EMBEDDED_ENCODERS": "0"},
             f"encoder processes (default: {available_cpus()})": {}}
    runs = dict.fromkeys(sides, 0)

    def run(side: str) -> Callable[[], Any]:
        def call() -> Any:
            runs[side] += 1  # a database of its own each time: nothing already stored
            return embedded_run(corpus, f"sqlite:///{work / f'encoders-{list(sides).index(side)}-{runs[side]}.db'}",
                                **sides[side])
        return call

    seconds, results = _best({side: run(side) for side in sides})
    first = next(iter(sides))
    for side in sides:
        stats = results[side][1]
        if stats["stored"] != records:
            raise RuntimeError(f"run {side} stored {stats['stored']} of {records} records: {stats}")
        report.add("encoders", f"embedfleet run, whole command, {side}", seconds[side], records,
                   ratio=round(seconds[first] / seconds[side], 2), job_seconds=stats["seconds"],
                   first_encoded_after=stats["first_encoded_after"])
