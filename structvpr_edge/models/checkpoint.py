"""Checkpoints: weights plus everything needed to use them without the training config (model
type and config, state dict, descriptor layout, label-group map, input normalisation, training
config). The shipped models are such checkpoints with float16 weights inside the package.

Opening a model file must be as safe as opening an image: a checkpoint (and training's resume file)
holds only tensors and plain data and is read with ``torch.load(weights_only=True)``; anything else
needs ``trust_checkpoint=True`` (``--trust-checkpoint``). See docs/security.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..artifacts import BACKEND_BY_SUFFIX, CHECKPOINT_SUFFIX
from ..errors import ConfigError, ModelError
from ..files import open_regular
from ..labels import CLASS_TO_GROUP, LABEL_GROUPS
from ..layout import DescriptorLayout
from .efficientnet_lite import MEAN_RGB, STD_RGB
from .global_student import GlobalStudent, GlobalStudentConfig
from .student import StructVPRStudent, StudentConfig
from .teacher import SegTeacher, TeacherConfig

FORMAT = "structvpr-edge/checkpoint/1"
# How a torch.save file begins: a zip archive (torch >= 1.6), or the legacy pickle of torch's magic number.
TORCH_HEADS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a" + 0x1950A86A20F9469CFC6C.to_bytes(10, "little"))
NOT_A_CHECKPOINT = {"onnxruntime": "an ONNX file", "tensorrt": "a TensorRT engine"}  # by backend_for's suffix table
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = {"structvprpp": "structvpr++", "student-nokd": "structvpr++", "baseline": "global"}  # name -> the model type it holds
MODEL_TYPES = {
    "teacher": (SegTeacher, TeacherConfig),
    "structvpr++": (StructVPRStudent, StudentConfig),
    "global": (GlobalStudent, GlobalStudentConfig),
}


def model_type_of(model: nn.Module) -> str:
    for name, (cls, _) in MODEL_TYPES.items():
        if isinstance(model, cls):
            return name
    raise ModelError(f"not a structvpr-edge model: {type(model).__name__}")


def layout_of(model: nn.Module) -> DescriptorLayout:
    conf = model.conf
    if isinstance(model, GlobalStudent):
        return DescriptorLayout.single(conf.dim)
    return DescriptorLayout.aligned(conf.global_dim, conf.group_dim, LABEL_GROUPS)


def build_model(model_type: str, model_config: dict, imagenet: bool = False) -> nn.Module:
    """Instantiate a model; ``imagenet`` False skips loading weights that a state dict will replace."""
    if model_type not in MODEL_TYPES:
        raise ModelError(f"unknown model type {model_type!r}; known: {sorted(MODEL_TYPES)}")
    cls, conf_cls = MODEL_TYPES[model_type]
    known = {f.name for f in dataclasses.fields(conf_cls)}
    unknown = sorted(set(model_config) - known)
    if unknown:  # a setting this version cannot build (a newer file's): dropping it would build another network
        raise ModelError(f"{model_type} model settings {unknown} are unknown to structvpr-edge {__version__}; "
                         "use the version that wrote the file, or a newer one")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in model_config.items()}
    if "imagenet" in known:
        values["imagenet"] = imagenet
    return cls(conf_cls(**values))


def input_spec(model: nn.Module, image_size: tuple[int, int]) -> dict:
    """How to feed the model: the runtime and exporters read this."""
    if isinstance(model, SegTeacher):
        return {"kind": "labels", "size": list(model.conf.input_size)}
    return {"kind": "rgb", "size": list(image_size), "colour": "RGB", "mean": list(MEAN_RGB), "std": list(STD_RGB), "scale": 255.0}


def save_checkpoint(path: Path, model: nn.Module, image_size: tuple[int, int], train_config: dict, extra: dict | None = None, half: bool = False) -> Path:
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": __version__,
        "model_type": model_type_of(model),
        "model_config": dataclasses.asdict(model.conf),
        "state_dict": state,
        "layout": layout_of(model).to_dict(),
        "label_groups": list(LABEL_GROUPS),
        "class_to_group": dict(CLASS_TO_GROUP),
        "input": input_spec(model, image_size),
        "train_config": train_config,
        **(extra or {}),
    }
    return _write(payload, path)


def save_resume_state(path: Path, state: dict) -> Path:
    """Training's resume file (weights, optimizer and scheduler state, step): the same safe form."""
    return _write(state, path)


def load_resume_state(path: Path) -> dict:
    state = _read(path)
    if not isinstance(state, dict):
        raise ModelError(f"{path} is not a resume file of structvpr-edge training")
    return state


def _write(payload: dict, path: Path) -> Path:
    """``payload`` to ``path`` atomically; refused, nothing written, unless it is tensors and plain
    data only (what ``torch.load(weights_only=True)`` reads back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(payload, partial)
    unsafe = _unsafe_globals(partial)
    if unsafe:
        partial.unlink()
        raise ModelError(f"{path} not written: it would hold {', '.join(unsafe)}, and a checkpoint holds only tensors and plain data")
    partial.rename(path)  # a crash mid-write never leaves a truncated checkpoint behind
    return path


def _unsafe_globals(path: Path) -> list[str]:
    """What a ``torch.save`` file refers to beyond tensors and plain data, read without unpickling
    it (empty for a file of another kind: weights_only refuses that all the same)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (ValueError, RuntimeError):
        return []


def _check_torch_file(path: str | Path) -> None:
    """Refuse a file that ``torch.save`` did not write (an ONNX graph, an engine, a text file, a
    plain pickle) by its first bytes: torch would call it a pickle that needs code, and
    --trust-checkpoint would be wrong advice that fails all the same."""
    path = Path(path)
    with open_regular(path, 1 << 40, ModelError) as handle:  # only its head is read; a FIFO or a folder is refused
        head = handle.read(max(map(len, TORCH_HEADS)))
    if not any(head.startswith(magic) for magic in TORCH_HEADS):
        kind = NOT_A_CHECKPOINT.get(BACKEND_BY_SUFFIX.get(path.suffix.lower(), ""))
        if kind:
            raise ModelError(f"{path} is {kind}, not a PyTorch checkpoint: this step needs the checkpoint (.pt) it was made from; "
                             f"the runtime commands (eval, build-map, localize) take {kind} directly")
        raise ModelError(f"{path} is not a PyTorch checkpoint: " + ("it is empty" if not head else "torch.save did not write it"))


def _read(path: Path, trust_checkpoint: bool = False):
    """The contents of a ``torch.save`` file: tensors and plain data only, or, with
    ``trust_checkpoint``, whatever its pickle builds, running any code it carries."""
    _check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as exc:  # torch raises many types for a corrupt file
        if isinstance(exc, pickle.UnpicklingError) and not trust_checkpoint:
            code = _unsafe_globals(path)
            raise ModelError(
                f"{path} was not opened: it is not a checkpoint of tensors and plain data"
                + (f" (it refers to {', '.join(code[:3])})" if code else "")
                + ", and unpickling it could run any code it carries. Only if it comes from a source you trust: --trust-checkpoint "
                "(API: trust_checkpoint=True) opens it, running that code; save_checkpoint then writes the model in the safe form"
            ) from None
        raise ModelError(f"cannot read checkpoint {path}: {exc}") from exc


def shipped_path(name: str, weights_dir: Path = SHIPPED_DIR) -> Path:
    return weights_dir / f"{name}{CHECKPOINT_SUFFIX}"


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A path, or the name of a shipped model."""
    if str(name_or_path) in SHIPPED:
        path = shipped_path(str(name_or_path))
        if not path.exists():
            raise ModelError(f"shipped model {name_or_path!r} is missing from the installed package ({path})")
        return path
    path = Path(name_or_path)
    if not path.exists():
        raise ModelError(f"checkpoint {path} not found (shipped models: {sorted(SHIPPED)})")
    return path


def load_checkpoint(name_or_path: str | Path, trust_checkpoint: bool = False) -> tuple[nn.Module, dict]:
    """(model in eval mode with float32 weights, checkpoint metadata without the state dict).
    ``trust_checkpoint``: also read a file that needs code to load (see the module docstring)."""
    path = resolve_checkpoint(name_or_path)
    payload = _read(path, trust_checkpoint)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path} is not a structvpr-edge checkpoint (format {FORMAT})")
    model_type, model_config = _field(path, payload, "model_type", str), _field(path, payload, "model_config", dict)
    try:
        model = build_model(model_type, model_config)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from exc
    state = _field(path, payload, "state_dict", dict)
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(f"{path}: state_dict entries {not_tensors[:3]} are not tensors")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit the model config: {exc}") from exc
    _check_tables(path, payload, model)
    return model.eval(), {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer")} | {"path": str(path)}


def _field(path: Path, payload: dict, name: str, kind: type) -> Any:
    """``payload[name]``, a ModelError naming the file and field if it is missing or not a ``kind``."""
    value = payload.get(name)
    if not isinstance(value, kind):
        found = "it has none" if name not in payload else f"got {type(value).__name__}"
        raise ModelError(f"{path}: checkpoint field {name!r} must be a {kind.__name__}, {found}")
    return value


def _check_tables(path: Path, payload: dict, model: nn.Module) -> None:
    """The file's descriptor layout, label-group tables and input normalisation must be the model's
    and this code's: the runtime and maps slice descriptors by the layout, group ids index
    LABEL_GROUPS, and every reader normalises pixels by the file's mean and std, so another table (a
    layout of other sizes, groups in another order, another mean) would give wrong matches silently."""
    size = _field(path, payload, "input", dict).get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ModelError(f"{path}: checkpoint field 'input' must give its size as [width, height] in pixels, got {size!r}")
    expected = {"layout": layout_of(model).to_dict(), "label_groups": list(LABEL_GROUPS), "class_to_group": dict(CLASS_TO_GROUP),
                "input": input_spec(model, (size[0], size[1]))}
    for name, ours in expected.items():
        theirs = _field(path, payload, name, type(ours))
        if theirs != ours:
            raise ModelError(f"{path}: checkpoint field {name!r} is {theirs!r}, but this model and structvpr-edge use {ours!r}")


def ship(run_checkpoint: str | Path, name: str, weights_dir: Path = SHIPPED_DIR, trust_checkpoint: bool = False) -> Path:
    """Save a finished run's model as shipped model ``name``, float16 (half the size, the same
    Recall: every shipped figure in docs/RESULTS.md is measured from these files). Which run ships
    is chosen on val; the source run is recorded in the file as ``shipped_from``."""
    if name not in SHIPPED:
        raise ConfigError(f"unknown shipped model {name!r}; known: {sorted(SHIPPED)}")
    model, meta = load_checkpoint(run_checkpoint, trust_checkpoint)
    if meta["model_type"] != SHIPPED[name]:
        raise ModelError(f"{run_checkpoint} holds a {meta['model_type']!r} model; {name} must be {SHIPPED[name]!r}")
    return save_checkpoint(shipped_path(name, weights_dir), model, tuple(meta["input"]["size"]), meta["train_config"],
                           derived_extra(meta, shipped_from=run_checkpoint), half=True)


def derived_extra(meta: dict, **source: str | Path) -> dict:
    """The run facts a checkpoint made from another keeps (its stage, steps and provenance), and where it came from."""
    return {k: meta[k] for k in ("stage", "steps_done", "provenance") if k in meta} | {k: str(v) for k, v in source.items()}


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's weights and buffers (name, dtype, shape, bytes, in name order): the same
    for a checkpoint re-saved or converted and for every export of it, unlike the file's bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
