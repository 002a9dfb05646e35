"""The deploy review's fixes: a kit is built only for its own model, calibration describes files as
the runtime does, engine writes are whole, and damaged ONNX files, manifests, reports, caches and
metadata, or images linked from outside their folder, are typed errors before any work."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from structvpr_edge.artifacts import CPU_INT8, FP16, FP32, MANIFEST, RANGES, REPORT, TRT_CACHE, engine_manifest_path
from structvpr_edge.cli import main
from structvpr_edge.deploy import calibration
from structvpr_edge.deploy import quantize as q
from structvpr_edge.deploy.calibration import CalibrationConfig, calibrate, calibration_batches, describe, load_manifest, prepare_kit, write_manifest
from structvpr_edge.deploy.engine import EngineBuildConfig, build_engine, find_graphs
from structvpr_edge.errors import ConfigError, DatasetError, ModelError, UpscaleWarning
from structvpr_edge.modelinfo import ModelInfo, read_onnx_info
from structvpr_edge.runtime.tensorrt_backend import GpuInfo
from tests.trt_standin import make_tensorrt

GPU = GpuInfo("Stand-in Orin", "8.7", "12.6", 12060)
SHIPPED_KIT = Path(__file__).resolve().parents[1] / "calibration" / "structvprpp"


def _build(variant: str, precision: str, onnx: Path, out: Path, calibration: Path | None = None, **options):
    trt = make_tensorrt(variant)
    return trt, build_engine(EngineBuildConfig(onnx=onnx, precision=precision, out=out, calibration=calibration, **options), trt=trt, gpu=GPU)


def _truncated(source: Path, out: Path) -> Path:
    """What an interrupted copy leaves: the first 5000 bytes."""
    out.write_bytes(source.read_bytes()[:5000])
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _no_work(monkeypatch) -> None:
    """Describing images or quantizing fails the test: a refusal must come before either."""
    def work(*args, **kwargs):
        raise AssertionError("calibrate started work it then refused")

    monkeypatch.setattr(calibration, "describe", work)
    monkeypatch.setattr(calibration, "_quantize", work)


@pytest.fixture(scope="module")
def uint8_onnx(student_checkpoint, tmp_path_factory) -> Path:
    """The student's weights exported for uint8 BGR input: the same weights as student_onnx, another input format."""
    from structvpr_edge.deploy.export import export_onnx

    out = tmp_path_factory.mktemp("u8") / "student.u8.onnx"
    export_onnx(student_checkpoint, out, batch="dynamic", uint8_input=True)
    return out


# 1. a kit is built only for the model it was calibrated for

@pytest.mark.parametrize(("variant", "precision"), [("8.6", "int8"), ("10", "int8"), ("11", "int8"), ("11", "fp16")])
def test_a_kit_of_another_input_format_is_refused_naming_both(variant, precision, uint8_onnx, calibration_dir, tmp_path):
    out = tmp_path / "e.engine"
    named = re.escape(f"--calibration {calibration_dir} was calibrated for another model than --model {uint8_onnx}")
    with pytest.raises(ConfigError, match=f"{named}.*uint8_input"):
        _build(variant, precision, uint8_onnx, out, calibration_dir)
    assert not out.exists()


@pytest.mark.parametrize("variant", ["8.6", "10"])
def test_a_kit_of_other_weights_is_refused_also_without_its_graphs(variant, student_onnx, tmp_path):
    """The shipped kit's small files alone (no graph): TensorRT 8.6 would apply its cache to the student's graph."""
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in (MANIFEST, RANGES, TRT_CACHE, REPORT):
        shutil.copy(SHIPPED_KIT / name, kit / name)
    with pytest.raises(ConfigError, match=r"another model than --model .*manifest.json: checkpoint_sha256"):
        _build(variant, "int8", student_onnx[0], tmp_path / "e.engine", kit)


@pytest.fixture(scope="module")
def wide_onnx(student_checkpoint, tmp_path_factory) -> Path:
    """The student's weights exported at another input size (the calibrated one is 64x48)."""
    from structvpr_edge.deploy.export import export_onnx

    out = tmp_path_factory.mktemp("wide") / "student.wide.onnx"
    export_onnx(student_checkpoint, out, width=96, height=72, batch="dynamic")
    return out


@pytest.fixture
def kit_as_cloned(calibration_dir, tmp_path) -> Path:
    """calibration_dir as a clean clone holds a kit: *.onnx is git-ignored, so no graph at all."""
    kit = tmp_path / "cloned"
    kit.mkdir()
    for path in calibration_dir.iterdir():
        if path.suffix != ".onnx":
            shutil.copy(path, kit / path.name)
    return kit


@pytest.mark.parametrize(("model", "size"), [("uint8_onnx", "64x48 uint8 BGR"), ("wide_onnx", "96x72 float32 RGB")])
def test_another_export_of_the_same_weights_is_refused_by_the_kit_record_alone(model, size, request, kit_as_cloned, tmp_path):
    """Same checkpoint, another input: the 8.6 cache's scales (or names) are not this graph's."""
    onnx = request.getfixturevalue(model)
    named = re.escape(f"--calibration {kit_as_cloned} was calibrated for another model than --model {onnx}")
    with pytest.raises(ConfigError, match=f"{named} \\(report.json records another student.onnx than this {size} input export"):
        _build("8.6", "int8", onnx, tmp_path / "e.engine", kit_as_cloned)
    assert not (tmp_path / "e.engine").exists()


def test_a_fresh_export_like_the_calibrated_one_builds_from_the_kit_record(student_checkpoint, kit_as_cloned, tmp_path):
    from structvpr_edge.deploy.export import export_onnx

    again = tmp_path / "again.onnx"
    export_onnx(student_checkpoint, again, batch="dynamic")
    _, manifest = _build("8.6", "int8", again, tmp_path / "e.engine", kit_as_cloned)
    assert manifest["plan"]["entropy_calibrator"] and manifest["plan"]["onnx"] == str(again)


@pytest.mark.parametrize("damage", [lambda r: r.pop("model"), lambda r: r.update(graphs={}, sha256={})])
def test_a_kit_report_that_records_no_model_is_a_config_error(damage, student_onnx, kit_as_cloned, tmp_path):
    report = json.loads((kit_as_cloned / REPORT).read_text())
    damage(report)
    (kit_as_cloned / REPORT).write_text(json.dumps(report))
    with pytest.raises(ConfigError, match=f"{re.escape(str(kit_as_cloned / REPORT))} does not record which model"):
        _build("8.6", "int8", student_onnx[0], tmp_path / "e.engine", kit_as_cloned)


# 2. calibration describes each file as the runtime does

def test_describe_sees_each_image_as_the_runtime_does_in_a_folder_of_mixed_sizes(student_onnx, tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    big = cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "a_small.png"), cv2.resize(big, (16, 12), interpolation=cv2.INTER_AREA))  # sorts first
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"b_big{i}.png"), np.roll(big, 40 * i, axis=1))
    paths = sorted(tmp_path.glob("*.png"))
    model = student_onnx[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpscaleWarning)  # the thumbnail is enlarged, by both
        described = describe(model, paths, "gate", 1)
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        runtime = np.concatenate([session.run(None, {"images": x})[0] for x in calibration_batches(paths, read_onnx_info(model))])
    np.testing.assert_allclose(described, runtime, atol=1e-5)


# 3. an engine, its manifest and the timing cache are written whole

@pytest.fixture
def previous_build(tmp_path) -> tuple[Path, dict[str, bytes]]:
    """An engine, its manifest and a timing cache from an earlier build, and their bytes."""
    engine = tmp_path / "out" / "mine.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"previous engine")
    engine_manifest_path(engine).write_text('{"engine_sha256": "previous"}')
    (tmp_path / "out" / "timing.cache").write_bytes(b"previous timings")
    return engine, _files(engine.parent)


def test_a_timing_cache_that_is_a_folder_is_refused_before_the_build(previous_build, student_onnx, tmp_path):
    engine, before = previous_build
    (tmp_path / "caches").mkdir()
    trt = make_tensorrt("10")
    with pytest.raises(ConfigError, match="--timing-cache .*caches is a folder"):
        build_engine(EngineBuildConfig(onnx=student_onnx[0], precision="fp32", out=engine, timing_cache=tmp_path / "caches"), trt=trt, gpu=GPU)
    assert _files(engine.parent) == before and not any(c[0] == "build_serialized_network" for c in trt.calls)


def _fail_serialize(monkeypatch, trt) -> None:
    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(trt.IBuilderConfig().get_timing_cache()), "serialize", full)


def _fail_write(monkeypatch, trt) -> None:
    write_bytes = Path.write_bytes

    def full(self, data):
        if "timing.cache" in self.name:
            raise OSError(28, "No space left on device")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)


@pytest.mark.parametrize("fail", [_fail_serialize, _fail_write], ids=["timing-cache-serialize", "timing-cache-write"])
def test_a_failure_after_the_build_leaves_engine_manifest_and_cache_as_they_were(fail, previous_build, student_onnx, monkeypatch):
    engine, before = previous_build
    trt = make_tensorrt("10")
    fail(monkeypatch, trt)
    with pytest.raises(OSError, match="No space left"):
        build_engine(EngineBuildConfig(onnx=student_onnx[0], precision="fp32", out=engine, timing_cache=engine.parent / "timing.cache"), trt=trt, gpu=GPU)
    assert _files(engine.parent) == before  # no new engine beside the old manifest, and nothing left aside


def test_a_whole_build_replaces_all_three(previous_build, student_onnx):
    engine, before = previous_build
    _, manifest = _build("10", "fp32", student_onnx[0], engine, timing_cache=engine.parent / "timing.cache")
    after = _files(engine.parent)
    assert sorted(after) == sorted(before) and after["mine.engine"] == b"stand-in serialized plan"
    assert after["timing.cache"] == b"stand-in timing cache" and json.loads(after["mine.engine.json"]) == manifest


# 4. a damaged ONNX file is a ModelError naming it

def test_a_truncated_onnx_is_a_model_error_for_calibrate_and_build_engine(student_onnx, place_dataset, tmp_path):
    damaged = _truncated(student_onnx[0], tmp_path / "model.onnx")
    with pytest.raises(ModelError, match=re.escape(f"cannot read ONNX model {damaged}: truncated or damaged")):
        calibrate(CalibrationConfig(model=damaged, images=place_dataset, out=tmp_path / "kit", threads=1))
    with pytest.raises(ModelError, match=re.escape(f"cannot read ONNX model {damaged}")):
        find_graphs(EngineBuildConfig(onnx=damaged, precision="fp32", out=tmp_path / "x.engine"))
    assert not (tmp_path / "kit").exists() and not (tmp_path / "x.engine").exists()


def test_a_truncated_kit_graph_is_a_model_error_for_build_engine(student_onnx, calibration_dir, tmp_path):
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    _truncated(calibration_dir / FP16, kit / FP16)
    with pytest.raises(ModelError, match=re.escape(f"cannot read ONNX model {kit / FP16}")):
        _build("11", "fp16", student_onnx[0], tmp_path / "e.engine", kit)


def test_build_engine_cli_on_a_truncated_onnx_exits_2(student_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("structvpr_edge.trt_compat.import_tensorrt", lambda: make_tensorrt("10"))
    damaged = _truncated(student_onnx[0], tmp_path / "model.onnx")
    assert main(["build-engine", "--model", str(damaged), "--precision", "fp16", "--out", str(tmp_path / "m.engine")]) == 2
    assert f"cannot read ONNX model {damaged}" in capsys.readouterr().err


# 5. a damaged manifest or report is a typed error naming the file and the field

FORMAT = "structvpr-edge/calibration/1"


@pytest.mark.parametrize(("manifest", "field"), [
    ({"format": FORMAT, "root": ".", "images": [{"path": "a.jpg"}]}, "images"),
    ({"format": FORMAT, "root": ".", "images": [{"sha256": "00"}]}, "images"),
    ({"format": FORMAT, "root": ".", "images": ["a.jpg"]}, "images"),
    ({"format": FORMAT, "root": None, "images": []}, "root"),
    ({"format": FORMAT, "images": []}, "root"),
    ([1, 2], None),
])
def test_a_damaged_manifest_is_a_dataset_error_naming_file_and_field(manifest, field, tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    named = f"calibration manifest {tmp_path / MANIFEST} is damaged: '{field}' must be" if field else "is not a structvpr-edge calibration manifest"
    with pytest.raises(DatasetError, match=re.escape(named)):
        load_manifest(tmp_path)


@pytest.mark.parametrize("damage", [
    lambda m: m.pop("candidates"), lambda m: m["images"][0].pop("sha256"), lambda m: m.update(candidates="many"),
])
def test_calibrate_over_a_kit_with_a_damaged_manifest_stops_before_any_work(damage, student_onnx, place_dataset, calibration_dir, tmp_path, monkeypatch):
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    manifest = json.loads((kit / MANIFEST).read_text())
    damage(manifest)
    (kit / MANIFEST).write_text(json.dumps(manifest))
    before = _files(kit)
    _no_work(monkeypatch)
    with pytest.raises(DatasetError, match=re.escape(f"calibration manifest {kit / MANIFEST} is damaged")):
        calibrate(CalibrationConfig(model=student_onnx[0], images=place_dataset, out=kit, num=12, threads=1))
    assert _files(kit) == before and sorted(p.name for p in tmp_path.iterdir()) == ["kit"]


@pytest.fixture
def kit_to_rebuild(calibration_dir, student_onnx, tmp_path) -> Path:
    """The tiny kit with its FP32 graph beside it and its CPU form to rebuild, as after a fresh clone."""
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    shutil.copy(student_onnx[0], kit / FP32)
    (kit / CPU_INT8).unlink()
    return kit


@pytest.mark.parametrize("field", ["weights_sha256", "method", "weights"])
def test_prepare_kit_with_a_damaged_manifest_is_a_dataset_error(field, kit_to_rebuild):
    kit = kit_to_rebuild
    manifest = json.loads((kit / MANIFEST).read_text())
    manifest.pop(field)
    (kit / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=re.escape(f"{kit / MANIFEST} is damaged: '{field}'")):
        prepare_kit(kit)


@pytest.mark.parametrize("nodes", [None, "all", [1]])
def test_prepare_kit_with_a_report_without_fp32_nodes_is_a_config_error(nodes, kit_to_rebuild):
    kit = kit_to_rebuild
    report = json.loads((kit / REPORT).read_text())
    if nodes is None:
        del report["fp32_nodes"]
    else:
        report["fp32_nodes"] = nodes
    (kit / REPORT).write_text(json.dumps(report))
    with pytest.raises(ConfigError, match=re.escape(f"{kit / REPORT} is damaged: 'fp32_nodes'")):
        prepare_kit(kit)
    assert not (kit / CPU_INT8).exists()


def test_the_kit_to_rebuild_rebuilds(kit_to_rebuild):
    assert prepare_kit(kit_to_rebuild) == kit_to_rebuild and (kit_to_rebuild / CPU_INT8).is_file()


def test_build_engine_with_a_kit_manifest_without_weights_is_a_dataset_error(student_onnx, calibration_dir, tmp_path):
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    manifest = json.loads((kit / MANIFEST).read_text())
    del manifest["weights_sha256"]
    (kit / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="'weights_sha256'"):
        _build("10", "int8", student_onnx[0], tmp_path / "e.engine", kit)


# 6. a cut-off TensorRT cache is a ModelError

def test_a_cut_off_calibration_cache_is_a_model_error(student_onnx, calibration_dir, tmp_path):
    with pytest.raises(ModelError, match="malformed calibration cache line 'images: 3c01'"):
        q.parse_trt_calibration_cache("TRT-8601-EntropyCalibration2\nimages: 3c01\n")
    kit = tmp_path / "kit"
    shutil.copytree(calibration_dir, kit)
    text = (kit / TRT_CACHE).read_text()
    (kit / TRT_CACHE).write_text(text[: text.index("\n", 40) - 4] + "\n")  # a copy cut off mid-line
    trt = make_tensorrt("8.6")
    with pytest.raises(ModelError, match=re.escape(f"{kit / TRT_CACHE} is not a whole TensorRT calibration cache")):
        build_engine(EngineBuildConfig(onnx=student_onnx[0], precision="int8", out=tmp_path / "e.engine", calibration=kit), trt=trt, gpu=GPU)
    assert not any(c[0] == "build_serialized_network" for c in trt.calls) and not (tmp_path / "e.engine").exists()


# 7. a manifest written can be read back: images linked from outside their folder are refused when written

@pytest.fixture
def linked_images(place_dataset, tmp_path) -> Path:
    """A folder of `ln -s` links to the dataset's train images."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for image in sorted((place_dataset / "images" / "train").rglob("*.jpg")):
        (folder / image.name).symlink_to(image)
    return folder


def test_calibrate_refuses_linked_images_before_any_work(linked_images, student_onnx, tmp_path, monkeypatch):
    _no_work(monkeypatch)
    with pytest.raises(DatasetError, match=f"{re.escape(str(linked_images))}/.* leads outside {re.escape(str(linked_images))}"):
        calibrate(CalibrationConfig(model=student_onnx[0], images=linked_images, out=tmp_path / "kit", num=12, threads=1))
    assert not (tmp_path / "kit").exists() and not list(tmp_path.glob(".kit.tmp-*"))


def test_write_manifest_refuses_what_load_manifest_would(linked_images, student_onnx, tmp_path):
    with pytest.raises(DatasetError, match="leads outside"):
        write_manifest(tmp_path / MANIFEST, linked_images, sorted(linked_images.iterdir())[:4], student_onnx[0], 4)
    assert not (tmp_path / MANIFEST).exists()


# 8. ModelInfo's extra is typed when it is read

@pytest.mark.parametrize("extra", ["[]", "null", '"fp16"', '{"precision": ["int8-trt"]}'])
def test_metadata_extra_that_is_not_an_object_is_a_model_error(extra, student_onnx):
    props = {**read_onnx_info(student_onnx[0]).to_props(), "structvpr.extra": extra}
    with pytest.raises(ModelError, match="extra must be an object with string keys"):
        ModelInfo.from_props(props)


def test_metadata_extra_with_a_key_that_is_not_a_string_is_a_model_error(student_onnx):
    info = read_onnx_info(student_onnx[0])
    with pytest.raises(ModelError, match="extra must be an object with string keys"):
        dataclasses.replace(info, extra={1: "fp16"})
