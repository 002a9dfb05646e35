"""What a deployed model needs around it: input size and format, colour order, normalisation
and the descriptor layout. Stored as ONNX metadata props and in engine manifests; torch-free."""
from __future__ import annotations

import hashlib
import json
import math
from numbers import Integral, Real
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from . import __version__
from .errors import ModelError
from .files import sha256_of
from .images import MAX_SIDE
from .layout import DescriptorLayout
from .safety import check_onnx

if TYPE_CHECKING:  # the runtime reads metadata with onnxruntime: onnx is needed only where a graph is loaded
    import onnx

PREFIX = "structvpr."
GRAPH_FIELD = 7  # ModelProto.graph in onnx.proto
COLOURS = ("BGR", "RGB")
DTYPES = {True: "uint8", False: "float32"}  # the input's dtype, by uint8_input


@dataclass(frozen=True)
class ModelInfo:
    width: int
    height: int
    uint8_input: bool  # True: (B, H, W, 3) uint8 in `colour` order; False: (B, 3, H, W) float32 normalised RGB
    colour: str  # channel order of the input: "BGR" (OpenCV frames) or "RGB"
    mean: tuple[float, float, float]  # RGB, on the 0..1 scale
    std: tuple[float, float, float]
    layout: DescriptorLayout
    label_groups: tuple[str, ...] = ()
    model_type: str = ""
    model_version: str = ""
    checkpoint_sha256: str = ""  # the checkpoint file exported (its bytes: a kit's calibration belongs to it)
    weights_sha256: str = ""  # fingerprint of the weights (weights_fingerprint at export): what a map answers to
    graph_sha256: str = ""  # graph_digest of the ONNX as written: weights edited after export are caught
    extra: dict = field(default_factory=dict)
    input_name: ClassVar[str] = "images"
    output_name: ClassVar[str] = "descriptor"

    def __post_init__(self) -> None:
        """Metadata is data from a file: every field typed and bounded when it is read, not on the first frame."""
        sides = [getattr(self, n) for n in ("width", "height")]
        if not all(isinstance(v, Integral) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in sides):
            raise ModelError(f"model metadata: input size must be integers in 1..{MAX_SIDE}, got {self.width!r}x{self.height!r}")
        if not isinstance(self.uint8_input, bool) or self.colour not in COLOURS:
            raise ModelError(f"model metadata: uint8_input must be true/false and colour one of {COLOURS}, got {self.uint8_input!r}, {self.colour!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) for v in values) or (name == "std" and min(values) <= 0):
                raise ModelError(f"model metadata: {name} must be 3 finite numbers (std > 0), got {values!r}")
        extra = self.extra
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra) or not isinstance(extra.get("precision", ""), str):
            raise ModelError(f"model metadata: extra must be an object with string keys (its precision a string), got {extra!r}")

    def check_io(self, inputs: list[tuple[str, str, list]], outputs: list[tuple[str, list]]) -> None:
        """Refuse a graph whose (name, dtype, shape) input and (name, shape) output disagree with this
        metadata, when it is opened rather than on its first frame. A dimension the graph leaves
        symbolic (the batch) matches anything."""
        image = [None, self.height, self.width, 3] if self.uint8_input else [None, 3, self.height, self.width]
        expected = ([(self.input_name, DTYPES[self.uint8_input], image)], [(self.output_name, [None, self.layout.dim])])

        def fits(got: tuple, want: tuple) -> bool:
            *names, shape = got
            *wanted, dims = want
            return names == wanted and len(shape) == len(dims) and all(w is None or not isinstance(d, int) or d == w for d, w in zip(shape, dims))

        for kind, got, want in zip(("input", "output"), (inputs, outputs), expected):
            if len(got) != 1 or not fits(got[0], want[0]):
                raise ModelError(f"the model's graph {kind} {got} disagrees with its metadata, which expects {want}: re-export it with structvpr-edge export")

    def to_props(self) -> dict[str, str]:
        """Flat string key/values for ONNX ``metadata_props``."""
        data = asdict(self)
        data["layout"] = self.layout.to_dict()
        return {PREFIX + key: json.dumps(value) for key, value in data.items()}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelInfo":
        values = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if not values:
            raise ModelError("the model carries no structvpr metadata: export it with `structvpr-edge export`")
        try:
            data = {k: json.loads(v) for k, v in values.items()}
            data["layout"] = DescriptorLayout.from_dict(data["layout"])
            data["mean"], data["std"] = tuple(data["mean"]), tuple(data["std"])
            data["label_groups"] = tuple(data.get("label_groups", ()))
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"malformed structvpr metadata: {exc}") from exc


def model_info(meta: dict, width: int, height: int, uint8_input: bool, weights_sha256: str) -> ModelInfo:
    """The ModelInfo of checkpoint ``meta`` at this input size and format; ``weights_sha256`` is
    ``models.checkpoint.weights_fingerprint`` of its loaded model."""
    spec = meta["input"]
    if spec["kind"] != "rgb":
        raise ModelError(f"only RGB students are deployed; {meta['path']} is a {meta['model_type']}")
    return ModelInfo(
        width, height, uint8_input, colour="BGR" if uint8_input else "RGB", mean=tuple(spec["mean"]), std=tuple(spec["std"]),
        layout=DescriptorLayout.from_dict(meta["layout"]), label_groups=tuple(meta["label_groups"]), model_type=meta["model_type"],
        model_version=meta.get("version", __version__), checkpoint_sha256=sha256_file(meta["path"]), weights_sha256=weights_sha256,
    )


def proto_info(proto: onnx.ModelProto) -> ModelInfo:
    """The ModelInfo stamped in a loaded ONNX ModelProto."""
    return ModelInfo.from_props({p.key: p.value for p in proto.metadata_props})


def stamp_info(proto: onnx.ModelProto, info: ModelInfo) -> None:
    """Replace ``proto``'s structvpr metadata with ``info``'s; other metadata is kept."""
    kept = [p for p in proto.metadata_props if not p.key.startswith(PREFIX)]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in info.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def graph_digest(data: bytes) -> str:
    """sha256 of the ``graph`` field (weights and nodes, metadata left out) of a serialized ONNX
    ModelProto, read from the protobuf wire format: the runtime needs no onnx package for it, and
    the digest can be stamped into the metadata it leaves out."""
    digest, pos = hashlib.sha256(), 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(data):
                raise ModelError("the ONNX file is truncated")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < len(data):
        key = varint()
        kind = key & 7
        if kind == 0:  # a varint: no bytes of the graph
            varint()
            continue
        if kind not in (1, 2, 5):
            raise ModelError(f"the ONNX file is not a protobuf model (wire type {kind})")
        size = varint() if kind == 2 else {1: 8, 5: 4}[kind]
        if key >> 3 == GRAPH_FIELD:
            digest.update(data[pos : pos + size])
        pos += size
    return digest.hexdigest()


def info_digest(info: ModelInfo) -> str:
    """sha256 of a model's metadata less its graph digest: the weights' and ranges' identity, the
    precision and the layers kept in FP32. A calibration kit records it for each graph, because an
    export of the same weights on another CPU or simplifier release differs in the last bits of
    its folded weights, so in its graph digest, and is still the calibrated graph."""
    props = {k: v for k, v in info.to_props().items() if k != PREFIX + "graph_sha256"}
    return hashlib.sha256(json.dumps(props, sort_keys=True).encode()).hexdigest()


def verified_weights(path: str | Path, info: ModelInfo) -> str:
    """``info.weights_sha256`` once the ONNX file at ``path`` holds the graph its metadata records
    (ModelError otherwise: weights edited or damaged since export). "" for a model exported before
    fingerprints, whose identity is then its file's sha256."""
    if info.graph_sha256 and graph_digest(Path(path).read_bytes()) != info.graph_sha256:
        raise ModelError(f"{path}: its weights are not the ones it was exported with (edited or damaged); export it again")
    return info.weights_sha256 if info.graph_sha256 else ""


def load_onnx(path: str | Path, external_data: bool = True) -> onnx.ModelProto:
    """The onnx ModelProto at ``path`` (external data confined to its folder: check_onnx), or a
    ModelError naming the file: protobuf's DecodeError for a truncated or damaged copy names
    neither the file nor what to do."""
    import onnx  # noqa: PLC0415

    check_onnx(path)
    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError and onnx's own
        raise ModelError(f"cannot read ONNX model {path}: truncated or damaged ({exc}); copy or export it again") from exc


def read_onnx_info(path) -> ModelInfo:
    """ModelInfo of an exported ONNX file, read with onnxruntime (no onnx package needed)."""
    import onnxruntime as ort  # noqa: PLC0415

    check_onnx(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot load ONNX model {path}: {exc}") from exc
    return ModelInfo.from_props(session.get_modelmeta().custom_metadata_map)


def sha256_file(path: str | Path) -> str:
    with Path(path).open("rb") as handle:
        return sha256_of(handle)
