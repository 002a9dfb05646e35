"""The command line under operator mistakes and interruptions: an output inside an input folder,
options that name files, figure formats, Ctrl-C, a closed pipe, a rerun after a cut-short run,
files that are not checkpoints, output folders that do not exist yet. Each case ends in one line
and exit code 2 before the work, or does what a rerun needs; nothing here takes more than seconds."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge import cli
from structvpr_edge.cli import INPUTS, OUTPUTS, main
from structvpr_edge.data.dataset import load_dataset
from structvpr_edge.errors import ConfigError, DatasetError, ModelError
from structvpr_edge.files import IMAGE_SUFFIXES, check_not_an_input, replace_whole


def one_line_error(capsys) -> str:
    """stderr's last line, the one line that says error (a progress bar may stand above it)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if "error:" in line] == lines[-1:], err
    return lines[-1]


# ---- outputs and inputs ---------------------------------------------------------------------------


def test_an_output_inside_an_input_folder_is_refused_and_one_beside_it_is_not(tmp_path: Path):
    bag = tmp_path / "drive1"
    bag.mkdir()
    (bag / "drive1.mcap").write_bytes(b"recorded")
    for inside in (bag / "drive1.mcap", bag / "new" / "poses.csv", tmp_path / "x" / ".." / "drive1" / "p.csv"):
        with pytest.raises(ConfigError, match="inside the input folder"):
            check_not_an_input(inside, [bag])
    check_not_an_input(tmp_path / "drive1.mcap", [bag])  # beside the folder, a name that starts like it
    check_not_an_input(tmp_path / "drive10" / "p.csv", [bag])


def options_of_every_command() -> set[str]:
    parsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return {action.dest for sub in parsers.values() for action in sub._actions if action.dest != "help"}


# Every option that names no file or folder; a new option is classified here, or in cli.INPUTS / OUTPUTS.
NOT_PATHS = {
    "append", "backend", "batch", "batch_size", "dla_core", "format", "from_bags", "height", "hold_out", "image_topic", "index", "max_batch",
    "max_pose_gap", "max_recall_drop", "mean", "lr", "method", "min_batch", "min_cosine", "name", "num", "opset", "opt_batch", "overlap",
    "overwrite", "overwrite_shipped", "places", "pose_topic", "precision", "preset", "radius", "ray", "ray_gpus", "ray_workers",
    "reselect", "resume", "scheme", "seed", "segmenter", "set", "size", "spacing", "split", "splits", "stages", "std", "steps", "temporal",
    "threads", "tile_size", "top_k", "trust_checkpoint", "uint8_input", "val_split", "width", "workers", "workspace",
}


def test_every_option_naming_a_file_is_an_input_or_an_output():
    """So no output can overwrite what a command reads (cli._check_outputs checks these lists)."""
    options = options_of_every_command()
    assert options - NOT_PATHS - set(INPUTS) - set(OUTPUTS) == set()
    assert (set(INPUTS) | set(OUTPUTS)) - options == set() and not NOT_PATHS & (set(INPUTS) | set(OUTPUTS))


def drive(tmp_path: Path) -> tuple[Path, Path]:
    bag = tmp_path / "drive2"
    bag.mkdir()
    (bag / "drive2.mcap").write_bytes(b"recorded")
    (tmp_path / "poses.csv").write_text("file,east,north\n")
    return bag, tmp_path / "poses.csv"


OVER_AN_INPUT = {
    "localize-out-in-the-bag-folder": lambda bag, poses: ["localize", "--model", "m.onnx", "--map", "m", "--bag", str(bag),
                                                          "--image-topic", "/c", "--out", str(bag / "drive2.mcap")],
    "eval-json-is-the-bag": lambda bag, poses: ["eval", "--model", "m.onnx", "--map", "m", "--bag", str(bag / "drive2.mcap"),
                                                "--image-topic", "/c", "--pose-topic", "/p", "--json", str(bag / "drive2.mcap")],
    "eval-plot-in-the-bag-folder": lambda bag, poses: ["eval", "--model", "m.onnx", "--map", "m", "--bag", str(bag),
                                                       "--image-topic", "/c", "--pose-topic", "/p", "--plot", str(bag / "e.png")],
    "build-map-out-is-the-poses": lambda bag, poses: ["build-map", "--model", "m.onnx", "--dataset", str(bag), "--poses", str(poses),
                                                      "--out", str(poses)],
}


@pytest.mark.parametrize("case", sorted(OVER_AN_INPUT))
def test_an_output_over_a_bag_or_poses_is_refused_before_any_work(case, tmp_path: Path, capsys):
    bag, poses = drive(tmp_path)
    assert main(OVER_AN_INPUT[case](bag, poses)) == 2
    assert "the input" in one_line_error(capsys)
    assert sorted(p.name for p in bag.iterdir()) == ["drive2.mcap"] and (bag / "drive2.mcap").read_bytes() == b"recorded"
    assert poses.read_text() == "file,east,north\n"


# ---- figure formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["eval", "--plot", "curve"], ["eval", "--plot", "c.xyz"], ["eval", "--retrievals", "r.gif"],
                                  ["synth-preview", "--out", "p.xyz"]], ids=lambda a: " ".join(a))
def test_a_figure_format_is_checked_before_the_work(args, tmp_path: Path, capsys):
    """The dataset does not exist: the format is refused first, and nothing is written."""
    command, option, name = args
    rest = ["--model", "pixels", "--dataset", str(tmp_path / "nope")] if command == "eval" else []
    assert main([command, *rest, option, str(tmp_path / name)]) == 2
    assert "give a path ending in .png, .jpg" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_figures_are_written_to_exactly_the_path_given(tiny_dataset: Path, tmp_path: Path):
    import cv2
    import matplotlib

    from structvpr_edge.eval.plots import FIGURE_SUFFIXES, plot_recall_curves, plot_retrievals, pyplot

    out = tmp_path / "figures"
    data = load_dataset(tiny_dataset)
    open_figures = set(pyplot().get_fignums())
    curves = {"m": {"1": 0.5, "5": 1.0}}
    assert plot_recall_curves(curves, out / "c.svg") == out / "c.svg"
    assert plot_retrievals(data, np.zeros((3, 3), int), out / "r.JPG", top=3) == out / "r.JPG"
    for bad in (out / "c", out / "c.gif"):
        with pytest.raises(ConfigError, match="give a path ending in"):
            plot_recall_curves(curves, bad)
    with pytest.raises(ConfigError, match="give a path ending in"):
        plot_retrievals(data, np.zeros((3, 3), int), out / "r.xyz", top=3)
    assert sorted(p.name for p in out.iterdir()) == ["c.svg", "r.JPG"]
    assert cv2.imread(str(out / "r.JPG")) is not None and (out / "c.svg").read_text().lstrip().startswith("<?xml")
    assert set(pyplot().get_fignums()) == open_figures and matplotlib.get_backend().lower() == "agg"  # closed, refused ones too
    figure = pyplot().figure()  # the formats promised are those the installed writers have
    assert {s[1:] for s in FIGURE_SUFFIXES} <= set(figure.canvas.get_supported_filetypes())
    pyplot().close(figure)
    assert all(cv2.haveImageWriter("x" + suffix) for suffix in IMAGE_SUFFIXES)


# ---- Ctrl-C and a closed pipe --------------------------------------------------------------------------


def handler_raising(monkeypatch, command: str, exc: BaseException) -> None:
    """``command`` raises ``exc`` half way through its work, under a progress bar."""
    from tqdm import tqdm

    def handler(args: argparse.Namespace) -> None:
        print("partial output")
        for _ in tqdm(range(3), desc="work"):
            raise exc

    help_text, options, renamed, _ = cli.COMMANDS[command]
    monkeypatch.setitem(cli.COMMANDS, command, (help_text, options, renamed, handler))


def test_ctrl_c_is_one_line_and_exit_code_130(monkeypatch, tmp_path: Path, capsys):
    handler_raising(monkeypatch, "synth", KeyboardInterrupt())
    try:
        code = main(["synth", "--out", str(tmp_path / "s")])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C left main as a traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err.endswith("\nstructvpr-edge synth: interrupted\n") and err.count("interrupted") == 1, err  # on a line of its own, last
    assert "Traceback" not in err


def test_ctrl_c_leaves_the_previous_file_whole_and_no_temporary_file(tmp_path: Path):
    out = tmp_path / "poses.csv"
    out.write_text("previous")

    def interrupted(tmp: Path) -> None:
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_whole(out, interrupted)
    assert out.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["poses.csv"]


def test_synth_workers_leave_ctrl_c_to_the_parent(tmp_path: Path):
    """A Ctrl-C reaches every process of the group: the workers ignore it (no traceback each), the parent stops the pool."""
    from structvpr_edge.data.synthcity import generate

    before = signal.getsignal(signal.SIGINT)
    try:
        generate._init_worker(tmp_path, 0, generate.get_preset("smoke"))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)
        generate._JOB = None


def test_a_reader_that_stops_reading_ends_the_run_quietly_with_0(tiny_dataset: Path):
    """``structvpr-edge eval ... | head -0``: stdout's reader is gone before the report is printed."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "structvpr_edge.cli", "eval", "--model", "pixels", "--dataset", str(tiny_dataset)],
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr.lower() and "Exception ignored" not in done.stderr


def test_a_broken_pipe_that_is_not_stdout_stays_an_error(monkeypatch, tmp_path: Path, capsys):
    handler_raising(monkeypatch, "synth", BrokenPipeError(32, "Broken pipe"))
    assert main(["synth", "--out", str(tmp_path / "s")]) == 2
    assert "Broken pipe" in one_line_error(capsys)


# ---- a rerun after a run cut short ------------------------------------------------------------------------


def test_a_route_cut_short_is_written_again_by_the_same_command(tmp_path: Path, monkeypatch):
    from structvpr_edge.data.synthcity import generate, route

    written = []

    def cut_after_one(*args):
        if written:
            raise KeyboardInterrupt
        written.append(generate._write_shot(*args))
        return written[-1]

    out = tmp_path / "route"
    monkeypatch.setattr(route, "_write_shot", cut_after_one)
    with pytest.raises(KeyboardInterrupt):
        route.generate_route(out, places=2)
    assert (out / generate.UNFINISHED).is_file() and not (out / generate.MANIFEST).exists()
    monkeypatch.undo()
    assert len(load_dataset(route.generate_route(out, places=2)).queries) == 2
    assert (out / generate.MANIFEST).read_text() == '{"generator": "synthcity", "kind": "route"}\n'
    assert not (out / generate.UNFINISHED).exists()


def test_bags_are_written_again_beside_their_route_and_refused_elsewhere(tmp_path: Path):
    """The demo --from-bags and synth --format rosbag2 run twice into one folder; someone else's bag folder is kept."""
    pytest.importorskip("rosbags", reason="the ros extra: pip install -e '.[ros]'")
    pytest.importorskip("pyproj", reason="the ros extra: pip install -e '.[ros]'")
    from structvpr_edge.data.synthcity.bags import generate_route_bags

    out = tmp_path / "bags"
    first = generate_route_bags(out, places=2)
    (first["drive1"] / "leftover").write_text("from a run cut short")
    again = generate_route_bags(out, places=2)
    assert again == first and not (again["drive1"] / "leftover").exists() and (again["drive2"] / "metadata.yaml").is_file()
    foreign = tmp_path / "recordings"
    (foreign / "drive1").mkdir(parents=True)
    with pytest.raises(DatasetError, match="exists already"):
        generate_route_bags(foreign, places=2)
    assert list((foreign / "drive1").iterdir()) == [] and not (foreign / "route").exists()


# ---- files that are not checkpoints -------------------------------------------------------------------------


def test_an_onnx_file_given_as_a_checkpoint_is_named_and_gets_no_trust_hint(tmp_path: Path, capsys):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch")  # how an ONNX protobuf begins
    assert main(["export", "--model", str(onnx), "--out", str(tmp_path / "out.onnx")]) == 2
    err = one_line_error(capsys)
    assert "is an ONNX file, not a PyTorch checkpoint" in err and "--trust-checkpoint" not in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("content, says", [(b"", "it is empty"), (b"hello\n", "torch.save did not write it"),
                                           (b"\x80\x04\x95\x09\x00", "torch.save did not write it")], ids=["empty", "text", "plain-pickle"])
def test_a_file_torch_did_not_write_is_not_a_checkpoint(content: bytes, says: str, tmp_path: Path):
    from structvpr_edge.models.checkpoint import load_checkpoint

    path = tmp_path / "model.pt"
    path.write_bytes(content)
    for trust in (False, True):
        with pytest.raises(ModelError, match=f"is not a PyTorch checkpoint: {says}") as refused:
            load_checkpoint(path, trust_checkpoint=trust)
        assert "--trust-checkpoint" not in str(refused.value)


# ---- outputs checked before the work, their folders made ----------------------------------------------------------


def test_export_refuses_a_folder_as_out_before_opening_the_model(tmp_path: Path, capsys):
    assert main(["export", "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_line_error(capsys)


def test_a_missing_output_folder_is_made_for_the_poses_as_for_every_output(tmp_path: Path):
    from structvpr_edge.runtime.outputs import write_poses

    out = tmp_path / "new" / "deeper" / "poses.csv"
    assert write_poses(out, iter([]), "", {}) == 0
    assert out.read_text().startswith("stamp_ns,source")


@pytest.mark.parametrize("threads", ["0", "-1", "x", str(2**40)])
def test_demo_threads_are_checked_when_parsed(threads: str, tmp_path: Path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--threads", threads]) == 2
    assert "threads must be 'auto' or an integer" in one_line_error(capsys)
    assert not (tmp_path / "demo").exists()
