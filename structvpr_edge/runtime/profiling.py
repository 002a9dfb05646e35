"""Timing statistics and a description of the machine, for the benchmark scripts; torch-free."""
from __future__ import annotations

import importlib
import os
import platform
import resource
import shutil
import subprocess
from pathlib import Path

import numpy as np


def stage_stats(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gpu_memory_mb() -> float | None:
    """Used GPU memory (MB) from nvidia-smi, where present."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        return float(out.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except ImportError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _command(*args: str) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def system_info() -> dict:
    """CPU, GPU, library versions and, on a Jetson, the L4T release and power mode."""
    tegra = Path("/etc/nv_tegra_release")
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "gpu": _command("nvidia-smi", "--query-gpu=name", "--format=csv,noheader"),
        "onnxruntime": _version("onnxruntime"),
        "faiss": _version("faiss"),
        "tensorrt": _version("tensorrt"),
        "opencv": _version("cv2"),
        "jetson_l4t": tegra.read_text().splitlines()[0] if tegra.exists() else None,
        "jetson_power_mode": _command("nvpmodel", "-q"),
    }


def interleaved(names: list[str], rounds: int, warmup: int, run) -> dict[str, dict[str, list[float]]]:
    """Call ``run(name, i)`` for every name once per round, rotating who goes first, so background
    load hits all alike; ``run`` returns stage -> milliseconds, kept after ``warmup`` rounds."""
    from tqdm import tqdm  # noqa: PLC0415

    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for i in tqdm(range(warmup + rounds), desc="frames", unit="frame"):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            timings = run(name, i)
            if i >= warmup:
                for stage, ms in timings.items():
                    samples[name].setdefault(stage, []).append(ms)
    return samples
