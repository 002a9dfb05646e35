"""benchmarks/imagenet_blend.py: finished runs blended toward ImageNet and read on the val."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from structvpr_edge.bench import blend
from structvpr_edge.bench.blend import blend_table, write_blended
from structvpr_edge.errors import ConfigError, DatasetError, ModelError
from structvpr_edge.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from structvpr_edge.models.teacher import SegTeacher

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "imagenet_blend.py"


def test_blend_benchmark_writes_each_share_and_reads_it_on_the_val(student_checkpoint, place_dataset, corridor, camvid, tmp_path):
    out = tmp_path / "blend"
    command = [sys.executable, str(SCRIPT), "--dataset", str(place_dataset), "--row", f"tiny={student_checkpoint}", "--shares", "0,1",
               "--out", str(out), "--corridor", str(corridor), "--camvid", str(camvid), "--plot", str(tmp_path / "blend.png")]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    assert "| tiny a=0 | 1 |" in printed and "| tiny a=1 | 1 |" in printed
    record = json.loads((out / "table.json").read_text())
    assert record["seeds"] == "all present"
    results = record["results"]
    for key in ("tiny a=0", "tiny a=1"):
        (figures,) = results[key]
        assert all(0 <= figures[c] <= 1 for c in ("val", "corridor R@1", "corridor R@5", "camvid mIoU")), figures
    assert results["tiny a=0"][0] != results["tiny a=1"][0]
    assert (tmp_path / "blend.png").stat().st_size > 0

    trained, _ = load_checkpoint(student_checkpoint)
    unmoved, _ = load_checkpoint(out / "tiny" / "student" / "blend-0.pt")
    imagenet_end, meta = load_checkpoint(out / "tiny" / "student" / "blend-1.pt")
    assert meta["train_config"]["imagenet_blend"] == 1 and meta["blended_from"] == str(student_checkpoint)
    imagenet = build_model("structvpr++", {}, imagenet=True).state_dict()
    for key, value in trained.state_dict().items():
        assert torch.equal(unmoved.state_dict()[key], value)
        expected = imagenet[key] if key.startswith("backbone.") and value.is_floating_point() else value
        assert torch.equal(imagenet_end.state_dict()[key], expected), key


def test_blend_refuses_a_model_without_an_imagenet_backbone(tmp_path):
    teacher = save_checkpoint(tmp_path / "teacher.pt", SegTeacher(), (64, 48), {})
    with pytest.raises(ModelError, match="teacher"):
        write_blended(teacher, 0.2, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_blended_checkpoint_blended_again_records_the_share_it_stands_at(student_checkpoint, tmp_path):
    """The shipped file is already blended 0.2: a further 0.2 leaves 0.8 x 0.8 of the trained offset, 0.36."""
    once, first = write_blended(student_checkpoint, 0.2, tmp_path / "once")
    twice, total = write_blended(once, 0.2, tmp_path / "twice")
    assert (first, total) == (0.2, 0.36) and twice.name == "blend-0.36.pt"
    assert load_checkpoint(twice)[1]["train_config"]["imagenet_blend"] == 0.36
    trained, imagenet = load_checkpoint(student_checkpoint)[0].state_dict(), build_model("structvpr++", {}, imagenet=True).state_dict()
    blended = load_checkpoint(twice)[0].state_dict()
    key = next(k for k in trained if k.startswith("backbone.") and trained[k].is_floating_point() and not torch.equal(trained[k], imagenet[k]))
    torch.testing.assert_close(blended[key] - imagenet[key], 0.64 * (trained[key] - imagenet[key]))


def test_blend_table_checks_every_row_and_share_before_the_first_blend(student_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match="imagenet_blend"):
        blend_table({"tiny": student_checkpoint}, [0.2, 1.5], tmp_path / "out", None, tmp_path, tmp_path)
    with pytest.raises(DatasetError, match="no finished run"):
        blend_table({"tiny": student_checkpoint, "gone": tmp_path / "runs"}, [0.2], tmp_path / "out", None, tmp_path, tmp_path)
    assert not (tmp_path / "out").exists()


def test_a_row_reads_the_seeds_asked_for_and_the_json_records_them(student_checkpoint, place_dataset, tmp_path, monkeypatch, capsys):
    """A run folder that gained a seed since the published row gives the same row with --seeds; a
    requested seed without a finished run is refused before the first blend."""
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        (runs / f"s{seed}").mkdir(parents=True)
        shutil.copy(student_checkpoint, runs / f"s{seed}" / "model.pt")
    monkeypatch.setattr(blend, "real_val", lambda path, corridor, camvid: {})  # the real val needs ../shared data
    spec = importlib.util.spec_from_file_location("blend_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "blend"
    monkeypatch.setattr(sys, "argv", ["imagenet_blend.py", "--dataset", str(place_dataset), "--row", f"r={runs}", "--shares", "0",
                                      "--out", str(out), "--seeds", "0,2"])
    script.main()
    record = json.loads((out / "table.json").read_text())
    assert record["seeds"] == [0, 2] and [figures["seed"] for figures in record["results"]["r a=0"]] == ["s0", "s2"]
    assert "| r a=0 | 2 |" in capsys.readouterr().out
    with pytest.raises(DatasetError, match=r"--seeds \[0, 3\]: no finished run at .*s3/model.pt"):
        blend_table({"r": runs}, [0.2], tmp_path / "none", None, tmp_path, tmp_path, seeds=[0, 3])
    assert not (tmp_path / "none").exists()
