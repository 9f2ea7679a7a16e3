"""Choosing the device and the precision from the setting and what the hardware does well."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from embedfleet.encode import precision


def test_bf16_is_fast_only_with_amx_or_avx512_bf16(tmp_path: Path) -> None:
    """Only the whole flag amx_bf16 or avx512_bf16 counts; a missing cpuinfo means no."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx512f avx512_bf16x\n")
    assert not precision.cpu_has_fast_bf16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx512f amx_bf16\n")
    assert precision.cpu_has_fast_bf16(cpuinfo)
    assert not precision.cpu_has_fast_bf16(tmp_path / "missing")


def test_auto_precision_on_the_cpu_follows_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto on the CPU is bf16 where it is fast, fp32 elsewhere; an explicit setting is kept."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_precision("auto", "cpu") == "fp32"
    assert precision.resolve_precision("bf16", "cpu") == "bf16"


def test_torch_bf16_on_a_cpu_without_fast_bf16_is_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 asked of torch on a CPU without AMX or AVX-512 BF16 (emulated, several times slower
    than fp32) gets a warning that names the way out; nowhere else."""
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    warning = precision.slow_bf16_warning("cpu", "bf16")
    assert warning is not None and "EMBEDFLEET_PRECISION=auto" in warning
    assert precision.slow_bf16_warning("cpu", "fp32") is None
    assert precision.slow_bf16_warning("cuda:0", "bf16") is None
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.slow_bf16_warning("cpu", "bf16") is None


def test_fp16_on_the_cpu_is_refused() -> None:
    """fp16 is for CUDA: asking for it on the CPU says so."""
    with pytest.raises(RuntimeError, match="fp16 is for CUDA"):
        precision.resolve_precision("fp16", "cpu")


def test_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto means the CPU when torch sees no CUDA device; cuda asked for is an error then."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.resolve_device("auto") == "cpu"
    assert precision.resolve_device("cpu") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        precision.resolve_device("cuda")


def test_auto_without_a_gpu_driver_decides_without_torch(tmp_path: Path) -> None:
    """No GPU visible (CUDA_VISIBLE_DEVICES empty): auto means the CPU and torch is never
    imported, the start the OpenVINO backend relies on. In a fresh interpreter, the real check."""
    import os
    import subprocess
    import sys

    script = ("import sys\nfrom embedfleet.encode.precision import resolve_device\n"
              "print(resolve_device('auto'), 'torch' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu", "False"]


def test_gpu_count_reads_cuda_visible_devices_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA_VISIBLE_DEVICES decides the count when set (blank entries do not count)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 1,")
    assert precision.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert precision.gpu_count() == 0


def test_a_cpu_pool_process_keeps_the_cpu() -> None:
    """Only CUDA devices are spread over pool processes."""
    assert precision.pool_device("cpu") == "cpu"
