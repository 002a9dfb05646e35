"""What a deployed model needs around it: input size and format, colour order, normalisation
and the descriptor layout. Stored as ONNX metadata props and in engine manifests; torch-free."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ModelError
from .layout import DescriptorLayout

PREFIX = "structvpr."


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
    checkpoint_sha256: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def input_name(self) -> str:
        return "images"

    @property
    def output_name(self) -> str:
        return "descriptor"

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


def read_onnx_info(path) -> ModelInfo:
    """ModelInfo of an exported ONNX file, read with onnxruntime (no onnx package needed)."""
    import onnxruntime as ort  # noqa: PLC0415

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"cannot load ONNX model {path}: {exc}") from exc
    return ModelInfo.from_props(session.get_modelmeta().custom_metadata_map)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
