"""INT8 and FP16 variants of an exported FP32 ONNX, all from ONE pass of range collection.

The ranges (per-tensor min/max after entropy, min-max or percentile calibration) are measured
once with ONNX Runtime and reused for every artifact, so the ORT CPU form, the TensorRT Q/DQ
form and the TensorRT < 10 calibration cache quantize the same tensors the same way:

- ``cpu``: QDQ, unsigned asymmetric 8-bit activations, signed per-channel weights: the form
  ORT's x86/ARM integer kernels run fastest.
- ``trt``: QDQ, signed symmetric 8-bit activations and weights (zero points 0), float bias:
  the explicit quantization TensorRT 10 and 11 build from. Never run it on a CPU: symmetric
  s8 activations are 2-3x slower there than the ``cpu`` form.
- the TensorRT calibration cache: the text format IInt8EntropyCalibrator2 reads and writes,
  ``TRT-<version>-EntropyCalibration2`` then ``tensor: <hex of float32 scale>`` with
  scale = amax / 127.

Torch-free; needs onnx and onnxruntime.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import logging
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import BackendError, ConfigError, ModelError
from ..modelinfo import graph_digest, proto_info, sha256_file, stamp_info

METHODS = ("entropy", "minmax", "percentile")
CACHE_HEADER = re.compile(r"^TRT-(\d+)-EntropyCalibration2$")


@dataclass(frozen=True)
class QuantForm:
    """One way to write Q/DQ nodes from the shared ranges."""

    name: str
    activation_type: str  # onnxruntime QuantType member name
    extra_options: dict
    op_types: tuple[str, ...] = ()  # () quantizes every operator type ORT can


# Only the convolutional trunk: the head's Gemm/MatMul see a few hundred values per image, and
# Q/DQ around them cost more on the CPU than integer kernels save (ORT, 160x120, 2 threads:
# 1.29 ms with the head quantized, 1.20 ms without, same cosine to FP32).
CPU_FORM = QuantForm("cpu", "QUInt8", {"WeightSymmetric": True}, ("Conv", "Clip", "Relu"))
TRT_FORM = QuantForm(
    "trt",
    "QInt8",
    # TensorRT's DequantizeLinear takes int8 only: keep the bias float. MatMul weights are
    # (..., in, out): quantize them per output channel, the last axis.
    {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False, "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1}},
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime.quantization prints per-step chatter and a pre-processing warning we do not need."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod  # noqa: PLC0415

    if name not in METHODS:
        raise ConfigError(f"calibration method must be one of {METHODS}, got {name!r}")
    return {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[name]


def collect_ranges(onnx_path: Path, inputs: Iterable[np.ndarray], method: str, total: int | None = None, chunk: int = 16):
    """ONE pass over ``inputs`` (model-ready arrays) -> onnxruntime TensorsData for every float tensor.

    Every float tensor is calibrated, not only the ones ORT quantizes, because the TensorRT
    cache needs a scale for each. Data goes in chunks: ORT keeps every intermediate output of a
    ``collect_data`` call in memory until it folds them into its histograms.
    """
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import CalibrationDataReader, create_calibrator  # noqa: PLC0415

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name

    class Chunk(CalibrationDataReader):
        def __init__(self, arrays: list[np.ndarray]) -> None:
            self.feeds = iter([{input_name: array} for array in arrays])

        def get_next(self) -> dict | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="structvpr-calib-") as tmp, _quiet():
        calibrator = create_calibrator(
            Path(onnx_path), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=_method(method),
            # ORT's symmetric percentile bins |x| over [min|x|, max|x|] and fails on near-constant
            # tensors; the two-sided histogram spans [-max|x|, max|x|] and always has room.
            extra_options={"symmetric": False},
        )
        images = iter(tqdm(inputs, total=total, desc=f"calibrate ({method})", unit="image", leave=False))
        while arrays := list(islice(images, chunk)):
            calibrator.collect_data(Chunk(arrays))
        return calibrator.compute_data()


def save_ranges(ranges, path: Path) -> Path:
    """ORT's own JSON calibration cache, which quantize_static reloads instead of recalibrating;
    ranges only, without the histograms they came from (30x the size, and never read again), in name
    order so that one calibration always writes the same bytes."""
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data  # noqa: PLC0415

    lean = {name: TensorData(lowest=ranges[name].range_value[0], highest=ranges[name].range_value[1]) for name in sorted(ranges.keys())}
    save_tensors_data(TensorsData(ranges.calibration_method, lean), path)
    return path


def load_ranges(path: Path):
    from onnxruntime.quantization.calibrate import load_tensors_data  # noqa: PLC0415

    return load_tensors_data(path)


def stamp_precision(proto, **extra) -> None:
    """Record the precision (and the layers kept in FP32) in the model's ModelInfo props, with the
    digest of this graph (its weights are no longer the FP32 export's)."""
    info = proto_info(proto)
    stamp_info(proto, dataclasses.replace(info, extra={**info.extra, **extra}, graph_sha256=graph_digest(proto.SerializeToString())))


def quantize(onnx_path: Path, ranges_path: Path, out: Path, form: QuantForm, method: str, nodes_to_exclude: list[str]) -> Path:
    """Write the Q/DQ model of ``form`` from the saved ranges (no calibration runs here)."""
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: PLC0415

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise BackendError("this onnxruntime cannot reuse calibration ranges (quantize_static has no calibration_cache_path); upgrade onnxruntime")
    with _quiet():
        quantize_static(
            str(onnx_path), str(out), None, quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType[form.activation_type], weight_type=QuantType.QInt8,
            op_types_to_quantize=list(form.op_types) or None, nodes_to_exclude=list(nodes_to_exclude), calibrate_method=_method(method),
            calibration_cache_path=str(ranges_path), extra_options=dict(form.extra_options),
        )
    proto = onnx.load(str(out))
    stamp_precision(proto, precision=f"int8-{form.name}", fp32_nodes=list(nodes_to_exclude), ranges_sha256=sha256_file(ranges_path))
    onnx.save(proto, str(out))
    return out


def convert_fp16(onnx_path: Path, out: Path) -> Path:
    """FP16 weights and activations, FP32 inputs and outputs (Cast nodes at the edges).

    ONNX Runtime ships the float16 converter of onnxconverter-common, so no extra dependency.
    Nothing is kept in FP32 inside: on the ImageNet-initialised student at 160x120 (40 real
    frames) the min cosine to FP32 was 0.999998 with and without ReduceL2/Pow blocked, and the
    ReLU6-bounded features cannot overflow FP16 in GeM's x^p.
    """
    import onnx  # noqa: PLC0415
    from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415

    proto = convert_float_to_float16(onnx.load(str(onnx_path)), keep_io_types=True)
    stamp_precision(proto, precision="fp16")
    onnx.save(proto, str(out))
    return out


def sensitive_groups(proto) -> list[tuple[str, list[str]]]:
    """The layer groups INT8 hurts most, in the order they are handed back to FP32.

    first conv (raw pixels carry the widest range), the last projections (Gemm/MatMul after the
    last Conv), the normalisation tail (from the first ReduceL2 to the output) and GeM's power
    (Pow nodes with the clamp feeding them: x^p magnifies the rounding error).
    """
    nodes = list(proto.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    l2 = [i for i, n in enumerate(nodes) if n.op_type == "ReduceL2"]
    producers = {out: n for n in nodes for out in n.output}
    power = []
    for node in nodes:
        if node.op_type == "Pow":
            feeder = producers.get(node.input[0])
            power += [node.name] + ([feeder.name] if feeder is not None and feeder.op_type in ("Clip", "Max", "Relu") else [])
    groups = [
        ("first conv", [nodes[convs[0]].name] if convs else []),
        ("last projection", [n.name for n in nodes[(convs[-1] if convs else -1) + 1 :] if n.op_type in ("Gemm", "MatMul")]),
        ("normalization", [n.name for n in nodes[l2[0] :]] if l2 else []),
        ("GeM power", power),
    ]
    return [(name, members) for name, members in groups if members]


def quantization_types(proto) -> dict:
    """What a Q/DQ model's activations were quantized to: QuantizeLinear zero-point dtypes, all zero?"""
    from onnx import numpy_helper  # noqa: PLC0415

    initializers = {i.name: i for i in proto.graph.initializer}
    dtypes, all_zero = set(), True
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in initializers:
            zero_point = numpy_helper.to_array(initializers[node.input[2]])
            dtypes.add(str(zero_point.dtype))
            all_zero &= not zero_point.any()
    return {"activation_dtypes": sorted(dtypes), "zero_points_all_zero": all_zero}


def trt_version_number(version: str) -> int:
    """'8.6.1.6' -> 8601 and '10.3.0' -> 100300: NV_TENSORRT_VERSION, as the cache header spells it."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0]
    major, minor, patch = parts[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def trt_calibration_cache(ranges, trt_version: str = "8.6.1", skip_tensors: Iterable[str] = ()) -> str:
    """TensorRT calibration cache text from ORT ranges; tensors in ``skip_tensors`` get no scale,
    so TensorRT keeps the layers around them in higher precision."""
    lines = [f"TRT-{trt_version_number(trt_version)}-EntropyCalibration2"]
    for name in sorted(set(ranges.keys()) - set(skip_tensors)):
        amax = max(float(np.max(np.abs(v))) for v in ranges[name].range_value)
        lines.append(f"{name}: {struct.pack('>f', max(amax, 1e-8) / 127.0).hex()}")
    return "\n".join(lines) + "\n"


def parse_trt_calibration_cache(text: str) -> tuple[int, dict[str, float]]:
    """(TensorRT version number of the header, tensor -> scale); ModelError if malformed."""
    lines = [line for line in text.splitlines() if line.strip()]
    match = CACHE_HEADER.match(lines[0]) if lines else None
    if match is None:
        raise ModelError("not a TensorRT entropy calibration cache (first line must be TRT-<version>-EntropyCalibration2)")
    scales = {}
    for line in lines[1:]:
        name, _, hex_scale = line.rpartition(": ")
        try:
            scales[name] = struct.unpack(">f", bytes.fromhex(hex_scale))[0]
        except (ValueError, struct.error) as exc:  # not hex, or not the 4 bytes of a float32 (a file cut off)
            raise ModelError(f"malformed calibration cache line {line!r}") from exc
    return int(match.group(1)), scales


def retarget_cache(text: str, trt_version: str) -> str:
    """The same scales under the header of the running TensorRT: the scales come from ranges
    measured outside TensorRT, so they do not depend on the TensorRT version."""
    parse_trt_calibration_cache(text)
    body = text.partition("\n")[2]
    return f"TRT-{trt_version_number(trt_version)}-EntropyCalibration2\n{body}"
