"""Which device, precision and runtime to encode with, chosen from what the hardware does well."""

from __future__ import annotations

import importlib.util
import os
import platform
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
X86_MACHINES = ("x86_64", "amd64")  # platform.machine(), lowercased


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """AMX or AVX-512 BF16 make bf16 matmuls faster than fp32 on the CPU."""
    try:
        flags = cpuinfo.read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in BF16_CPU_FLAGS)


def no_gpu_driver() -> bool:
    """True when neither NVIDIA's nor AMD's (ROCm) kernel driver is present, or
    CUDA_VISIBLE_DEVICES hides every GPU: torch could see no GPU either, so `auto` means the
    CPU without importing torch (about 1.5 s, and the OpenVINO backend never needs it)."""
    return gpu_count() == 0 and not Path("/dev/kfd").exists()


def resolve_device(setting: str) -> str:
    if setting == "auto" and no_gpu_driver():
        return "cpu"
    import torch  # here, not at import: `embedfleet worker` reads gpu_count() before fork

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return setting


def resolve_precision(setting: str, device: str) -> str:
    if setting != "auto":
        if setting == "fp16" and device == "cpu":
            raise RuntimeError("fp16 is for CUDA; use bf16 or fp32 on the CPU")
        return setting
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def slow_bf16_warning(device: str, precision: str) -> str | None:
    """What to tell a user who asked torch for bf16 on a CPU without AMX or AVX-512 BF16:
    torch emulates it there, measured 6-7x slower than fp32 on an AVX2-only EPYC
    (docs/benchmarks.md). None where bf16 is not slow."""
    if device != "cpu" or precision != "bf16" or cpu_has_fast_bf16():
        return None
    return ("bf16 was asked for, but this CPU has neither AMX nor AVX-512 BF16: torch emulates bf16 here, "
            "several times slower than fp32 (EMBEDFLEET_PRECISION=auto picks fp32 on this CPU)")


def openvino_installed() -> bool:
    """Whether the openvino package can be imported, found without importing it: `embedfleet
    worker` asks before it forks its pool, and OpenVINO's thread pool must start in a child."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):  # a broken or half-removed install counts as missing
        return False


def resolve_backend(setting: str, device: str, precision: str) -> str:
    """`torch` or `openvino`. auto takes OpenVINO on an x86 CPU, where it was measured to win
    in both precisions (docs/benchmarks.md): bf16 on a CPU with AMX or AVX-512 BF16 (1.4x to
    1.8x torch bf16), fp32 everywhere else (1.3x to 2.2x torch fp32, AVX2 and AVX-512 alike;
    f32 inference, cosine to torch fp32 >= 0.99999). CUDA stays on torch, and so does a CPU of
    another architecture (OpenVINO there is not measured)."""
    if setting != "auto":
        return setting
    measured = device == "cpu" and platform.machine().lower() in X86_MACHINES and precision in ("bf16", "fp32")
    return "openvino" if measured and openvino_installed() else "torch"


def gpu_count() -> int:
    """GPUs the NVIDIA driver shows, read without initialising CUDA (safe before fork)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def pool_device(device: str) -> str:
    """One process per GPU: a prefork child takes the GPU of its pool index."""
    if device != "cuda":
        return device
    import torch
    from billiard.process import current_process

    index = getattr(current_process(), "index", 0) or 0
    return f"cuda:{index % max(1, torch.cuda.device_count())}"
