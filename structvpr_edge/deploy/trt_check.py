"""Is an ONNX graph buildable by TensorRT 8.6, 10.x and 11.x alike? Checked before any engine build.

The allow-list is the intersection of the onnx-tensorrt support matrices (docs/operators.md)
of those releases, minus what makes an engine's shapes data-dependent or adds control flow
(NonZero, Unique, NonMaxSuppression, sequences, Loop/If/Scan): a place-recognition descriptor
needs none of them, and each one has broken an engine build or a DLA placement somewhere.
Spatial shapes must be static; only dim 0 (the batch) may be symbolic, served by an
optimization profile at build time. Torch-free: needs only the ``onnx`` package.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError
from ..modelinfo import load_onnx

# TensorRT 8.6 parses opsets up to 17; 10.x and 11.x parse more.
MAX_OPSET = 17

ALLOWED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather
    GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
    HardSigmoid HardSwish Identity InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual
    Log LogSoftmax LpNormalization LpPool LRN MatMul Max MaxPool Mean Min Mul Neg Not Or Pad Pow PRelu
    QuantizeLinear Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize Round Selu Shape Sigmoid Sign
    Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
    """.split()
)

REFUSED_BECAUSE = {
    **dict.fromkeys(("NonZero", "NonMaxSuppression", "Compress"), "its output shape depends on the data"),
    "Unique": "not supported by the TensorRT ONNX parser",
    **dict.fromkeys(("Loop", "If", "Scan"), "control flow: engines here must be straight-line graphs"),
}


@dataclass(frozen=True)
class TrtCheckReport:
    """What the check saw; printed by ``export``."""

    nodes: int
    ops: dict[str, int]
    opset: int
    input_shape: list  # dims as ints, the batch as its symbol when dynamic
    dynamic_batch: bool

    def summary(self) -> str:
        batch = "dynamic batch (needs an optimization profile)" if self.dynamic_batch else "static batch"
        return f"TensorRT check passed: {self.nodes} nodes, {len(self.ops)} operator types, opset {self.opset}, input {self.input_shape}, {batch}"


def _dims(value_info) -> list:
    """Dims of a graph input/output: int, the symbol's name, or None when unknown."""
    return [dim.dim_value if dim.HasField("dim_value") else dim.dim_param or None for dim in value_info.type.tensor_type.shape.dim]


def _node_label(node) -> str:
    return f"node {node.name or '<unnamed>'!r} ({node.op_type})"


def _einsum_problem(node, shapes: dict[str, list]) -> str | None:
    """TensorRT's Einsum takes neither ellipses nor broadcasting between inputs."""
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "")
    if "..." in equation:
        return f"Einsum with an ellipsis ({equation!r}) broadcasts, which TensorRT refuses"
    sizes: dict[str, set] = {}
    for term, name in zip(equation.split("->")[0].split(","), node.input, strict=False):
        for letter, dim in zip(term.strip(), shapes.get(name, []), strict=False):
            if isinstance(dim, int):
                sizes.setdefault(letter, set()).add(dim)
    broadcast = sorted(letter for letter, found in sizes.items() if len(found) > 1)
    if broadcast:
        return f"Einsum {equation!r} broadcasts index {broadcast[0]!r} between inputs, which TensorRT refuses"
    return None


def _zero_point_problem(node, initializers: dict) -> str | None:
    """TensorRT quantizes symmetrically to signed int8: zero points must be int8 zeros."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    zero_point = initializers.get(node.input[2])
    if zero_point is None:
        return "its zero point is computed at run time; TensorRT needs a constant int8 zero"
    if zero_point.data_type != TensorProto.INT8 or numpy_helper.to_array(zero_point).any():
        return "TensorRT needs signed int8 zero points equal to 0 (use model.int8.trt.onnx, not the CPU form)"
    return None


def _node_problem(node, shapes: dict[str, list], initializers: dict) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return f"from domain {node.domain!r}; TensorRT parses only standard ONNX operators"
    if node.op_type not in ALLOWED_OPS:
        if "Sequence" in node.op_type:
            return "sequence operators are not supported by TensorRT"
        return REFUSED_BECAUSE.get(node.op_type, "not in the TensorRT 8.6/10/11 support matrix")
    if node.op_type == "Einsum":
        return _einsum_problem(node, shapes)
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return _zero_point_problem(node, initializers)
    return None


def _shape_problems(graph) -> list[str]:
    problems = []
    consumers = {name: node for node in reversed(graph.node) for name in node.input}  # the first consumer of each
    producers = {name: node for node in graph.node for name in node.output}
    initializer_names = {i.name for i in graph.initializer}
    for kind, values, owners in (("input", graph.input, consumers), ("output", graph.output, producers)):
        for value in values:
            if value.name in initializer_names:
                continue
            for axis, dim in enumerate(_dims(value)):
                if axis > 0 and not (isinstance(dim, int) and dim > 0):
                    node = owners.get(value.name)
                    where = f"{_node_label(node)} " if node is not None else ""
                    problems.append(
                        f"{where}uses graph {kind} {value.name!r} with dim {axis} = {dim!r}: only dim 0 (the batch) may be "
                        "dynamic; export with a fixed --size"
                    )
    return problems


def check_trt_friendly(model, max_opset: int = MAX_OPSET) -> TrtCheckReport:
    """Raise ModelError naming every offending node; ``model`` is a path or an onnx ModelProto."""
    import onnx  # noqa: PLC0415

    if isinstance(model, (str, Path)):
        model = load_onnx(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    problems = [] if opset <= max_opset else [f"opset {opset} > {max_opset}, the newest TensorRT 8.6 parses; export with --opset {max_opset}"]
    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - shapes only sharpen the Einsum check; a failure loses nothing else
        inferred = graph
    shapes = {v.name: _dims(v) for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}
    initializers = {i.name: i for i in graph.initializer}
    problems += [f"{_node_label(node)}: {reason}" for node in graph.node if (reason := _node_problem(node, shapes, initializers))]
    problems += _shape_problems(graph)
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ModelError(f"the graph is not TensorRT-friendly:\n  {shown}")
    real_inputs = [v for v in graph.input if v.name not in initializers]
    input_shape = _dims(real_inputs[0]) if real_inputs else []
    return TrtCheckReport(
        nodes=len(graph.node),
        ops=dict(Counter(n.op_type for n in graph.node).most_common()),
        opset=opset,
        input_shape=input_shape,
        dynamic_batch=bool(input_shape) and not isinstance(input_shape[0], int),
    )
