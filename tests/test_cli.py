"""The command line's spellings: one per option, old ones kept as hidden, deprecated aliases."""
from __future__ import annotations

import pytest

from structvpr_edge.cli import SYNTH_PRESETS, main, parse_args
from structvpr_edge.data.synthcity import PRESETS

# (old command line, the same with today's spellings)
RENAMED = [
    (["eval", "--model", "pixels", "--dataset", "d", "--image-size", "64x48"], ["eval", "--model", "pixels", "--dataset", "d", "--size", "64x48"]),
    (["build-map", "--model", "m.onnx", "--images", "d", "--out", "o"], ["build-map", "--model", "m.onnx", "--dataset", "d", "--out", "o"]),
    (["calibrate-threshold", "--model", "m.onnx", "--map", "o", "--val", "d"], ["calibrate-threshold", "--model", "m.onnx", "--map", "o", "--dataset", "d"]),
    (["calibrate", "--model", "m.onnx", "--images", "d", "--val", "v", "--out", "c"],
     ["calibrate", "--model", "m.onnx", "--dataset", "d", "--val-dataset", "v", "--out", "c"]),
]


@pytest.mark.parametrize("old, new", RENAMED, ids=[r[0][0] for r in RENAMED])
def test_old_spellings_parse_like_the_new_ones_and_warn(old, new, capsys):
    assert vars(parse_args(old)) == vars(parse_args(new))
    warnings = capsys.readouterr().err.splitlines()
    assert warnings and all("is deprecated; use --" in line for line in warnings)
    assert len(warnings) == sum(arg in ("--image-size", "--images", "--val") for arg in old)


def test_export_width_alone_keeps_the_checkpoint_height(capsys):
    args = parse_args(["export", "--model", "m.pt", "--out", "x.onnx", "--width", "320"])
    assert (args.size, args.width, args.height) == (None, 320, None)
    assert "--width is deprecated; use --size" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "export", "calibrate", "build-map", "calibrate-threshold"])
def test_help_shows_only_the_current_spellings(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert all(old not in text for old in ("--image-size", "--images", "--val ", "--width", "--height"))


def test_synth_preset_choices_are_the_generator_presets(capsys):
    assert set(SYNTH_PRESETS) == set(PRESETS)
    assert main(["synth", "--out", "x", "--preset", "nope"]) == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_a_dataset_is_required_in_some_spelling(capsys):
    assert main(["build-map", "--model", "m.onnx", "--out", "o"]) == 2
    assert "--dataset" in capsys.readouterr().err
