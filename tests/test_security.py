"""Opening a file a user hands over runs no code and reads nothing outside its folder (issue 28).

A crafted checkpoint carries a ``__reduce__`` payload that writes a marker file: it goes through
every place a checkpoint is accepted, the API and each CLI command, and must write no marker and
end in a typed error (exit code 2). ONNX external data, map generations, engine files, calibration
manifests and YAML configs that point elsewhere are refused before anything is read.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from structvpr_edge import EdgeVPR, PlaceMap
from structvpr_edge.cli import main
from structvpr_edge.deploy.calibration import load_manifest
from structvpr_edge.deploy.export import export_onnx
from structvpr_edge.errors import BackendError, ConfigError, DatasetError, MapError, ModelError
from structvpr_edge.eval.models import load_extractor
from structvpr_edge.modelinfo import read_onnx_info
from structvpr_edge.models.checkpoint import (
    FORMAT, SHIPPED, load_checkpoint, load_resume_state, save_checkpoint, save_resume_state, ship, shipped_path,
)
from structvpr_edge.models.global_student import GlobalStudent, GlobalStudentConfig
from structvpr_edge.runtime.map import Place
from structvpr_edge.runtime.tensorrt_backend import read_engine
from structvpr_edge.safety import check_onnx
from structvpr_edge.train.config import load_config

REFUSED = "was not opened"


class Payload:
    """Unpickling this runs ``exec``: any code could run there; this code writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def crafted(folder: Path, payload: dict | None = None) -> Path:
    """``folder/crafted.pt``: a checkpoint whose pickle writes ``folder/marker`` when it is opened."""
    path = folder / "crafted.pt"
    torch.save({"format": FORMAT, **(payload or {}), "note": Payload(folder / "marker")}, path)
    return path


@pytest.fixture
def evil(tmp_path) -> Path:
    """A crafted file with no model in it: even opened, it can never be saved over a shipped model."""
    return crafted(tmp_path)


def test_the_payload_is_live_and_trusting_a_file_opens_it(tmp_path):
    """The cases below prove something only if the payload runs when the file is opened: trusting it does."""
    model = GlobalStudent(GlobalStudentConfig(imagenet=False)).eval()
    checkpoint = torch.load(save_checkpoint(tmp_path / "ok.pt", model, (64, 48), {}), weights_only=True)
    path = crafted(tmp_path, checkpoint)
    with pytest.raises(ModelError, match=REFUSED + ".*builtins.exec"):
        load_checkpoint(path)
    assert not (tmp_path / "marker").exists()
    loaded, meta = load_checkpoint(path, trust_checkpoint=True)
    assert (tmp_path / "marker").read_text() == "ran"
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and meta["model_type"] == "global"


API = {
    "load_checkpoint": lambda p, tmp: load_checkpoint(p),
    "load_extractor": lambda p, tmp: load_extractor(str(p)),
    "EdgeVPR": lambda p, tmp: EdgeVPR(model=p),
    "export_onnx": lambda p, tmp: export_onnx(p, tmp / "out.onnx"),
    "ship": lambda p, tmp: ship(p, "structvprpp", weights_dir=tmp / "weights"),
    "load_resume_state": lambda p, tmp: load_resume_state(p),
}


@pytest.mark.parametrize("case", API)
def test_a_crafted_checkpoint_runs_no_code_through_the_api(case, evil, tmp_path):
    with pytest.raises(ModelError, match=REFUSED):
        API[case](evil, tmp_path)
    assert not (tmp_path / "marker").exists()
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "weights").exists()


def _train_config(tmp: Path, dataset: Path, teacher: Path) -> list[str]:
    config = {"dataset": str(dataset), "mode": "structvpr++", "teacher_checkpoint": str(teacher), "image_size": [64, 48],
              "cache_dir": str(tmp / "cache"), "student": {"frozen_blocks": 4, "imagenet": False}}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(config))
    return ["--config", str(tmp / "cfg.yaml"), "--out", str(tmp / "run")]


def _kit(tmp: Path, weights: Path) -> str:
    """A calibration kit whose manifest names the crafted file as the weights to export."""
    kit = tmp / "kit"
    kit.mkdir()
    (kit / "manifest.json").write_text(json.dumps({"weights": str(weights), "weights_sha256": "0" * 64, "method": "entropy"}))
    (kit / "report.json").write_text(json.dumps({"fp32_nodes": [], "sha256": {}}))
    return str(kit)


# Every command that takes a model or a checkpoint (the train command: as its teacher).
COMMANDS = {
    "eval": lambda p, t, d: ["eval", "--model", str(p), "--dataset", str(d)],
    "export": lambda p, t, d: ["export", "--model", str(p), "--out", str(t / "out.onnx")],
    "ship": lambda p, t, d: ["ship", str(p), "--name", "structvprpp"],
    "calibrate": lambda p, t, d: ["calibrate", "--model", str(p), "--dataset", str(d), "--out", str(t / "cal")],
    "build-engine": lambda p, t, d: ["build-engine", "--model", "x", "--calibration", _kit(t, p), "--precision", "fp32", "--out", str(t / "e.engine")],
    "build-map": lambda p, t, d: ["build-map", "--model", str(p), "--dataset", str(d), "--out", str(t / "map")],
    "calibrate-threshold": lambda p, t, d: ["calibrate-threshold", "--model", str(p), "--map", str(t / "map"), "--dataset", str(d), "--split", "test"],
    "localize": lambda p, t, d: ["localize", "--model", str(p), "--map", str(t / "map"), str(t / "frame.jpg")],
    "demo": lambda p, t, d: ["demo", "--model", str(p), "--out", str(t / "demo"), "--places", "2"],
    "train": lambda p, t, d: ["train", *_train_config(t, d, p)],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_crafted_checkpoint_runs_no_code_through_the_cli(command, evil, tmp_path, tiny_dataset, capsys, monkeypatch):
    from tests.trt_standin import make_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10"))  # build-engine looks for TensorRT before the kit's weights
    shipped = {name: shipped_path(name).read_bytes() for name in SHIPPED}
    assert main(COMMANDS[command](evil, tmp_path, tiny_dataset)) == 2
    err = capsys.readouterr().err
    assert REFUSED in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "marker").exists()
    assert {name: shipped_path(name).read_bytes() for name in SHIPPED} == shipped


def test_every_command_that_takes_a_model_offers_trust_checkpoint(capsys):
    for command in ("demo", "eval", "ship", "export", "calibrate", "build-map", "calibrate-threshold", "localize"):
        assert main([command, "--help"]) == 0
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--trust-checkpoint" in help_text and "runs any code the file carries" in help_text, command


def test_checkpoints_and_resume_files_are_written_only_as_tensors_and_plain_data(tmp_path):
    model = GlobalStudent(GlobalStudentConfig(imagenet=False))
    path = save_checkpoint(tmp_path / "m.pt", model, (64, 48), {"mode": "baseline"})
    assert torch.load(path, weights_only=True)["train_config"] == {"mode": "baseline"}
    with pytest.raises(ModelError, match="not written.*PosixPath"):
        save_checkpoint(tmp_path / "bad.pt", model, (64, 48), {"dataset": Path("data")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # nothing half-written

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(step)))
    model(torch.randn(2, 3, 48, 64)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": 1}
    resumed = load_resume_state(save_resume_state(tmp_path / "last.pt", state))
    optimizer.load_state_dict(resumed["optimizer"])
    scheduler.load_state_dict(resumed["scheduler"])
    assert resumed["step"] == 1 and scheduler.get_last_lr() == state["scheduler"]["_last_lr"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_weights_load_with_weights_only(name):
    payload = torch.load(shipped_path(name), weights_only=True)
    assert payload["format"] == FORMAT and payload["model_type"] == SHIPPED[name]


def one_add_onnx(folder: Path, location: str, data_at: Path | None = None) -> Path:
    """``folder/model.onnx``: y = x + w, with w stored in the external-data file ``location``
    names, written at ``data_at`` (where that name leads) so that a loader that followed it would succeed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", location
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    if data_at is not None:
        data_at.parent.mkdir(parents=True, exist_ok=True)
        data_at.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    return path


def _outside(tmp: Path) -> dict[str, Path]:
    """An ONNX model per way out of its folder: a relative climb, an absolute path, a link."""
    secret = tmp / "secret" / "weights.bin"
    linked = tmp / "linked"
    linked.mkdir()
    (linked / "weights.bin").symlink_to(secret)
    return {"climb": one_add_onnx(tmp / "climb", "../secret/weights.bin", secret), "absolute": one_add_onnx(tmp / "absolute", str(secret), secret),
            "link": one_add_onnx(linked, "weights.bin", secret)}


def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path, capsys):
    import onnxruntime as ort

    inside = one_add_onnx(tmp_path / "inside", "weights.bin", tmp_path / "inside" / "weights.bin")
    assert check_onnx(inside) == inside  # the check passes a model whose weights lie beside it, and ORT runs it
    assert ort.InferenceSession(str(inside), providers=["CPUExecutionProvider"]).run(None, {"x": np.ones(4, np.float32)})[0].tolist() == [1, 2, 3, 4]
    for way, model in _outside(tmp_path).items():
        for open_it in (check_onnx, read_onnx_info, lambda m: EdgeVPR(model=m)):
            with pytest.raises(ModelError, match="leads outside"):
                open_it(model)
        assert main(["localize", "--model", str(model), "--map", str(tmp_path / "map"), "f.jpg"]) == 2, way
        assert "leads outside" in capsys.readouterr().err, way


@pytest.fixture
def place_map(tmp_path) -> Path:
    """A saved one-generation map of two places."""
    built = PlaceMap(4, "layout", "5" * 64, "flat")
    built.add(np.eye(2, 4, dtype=np.float32), [Place("a", 0.0, 0.0), Place("b", 50.0, 0.0)])
    return built.save(tmp_path / "map")


def _link_out(place_map: Path, part: str) -> None:
    """``place_map/part`` moved outside the map folder, a link to it left in its place."""
    inside, outside = place_map / part, place_map.parent / "elsewhere" / part
    outside.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(inside, outside)
    inside.symlink_to(outside, target_is_directory=outside.is_dir())


def _current_names_a_folder_outside(place_map: Path) -> None:
    shutil.copytree(place_map / "gen-00000001", place_map.parent / "elsewhere" / "gen-00000001")
    (place_map / "CURRENT").write_text("../elsewhere/gen-00000001\n")


MAP_ESCAPES = {  # each planted map holds the same bytes: a loader that followed it out would load it
    "CURRENT-names-a-folder-outside": _current_names_a_folder_outside,
    **{f"{part}-is-a-link-out": lambda m, part=part: _link_out(m, part)
       for part in ("CURRENT", "gen-00000001", "gen-00000001/manifest.json", "gen-00000001/index.faiss", "gen-00000001/places.sqlite")},
}


@pytest.mark.parametrize("escape", MAP_ESCAPES)
def test_a_map_that_points_outside_its_folder_is_refused(escape, place_map):
    assert len(PlaceMap.load(place_map)) == 2  # the untouched map loads
    MAP_ESCAPES[escape](place_map)
    with pytest.raises(MapError):
        PlaceMap.load(place_map)


def test_an_engine_runs_only_with_the_manifest_it_was_built_with(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized plan")
    manifest = {"engine_sha256": "0" * 64, "command": "structvpr-edge build-engine ..."}
    with pytest.raises(BackendError, match="not the engine its manifest records"):
        read_engine(engine, manifest)
    assert read_engine(engine, {**manifest, "engine_sha256": hashlib.sha256(b"serialized plan").hexdigest()}) == b"serialized plan"


def test_a_calibration_manifest_names_no_image_outside_its_root(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    manifest = {"format": "structvpr-edge/calibration/1", "root": str(root), "images": [{"path": "../secret.jpg", "sha256": "0" * 64}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="leads outside"):
        load_manifest(tmp_path / "manifest.json")


def test_a_yaml_config_cannot_run_code(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "cfg.yaml").write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises((ConfigError, yaml.YAMLError)):
        load_config(tmp_path / "cfg.yaml")
    assert not marker.exists()
