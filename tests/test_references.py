import json

import numpy as np
import pytest
import torch

from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import ModelError
from structvpr_edge.eval.evaluate import evaluate
from structvpr_edge.eval.models import load_extractor
from structvpr_edge.eval.references import LabelOracleDescriptor, PixelsDescriptor
from structvpr_edge.models.efficientnet_lite import EfficientNetLite0, load_imagenet_weights


def test_imagenet_weights_load_strictly_and_reject_mismatch():
    model = EfficientNetLite0(stride=16, imagenet=True)
    assert len(model._blocks) == 11 and model.out_channels == 112
    broken = EfficientNetLite0(stride=32)
    broken._blocks[3]._project_conv = torch.nn.Conv2d(144, 41, 1, bias=False)
    with pytest.raises(ModelError):
        load_imagenet_weights(broken)


@pytest.mark.slow
def test_imagenet_gem_on_real_corridor(corridor):
    """Proves the ImageNet weights are wired correctly (README reference: R@1 = 0.54)."""
    result = evaluate(load_extractor("imagenet-gem", image_size=(160, 120)), load_dataset(corridor))
    assert result.recall["1"] >= 0.5


def test_pixels_descriptor_is_zero_mean_unit_norm():
    images = np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)
    desc = PixelsDescriptor()(images)
    assert desc.shape == (3, 32 * 24)
    np.testing.assert_allclose(np.linalg.norm(desc, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(desc.mean(axis=1), 0, atol=1e-6)


def test_label_oracle_ignores_dynamic_classes():
    labels = np.full((2, 24, 32), 10, np.uint8)  # all sky
    labels[:, 12:] = 0  # road below
    labels[1, 12:, :8] = 13  # a car on the road of the second image
    desc = LabelOracleDescriptor(grid=(4, 2))(labels)
    assert desc.shape == (2, 5 * 8)
    assert 0.8 < float(desc[0] @ desc[1]) < 1.0


def test_eval_command_json_and_plots(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["eval", "--model", "label-oracle", "--dataset", str(tiny_dataset), "--json", str(out),
                 "--plot", str(tmp_path / "c.png"), "--retrievals", str(tmp_path / "v.png")])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["recall"]) == {"1", "5", "10", "20"}
    assert report["num_queries"] == 3 and report["num_database"] == 3
    assert report["num_queries_without_positive"] == 1
    assert report["recall"]["1"] == pytest.approx(2 / 3)  # label maps are constant per place id
    assert set(report["per_condition"]) == {"dynamic", "night"}
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "v.png").stat().st_size > 0


def test_eval_command_rejects_unknown_model(tiny_dataset, capsys):
    assert main(["eval", "--model", "nope", "--dataset", str(tiny_dataset)]) == 2
    assert "unknown model" in capsys.readouterr().err
