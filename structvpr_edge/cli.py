"""The ``structvpr-edge`` command line. Each subcommand imports what it needs when it runs,
so the runtime commands work on an edge device without torch or training code.

Subcommands are listed in pipeline order, each parser beside its handler; the options several
share (--model, --dataset, --split, --size, --threads) are declared once, below.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .artifacts import BACKENDS
from .errors import ConfigError, StructVPRError

SYNTH_PRESETS = ("smoke", "benchmark", "benchmark-hard")  # data/synthcity/generate.PRESETS (tests/test_cli.py checks)
MODEL_HELP = "checkpoint (.pt), ONNX file, TensorRT engine (.engine/.plan) or shipped name (structvprpp, student-nokd, baseline)"


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


class _Deprecated(argparse.Action):
    """An old spelling kept for users' scripts: stores into the new option's dest, says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"structvpr-edge: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _old(parser, old: str, new: str, dest: str | None = None, **kwargs) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of ``new`` (stored where ``new`` is, unless ``dest``)."""
    parser.add_argument(old, action=_Deprecated, new=new, dest=dest or new.lstrip("-").replace("-", "_"), **kwargs)


# The shared options: one spelling, one help text each.
def _model(parser: argparse.ArgumentParser, extra: str = "", **kwargs) -> None:
    parser.add_argument("--model", required="default" not in kwargs, help=MODEL_HELP + extra, **kwargs)


def _dataset(parser: argparse.ArgumentParser, what: str, split: str | None = "test", old: tuple[str, ...] = ()) -> None:
    """--dataset (a root in the standard VPR layout, see README; or an old spelling) and, unless None, --split."""
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--dataset", help=what)
    for spelling in old:
        _old(given, spelling, "--dataset")
    if split is not None:
        parser.add_argument("--split", default=split, help=f"split of the dataset (default {split})")


def _size_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--size", type=_size, default=None, metavar="WxH", help=what)


def _threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=_threads, default="auto", help="CPU inference threads: auto (measured, cached) or a count")


def _runtime(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs EdgeVPR."""
    _model(parser)
    parser.add_argument("--backend", default="auto", choices=BACKENDS)
    _threads_option(parser)


def add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="generate a route, map it, localize a night/winter drive with the shipped model")
    demo.add_argument("--out", default="demo-output")
    _model(demo, default="structvprpp")
    demo.add_argument("--places", type=_positive_int, default=120)
    _threads_option(demo)
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    summary = run_demo(args.out, model=args.model, places=args.places, threads=args.threads)
    latency = summary["latency_ms"]
    print(f"\nRecall@1 of {summary['places']} night/winter frames: {100 * summary['recall@1']:.1f}% single frame, "
          f"{100 * summary['recall@1_temporal']:.1f}% with the temporal filter")
    print("latency p50 (ms): " + ", ".join(f"{stage} {latency[stage]['p50']:.2f}" for stage in latency))
    print(f"queries beside their matches: {summary['figure']}  ({summary['seconds']:.0f} s in all)")
    Path(args.out, "demo.json").write_text(json.dumps(summary, indent=2) + "\n")


def add_synth(commands) -> None:
    synth = commands.add_parser("synth", help="generate a SynthCity VPR benchmark")
    synth.add_argument("--out", required=True, help="output dataset folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--preset", default="benchmark", choices=SYNTH_PRESETS)
    synth.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    synth.add_argument("--splits", default="train,val,test", help="comma-separated subset of train,val,test to render")
    synth.set_defaults(func=cmd_synth)


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthcity import generate_dataset

    out = generate_dataset(Path(args.out), seed=args.seed, preset=args.preset, workers=args.workers, splits=tuple(args.splits.split(",")))
    print(f"SynthCity dataset written to {out}")


def add_synth_preview(commands) -> None:
    preview = commands.add_parser("synth-preview", help="PNG contact sheet of SynthCity conditions with labels")
    preview.add_argument("--out", required=True, help="output PNG")
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(func=cmd_synth_preview)


def cmd_synth_preview(args: argparse.Namespace) -> None:
    from .data.synthcity import write_preview

    print(f"preview written to {write_preview(Path(args.out), seed=args.seed)}")


def add_labels(commands) -> None:
    labels = commands.add_parser("labels", help="label maps for a dataset from your own segmentation model")
    labels.add_argument("--images", required=True, help="images root, e.g. ROOT/images (walked recursively)")
    labels.add_argument("--out", required=True, help="label root, e.g. ROOT/labels (same relative paths, .png)")
    source = labels.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="ONNX model: (B,3,H,W) RGB -> logits (B,C,h,w) or class ids (B,h,w)")
    source.add_argument("--pngs", help="folder of predicted class-id PNGs mirroring --images")
    labels.add_argument("--scheme", choices=("cityscapes", "ade20k"), default="cityscapes", help="the model's classes")
    _size_option(labels, "network input (default: the model's, else the image's)")
    labels.add_argument("--mean", type=float, nargs=3, help="RGB mean in [0, 1] (default: ImageNet)")
    labels.add_argument("--std", type=float, nargs=3, help="RGB std in [0, 1] (default: ImageNet)")
    labels.add_argument("--batch-size", type=_positive_int, default=4)
    labels.add_argument("--overwrite", action="store_true", help="redo label maps that already exist")
    labels.set_defaults(func=cmd_labels)


def cmd_labels(args: argparse.Namespace) -> None:
    from .data.segmentation import IMAGENET_MEAN, IMAGENET_STD, convert_label_pngs, missing_labels, segment_folder

    images, out = Path(args.images), Path(args.out)
    if args.onnx:
        summary = segment_folder(
            images, Path(args.onnx), out, scheme=args.scheme, input_size=args.size,
            mean=tuple(args.mean or IMAGENET_MEAN), std=tuple(args.std or IMAGENET_STD),
            batch_size=args.batch_size, overwrite=args.overwrite,
        )
        print(f"{summary.written} label maps written to {out} ({summary.cached} already there, kept)")
    else:
        print(f"{convert_label_pngs(Path(args.pngs), out, scheme=args.scheme)} label maps written to {out}")
    missing = missing_labels(images, out)
    if missing:  # the dataset loader uses labels only when every image has one
        print(f"warning: {len(missing)} images have no label map, e.g. {missing[0]}", file=sys.stderr)


def add_train(commands) -> None:
    tr = commands.add_parser("train", help="train a teacher, baseline or StructVPR(++) student")
    tr.add_argument("--config", required=True, help="YAML config (see structvpr_edge/configs/)")
    tr.add_argument("--out", required=True, help="run folder: model.pt, last.pt, log.jsonl, curves.png")
    tr.add_argument("--stages", help="comma-separated subset of teacher,student (default: what the mode needs)")
    tr.add_argument("--seed", type=int, default=None, help="override the config's seed")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set distill.samples.enabled=false (repeatable)")
    tr.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from .train.config import dotted_overrides, load_config
    from .train.trainer import train

    overrides = dotted_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.config, overrides)
    stages = args.stages.split(",") if args.stages else None
    print(f"model written to {train(config, Path(args.out), stages=stages, resume=args.resume)}")


def add_eval(commands) -> None:
    from .data.dataset import DEFAULT_POSITIVE_RADIUS_M

    ev = commands.add_parser("eval", help="Recall@N of a model on a dataset split")
    _model(ev, extra=", or a reference: pixels | imagenet-gem | label-oracle")
    _dataset(ev, "dataset root (standard VPR layout)")
    ev.add_argument("--radius", type=_positive_float, default=DEFAULT_POSITIVE_RADIUS_M, help="positive radius in metres")
    _size_option(ev, "resize images to this (default: the model's, else the dataset's)")
    _old(ev, "--image-size", "--size", type=_size)
    ev.add_argument("--batch-size", type=_positive_int, default=32)
    ev.add_argument("--json", help="write the report here")
    ev.add_argument("--plot", help="write the Recall@N curve PNG here")
    ev.add_argument("--retrievals", help="write a PNG of queries with their top-5 here")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> None:
    from .data.dataset import load_dataset
    from .eval.evaluate import evaluate
    from .eval.models import load_extractor
    from .eval.plots import plot_recall_curves, plot_retrievals

    for output in (args.json, args.plot, args.retrievals):
        _check_output(output)
    dataset = load_dataset(args.dataset, split=args.split, positive_radius=args.radius)
    result = evaluate(load_extractor(args.model, image_size=args.size), dataset, batch_size=args.batch_size)
    report = {"model": args.model, "dataset": str(args.dataset), "split": args.split, **result.to_json()}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_recall_curves({args.model: result.recall}, Path(args.plot), title=f"{Path(args.dataset).name}/{args.split}")
    if args.retrievals:
        plot_retrievals(dataset, result.predictions, Path(args.retrievals))


def add_export(commands) -> None:
    export = commands.add_parser("export", help="checkpoint -> ONNX with metadata, parity and TensorRT checks")
    _model(export)
    export.add_argument("--out", required=True, help="output .onnx")
    _size_option(export, "input size (default: the checkpoint's)")
    for side in ("width", "height"):  # one side alone; the other stays the checkpoint's
        _old(export, f"--{side}", "--size", dest=side, type=int, default=None)
    export.add_argument("--batch", choices=("1", "dynamic"), default="1")
    export.add_argument("--opset", type=_opset, default=17, help="17 is the newest TensorRT 8.6 parses")
    export.add_argument("--uint8-input", action="store_true", help="fold BGR->RGB and (x/255-mean)/std into the graph")
    export.add_argument("--parity-images", help="folder of real images for the parity check (besides random frames)")
    export.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from .data.dataset import list_images
    from .deploy.export import export_onnx, read_parity_images
    from .deploy.trt_check import check_trt_friendly

    width, height = args.size or (None, None)
    images = read_parity_images(list_images(Path(args.parity_images))) if args.parity_images else None
    report = export_onnx(
        args.model, args.out, width=args.width or width, height=args.height or height, batch=args.batch, opset=args.opset,
        uint8_input=args.uint8_input, parity_images=images,
    )
    print(f"ONNX written to {report.path} (input {report.input_shape}, simplified with {report.simplifier})")
    print(f"parity over {report.parity_images} frames: min cosine {report.parity_min_cosine:.7f}, max abs diff {report.parity_max_abs_diff:.3g}")
    print(check_trt_friendly(report.path).summary())


def add_calibrate(commands) -> None:
    cal = commands.add_parser("calibrate", help="INT8 (CPU and TensorRT forms) and FP16 variants of an FP32 ONNX, with an accuracy gate")
    _model(cal, extra="; an ONNX file must be the FP32 export, anything else is exported into OUT/model.onnx")
    _dataset(cal, "calibration images: a dataset root (its train split) or an image folder", split=None, old=("--images",))
    cal.add_argument("--out", required=True, help="calibration folder, e.g. calibration/NAME")
    cal.add_argument("--num", type=_positive_int, default=512, help="calibration images, chosen by greedy k-center")
    cal.add_argument("--method", choices=("entropy", "minmax", "percentile"), default="entropy")
    cal.add_argument("--max-recall-drop", type=float, default=None, help="Recall@1 points INT8 may lose; keeps sensitive layers in FP32 until met")
    cal.add_argument("--val-dataset", default=None, help="validation dataset root for cosine and Recall@1/5")
    _old(cal, "--val", "--val-dataset")
    cal.add_argument("--val-split", default="val")
    cal.add_argument("--reselect", action="store_true", help="choose new images even if OUT/manifest.json exists")
    _threads_option(cal)
    cal.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> None:
    from .deploy.calibration import CalibrationConfig, calibrate

    report = calibrate(CalibrationConfig(
        model=args.model, images=args.dataset, out=args.out, num=args.num, method=args.method,
        max_recall_drop=args.max_recall_drop, val=args.val_dataset, val_split=args.val_split, reselect=args.reselect, threads=args.threads,
    ))
    print(report.markdown())
    print(f"calibration written to {args.out} in {report.seconds:.1f} s")


def add_build_engine(commands) -> None:
    eng = commands.add_parser("build-engine", help="TensorRT engine (8.6, 10.x, 11.x) plus its JSON manifest")
    source = eng.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="FP32 ONNX (or the FP16 / Q/DQ graph from calibrate)")
    source.add_argument("--model", help="shipped model NAME: build from its calibration kit calibration/NAME (no images needed)")
    eng.add_argument("--precision", choices=("fp32", "fp16", "int8"), required=True)
    eng.add_argument("--min-batch", type=int, default=None)
    eng.add_argument("--opt-batch", type=int, default=None)
    eng.add_argument("--max-batch", type=int, default=None, help="profile of a dynamic-batch ONNX (default 1/1/8)")
    eng.add_argument("--workspace", type=int, default=1024, help="workspace memory pool in MB")
    eng.add_argument("--timing-cache", default=None, help="timing cache file, read if present and written back")
    eng.add_argument("--dla-core", type=int, default=None, help="build for this DLA core (Jetson), GPU fallback on")
    eng.add_argument("--calibration", default=None, help="calibration/NAME folder (FP16/Q-DQ graphs, TensorRT cache)")
    eng.add_argument("--out", required=True, help="engines/NAME.engine (manifest written to NAME.engine.json)")
    eng.set_defaults(func=cmd_build_engine)


def cmd_build_engine(args: argparse.Namespace) -> None:
    from .deploy.calibration import prepare_kit
    from .deploy.engine import EngineBuildConfig, build_engine

    calibration, onnx = args.calibration, args.onnx
    if args.model:  # a calibration kit (calibration/NAME) holds the graphs, rebuilt from the weights if missing
        calibration = calibration or str(Path("calibration") / args.model)
        onnx = prepare_kit(Path(calibration))
    manifest = build_engine(EngineBuildConfig(
        onnx=onnx, precision=args.precision, out=args.out, min_batch=args.min_batch, opt_batch=args.opt_batch,
        max_batch=args.max_batch, workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
        calibration=calibration,
    ))
    print(f"engine written to {args.out} ({manifest['plan']['why']}; TensorRT {manifest['tensorrt_version']}, "
          f"{manifest['gpu_name']}, {manifest['build_seconds']:.0f} s); manifest beside it")
    print(f"the same build with trtexec:\n  {manifest['trtexec']}")


def add_build_map(commands) -> None:
    bm = commands.add_parser("build-map", help="describe geo-tagged reference images into a FAISS map")
    _runtime(bm)
    _dataset(bm, "dataset root (its --split database) or a folder of @east@north@... images", old=("--images",))
    bm.add_argument("--out", required=True, help="map folder")
    bm.add_argument("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    bm.add_argument("--append", action="store_true", help="add the images to the existing map in --out")
    bm.set_defaults(func=cmd_build_map)


def cmd_build_map(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import build_map

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16) as vpr:
        place_map = build_map(vpr, args.dataset, args.out, index_type=args.index, append=args.append, split=args.split)
    print(f"map with {len(place_map)} places ({place_map.factory}) written to {args.out}")


def add_calibrate_threshold(commands) -> None:
    ct = commands.add_parser("calibrate-threshold", help="pick the confidence threshold reaching a target precision")
    _runtime(ct)
    ct.add_argument("--map", required=True)
    _dataset(ct, "dataset whose --split queries lie in the map's area; never the test split you report", split="val", old=("--val",))
    ct.add_argument("--precision", type=_fraction, default=0.99, help="target precision in (0, 1), measured on the val queries")
    ct.set_defaults(func=cmd_calibrate_threshold)


def cmd_calibrate_threshold(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import calibrate_threshold

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16) as vpr:
        threshold = calibrate_threshold(vpr, args.map, args.dataset, args.precision, split=args.split)
    print(json.dumps(threshold.__dict__, indent=2))


def add_localize(commands) -> None:
    lo = commands.add_parser("localize", help="localize image files against a map; one JSON line per frame")
    _runtime(lo)
    lo.add_argument("--map", required=True)
    lo.add_argument("--top-k", type=_positive_int, default=5)
    lo.add_argument("--temporal", action="store_true", help="frames are a sequence: apply the temporal filter")
    lo.add_argument("frames", nargs="+")
    lo.set_defaults(func=cmd_localize)


def cmd_localize(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.preprocess import read_image

    with EdgeVPR(args.model, map=args.map, backend=args.backend, top_k=args.top_k, threads=args.threads, temporal=args.temporal) as vpr:
        for path in args.frames:
            print(json.dumps({"frame": path, **vpr.localize(read_image(path)).to_json()}), flush=True)


# Pipeline order: try it; data; train; evaluate; deploy; run on the vehicle.
COMMANDS = (add_demo, add_synth, add_synth_preview, add_labels, add_train, add_eval, add_export, add_calibrate, add_build_engine,
            add_build_map, add_calibrate_threshold, add_localize)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="structvpr-edge", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
