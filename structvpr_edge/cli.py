"""The ``structvpr-edge`` command line. Each subcommand imports what it needs when it runs,
so the runtime commands work on an edge device without torch or training code."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from .errors import ConfigError, StructVPRError


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


def _size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240), width first like OpenCV."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return width, height


def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthcity import generate_dataset

    out = generate_dataset(Path(args.out), seed=args.seed, preset=args.preset, workers=args.workers, splits=tuple(args.splits.split(",")))
    print(f"SynthCity dataset written to {out}")


def cmd_synth_preview(args: argparse.Namespace) -> None:
    from .data.synthcity import write_preview

    print(f"preview written to {write_preview(Path(args.out), seed=args.seed)}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .data.dataset import load_dataset
    from .eval.evaluate import evaluate
    from .eval.models import load_extractor
    from .eval.plots import plot_recall_curves, plot_retrievals

    for output in (args.json, args.plot, args.retrievals):
        _check_output(output)
    dataset = load_dataset(args.dataset, split=args.split, positive_radius=args.radius)
    extractor = load_extractor(args.model, image_size=args.image_size)
    result = evaluate(extractor, dataset, batch_size=args.batch_size)
    report = {"model": args.model, "dataset": str(args.dataset), "split": args.split, **result.to_json()}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_recall_curves({args.model: result.recall}, Path(args.plot), title=f"{Path(args.dataset).name}/{args.split}")
    if args.retrievals:
        plot_retrievals(dataset, result.predictions, Path(args.retrievals))


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


def cmd_train(args: argparse.Namespace) -> None:
    from .train.config import dotted_overrides, load_config
    from .train.trainer import train

    overrides = dotted_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.config, overrides)
    stages = args.stages.split(",") if args.stages else None
    print(f"model written to {train(config, Path(args.out), stages=stages, resume=args.resume)}")


def cmd_build_map(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import build_map

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16) as vpr:
        place_map = build_map(vpr, args.images, args.out, index_type=args.index, append=args.append, split=args.split)
    print(f"map with {len(place_map)} places ({place_map.factory}) written to {args.out}")


def cmd_calibrate_threshold(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import calibrate_threshold

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16) as vpr:
        threshold = calibrate_threshold(vpr, args.map, args.val, args.precision, split=args.split)
    print(json.dumps(threshold.__dict__, indent=2))


def cmd_localize(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.preprocess import read_image

    with EdgeVPR(args.model, map=args.map, backend=args.backend, top_k=args.top_k, threads=args.threads, temporal=args.temporal) as vpr:
        for path in args.frames:
            frame = read_image(path)
            print(json.dumps({"frame": path, **vpr.localize(frame).to_json()}), flush=True)


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    summary = run_demo(args.out, model=args.model, places=args.places, threads=args.threads)
    latency = summary["latency_ms"]
    print(f"\nRecall@1 of {summary['places']} night/winter frames: {100 * summary['recall@1']:.1f}% single frame, "
          f"{100 * summary['recall@1_temporal']:.1f}% with the temporal filter")
    print("latency p50 (ms): " + ", ".join(f"{stage} {latency[stage]['p50']:.2f}" for stage in latency))
    print(f"queries beside their matches: {summary['figure']}  ({summary['seconds']:.0f} s in all)")
    Path(args.out, "demo.json").write_text(json.dumps(summary, indent=2) + "\n")


def _threads(text: str) -> int | str:
    """--threads: "auto" (timed per model and machine, runtime/ort_session.py) or a count."""
    return text if text == "auto" else int(text)


def _runtime_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="engine, ONNX file, checkpoint or shipped name (structvprpp, baseline)")
    parser.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "onnxruntime", "torch"])
    parser.add_argument("--threads", type=_threads, default="auto", help="inference threads (CPU): auto or a count")


def cmd_export(args: argparse.Namespace) -> None:
    from .data.dataset import list_images
    from .deploy.export import export_onnx, read_parity_images
    from .deploy.trt_check import check_trt_friendly

    images = read_parity_images(list_images(Path(args.parity_images))) if args.parity_images else None
    report = export_onnx(
        args.model, args.out, width=args.width, height=args.height, batch=args.batch, opset=args.opset,
        uint8_input=args.uint8_input, parity_images=images,
    )
    print(f"ONNX written to {report.path} (input {report.input_shape}, simplified with {report.simplifier})")
    print(f"parity over {report.parity_images} frames: min cosine {report.parity_min_cosine:.7f}, max abs diff {report.parity_max_abs_diff:.3g}")
    print(check_trt_friendly(report.path).summary())


def cmd_calibrate(args: argparse.Namespace) -> None:
    from .deploy.calibration import CalibrationConfig, calibrate

    report = calibrate(CalibrationConfig(
        model=args.model, images=args.images, out=args.out, num=args.num, method=args.method,
        max_recall_drop=args.max_recall_drop, val=args.val, val_split=args.val_split, reselect=args.reselect, threads=args.threads,
    ))
    print(report.markdown())
    print(f"calibration written to {args.out} in {report.seconds:.1f} s")


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="structvpr-edge", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="generate a route, map it, localize a night/winter drive with the shipped model")
    demo.add_argument("--out", default="demo-output")
    demo.add_argument("--model", default="structvprpp", help="shipped name, checkpoint or ONNX file")
    demo.add_argument("--places", type=_positive_int, default=120)
    demo.add_argument("--threads", type=_threads, default="auto")
    demo.set_defaults(func=cmd_demo)

    synth = commands.add_parser("synth", help="generate a SynthCity VPR benchmark")
    synth.add_argument("--out", required=True, help="output dataset folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--preset", default="benchmark", help="smoke | benchmark")
    synth.add_argument("--workers", type=_positive_int, default=None, help="processes (default: all cores)")
    synth.add_argument("--splits", default="train,val,test", help="comma-separated subset of train,val,test to render")
    synth.set_defaults(func=cmd_synth)

    preview = commands.add_parser("synth-preview", help="PNG contact sheet of SynthCity conditions with labels")
    preview.add_argument("--out", required=True, help="output PNG")
    preview.add_argument("--seed", type=int, default=0)
    preview.set_defaults(func=cmd_synth_preview)

    ev = commands.add_parser("eval", help="Recall@N of a model on a dataset split")
    ev.add_argument("--model", required=True, help="pixels | imagenet-gem | label-oracle | structvprpp | baseline | CKPT.pt | MODEL.onnx | NAME.engine")
    ev.add_argument("--dataset", required=True, help="dataset root (standard VPR layout)")
    ev.add_argument("--split", default="test")
    ev.add_argument("--radius", type=_positive_float, default=25.0, help="positive radius in metres")
    ev.add_argument("--image-size", type=_size, default=None, help="resize to WxH (default: dataset size)")
    ev.add_argument("--batch-size", type=_positive_int, default=32)
    ev.add_argument("--json", help="write the report here")
    ev.add_argument("--plot", help="write the Recall@N curve PNG here")
    ev.add_argument("--retrievals", help="write a PNG of queries with their top-5 here")
    ev.set_defaults(func=cmd_eval)

    tr = commands.add_parser("train", help="train a teacher, baseline or StructVPR(++) student")
    tr.add_argument("--config", required=True, help="YAML config (see structvpr_edge/configs/)")
    tr.add_argument("--out", required=True, help="run folder: model.pt, last.pt, log.jsonl, curves.png")
    tr.add_argument("--stages", help="comma-separated subset of teacher,student (default: what the mode needs)")
    tr.add_argument("--seed", type=int, default=None, help="override the config's seed")
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set distill.samples.enabled=false (repeatable)")
    tr.set_defaults(func=cmd_train)

    bm = commands.add_parser("build-map", help="describe geo-tagged reference images into a FAISS map")
    _runtime_options(bm)
    bm.add_argument("--images", required=True, help="dataset root (its --split database) or a folder of @east@north@... images")
    bm.add_argument("--out", required=True, help="map folder")
    bm.add_argument("--split", default="test")
    bm.add_argument("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf"])
    bm.add_argument("--append", action="store_true", help="add the images to the existing map in --out")
    bm.set_defaults(func=cmd_build_map)

    ct = commands.add_parser("calibrate-threshold", help="pick the confidence threshold reaching a target precision")
    _runtime_options(ct)
    ct.add_argument("--map", required=True)
    ct.add_argument("--val", required=True, help="dataset whose --split queries lie in the map's area")
    ct.add_argument("--split", default="val", help="pick the threshold on these queries; never the test split you report")
    ct.add_argument("--precision", type=_fraction, default=0.99, help="target precision in (0, 1), measured on the val queries")
    ct.set_defaults(func=cmd_calibrate_threshold)

    lo = commands.add_parser("localize", help="localize image files against a map; one JSON line per frame")
    _runtime_options(lo)
    lo.add_argument("--map", required=True)
    lo.add_argument("--top-k", type=_positive_int, default=5)
    lo.add_argument("--temporal", action="store_true", help="frames are a sequence: apply the temporal filter")
    lo.add_argument("frames", nargs="+")
    lo.set_defaults(func=cmd_localize)

    labels = commands.add_parser("labels", help="label maps for a dataset from your own segmentation model")
    labels.add_argument("--images", required=True, help="images root, e.g. ROOT/images (walked recursively)")
    labels.add_argument("--out", required=True, help="label root, e.g. ROOT/labels (same relative paths, .png)")
    source = labels.add_mutually_exclusive_group(required=True)
    source.add_argument("--onnx", help="ONNX model: (B,3,H,W) RGB -> logits (B,C,h,w) or class ids (B,h,w)")
    source.add_argument("--pngs", help="folder of predicted class-id PNGs mirroring --images")
    labels.add_argument("--scheme", choices=("cityscapes", "ade20k"), default="cityscapes", help="the model's classes")
    labels.add_argument("--size", type=_size, default=None, help="network input WxH (default: model's, else image's)")
    labels.add_argument("--mean", type=float, nargs=3, help="RGB mean in [0, 1] (default: ImageNet)")
    labels.add_argument("--std", type=float, nargs=3, help="RGB std in [0, 1] (default: ImageNet)")
    labels.add_argument("--batch-size", type=_positive_int, default=4)
    labels.add_argument("--overwrite", action="store_true", help="redo label maps that already exist")
    labels.set_defaults(func=cmd_labels)

    export = commands.add_parser("export", help="checkpoint -> ONNX with metadata, parity and TensorRT checks")
    export.add_argument("--model", required=True, help="checkpoint (.pt) or shipped model name")
    export.add_argument("--out", required=True, help="output .onnx")
    export.add_argument("--width", type=int, default=None, help="input width (default: the checkpoint's)")
    export.add_argument("--height", type=int, default=None, help="input height (default: the checkpoint's)")
    export.add_argument("--batch", choices=("1", "dynamic"), default="1")
    export.add_argument("--opset", type=_opset, default=17, help="17 is the newest TensorRT 8.6 parses")
    export.add_argument("--uint8-input", action="store_true", help="fold BGR->RGB and (x/255-mean)/std into the graph")
    export.add_argument("--parity-images", help="folder of real images for the parity check (besides random frames)")
    export.set_defaults(func=cmd_export)

    cal = commands.add_parser("calibrate", help="INT8 (CPU and TensorRT forms) and FP16 variants of an FP32 ONNX, with an accuracy gate")
    cal.add_argument("--model", required=True, help="FP32 ONNX from `export`, or a checkpoint / shipped name (exported into OUT/model.onnx)")
    cal.add_argument("--images", required=True, help="image folder, or dataset root (its train split)")
    cal.add_argument("--out", required=True, help="calibration folder, e.g. calibration/NAME")
    cal.add_argument("--num", type=_positive_int, default=512, help="calibration images, chosen by greedy k-center")
    cal.add_argument("--method", choices=("entropy", "minmax", "percentile"), default="entropy")
    cal.add_argument("--max-recall-drop", type=float, default=None, help="Recall@1 points INT8 may lose; keeps sensitive layers in FP32 until met")
    cal.add_argument("--val", default=None, help="validation dataset root for cosine and Recall@1/5")
    cal.add_argument("--val-split", default="val")
    cal.add_argument("--reselect", action="store_true", help="choose new images even if OUT/manifest.json exists")
    cal.add_argument("--threads", type=_threads, default="auto", help="ONNX Runtime intra-op threads: auto or a count")
    cal.set_defaults(func=cmd_calibrate)

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
