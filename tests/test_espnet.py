"""The shipped street segmenter: ESPNet loads every tensor of its weights, exports to ONNX
exactly, labels real street frames well (and random weights badly), and refuses bad input."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from structvpr_edge import cli
from structvpr_edge.bench.quality import camvid_subset
from structvpr_edge.data import segmentation
from structvpr_edge.data.segmentation import convert_label_pngs, segment_folder
from structvpr_edge.deploy import segmenter
from structvpr_edge.deploy.segmenter import export_segmenter, label_folder
from structvpr_edge.errors import ConfigError, DatasetError, ModelError
from structvpr_edge.eval.label_iou import folder_iou
from structvpr_edge.images import imwrite_whole, normalize
from structvpr_edge.labels import CAMVID_CLASSES, CLASS_ID, GROUP_ID, IGNORE, to_cityscapes, to_groups
from structvpr_edge.models.espnet import MEAN_RGB, STD_RGB, WEIGHTS, Decision, ESPNet, LabelGraph, load_espnet
from tests.test_segmentation import CITYSCAPES_IDS, write_images, write_model

CAMVID_FRAMES = ("0016E5_07959", "0016E5_08097", "0016E5_08159")  # val frames far apart in the sequence


def test_shipped_weights_load_every_tensor_and_match_their_provenance():
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    model = load_espnet()
    loaded = model.state_dict()
    assert len(state) == 189
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key
    assert sorted(k for k in loaded if k not in state) == sorted(k for k in loaded if k.endswith("num_batches_tracked"))
    assert not model.training
    provenance = (WEIGHTS.parent / "ESPNET-PROVENANCE.md").read_text()
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() in provenance
    assert "MIT License" in (WEIGHTS.parent / "ESPNET-LICENSE").read_text()


def test_the_tuned_default_loads_every_tensor_matches_its_provenance_and_differs_from_its_start():
    tuned_path = segmenter.SEGMENTER_WEIGHTS["espnet-camvid"]
    assert segmenter.DEFAULT_WEIGHTS == tuned_path and segmenter.SEGMENTERS[0] == "espnet-camvid"
    tuned, start = load_espnet(tuned_path).state_dict(), load_espnet(WEIGHTS).state_dict()
    assert tuned.keys() == start.keys()
    assert all(torch.equal(tuned[k], start[k]) for k in tuned if k.endswith(("running_mean", "running_var")))  # kept
    assert not any(torch.equal(tuned[k], start[k]) for k in tuned if k.endswith("conv.weight"))
    provenance = (WEIGHTS.parent / "ESPNET-CAMVID-PROVENANCE.md").read_text()
    assert hashlib.sha256(tuned_path.read_bytes()).hexdigest() in provenance and "research use only" in provenance


def test_a_state_dict_that_does_not_match_is_a_model_error_naming_the_file(tmp_path):
    state = ESPNet().state_dict()
    variants = {
        "missing.pth": ({k: v for k, v in state.items() if k != "encoder.level1.conv.weight"}, "missing encoder.level1.conv.weight"),
        "extra.pth": ({**state, "decoder.extra.weight": torch.zeros(1)}, "unexpected decoder.extra.weight"),
        "shape.pth": ({**state, "classifier.weight": torch.zeros(19, 19, 2, 2)}, r"classifier.weight is \(19, 19, 2, 2\)"),
        "list.pth": ([1, 2], "not a state dict"),
        "counter.pth": ({**state, "classifier.num_batches_tracked": torch.tensor(0)}, "unexpected classifier.num_batches_tracked"),
    }
    for name, (content, message) in variants.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(ModelError, match=message) as error:
            load_espnet(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(ModelError, match="junk.pth"):
        load_espnet(tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="not found"):
        load_espnet(tmp_path / "absent.pth")


def test_onnx_export_matches_torch_at_another_size(tmp_path):
    report = export_segmenter(tmp_path / "espnet.onnx")
    assert report.parity_max_abs_diff < 1e-3 and report.parity_ids_equal == 1.0
    pixels = np.random.default_rng(3).integers(0, 256, (2, 40, 72, 3), dtype=np.uint8)  # dynamic batch and size
    x = normalize(pixels, MEAN_RGB, STD_RGB)
    with torch.inference_mode():
        ids, logits = (t.numpy() for t in LabelGraph(load_espnet(segmenter.DEFAULT_WEIGHTS)).eval()(torch.from_numpy(x)))
    onnx_ids, onnx_logits = ort.InferenceSession(report.path, providers=["CPUExecutionProvider"]).run(None, {"image": x})
    assert onnx_ids.dtype == np.uint8 and onnx_ids.shape == (2, 40, 72) and logits.shape == (2, 20, 40, 72)
    assert np.abs(onnx_logits - logits).max() < 1e-3
    assert (onnx_ids == ids).mean() > 0.999
    assert onnx_ids.max() < 19  # the shipped decision never answers void


class FixedLogits(torch.nn.Module):
    """A stand-in network: the same logits whatever the image."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(bgr), -1, -1, -1)


def test_the_group_decision_picks_the_likeliest_group_then_its_best_class(tmp_path):
    probs = torch.full((1, 20, 1, 2), 1e-4)
    road, sidewalk, building, car, truck, bus = (CLASS_ID[n] for n in ("road", "sidewalk", "building", "car", "truck", "bus"))
    probs[0, [road, sidewalk, building], 0, 0] = torch.tensor([0.25, 0.35, 0.4])  # ground 0.6 against building 0.4
    probs[0, [car, truck, bus, building], 0, 1] = torch.tensor([0.2, 0.2, 0.2, 0.4])  # dynamic 0.6 against building 0.4
    logits = probs.log()
    image = torch.zeros(1, 3, 1, 2)
    as_classes = LabelGraph(FixedLogits(logits), Decision(mirror=False))(image)[0]
    as_groups = LabelGraph(FixedLogits(logits), Decision(mirror=False, groups=True))(image)[0]
    assert as_classes.tolist() == [[[building, building]]]
    assert as_groups[0, 0, 0] == sidewalk and as_groups[0, 0, 1] in (car, truck, bus)
    assert to_groups(as_groups.numpy(), "cityscapes").tolist() == [[[GROUP_ID["ground"], GROUP_ID["dynamic"]]]]
    report = export_segmenter(tmp_path / "groups.onnx", decision=Decision(groups=True))  # exact in ONNX too
    assert report.parity_ids_equal == 1.0
    with pytest.raises(ConfigError, match="cannot let void win"):
        LabelGraph(FixedLogits(logits), Decision(void=True, groups=True))


def test_camvid_ids_map_to_cityscapes_and_groups():
    camvid = np.arange(len(CAMVID_CLASSES) + 1, dtype=np.uint8)  # every class, void, one id past the table
    assert to_cityscapes(camvid, "camvid").tolist() == [10, 2, 5, 0, 1, 8, 7, 4, 13, 11, 12, IGNORE, IGNORE]
    groups = ["sky", "building", "pole_sign", "ground", "ground", "vegetation", "pole_sign", "building",
              "dynamic", "dynamic", "dynamic"]
    assert to_groups(camvid, "camvid").tolist() == [GROUP_ID[g] for g in groups] + [IGNORE, IGNORE]


def test_folder_iou_on_hand_made_maps(tmp_path):
    truth = np.array([[0, 0, 3, 3], [8, 8, 11, 11]], np.uint8)  # CamVid: sky sky road road / car car void void
    pred = np.array([[10, 2, 0, 0], [13, 0, 13, 2]], np.uint8)  # Cityscapes: sky building road road / car road car building
    for folder, label in (("truth", truth), ("pred", pred)):
        (tmp_path / folder / "val").mkdir(parents=True)
        cv2.imwrite(str(tmp_path / folder / "val" / "a.png"), label)
    result = folder_iou(tmp_path / "pred", tmp_path / "truth")
    assert result.frames == 1
    assert result.iou["sky"] == pytest.approx(1 / 2) and result.iou["ground"] == pytest.approx(2 / 3)
    assert result.iou["dynamic"] == pytest.approx(1 / 2) and result.iou["building"] == 0.0  # void pixels left out
    assert np.isnan(result.iou["vegetation"]) and result.mean == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 0) / 4)
    cv2.imwrite(str(tmp_path / "truth" / "val" / "b.png"), truth)
    with pytest.raises(DatasetError, match="no prediction"):
        folder_iou(tmp_path / "pred", tmp_path / "truth")
    (tmp_path / "truth" / "val" / "b.png").unlink()
    cv2.imwrite(str(tmp_path / "truth" / "val" / "a.png"), np.full((2, 4), 40, np.uint8))
    with pytest.raises(DatasetError, match=r"truth/val/a.png has class ids \[40\] outside the camvid table"):
        folder_iou(tmp_path / "pred", tmp_path / "truth")


def camvid_frames(camvid: Path, out: Path) -> tuple[Path, Path]:
    """A few CamVid val frames and their labels under ``out``; the last frame shrunk to an odd
    size (frames of mixed sizes), its label with it."""
    for name in CAMVID_FRAMES:
        for kind, suffix in (("images", ".jpg"), ("labels", ".png")):
            (out / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(camvid / kind / "val" / f"{name}{suffix}", out / kind / f"{name}{suffix}")
    last = CAMVID_FRAMES[-1]
    image = cv2.imread(str(out / "images" / f"{last}.jpg"))
    cv2.imwrite(str(out / "images" / f"{last}.jpg"), cv2.resize(image, (318, 239), interpolation=cv2.INTER_AREA))
    label = cv2.imread(str(out / "labels" / f"{last}.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(out / "labels" / f"{last}.png"), cv2.resize(label, (318, 239), interpolation=cv2.INTER_NEAREST))
    return out / "images", out / "labels"


@pytest.mark.slow
def test_labels_command_labels_real_streets_well_and_random_weights_do_not(camvid, tmp_path, capsys):
    """The default of ``structvpr-edge labels`` on real street frames (one of another size) writes
    Cityscapes train ids that match CamVid's labels on our groups, better than the untuned Cityscapes
    weights (CamVid val, not trained on); random weights do not."""
    images, truth = camvid_frames(camvid, tmp_path / "camvid")
    assert cli.main(["labels", "--images", str(images), "--out", str(tmp_path / "espnet")]) == 0
    assert "3 label maps written" in capsys.readouterr().out
    for name in CAMVID_FRAMES:
        label = cv2.imread(str(tmp_path / "espnet" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert label.shape == cv2.imread(str(images / f"{name}.jpg")).shape[:2]
        assert label.dtype == np.uint8 and label.max() < 19
    shipped = folder_iou(tmp_path / "espnet", truth)
    assert cli.main(["labels", "--images", str(images), "--out", str(tmp_path / "cityscapes"), "--segmenter", "espnet-cityscapes"]) == 0
    cityscapes = folder_iou(tmp_path / "cityscapes", truth)
    torch.manual_seed(0)
    torch.save(ESPNet().state_dict(), tmp_path / "random.pth")
    label_folder(images, tmp_path / "random", weights=tmp_path / "random.pth")
    random = folder_iou(tmp_path / "random", truth)
    scores = (f"shipped {shipped.iou} mean {shipped.mean:.3f}; untuned {cityscapes.iou} mean {cityscapes.mean:.3f}; "
              f"random weights {random.iou} mean {random.mean:.3f}")
    assert cityscapes.mean >= 0.5 and shipped.mean > cityscapes.mean + 0.1 and random.mean < 0.2, scores
    assert shipped.iou["sky"] > 0.8 and shipped.iou["ground"] > 0.6, scores


def test_labels_command_refuses_options_of_another_segmenter(tmp_path, capsys):
    write_images(tmp_path / "images")
    base = ["labels", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    for extra, message in ((["--scheme", "ade20k"], "--scheme"), (["--mean", "0", "0", "0"], "--mean"),
                           (["--size", "100x75"], "multiples of 8"), (["--onnx", "m.onnx", "--segmenter", "espnet-camvid"], "not allowed")):
        assert cli.main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
    assert cli.main(["labels", "--images", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 2
    assert "missing folder" in capsys.readouterr().err
    assert cli.SEGMENTERS == segmenter.SEGMENTERS


@pytest.mark.parametrize("output, classes, ids, message", [
    ("logits", 21, CITYSCAPES_IDS, "outputs 21 classes; a cityscapes model outputs 19"),
    ("ids", 30, {**CITYSCAPES_IDS, "red": 25}, r"class ids \[25\] outside the cityscapes table"),
])
def test_a_segmenter_made_for_other_classes_is_a_model_error_and_writes_nothing(tmp_path, output, classes, ids, message):
    write_images(tmp_path / "images")
    model = write_model(tmp_path / "seg.onnx", ids, classes, output)
    with pytest.raises(ModelError, match=message) as error:
        segment_folder(tmp_path / "images", model, tmp_path / "labels", "cityscapes", mean=(0, 0, 0), std=(1, 1, 1))
    assert str(model) in str(error.value)
    assert not list(tmp_path.glob("labels/**/*.png"))


def test_a_label_png_with_ids_outside_the_table_is_a_dataset_error(tmp_path):
    (tmp_path / "pred").mkdir()
    cv2.imwrite(str(tmp_path / "pred" / "a.png"), np.array([[2, 6], [151, 255]], np.uint8))
    with pytest.raises(DatasetError, match=r"pred/a.png has class ids \[151\] outside the ade20k table"):
        convert_label_pngs(tmp_path / "pred", tmp_path / "labels", "ade20k")
    assert not (tmp_path / "labels").exists()
    from structvpr_edge.eval.masks import checked_label  # the student's mask scores read label PNGs too

    cv2.imwrite(str(tmp_path / "pred" / "b.png"), np.array([[2, 40]], np.uint8))
    with pytest.raises(DatasetError, match=r"b.png has class ids \[40\] outside the camvid table"):
        checked_label(tmp_path / "pred" / "b.png", "camvid")
    cv2.imwrite(str(tmp_path / "pred" / "c.png"), np.array([[0, 11]], np.uint8))  # CamVid sky, void
    np.testing.assert_array_equal(checked_label(tmp_path / "pred" / "c.png", "camvid"), [[10, 255]])  # Cityscapes sky, ignore


def test_a_label_map_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails half way (a full disk) leaves no label map a rerun would keep as done."""
    def half_write(path, label, *args):
        Path(path).write_bytes(b"\x89PNG half")
        return False

    monkeypatch.setattr(segmentation.cv2, "imwrite", half_write)
    target = tmp_path / "labels" / "a.png"
    with pytest.raises(DatasetError, match="cannot write"):
        imwrite_whole(target, np.zeros((2, 2), np.uint8))
    assert not list(target.parent.iterdir())  # nor a partial file


def test_a_train_subset_for_choosing_the_segmenter_pairs_every_nth_frame_with_its_label(tmp_path):
    camvid = tmp_path / "camvid"
    names = [f"0001TP_{i:06d}" for i in range(7)]
    for folder, suffix in (("images", ".jpg"), ("labels", ".png")):
        (camvid / folder / "train").mkdir(parents=True)
        for name in names:
            (camvid / folder / "train" / f"{name}{suffix}").write_text(name)
    images, labels = camvid_subset(camvid, "train", 3, tmp_path / "work")
    assert sorted(p.stem for p in images.iterdir()) == sorted(p.stem for p in labels.iterdir()) == [names[0], names[3], names[6]]
    assert (labels / f"{names[3]}.png").read_text() == names[3]
    assert camvid_subset(camvid, "train", 1, tmp_path / "work") == (camvid / "images" / "train", camvid / "labels" / "train")
