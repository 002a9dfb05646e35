"""The CUDA path in one prepared run (benchmarks/gpu_check.py): training steps on the GPU under
bfloat16 autocast, then ONNX Runtime's CUDA provider against the CPU one; every section records
its result or its error."""
from __future__ import annotations

import json
import math
import platform
import time
import traceback
from pathlib import Path

import numpy as np

from ..timing import time_calls


def _section(report: dict, name: str, run) -> None:
    """Run one section; its result or its error (with traceback) lands in the report."""
    started = time.perf_counter()
    try:
        report[name] = {"ok": True, **run()}
    except Exception as exc:  # noqa: BLE001 - a GPU machine's surprises are what this script is for
        report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
    report[name]["seconds"] = round(time.perf_counter() - started, 2)


def environment() -> dict:
    import torch  # noqa: PLC0415

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info |= {"gpu": torch.cuda.get_device_name(0), "torch_cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()}
    try:
        import onnxruntime as ort  # noqa: PLC0415

        info |= {"onnxruntime": ort.__version__, "ort_providers": ort.get_available_providers()}
    except ImportError:
        info["onnxruntime"] = None
    try:
        from ..models.efficientnet_lite import imagenet_state_dict  # noqa: PLC0415

        imagenet_state_dict()
        info["imagenet_weights"] = True
    except Exception as exc:  # noqa: BLE001 - ModelError when the package is missing
        info |= {"imagenet_weights": False, "imagenet_weights_note": str(exc)}
    return info


def train_on_cuda(work: Path, steps: int, imagenet: bool) -> dict:
    import torch  # noqa: PLC0415

    from ..data.synthcity import generate_dataset  # noqa: PLC0415
    from ..train.config import load_config  # noqa: PLC0415
    from ..train.trainer import train  # noqa: PLC0415

    if not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available to torch")
    dataset = work / "smoke"
    if not (dataset / "images").is_dir():
        generate_dataset(dataset, seed=0, preset="smoke", splits=("train", "val"))
    fast = {"steps": steps, "places_per_batch": 16, "val_every": steps, "log_every": 10, "warmup_steps": min(10, steps // 2)}
    config = load_config(None, {
        "mode": "structvpr++", "dataset": str(dataset), "device": "cuda", "cache_dir": str(work / "cache"),
        "optim": fast, "teacher_optim": fast, "student": {"frozen_blocks": 3, "imagenet": imagenet},
    })
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = train(config, work / "run")
    result = {"model": str(model), "train_seconds": round(time.perf_counter() - started, 1), "steps_per_stage": steps,
              "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "imagenet_backbone": imagenet}
    for stage, log in (("teacher", work / "run" / "teacher" / "log.jsonl"), ("student", work / "run" / "log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        losses = [r["loss"] for r in rows if "loss" in r]
        recall = [r["val_recall@1"] for r in rows if "val_recall@1" in r]
        result[stage] = {"last_loss": losses[-1] if losses else None, "losses_finite": all(math.isfinite(v) for v in losses),
                         "val_recall@1": recall[-1] if recall else None}
    if not all(result[s]["losses_finite"] for s in ("teacher", "student")):
        raise RuntimeError(f"non-finite loss under bf16 autocast: {result}")
    return result


def ort_cuda(work: Path, checkpoint: Path) -> dict:
    import onnxruntime as ort  # noqa: PLC0415

    from ..deploy.export import export_onnx  # noqa: PLC0415

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider here ({ort.get_available_providers()})"}
    onnx_path = export_onnx(checkpoint, work / "student.onnx", batch="dynamic", uint8_input=True).path
    frames = np.random.default_rng(0).integers(0, 256, (32, 120, 160, 3), dtype=np.uint8)
    outputs, timings = {}, {}
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        session = ort.InferenceSession(onnx_path, providers=[provider])
        if session.get_providers()[0] != provider:
            raise RuntimeError(f"{provider} was requested but the session runs on {session.get_providers()}")
        name = session.get_inputs()[0].name
        outputs[provider] = session.run(None, {name: frames})[0]  # warm-up (CUDA kernels, cuDNN search)
        timings[provider] = round(float(np.mean(time_calls(lambda: session.run(None, {name: frames}), 10))), 3)
    a, b = outputs["CUDAExecutionProvider"], outputs["CPUExecutionProvider"]
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"batch": len(frames), "ms_per_batch": timings, "cosine_cuda_vs_cpu_min": float(cosine.min())}


def gpu_check(work: Path, steps: int) -> dict:
    """Every section's result or error; ``ok`` when none failed."""
    report: dict = {}
    _section(report, "environment", environment)
    imagenet = bool(report["environment"].get("imagenet_weights"))
    _section(report, "train_cuda_bf16", lambda: train_on_cuda(work, steps, imagenet))
    checkpoint = report["train_cuda_bf16"].get("model")
    if checkpoint:
        _section(report, "onnxruntime_cuda", lambda: ort_cuda(work, Path(checkpoint)))
    report["ok"] = all(section.get("ok", True) for section in report.values() if isinstance(section, dict))
    return report
