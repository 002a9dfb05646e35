"""The TensorRT-friendliness check names the offending node of hand-made graphs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from structvpr_edge.deploy.trt_check import check_trt_friendly
from structvpr_edge.errors import ModelError


def _model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _conv_relu(input_shape):
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    return _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="stem_conv", pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"], name="act")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [input_shape[0], 4, 8, 8])],
        [weight],
    )


def test_plain_graph_with_dynamic_batch_passes():
    report = check_trt_friendly(_conv_relu(["batch", 3, 8, 8]))
    assert report.dynamic_batch and report.input_shape == ["batch", 3, 8, 8]
    assert report.ops == {"Conv": 1, "Relu": 1} and report.nodes == 2


def test_nonzero_is_refused_by_name():
    model = _model(
        [helper.make_node("NonZero", ["x"], ["y"], name="find_mask_pixels")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])],
    )
    with pytest.raises(ModelError, match=r"'find_mask_pixels' \(NonZero\).*depends on the data"):
        check_trt_friendly(model)


def test_dynamic_spatial_dim_names_the_consuming_node():
    with pytest.raises(ModelError, match=r"'stem_conv' \(Conv\).*'x' with dim 2 = 'height'"):
        check_trt_friendly(_conv_relu([1, 3, "height", 8]))


@pytest.mark.parametrize(
    ("op", "reason"),
    [("Unique", "not supported"), ("SequenceConstruct", "sequence operators"), ("Loop", "control flow"), ("Hardmax", "support matrix")],
)
def test_unsupported_operators_are_refused(op, reason):
    model = _model(
        [helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    with pytest.raises(ModelError, match=rf"'my_{op.lower()}' \({op}\): .*{reason}"):
        check_trt_friendly(model)


def test_einsum_only_without_broadcasting():
    def einsum(equation, a_shape, b_shape):
        return _model(
            [helper.make_node("Einsum", ["a", "b"], ["y"], name="pool_einsum", equation=equation)],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape), helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )

    check_trt_friendly(einsum("ij,jk->ik", [2, 3], [3, 4]))
    with pytest.raises(ModelError, match=r"'pool_einsum' \(Einsum\).*ellipsis"):
        check_trt_friendly(einsum("...ij,...jk->...ik", [2, 2, 3], [2, 3, 4]))
    with pytest.raises(ModelError, match=r"'pool_einsum' \(Einsum\).*broadcasts index 'i'"):
        check_trt_friendly(einsum("ij,ij->ij", [2, 3], [1, 3]))


def test_quantize_linear_needs_int8_zero_point():
    def qdq(zero_point):
        return _model(
            [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="act_q"), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="act_dq")],
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
            [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(zero_point, "z")],
        )

    check_trt_friendly(qdq(np.array(0, np.int8)))
    with pytest.raises(ModelError, match=r"'act_q' \(QuantizeLinear\).*signed int8 zero points"):
        check_trt_friendly(qdq(np.array(128, np.uint8)))


def test_foreign_domain_and_new_opset_are_refused():
    model = _model(
        [helper.make_node("FusedConv", ["x"], ["y"], name="ort_fused", domain="com.microsoft")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        opset=18,
    )
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(ModelError, match=r"opset 18 > 17(.|\n)*'ort_fused' \(FusedConv\): from domain 'com.microsoft'"):
        check_trt_friendly(model)


def test_exported_student_passes(student_onnx):
    path, _ = student_onnx
    report = check_trt_friendly(path)
    assert report.dynamic_batch and report.opset == 17
    assert report.ops["Conv"] > 10 and "ReduceL2" in report.ops


def test_unreadable_file_is_a_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelError, match="cannot read ONNX model"):
        check_trt_friendly(bad)
