"""The ``structvpr-edge`` command line. Each subcommand imports what it needs when it runs,
so the runtime commands work on an edge device without torch or training code.

Subcommands are declared in pipeline order, each as its options above its handler; the options
several share (--model, --dataset, --split, --size, --threads) are built once, below.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .artifacts import BACKENDS
from .data.dataset import DEFAULT_POSITIVE_RADIUS_M
from .errors import ConfigError, StructVPRError

SYNTH_PRESETS = ("smoke", "benchmark", "benchmark-hard")  # data/synthcity/generate.PRESETS, not imported to parse (tests/test_cli.py)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like every other operator error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(convert, valid, what: str):
    """An argparse type: ``convert(text)``, finite and ``valid`` (nan, inf, 0 and negatives end the run at once)."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and valid(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_positive_float = _number(float, lambda v: v > 0, "a finite number > 0")
_fraction = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
_opset = _number(int, lambda v: 11 <= v <= 20, "an ONNX opset in 11..20 (17 is the newest TensorRT 8.6 parses)")


def _size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240), width first like OpenCV."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return width, height


def _threads(text: str) -> int | str:
    """--threads: "auto" (timed per model and machine, runtime/ort_session.py) or a count."""
    return text if text == "auto" else int(text)


def _check_output(path: str | None) -> None:
    """An output file path that can be written, checked before the long work that produces it."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{path} is a folder; give a file path")
    existing = next(p for p in target.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {existing} is not a writable folder")


def arg(*flags: str, **options) -> tuple:
    """One option, as ``add_argument`` takes it; ``one_of=(arg, ...)``: mutually exclusive options."""
    return flags, options


def model(note: str = "", **options) -> tuple:
    kinds = "checkpoint (.pt), ONNX file, TensorRT engine (.engine/.plan) or shipped name (structvprpp, student-nokd, baseline)"
    return arg("--model", required="default" not in options, help=kinds + note, **options)


def dataset(what: str = "dataset root (standard VPR layout, see README)", split: str | None = "test") -> tuple:
    """--dataset and, unless ``split`` is None, --split with that default."""
    splits = (arg("--split", default=split, help=f"split of --dataset (default {split})"),) if split else ()
    return arg("--dataset", required=True, help=what), *splits


def size(what: str) -> tuple:
    return arg("--size", type=_size, default=None, metavar="WxH", help=what)


THREADS = arg("--threads", type=_threads, default="auto", help="CPU inference threads: auto (measured, cached) or a count")
RUNTIME = (model(), arg("--backend", default="auto", choices=BACKENDS), THREADS)  # every command that runs EdgeVPR
COMMANDS: dict[str, tuple[str, tuple, dict[str, str], Callable]] = {}  # name -> help, options, old spellings, handler


def command(name: str, help: str, *options: tuple, renamed: dict[str, str] | None = None):
    """Register the decorated handler as subcommand ``name``. ``renamed``: old spelling -> today's,
    still accepted (users' scripts keep working) with a warning on stderr; an old spelling that is
    itself a hidden option (a part of today's) is kept as given."""

    def register(handler: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        COMMANDS[name] = (help, options, renamed or {}, handler)
        return handler

    return register


@command("demo", "generate a route, map it, localize a night/winter drive with the shipped model",
         arg("--out", default="demo-output"), model(default="structvprpp"), arg("--places", type=_positive_int, default=120), THREADS)
def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import print_summary, run_demo

    print_summary(run_demo(args.out, model=args.model, places=args.places, threads=args.threads))


@command("synth", "generate a SynthCity VPR benchmark",
         arg("--out", required=True, help="output dataset folder"), arg("--seed", type=int, default=0),
         arg("--preset", default="benchmark", choices=SYNTH_PRESETS),
         arg("--workers", type=_positive_int, default=None, help="processes (default: all cores)"),
         arg("--splits", default="train,val,test", help="comma-separated subset of train,val,test to render"))
def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthcity import generate_dataset

    out = generate_dataset(Path(args.out), seed=args.seed, preset=args.preset, workers=args.workers, splits=tuple(args.splits.split(",")))
    print(f"SynthCity dataset written to {out}")


@command("synth-preview", "PNG contact sheet of SynthCity conditions with labels",
         arg("--out", required=True, help="output PNG"), arg("--seed", type=int, default=0))
def cmd_synth_preview(args: argparse.Namespace) -> None:
    from .data.synthcity import write_preview

    print(f"preview written to {write_preview(Path(args.out), seed=args.seed)}")


@command("labels", "label maps for a dataset from your own segmentation model",
         arg("--images", required=True, help="images root, e.g. ROOT/images (walked recursively)"),
         arg("--out", required=True, help="label root, e.g. ROOT/labels (same relative paths, .png)"),
         arg(one_of=(arg("--onnx", help="ONNX model: (B,3,H,W) RGB -> logits (B,C,h,w) or class ids (B,h,w)"),
                     arg("--pngs", help="folder of predicted class-id PNGs mirroring --images"))),
         arg("--scheme", choices=("cityscapes", "ade20k"), default="cityscapes", help="the model's classes"),
         size("network input (default: the model's, else the image's)"), arg("--batch-size", type=_positive_int, default=4),
         arg("--mean", type=float, nargs=3, help="RGB mean in [0, 1] (default: ImageNet)"),
         arg("--std", type=float, nargs=3, help="RGB std in [0, 1] (default: ImageNet)"),
         arg("--overwrite", action="store_true", help="redo label maps that already exist"))
def cmd_labels(args: argparse.Namespace) -> None:
    from .data.segmentation import IMAGENET_MEAN, IMAGENET_STD, convert_label_pngs, missing_labels, segment_folder

    images, out = Path(args.images), Path(args.out)
    if args.onnx:
        summary = segment_folder(images, Path(args.onnx), out, scheme=args.scheme, input_size=args.size, mean=tuple(args.mean or IMAGENET_MEAN),
                                 std=tuple(args.std or IMAGENET_STD), batch_size=args.batch_size, overwrite=args.overwrite)
        print(f"{summary.written} label maps written to {out} ({summary.cached} already there, kept)")
    else:
        print(f"{convert_label_pngs(Path(args.pngs), out, scheme=args.scheme)} label maps written to {out}")
    missing = missing_labels(images, out)
    if missing:  # the dataset loader uses labels only when every image has one
        print(f"warning: {len(missing)} images have no label map, e.g. {missing[0]}", file=sys.stderr)


@command("train", "train a teacher, baseline or StructVPR(++) student",
         arg("--config", required=True, help="YAML config (see structvpr_edge/configs/)"),
         arg("--seed", type=int, default=None, help="override the config's seed"),
         arg("--out", required=True, help="run folder: model.pt, last.pt, log.jsonl, curves.png"),
         arg("--stages", help="comma-separated subset of teacher,student (default: what the mode needs)"),
         arg("--resume", action="store_true", help="continue from OUT/last.pt"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE",
             help="override a config value, e.g. --set distill.samples.enabled=false (repeatable)"))
def cmd_train(args: argparse.Namespace) -> None:
    from .train.config import dotted_overrides, load_config
    from .train.trainer import train

    overrides = dotted_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.config, overrides)
    stages = args.stages.split(",") if args.stages else None
    print(f"model written to {train(config, Path(args.out), stages=stages, resume=args.resume)}")


@command("eval", "Recall@N of a model on a dataset split",
         model(", or a reference: pixels | imagenet-gem | label-oracle"), *dataset(),
         arg("--radius", type=_positive_float, default=DEFAULT_POSITIVE_RADIUS_M, help="positive radius in metres"),
         size("resize images to this (default: the model's, else the dataset's)"),
         arg("--batch-size", type=_positive_int, default=32), arg("--json", help="write the report here"),
         arg("--plot", help="write the Recall@N curve PNG here"), arg("--retrievals", help="write a PNG of queries with their top-5 here"),
         renamed={"--image-size": "--size"})
def cmd_eval(args: argparse.Namespace) -> None:
    from .data.dataset import load_dataset
    from .eval.evaluate import evaluate
    from .eval.models import load_extractor
    from .eval.plots import plot_recall_curves, plot_retrievals

    for output in (args.json, args.plot, args.retrievals):
        _check_output(output)
    data = load_dataset(args.dataset, split=args.split, positive_radius=args.radius)
    result = evaluate(load_extractor(args.model, image_size=args.size), data, batch_size=args.batch_size)
    report = {"model": args.model, "dataset": str(args.dataset), "split": args.split, **result.to_json()}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_recall_curves({args.model: result.recall}, Path(args.plot), title=f"{Path(args.dataset).name}/{args.split}")
    if args.retrievals:
        plot_retrievals(data, result.predictions, Path(args.retrievals))


@command("ship", "save a finished run's model as a shipped model (float16, inside the package)",
         arg("checkpoint", help="the run's model.pt, chosen on val"),
         arg("--name", required=True, help="shipped name: structvprpp, student-nokd or baseline"))
def cmd_ship(args: argparse.Namespace) -> None:
    from .models.checkpoint import ship

    print(f"shipped {args.name}: {ship(args.checkpoint, args.name)}")


@command("export", "checkpoint -> ONNX with metadata, parity and TensorRT checks",
         model(), arg("--out", required=True, help="output .onnx"), size("input size (default: the checkpoint's)"),
         arg("--batch", choices=("1", "dynamic"), default="1"),
         arg("--width", type=int, help=argparse.SUPPRESS), arg("--height", type=int, help=argparse.SUPPRESS),  # one side of --size
         arg("--opset", type=_opset, default=17, help="17 is the newest TensorRT 8.6 parses"),
         arg("--uint8-input", action="store_true", help="fold BGR->RGB and (x/255-mean)/std into the graph"),
         arg("--parity-images", help="folder of real images for the parity check (besides random frames)"),
         renamed={"--width": "--size", "--height": "--size"})
def cmd_export(args: argparse.Namespace) -> None:
    from .data.dataset import list_images
    from .deploy.export import export_onnx, read_parity_images
    from .deploy.trt_check import check_trt_friendly

    width, height = args.size or (args.width, args.height)  # a side left out stays the checkpoint's
    images = read_parity_images(list_images(Path(args.parity_images))) if args.parity_images else None
    report = export_onnx(args.model, args.out, width=width, height=height, batch=args.batch, opset=args.opset,
                         uint8_input=args.uint8_input, parity_images=images)
    print(f"ONNX written to {report.path} (input {report.input_shape}, simplified with {report.simplifier})")
    print(f"parity over {report.parity_images} frames: min cosine {report.parity_min_cosine:.7f}, max abs diff {report.parity_max_abs_diff:.3g}")
    print(check_trt_friendly(report.path).summary())


@command("calibrate", "INT8 (CPU and TensorRT forms) and FP16 variants of an FP32 ONNX, with an accuracy gate",
         model("; an ONNX file must be the FP32 export, anything else is exported into OUT/model.onnx"),
         *dataset("calibration images: a dataset root (its train split) or an image folder", split=None),
         arg("--out", required=True, help="calibration folder, e.g. calibration/NAME"),
         arg("--num", type=_positive_int, default=512, help="calibration images, chosen by greedy k-center"),
         arg("--method", choices=("entropy", "minmax", "percentile"), default="entropy"),
         arg("--max-recall-drop", type=float, default=None, help="Recall@1 points INT8 may lose; keeps sensitive layers in FP32 until met"),
         arg("--val-dataset", default=None, help="validation dataset root for cosine and Recall@1/5"), arg("--val-split", default="val"),
         arg("--reselect", action="store_true", help="choose new images even if OUT/manifest.json exists"), THREADS,
         renamed={"--images": "--dataset", "--val": "--val-dataset"})
def cmd_calibrate(args: argparse.Namespace) -> None:
    from .deploy.calibration import CalibrationConfig, calibrate

    report = calibrate(CalibrationConfig(
        model=args.model, images=args.dataset, out=args.out, num=args.num, method=args.method, max_recall_drop=args.max_recall_drop,
        val=args.val_dataset, val_split=args.val_split, reselect=args.reselect, threads=args.threads))
    print(report.markdown())
    print(f"calibration written to {args.out} in {report.seconds:.1f} s")


@command("build-engine", "TensorRT engine (8.6, 10.x, 11.x) plus its JSON manifest",
         arg(one_of=(arg("--onnx", help="FP32 ONNX (or the FP16 / Q/DQ graph from calibrate)"),
                     arg("--model", help="shipped model NAME: build from its calibration kit calibration/NAME (no images needed)"))),
         arg("--precision", choices=("fp32", "fp16", "int8"), required=True),
         arg("--workspace", type=int, default=1024, help="workspace memory pool in MB"),
         arg("--min-batch", type=int), arg("--opt-batch", type=int), arg("--max-batch", type=int, help="dynamic-batch profile (default 1/1/8)"),
         arg("--timing-cache", help="timing cache file, read if present and written back"),
         arg("--dla-core", type=int, default=None, help="build for this DLA core (Jetson), GPU fallback on"),
         arg("--calibration", help="calibration/NAME folder (FP16/Q-DQ graphs, TensorRT cache)"),
         arg("--out", required=True, help="engines/NAME.engine (manifest written to NAME.engine.json)"))
def cmd_build_engine(args: argparse.Namespace) -> None:
    from .deploy.calibration import prepare_kit
    from .deploy.engine import EngineBuildConfig, build_engine

    calibration, onnx = args.calibration, args.onnx
    if args.model:  # a calibration kit (calibration/NAME) holds the graphs, rebuilt from the weights if missing
        calibration = calibration or str(Path("calibration") / args.model)
        onnx = prepare_kit(Path(calibration))
    manifest = build_engine(EngineBuildConfig(
        onnx=onnx, precision=args.precision, out=args.out, min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core, calibration=calibration))
    print(f"engine written to {args.out} ({manifest['plan']['why']}; TensorRT {manifest['tensorrt_version']}, "
          f"{manifest['gpu_name']}, {manifest['build_seconds']:.0f} s); manifest beside it")
    print(f"the same build with trtexec:\n  {manifest['trtexec']}")


@command("build-map", "describe geo-tagged reference images into a FAISS map",
         *RUNTIME, *dataset("dataset root (its --split database) or a folder of @east@north@... images"),
         arg("--out", required=True, help="map folder"), arg("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"]),
         arg("--append", action="store_true", help="add the images to the existing map in --out"), renamed={"--images": "--dataset"})
def cmd_build_map(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import build_map

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16) as vpr:
        place_map = build_map(vpr, args.dataset, args.out, index_type=args.index, append=args.append, split=args.split)
    print(f"map with {len(place_map)} places ({place_map.factory}) written to {args.out}")


@command("calibrate-threshold", "pick the confidence threshold reaching a target precision",
         *RUNTIME, arg("--map", required=True), *dataset("dataset whose --split queries lie in the map's area", split="val"),
         arg("--precision", type=_fraction, default=0.99, help="target precision in (0, 1) on those queries (never the test split)"),
         renamed={"--val": "--dataset"})
def cmd_calibrate_threshold(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import calibrate_threshold

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16) as vpr:
        threshold = calibrate_threshold(vpr, args.map, args.dataset, args.precision, split=args.split)
    print(json.dumps(threshold.__dict__, indent=2))


@command("localize", "localize image files against a map; one JSON line per frame",
         *RUNTIME, arg("--map", required=True), arg("--top-k", type=_positive_int, default=5),
         arg("--temporal", action="store_true", help="frames are a sequence: apply the temporal filter"), arg("frames", nargs="+"))
def cmd_localize(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.preprocess import read_image

    with EdgeVPR(args.model, map=args.map, backend=args.backend, top_k=args.top_k, threads=args.threads, temporal=args.temporal) as vpr:
        for path in args.frames:
            print(json.dumps({"frame": path, **vpr.localize(read_image(path)).to_json()}), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="structvpr-edge", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, options, _, handler) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        for flags, kwargs in options:
            target = sub.add_mutually_exclusive_group(required=True) if "one_of" in kwargs else sub
            for one_flags, one_kwargs in kwargs.get("one_of", [(flags, kwargs)]):
                target.add_argument(*one_flags, **one_kwargs)
        sub.set_defaults(func=handler)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse, first replacing a command's old spellings (--images=X too) by today's, each with a warning."""
    _, options, renamed, _ = COMMANDS.get(argv[0] if argv else "", ("", (), {}, None))
    hidden = {flag for flags, _ in options for flag in flags}
    current = []
    for token in argv:
        flag, equals, value = token.partition("=")
        if flag in renamed:
            print(f"structvpr-edge: warning: {flag} is deprecated; use {renamed[flag]}", file=sys.stderr)
            token = token if flag in hidden else renamed[flag] + equals + value
        current.append(token)
    return build_parser().parse_args(current)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # usage errors and --help: a code to return, also when called in-process
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.func(args)
    except (StructVPRError, OSError) as exc:  # operator errors (a path, a permission, a full disk): one line, no traceback
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"structvpr-edge {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
