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



def test_synth_refuses_empty_splits(tmp_path, capsys):
    """An empty --splits is a mistake, not "every split"."""
    assert main(["synth", "--out", str(tmp_path / "s"), "--preset", "smoke", "--splits", ""]) == 2
    assert "splits must be a non-empty subset" in capsys.readouterr().err


@pytest.mark.parametrize("options", [["--format", "rosbag2", "--splits", "bogus"], ["--format", "rosbag2", "--workers", "7"],
                                     ["--places", "3"]], ids=" ".join)
def test_synth_refuses_an_option_its_format_does_not_read(options, tmp_path, capsys):
    """rosbag2 used to write its bags and drop --splits and --workers without a word (a bad --splits included)."""
    assert main(["synth", "--out", str(tmp_path / "s"), "--preset", "smoke", *options]) == 2
    assert f"{options[-2]} do not apply to --format" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

def test_a_dataset_is_required_in_some_spelling(capsys):
    assert main(["build-map", "--model", "m.onnx", "--out", "o"]) == 2
    assert "--dataset" in capsys.readouterr().err


# --- a command line a person can read (issue 26) --------------------------------------------------------

def subcommand_parsers() -> dict:
    import argparse

    from structvpr_edge.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_option_of_every_command_has_help_text():
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in subcommand_parsers().items()
               for action in sub._actions if not action.help]
    assert missing == []


def test_every_option_with_a_default_shows_it():
    """Defaults that say something (not None, off or empty) appear in the option's help."""
    hidden = [f"{name} {action.option_strings}" for name, sub in subcommand_parsers().items() for action in sub._actions
              if action.default not in (None, False, [], "==SUPPRESS==") and "default" not in sub._get_formatter()._get_help_string(action)]
    assert hidden == []


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import PackageNotFoundError, version

    import structvpr_edge

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"structvpr-edge {structvpr_edge.__version__}\n"
    try:  # one version: setup.py reads the package's
        assert version("structvpr-edge") == structvpr_edge.__version__
    except PackageNotFoundError:
        pass


def test_top_level_help_is_plain_and_says_which_commands_need_torch(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "``" not in text and "--version" in text
    lines = {name: sub.description for name, sub in subcommand_parsers().items()}  # each command's one line, as listed
    assert all(" ".join(line.split()) in " ".join(text.split()) for line in lines.values())
    assert all("[needs torch" in lines[name] for name in ("demo", "train", "ship", "export"))
    assert all("[needs" not in lines[name] for name in ("synth", "synth-preview"))
