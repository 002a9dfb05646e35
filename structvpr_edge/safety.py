"""Files a user hands over are read as data, and only inside the folder they belong to.

An ONNX model may name files beside it that hold its weights (external data); a calibration
manifest names its images below a root. Those names come from the files themselves, so a
crafted file could point at ``../../home/user/.ssh`` or ``/etc/shadow``: every such name is
resolved (symbolic links followed) and refused unless it stays inside its folder, before
anything is read. docs/security.md says what is trusted and what is not. Torch-free: the
runtime uses it.
"""
from __future__ import annotations

from itertools import chain
from pathlib import Path

from .errors import BackendError, ModelError, StructVPRError


def confined(path: str | Path, folder: str | Path, error: type[StructVPRError] = StructVPRError) -> Path:
    """``path`` resolved; ``error`` unless it lies inside ``folder`` (a link out of it counts as outside)."""
    resolved, root = Path(path).resolve(), Path(folder).resolve()
    if not resolved.is_relative_to(root):
        raise error(f"{path} leads outside {folder} (to {resolved}); nothing a file names outside its folder is read")
    return resolved


def check_onnx(path: str | Path) -> Path:
    """``path``, once every external-data file its tensors name lies in its folder (ModelError
    otherwise, before any weight is read). onnx and onnxruntime refuse such names themselves only
    from onnx 1.16 and onnxruntime 1.24 on; a Jetson's onnxruntime is often older.

    A tensor names its file under the key ``location``, which protobuf stores verbatim: a model
    without those bytes (every model we export) names no file, and is not parsed here, so the
    runtime needs no onnx package and no second parse to open it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} not found")
    if b"location" not in path.read_bytes():
        return path
    try:
        import onnx  # noqa: PLC0415
        from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError("reading an ONNX model with external data needs the onnx package: pip install 'structvpr-edge[onnx]'") from exc
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ModelError(f"cannot read ONNX model {path}: {exc}") from exc
    sparse = ((s.values, s.indices) for s in proto.graph.sparse_initializer)
    for tensor in chain(_get_all_tensors(proto), *sparse):
        if uses_external_data(tensor):
            confined(path.parent / ExternalDataInfo(tensor).location, path.parent, ModelError)
    return path
