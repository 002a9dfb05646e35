"""What the CPU is: its name and the vector extensions that decide which integer kernels ONNX
Runtime runs. Read from /proc/cpuinfo (torch-free); the threading cache keys its tunes by it."""
from __future__ import annotations

import platform
from contextlib import suppress
from pathlib import Path

CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} elsewhere)."""
    fields: dict[str, str] = {}
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    """The CPU's model name with its family/model numbers (a virtual Xeon names no model)."""
    info = _cpuinfo()
    if "model name" not in info:
        return platform.processor() or platform.machine()
    return f"{info['model name']} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def cpu_features() -> list[str]:
    """The vector and matrix extensions that decide which integer kernels ORT runs."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in CPU_FEATURES if f in flags]
