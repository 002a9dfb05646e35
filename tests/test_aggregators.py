import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from structvpr_edge.errors import ConfigError, ModelError
from structvpr_edge.models.gem import GeM
from structvpr_edge.models.mixvpr import MixVPR
from structvpr_edge.models.netvlad import NetVLAD


def test_mixvpr_shape_and_errors():
    model = MixVPR(in_channels=16, out_dim=32, feature_hw=(4, 5), mix_depth=2, out_rows=4)
    assert model(torch.randn(2, 16, 4, 5)).shape == (2, 32)
    with pytest.raises(ModelError, match="fixed"):
        model(torch.randn(2, 16, 5, 4))
    with pytest.raises(ModelError):
        model(torch.randn(2, 8, 4, 5))
    with pytest.raises(ConfigError, match="divisible"):
        MixVPR(in_channels=16, out_dim=30, feature_hw=(4, 5), out_rows=4)


def test_netvlad_matches_the_per_cluster_definition():
    torch.manual_seed(0)
    model = NetVLAD(in_channels=8, out_dim=12, num_clusters=3).eval()
    x = torch.randn(2, 8, 3, 4)
    local = F.normalize(x, dim=1).flatten(2)  # (B, C, N)
    assign = model.assign(F.normalize(x, dim=1)).flatten(2).softmax(dim=1)  # (B, K, N)
    residuals = [
        (assign[:, k, None, :] * (local - model.centroids[k][None, :, None])).sum(dim=2) for k in range(3)
    ]
    vlad = F.normalize(torch.stack(residuals, dim=1), dim=2).flatten(1)
    expected = model.proj(F.normalize(vlad, dim=1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected.detach(), atol=1e-5, rtol=1e-5)
        assert model(torch.randn(1, 8, 7, 5)).shape == (1, 12)  # any spatial size
    with pytest.raises(ModelError):
        model(torch.randn(1, 4, 3, 4))
    with pytest.raises(ConfigError):
        NetVLAD(in_channels=8, out_dim=12, num_clusters=1)


def _onnx_matches_torch(model, export_shape, run_shape, dynamic, path):
    model.eval()
    torch.onnx.export(
        model, (torch.rand(*export_shape),), str(path), input_names=["features"], output_names=["descriptor"],
        opset_version=17, dynamo=False, dynamic_axes={"features": {axis: f"dim{axis}" for axis in dynamic}, "descriptor": {0: "dim0"}},
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(*run_shape)
    (got,) = session.run(None, {"features": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4


# The TorchScript exporter warns it is deprecated; the dynamo one needs onnxscript, not installed.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    "name, model, export_shape, run_shape, dynamic",
    [
        ("mixvpr", lambda: MixVPR(16, 32, (4, 5), mix_depth=2), (1, 16, 4, 5), (3, 16, 4, 5), [0]),
        ("netvlad", lambda: NetVLAD(16, 32, num_clusters=4), (1, 16, 6, 7), (2, 16, 5, 9), [0, 2, 3]),
        ("gem", lambda: GeM(), (1, 16, 8, 10), (2, 16, 6, 7), [0, 2, 3]),  # exported at 8x10, run at 6x7
    ],
)
def test_aggregators_export_to_onnx(name, model, export_shape, run_shape, dynamic, tmp_path):
    torch.manual_seed(0)
    _onnx_matches_torch(model(), export_shape, run_shape, dynamic, tmp_path / f"{name}.onnx")
