import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from structvpr_edge.cli import main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.data import segmentation
from structvpr_edge.data.segmentation import LABELLER_FILE, convert_label_pngs, segment_folder
from structvpr_edge.errors import ConfigError, DatasetError, ModelError
from structvpr_edge.labels import (
    ADE20K_CLASSES, ADE20K_TO_CITYSCAPES, CITYSCAPES_TO_GROUP, GROUP_ID, IGNORE, to_cityscapes,
    classes_to_groups, to_groups,
)
from tests.conftest import write_tiny_dataset

# The toy model recognises four flat colours: (RGB, 1x1-conv weights, bias) per colour.
COLOURS = {
    "blue": ((0, 0, 255), (-1, -1, 1), 0.0),
    "black": ((0, 0, 0), (-1, -1, -1), 0.5),
    "red": ((255, 0, 0), (1, -1, -1), 0.0),
    "green": ((0, 255, 0), (-1, 1, -1), 0.0),
}
ADE20K_IDS = {"blue": 2, "black": 6, "red": 20, "green": 4}  # sky, road, car, tree
CITYSCAPES_IDS = {"blue": 10, "black": 0, "red": 13, "green": 8}  # sky, road, car, vegetation
GROUP_IDS = {"blue": GROUP_ID["sky"], "black": GROUP_ID["ground"], "red": GROUP_ID["dynamic"],
             "green": GROUP_ID["vegetation"]}
NO_NORMALISATION = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def write_model(path: Path, class_ids: dict[str, int], num_classes: int, output: str = "logits",
                shape: tuple = ("B", 3, "H", "W")) -> Path:
    """1x1 conv colour classifier, 2x2 average pool (so outputs are smaller than inputs), then
    logits (B,C,h,w), ArgMax ids (B,h,w) or a flattened (B, C*h*w) that no caller accepts."""
    weight = np.zeros((num_classes, 3, 1, 1), np.float32)
    bias = np.full(num_classes, -10.0, np.float32)
    for colour, class_id in class_ids.items():
        _, weight[class_id, :, 0, 0], bias[class_id] = COLOURS[colour]
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["full"]),
        helper.make_node("AveragePool", ["full"], ["logits"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    result = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
    if output == "ids":
        nodes.append(helper.make_node("ArgMax", ["logits"], ["ids"], axis=1, keepdims=0))
        result = helper.make_tensor_value_info("ids", TensorProto.INT64, None)
    elif output == "flat":
        nodes.append(helper.make_node("Flatten", ["logits"], ["flat"]))
        result = helper.make_tensor_value_info("flat", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        nodes, "colours", [helper.make_tensor_value_info("image", TensorProto.FLOAT, list(shape))], [result],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


def scene(i: int) -> list[list[str]]:
    """Colour names of the 2x2 quadrants of image ``i`` (rotated per image to catch batch mix-ups)."""
    names = list(COLOURS)[i % 4 :] + list(COLOURS)[: i % 4]
    return [names[:2], names[2:]]


def paint(quadrants: list[list[str]], table: dict[str, tuple] | dict[str, int]) -> np.ndarray:
    """A 24x32 image (or label map) with quadrant boundaries at row 12 and column 16."""
    return np.concatenate([np.concatenate([np.full((12, 16, np.size(table[c])), table[c]) for c in row], axis=1) for row in quadrants])


def write_images(images: Path) -> list[Path]:
    paths = [images / "test/database/a.jpg", images / "test/database/b.jpg", images / "test/queries/c.png"]
    for i, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        rgb = paint(scene(i), {c: COLOURS[c][0] for c in COLOURS}).astype(np.uint8)
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])
    return paths


def read_label(path: Path) -> np.ndarray:
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label is not None and label.dtype == np.uint8 and label.ndim == 2
    return label


def expected_label(i: int) -> np.ndarray:
    return paint(scene(i), CITYSCAPES_IDS)[..., 0].astype(np.uint8)


def test_ade20k_mapping_on_known_ids():
    assert len(ADE20K_CLASSES) == 150
    assert [ADE20K_CLASSES[i] for i in (0, 2, 4, 6, 12, 20, 93, 136, 149)] == [
        "wall", "sky", "tree", "road", "person", "car", "pole", "traffic light", "flag"]
    ids = np.array([2, 4, 20, 6, 1, 93, 7, 255], np.uint8)  # ..., building, pole, bed, ignore
    groups = ["sky", "vegetation", "dynamic", "ground", "building", "pole_sign"]
    assert to_groups(ids, "ade20k").tolist() == [GROUP_ID[g] for g in groups] + [IGNORE, IGNORE]
    assert to_cityscapes(ids, "ade20k").tolist() == [10, 8, 13, 0, 2, 5, IGNORE, IGNORE]
    every_id = np.arange(256, dtype=np.uint8)  # the PNG round trip keeps every group
    np.testing.assert_array_equal(classes_to_groups(to_cityscapes(every_id, "ade20k")), to_groups(every_id, "ade20k"))
    np.testing.assert_array_equal(to_groups(every_id, "cityscapes"), CITYSCAPES_TO_GROUP)
    assert (ADE20K_TO_CITYSCAPES[150:] == IGNORE).all()
    with pytest.raises(ConfigError):
        to_groups(ids, "coco")
    with pytest.raises(DatasetError):
        to_groups(ids.astype(np.int64), "ade20k")


@pytest.mark.parametrize("output, scheme, input_size", [("logits", "ade20k", (16, 12)), ("ids", "cityscapes", None)])
def test_segment_folder_writes_cityscapes_train_ids(tmp_path, output, scheme, input_size):
    ids = ADE20K_IDS if scheme == "ade20k" else CITYSCAPES_IDS
    model = write_model(tmp_path / "seg.onnx", ids, 150 if scheme == "ade20k" else 19, output)
    write_images(tmp_path / "images")
    summary = segment_folder(tmp_path / "images", model, tmp_path / "labels", scheme, input_size=input_size,
                             batch_size=2, **NO_NORMALISATION)
    assert (summary.written, summary.cached) == (3, 0)
    for i, name in enumerate(["test/database/a.png", "test/database/b.png", "test/queries/c.png"]):
        label = read_label(tmp_path / "labels" / name)
        np.testing.assert_array_equal(label, expected_label(i))
        np.testing.assert_array_equal(classes_to_groups(label), paint(scene(i), GROUP_IDS)[..., 0])


def test_label_pngs_are_a_cache(tmp_path):
    model = write_model(tmp_path / "seg.onnx", ADE20K_IDS, 150)
    write_images(tmp_path / "images")

    def run(**options):
        return segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION, **options)

    run()
    cached = tmp_path / "labels/test/database/a.png"
    cv2.imwrite(str(cached), np.zeros((24, 32), np.uint8))  # a stand-in we can recognise
    summary = run()
    assert (summary.written, summary.cached) == (0, 3)
    assert not read_label(cached).any()
    assert run(overwrite=True).written == 3
    np.testing.assert_array_equal(read_label(cached), expected_label(0))


def test_kept_label_maps_of_another_labeller_are_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """A rerun into a label root keeps its maps only for the labeller that wrote them (recorded in
    labeller.json): another model, or maps with no record, would mix two labellers in one dataset."""
    model = write_model(tmp_path / "seg.onnx", ADE20K_IDS, 150)
    other = write_model(tmp_path / "other.onnx", {**ADE20K_IDS, "red": 21}, 150)
    write_images(tmp_path / "images")
    segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION)
    record = json.loads((tmp_path / "labels" / LABELLER_FILE).read_text())
    assert record["scheme"] == "ade20k" and record["mean"] == [0, 0, 0] and len(record["onnx_sha256"]) == 64
    (tmp_path / "labels/test/queries/c.png").unlink()  # one map to write, two kept
    before = {p: p.read_bytes() for p in (tmp_path / "labels").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"2 label maps under .*labels were written by \{.*, not by this run's .*--overwrite"):
        segment_folder(tmp_path / "images", other, tmp_path / "labels", "ade20k", **NO_NORMALISATION)
    assert {p: p.read_bytes() for p in (tmp_path / "labels").rglob("*") if p.is_file()} == before
    assert segment_folder(tmp_path / "images", other, tmp_path / "labels", "ade20k", **NO_NORMALISATION, overwrite=True).written == 3
    assert json.loads((tmp_path / "labels" / LABELLER_FILE).read_text())["onnx_sha256"] != record["onnx_sha256"]
    def cut_short(path, label, *args):  # a kill after the first map of a run over another labeller's maps
        if written:
            raise KeyboardInterrupt
        written.append(path)
        return real_write(path, label, *args)

    written: list = []
    real_write = segmentation.imwrite_whole
    monkeypatch.setattr(segmentation, "imwrite_whole", cut_short)
    with pytest.raises(KeyboardInterrupt):
        segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION, overwrite=True, batch_size=1)
    assert not (tmp_path / "labels" / LABELLER_FILE).exists()  # one map of `model`, two of `other`: nothing vouches for them
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="3 label maps under .* by a segmenter not recorded"):
        segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION)
    assert segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION, overwrite=True).written == 3
    assert json.loads((tmp_path / "labels" / LABELLER_FILE).read_text()) == record
    (tmp_path / "labels" / LABELLER_FILE).unlink()  # maps written before the record was kept
    with pytest.raises(ConfigError, match="3 label maps under .* by a segmenter not recorded"):
        segment_folder(tmp_path / "images", other, tmp_path / "labels", "ade20k", **NO_NORMALISATION)


def test_a_kept_label_map_of_another_size_than_its_image_is_refused(tmp_path):
    model = write_model(tmp_path / "seg.onnx", ADE20K_IDS, 150)
    write_images(tmp_path / "images")
    segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION)
    cv2.imwrite(str(tmp_path / "labels/test/database/a.png"), np.zeros((48, 64), np.uint8))  # another frame's
    with pytest.raises(DatasetError, match="a.png is 64x48, its image .*a.jpg 32x24.*--overwrite"):
        segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION)
    assert segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION, overwrite=True).written == 3


def test_two_images_that_would_share_a_label_map_are_refused(tmp_path):
    model = write_model(tmp_path / "seg.onnx", ADE20K_IDS, 150)
    write_images(tmp_path / "images")
    cv2.imwrite(str(tmp_path / "images/test/database/a.png"), np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(DatasetError, match="a.jpg and .*a.png would share the label map"):
        segment_folder(tmp_path / "images", model, tmp_path / "labels", "ade20k", **NO_NORMALISATION)
    assert not (tmp_path / "labels").exists()


@pytest.mark.parametrize("channels", [11, 12])
def test_a_camvid_segmenter_with_or_without_a_void_channel_is_read(tmp_path, channels):
    camvid_ids = {"blue": 0, "black": 3, "red": 8, "green": 5}  # sky, road, car, tree
    model = write_model(tmp_path / "seg.onnx", camvid_ids, channels)
    write_images(tmp_path / "images")
    segment_folder(tmp_path / "images", model, tmp_path / "labels", "camvid", **NO_NORMALISATION)
    np.testing.assert_array_equal(read_label(tmp_path / "labels/test/database/a.png"), expected_label(0))


def test_fixed_size_and_fixed_batch_model(tmp_path):
    """A model exported with static shapes runs at its own size and batch (3 images, batch 2: padded)."""
    model = write_model(tmp_path / "seg.onnx", CITYSCAPES_IDS, 19, shape=(2, 3, 12, 16))
    write_images(tmp_path / "images")
    assert segment_folder(tmp_path / "images", model, tmp_path / "labels", "cityscapes", **NO_NORMALISATION).written == 3
    np.testing.assert_array_equal(read_label(tmp_path / "labels/test/queries/c.png"), expected_label(2))
    with pytest.raises(ConfigError, match="fixed 16x12"):
        segment_folder(tmp_path / "images", model, tmp_path / "labels", "cityscapes", input_size=(32, 24), overwrite=True)


def test_segment_folder_errors(tmp_path):
    write_images(tmp_path / "images")
    good = write_model(tmp_path / "seg.onnx", CITYSCAPES_IDS, 19)
    with pytest.raises(ModelError, match="not found"):
        segment_folder(tmp_path / "images", tmp_path / "missing.onnx", tmp_path / "labels", "cityscapes")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match="cannot load"):
        segment_folder(tmp_path / "images", tmp_path / "junk.onnx", tmp_path / "labels", "cityscapes")
    flat = write_model(tmp_path / "flat.onnx", CITYSCAPES_IDS, 19, output="flat")
    with pytest.raises(ModelError, match=r"\(B, C, h, w\)"):
        segment_folder(tmp_path / "images", flat, tmp_path / "labels", "cityscapes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no "):
        segment_folder(tmp_path / "empty", good, tmp_path / "labels", "cityscapes")
    with pytest.raises(ConfigError):
        segment_folder(tmp_path / "images", good, tmp_path / "labels", "mapillary")
    with pytest.raises(ConfigError):
        segment_folder(tmp_path / "images", good, tmp_path / "images", "cityscapes")


def test_convert_label_pngs(tmp_path):
    src = tmp_path / "pred"
    (src / "test/queries").mkdir(parents=True)
    cv2.imwrite(str(src / "test/queries/c.png"), paint(scene(0), ADE20K_IDS)[..., 0].astype(np.uint8))
    assert convert_label_pngs(src, tmp_path / "labels", "ade20k") == 1
    np.testing.assert_array_equal(read_label(tmp_path / "labels/test/queries/c.png"), expected_label(0))
    cv2.imwrite(str(src / "test/queries/rgb.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="single-channel"):
        convert_label_pngs(src, tmp_path / "labels", "ade20k")


def test_labels_command_makes_a_dataset_with_labels(tmp_path, capsys):
    root = write_tiny_dataset(tmp_path / "tiny", with_labels=False)
    model = write_model(tmp_path / "seg.onnx", ADE20K_IDS, 150)
    assert not load_dataset(root).has_labels
    args = ["labels", "--images", str(root / "images"), "--out", str(root / "labels"), "--scheme", "ade20k"]
    options = ["--onnx", str(model), "--size", "16x12", "--mean", "0", "0", "0", "--std", "1", "1", "1"]
    assert main(args + options) == 0
    assert "6 label maps written" in capsys.readouterr().out
    assert load_dataset(root).has_labels
    assert main(args + options) == 0
    assert "(6 already there, kept)" in capsys.readouterr().out
    assert main(args + ["--onnx", str(model)]) == 2  # another input size and normalisation: not the maps' labeller
    assert "6 label maps under" in capsys.readouterr().err
    assert main(args + ["--onnx", str(model), "--overwrite"]) == 0
    assert "6 label maps written" in capsys.readouterr().out
    assert main(args + ["--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "labels: error:" in capsys.readouterr().err

    pngs = tmp_path / "pred/test/database"
    pngs.mkdir(parents=True)
    cv2.imwrite(str(pngs / "only.png"), np.full((24, 32), 2, np.uint8))
    out = tmp_path / "converted"
    assert main(["labels", "--images", str(root / "images"), "--out", str(out), "--pngs", str(tmp_path / "pred"),
                 "--scheme", "ade20k"]) == 0
    captured = capsys.readouterr()
    assert "1 label maps written" in captured.out and "6 images have no label map" in captured.err
    assert (read_label(out / "test/database/only.png") == 10).all()  # ADE20K sky -> Cityscapes sky
