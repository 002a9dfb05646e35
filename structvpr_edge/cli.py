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
import select
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .artifacts import BACKENDS
from .data.dataset import DEFAULT_POSITIVE_RADIUS_M
from .errors import ConfigError, StructVPRError
from .labels import SCHEMES
from .files import IMAGE_SUFFIXES, check_not_an_input, output_format, replace_whole

SYNTH_PRESETS = ("smoke", "benchmark", "benchmark-hard")  # data/synthcity/generate.PRESETS, not imported to parse (tests/test_cli.py)
SEGMENTERS = ("espnet-camvid", "espnet-cityscapes")  # deploy/segmenter.SEGMENTERS, not imported to parse: torch (tests/test_espnet.py)
DEFAULT_MAX_RECALL_DROP, DEFAULT_MIN_COSINE = 1.0, 0.95  # deploy/calibration's, not imported to parse: onnx (tests/test_cli.py)


DESCRIPTION = ("StructVPR++-style visual place recognition for vehicles and robots: generate data, train, export and "
               "quantize models, build maps of geo-tagged images and localize camera frames in them. Commands marked "
               "[needs torch] need PyTorch; the others run on an edge device without it.")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end in one line on stderr and exit code 2, like every other operator error."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless it has none (None, off, empty) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if any(action.default is none for none in (None, False, argparse.SUPPRESS)) or action.default == [] or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


def version() -> str:
    """The installed package's version, or the source tree's when it is not installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("structvpr-edge")
    except PackageNotFoundError:
        return __version__


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


def _count(limit: int):
    """An argparse type: an integer in 1..``limit`` (a count beyond it is a typo that would exhaust memory or processes)."""
    return _number(int, lambda v: 1 <= v <= limit, f"an integer in 1..{limit}")


_positive_int = _count(1_000_000)
_batch = _count(1024)
_seed = _number(int, lambda v: 0 <= v < 2**32, "a seed in 0..2**32-1")
_positive_float = _number(float, lambda v: v > 0, "a finite number > 0")
_non_negative = _number(float, lambda v: v >= 0, "a finite number >= 0")
_opset = _number(int, lambda v: 11 <= v <= 20, "an ONNX opset in 11..20 (17 is the newest TensorRT 8.6 parses)")


def parse_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240), width first like OpenCV."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x240, got {text!r}") from None
    from .images import MAX_SIDE  # OpenCV is imported only when a size is given

    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise argparse.ArgumentTypeError(f"image size must be 1..{MAX_SIDE} pixels per side, got {text!r}")
    return width, height


def _side(text: str) -> int:
    """One side of --size (the old --width / --height), bounded as --size is."""
    return parse_size(f"{text}x{text}")[0]


def _threads(text: str) -> int | str:
    """--threads: "auto" (timed per model and machine) or a count, bounded as the runtime bounds it
    (runtime/ort_session.py, imported only when a count is given), so 0 ends the run at once."""
    if text == "auto":
        return text
    from .runtime.ort_session import parse_threads

    try:
        return parse_threads(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check_output(path: str | None, suffixes: tuple[str, ...] = ()) -> None:
    """An output file path that can be written, checked before the long work that produces it;
    ``suffixes``: the formats its writer knows. Missing parent folders are made by the writer."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{path} is a folder; give a file path")
    existing = next(p for p in target.parents if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {existing} is not a writable folder")
    if suffixes:
        output_format(path, suffixes)


OUTPUTS = ("out", "json", "plot", "retrievals")  # the options naming what a command writes
INPUTS = ("model", "onnx", "checkpoint", "config", "dataset", "val_dataset", "images", "pngs", "weights", "root", "parity_images", "calibration", "map", "frames",
          "bag", "poses", "timing_cache")  # the options naming what a command reads (--timing-cache: also written back)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any work, for every command: no output may name one of the command's inputs."""
    values = [getattr(args, name, None) for name in INPUTS]
    inputs = [v for value in values for v in (value if isinstance(value, list) else [value])]
    for name in OUTPUTS:
        if getattr(args, name, None):
            check_not_an_input(getattr(args, name), inputs)


def arg(*flags: str, **options) -> tuple:
    """One option, as ``add_argument`` takes it; ``one_of=(arg, ...)``: mutually exclusive options."""
    return flags, options


def model(note: str = "", **options) -> tuple:
    kinds = "checkpoint (.pt), ONNX file, TensorRT engine (.engine/.plan) or shipped name (structvprpp, student-nokd, baseline)"
    return arg("--model", required="default" not in options, help=kinds + note, **options)


def dataset(what: str = "dataset root (standard VPR layout, see README)", split: str | None = "test", or_bag: bool = False) -> tuple:
    """--dataset (or, ``or_bag``, --bag instead) and, unless ``split`` is None, --split with that default."""
    splits = (arg("--split", default=split, help=f"split of --dataset (default {split})"),) if split else ()
    if or_bag:
        return arg(one_of=(arg("--dataset", help=what), BAG)), *splits
    return arg("--dataset", required=True, help=what), *splits


def _check_drive_options(args: argparse.Namespace, topics: tuple[str, ...]) -> None:
    """The topic options go with --bag, and --bag needs ``topics`` (checked before any work)."""
    given = [t for t in ("image_topic", "pose_topic") if getattr(args, t, None)]
    if args.bag:
        missing = ["--" + t.replace("_", "-") for t in topics if t not in given]
        if missing:
            raise ConfigError(f"--bag needs {' and '.join(missing)}")
    elif given:
        raise ConfigError(f"{', '.join('--' + t.replace('_', '-') for t in given)} go with --bag")


def size(what: str) -> tuple:
    return arg("--size", type=parse_size, default=None, metavar="WxH", help=what)


THREADS = arg("--threads", type=_threads, default="auto", help="CPU inference threads: auto (measured, cached) or a count")
RUNTIME_NEEDS = "torch only for a checkpoint or shipped --model"  # what the commands that run EdgeVPR need
MAX_POSE_GAP_S, MAP_SPACING_M = 0.5, 2.0  # data/drives.DEFAULT_MAX_GAP_S and DEFAULT_MIN_SPACING_M, not imported to parse (tests/test_drives.py)
BAG = arg("--bag", help="a ROS 2 drive: rosbag2 folder (sqlite3 or MCAP storage), or one .mcap / .db3 file")
IMAGE_TOPIC = arg("--image-topic", help="camera topic of --bag: sensor_msgs/msg/Image (bgr8, rgb8, mono8) or CompressedImage (JPEG, PNG)")
POSE_TOPIC = arg("--pose-topic", help="pose topic of --bag: sensor_msgs/msg/NavSatFix (to UTM, zone from the data), nav_msgs/msg/Odometry, "
                                      "geometry_msgs/msg/PoseStamped or PoseWithCovarianceStamped")
POSE_GAP = arg("--max-pose-gap", type=_non_negative, default=MAX_POSE_GAP_S, metavar="SECONDS",
               help=f"frames farther in time than this from every pose are skipped and counted (default {MAX_POSE_GAP_S})")
TRUST = arg("--trust-checkpoint", action="store_true",
            help="also open a .pt checkpoint that holds more than tensors and plain data: loading it runs any code the file "
                 "carries, with your permissions. Only for a file from a source you trust (docs/security.md)")
RUNTIME = (model(), arg("--backend", default="auto", choices=BACKENDS,
                        help="inference backend; auto: by --model (.engine/.plan TensorRT, .onnx ONNX Runtime, else torch)"),
           THREADS, TRUST)  # every command that runs EdgeVPR
COMMANDS: dict[str, tuple[str, tuple, dict[str, str], Callable]] = {}  # name -> help, options, old spellings, handler


def command(name: str, summary: str, *options: tuple, renamed: dict[str, str] | None = None, needs: str = ""):
    """Register the decorated handler as subcommand ``name``. ``renamed``: old spelling -> today's,
    still accepted (users' scripts keep working) with a warning on stderr; an old spelling that is
    itself a hidden option (a part of today's) is kept as given. ``needs``: what it needs beyond the
    edge install (torch, TensorRT), said in its one-line help."""

    def register(handler: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        COMMANDS[name] = (f"{summary} [needs {needs}]" if needs else summary, options, renamed or {}, handler)
        return handler

    return register


@command("demo", "generate a route, map it, localize a drive at night or dusk, in rain or fog, with the shipped model",
         arg("--out", default="demo-output", help="output folder: the route, the map, demo.json and demo.png"), model(default="structvprpp"),
         arg("--places", type=_count(10_000), default=120, help="places along the demo route"),
         arg("--from-bags", action="store_true", help="the route as two ROS 2 bags (MCAP): map from one, localize the other (needs .[ros])"),
         THREADS, TRUST, needs="torch")
def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import print_summary, run_bag_demo, run_demo

    run = run_bag_demo if args.from_bags else run_demo
    print_summary(run(args.out, model=args.model, places=args.places, threads=args.threads, trust_checkpoint=args.trust_checkpoint))


@command("synth", "generate a SynthCity VPR benchmark",
         arg("--out", required=True, help="output dataset folder"), arg("--seed", type=_seed, default=0, help="random seed of the city"),
         arg("--preset", default="benchmark", choices=SYNTH_PRESETS,
             help="smoke: a tiny city for tests; benchmark: the standard set; benchmark-hard: queries shifted and turned, imperfect labels"),
         arg("--workers", type=_count(1024), default=None, help="processes (default: all cores)"),
         arg("--splits", default=None, help="comma-separated subset of train,val,test to render (default: all three)"),
         arg("--format", choices=("folder", "rosbag2"), default="folder",
             help="folder: the VPR layout; rosbag2: the demo route in the --preset's city as two MCAP bags, OUT/drive1 (day) and "
                  "OUT/drive2 (hard conditions: night or dusk, rain or fog, autumn or winter), with CompressedImage JPEG frames and NavSatFix fixes (its frames also in OUT/route)"),
         arg("--places", type=_positive_int, default=None, help="places along the route of --format rosbag2 (default: 120)"))
def cmd_synth(args: argparse.Namespace) -> None:
    from .data.synthcity import generate_dataset
    from .data.synthcity.generate import SPLITS

    misplaced = ["--splits", "--workers"] if args.format == "rosbag2" else ["--places"]
    given = [option for option in misplaced if getattr(args, option[2:]) is not None]
    if given:  # an option the format does not read would be dropped without a word
        raise ConfigError(f"{' and '.join(given)} do not apply to --format {args.format}")
    if args.format == "rosbag2":
        from .data.synthcity.bags import CAMERA_TOPIC, FIX_TOPIC, generate_route_bags

        bags = generate_route_bags(args.out, seed=args.seed, places=args.places or 120, preset=args.preset)
        print(f"SynthCity drives written to {', '.join(map(str, bags.values()))} (camera {CAMERA_TOPIC}, fixes {FIX_TOPIC})")
        return
    splits = tuple(args.splits.split(",")) if args.splits is not None else SPLITS
    out = generate_dataset(Path(args.out), seed=args.seed, preset=args.preset, workers=args.workers, splits=splits)
    print(f"SynthCity dataset written to {out}")


@command("synth-preview", "PNG contact sheet of SynthCity conditions with labels",
         arg("--out", required=True, help="output PNG"), arg("--seed", type=_seed, default=0, help="random seed of the city"))
def cmd_synth_preview(args: argparse.Namespace) -> None:
    from .data.synthcity import write_preview

    _check_output(args.out, IMAGE_SUFFIXES)
    print(f"preview written to {write_preview(Path(args.out), seed=args.seed)}")


@command("labels", "label maps for a dataset: the shipped street segmenter, your ONNX model or your PNGs",
         arg("--images", required=True, help="images root, e.g. ROOT/images (walked recursively)"),
         arg("--out", required=True, help="label root, e.g. ROOT/labels (same relative paths, .png)"),
         arg(one_of=(arg("--segmenter", choices=SEGMENTERS,
                         help=f"a shipped segmenter (default {SEGMENTERS[0]}): ESPNet trained on Cityscapes (espnet-cityscapes, MIT) "
                              "and tuned on CamVid train (espnet-camvid, research use only, as CamVid)"),
                     arg("--onnx", help="your ONNX model: (B,3,H,W) RGB -> logits (B,C,h,w) or class ids (B,h,w)"),
                     arg("--pngs", help="folder of predicted class-id PNGs mirroring --images")), required=False),
         arg("--scheme", choices=SCHEMES, help="the classes of --onnx or --pngs (default cityscapes)"),
         arg("--weights", help="ESPNet weights of your own instead of a shipped --segmenter, from `tune-segmenter` (.pth)"),
         size("network input (default: ESPNet's 480x360; --onnx: the model's, else the image's)"),
         arg("--batch-size", type=_batch, default=4, help="images per segmenter call"),
         arg("--mean", type=float, nargs=3, help="--onnx: RGB mean in [0, 1] (default: ImageNet)"),
         arg("--std", type=float, nargs=3, help="--onnx: RGB std in [0, 1] (default: ImageNet)"),
         arg("--overwrite", action="store_true", help="redo label maps that already exist"), needs="torch for the shipped --segmenter")
def cmd_labels(args: argparse.Namespace) -> None:
    from .data.segmentation import IMAGENET_MEAN, IMAGENET_STD, convert_label_pngs, missing_labels, segment_folder

    images, out, scheme = Path(args.images), Path(args.out), args.scheme or "cityscapes"
    if args.weights and (args.onnx or args.pngs or args.segmenter):
        raise ConfigError("--weights are ESPNet weights of your own, instead of a shipped --segmenter; not for --onnx or --pngs")
    if args.pngs:
        print(f"{convert_label_pngs(Path(args.pngs), out, scheme=scheme)} label maps written to {out}")
    else:
        if args.onnx:
            summary = segment_folder(images, Path(args.onnx), out, scheme=scheme, input_size=args.size, mean=tuple(args.mean or IMAGENET_MEAN),
                                     std=tuple(args.std or IMAGENET_STD), batch_size=args.batch_size, overwrite=args.overwrite)
        else:
            if scheme != "cityscapes" or args.mean or args.std:
                raise ConfigError("--scheme, --mean and --std describe your --onnx model; ESPNet brings its own")
            from .deploy.segmenter import SEGMENTER_WEIGHTS, SIZE, label_folder

            summary = label_folder(images, out, size=args.size or SIZE, batch_size=args.batch_size, overwrite=args.overwrite,
                                   weights=args.weights or SEGMENTER_WEIGHTS[args.segmenter or SEGMENTERS[0]])
        print(f"{summary.written} label maps written to {out} ({summary.cached} already there, kept)")
    missing = missing_labels(images, out)
    if missing:  # the dataset loader uses labels only when every image has one
        print(f"warning: {len(missing)} images have no label map, e.g. {missing[0]}", file=sys.stderr)


@command("tune-segmenter", "tune the street segmenter (ESPNet) on your labelled street frames, for `labels --weights`",
         arg("--root", required=True, help="ROOT with images/SPLIT/*.jpg and labels/SPLIT/*.png (one size)"),
         arg("--split", default="train", help="the split to tune on"),
         arg("--scheme", choices=SCHEMES, default="cityscapes", help="the classes of the label PNGs"),
         arg("--hold-out", nargs="+", metavar="PREFIX", help="frames whose names start with these are graded, not trained on"),
         arg("--out", required=True, help="the tuned weights (.pth), its log beside it (.pth.log.jsonl)"),
         arg("--steps", type=_count(100_000), default=800, help="training steps (batches of 8)"),
         arg("--lr", type=_positive_float, default=1e-4, help="Adam's learning rate (constant)"),
         arg("--seed", type=_seed, default=0, help="random crops and their order"), needs="torch")
def cmd_tune_segmenter(args: argparse.Namespace) -> None:
    from .train.segmenter import TuneConfig, labelled_pairs, load_frames, tune_segmenter

    _check_output(args.out, (".pth",))
    pairs = labelled_pairs(args.root, args.split)
    held_out = [pair for pair in pairs if args.hold_out and pair[0].name.startswith(tuple(args.hold_out))]
    if args.hold_out and not held_out:
        raise ConfigError(f"no frame of {args.root}/images/{args.split} starts with {' or '.join(args.hold_out)}")
    train = [pair for pair in pairs if pair not in held_out]
    if not train:
        raise ConfigError("--hold-out holds out every frame: nothing is left to tune on")
    log = tune_segmenter(load_frames(train, args.scheme), args.out, TuneConfig(steps=args.steps, lr=args.lr, seed=args.seed),
                         held_out=load_frames(held_out, args.scheme) if held_out else None)
    graded = [entry for entry in log if "held_out" in entry]
    if graded:
        print(f"held-out mean IoU over the label groups: {graded[0]['held_out']['mean']:.3f} before, {graded[-1]['held_out']['mean']:.3f} after")
    print(f"weights written to {args.out}")


@command("train", "train a teacher, baseline or StructVPR(++) student",
         arg("--config", required=True, help="YAML config (see structvpr_edge/configs/), or a checkpoint (.pt): the config it was trained with"),
         arg("--seed", type=_seed, default=None, help="override the config's seed"),
         arg("--out", required=True, help="run folder: model.pt, last.pt, log.jsonl, curves.png"),
         arg("--stages", help="comma-separated subset of teacher,student (default: what the mode needs)"),
         arg("--resume", action="store_true", help="continue from OUT/last.pt"),
         arg("--set", action="append", default=[], metavar="KEY=VALUE",
             help="override a config value, e.g. --set distill.samples.enabled=false (repeatable)"), needs="torch")
def cmd_train(args: argparse.Namespace) -> None:
    from .train.config import dotted_overrides, load_config
    from .train.trainer import train

    overrides = dotted_overrides(args.set)
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = load_config(args.config, overrides)
    stages = args.stages.split(",") if args.stages else None
    print(f"model written to {train(config, Path(args.out), stages=stages, resume=args.resume)}")


@command("eval", "Recall@N of a model on a dataset split, or of a map along a recorded drive",
         model(", or a reference: pixels | imagenet-gem | label-oracle"), *dataset(or_bag=True),
         arg("--map", help="with --bag: the map to localize the drive in"), IMAGE_TOPIC, POSE_TOPIC, POSE_GAP,
         arg("--radius", type=_positive_float, default=DEFAULT_POSITIVE_RADIUS_M, help="positive radius in metres"),
         size("resize images to this (default: the model's, else the dataset's)"),
         arg("--batch-size", type=_batch, default=32, help="images per model call"), arg("--json", help="write the report here"),
         arg("--plot", help="write the Recall@N curve PNG here (with --bag: the error along the route)"),
         arg("--retrievals", help="write a PNG of queries with their top-5 here"),
         arg("--temporal", action="store_true",
             help="the queries are one traversal (ordered by the names' timestamps, else pano ids): also report Recall@1 of the "
                  "runtime's temporal filter; with --bag, the localization (error, within_radius) is the filter's"),
         TRUST, renamed={"--image-size": "--size"}, needs="torch for a checkpoint, a shipped name or imagenet-gem")
def cmd_eval(args: argparse.Namespace) -> None:
    from .eval.plots import FIGURE_SUFFIXES

    for output, suffixes in ((args.json, ()), (args.plot, FIGURE_SUFFIXES), (args.retrievals, IMAGE_SUFFIXES)):
        _check_output(output, suffixes)
    _check_drive_options(args, ("image_topic", "pose_topic"))
    report = _eval_drive(args) if args.bag else _eval_dataset(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        replace_whole(args.json, lambda tmp: tmp.write_text(text + "\n"))


def _eval_dataset(args: argparse.Namespace) -> dict:
    from .data.dataset import load_dataset
    from .eval.evaluate import evaluate, temporal_recall, traversal_order
    from .eval.models import load_extractor
    from .eval.plots import plot_recall_curves, plot_retrievals

    if args.map:
        raise ConfigError("--map goes with --bag (a dataset is evaluated database against queries)")
    data = load_dataset(args.dataset, split=args.split, positive_radius=args.radius)
    if args.temporal:  # an unordered split fails before any image is read
        traversal_order(data.queries)
    result = evaluate(load_extractor(args.model, image_size=args.size, trust_checkpoint=args.trust_checkpoint), data, batch_size=args.batch_size)
    if args.plot:
        plot_recall_curves({args.model: result.recall}, Path(args.plot), title=f"{Path(args.dataset).name}/{args.split}")
    if args.retrievals:
        plot_retrievals(data, result.predictions, Path(args.retrievals))
    temporal = {"temporal": temporal_recall(result, data)} if args.temporal else {}
    return {"model": args.model, "dataset": str(args.dataset), "split": args.split, **result.to_json(), **temporal}


def _eval_drive(args: argparse.Namespace) -> dict:
    """Recall@N and localization error of a map along a drive, against the drive's own poses."""
    from .data.drives import Skipped, read_drive
    from .eval.drive import DRIVE_NS, evaluate_drive, plot_drive_errors
    from .runtime.edgevpr import EdgeVPR

    if not args.map or args.retrievals or args.size:
        raise ConfigError("--bag needs --map, and takes neither --retrievals nor --size")
    skipped = Skipped()
    frames, frame_id, total = read_drive(args.bag, args.image_topic, args.pose_topic, skipped, args.max_pose_gap)
    with EdgeVPR(args.model, map=args.map, top_k=max(DRIVE_NS), max_batch=16, temporal=args.temporal,
                 trust_checkpoint=args.trust_checkpoint) as vpr:
        report = evaluate_drive(vpr, frames, frame_id=frame_id, radius=args.radius, total=total)
    if args.plot:
        plot_drive_errors(report, args.plot, title=f"{Path(args.bag).name} in {Path(args.map).name}")
    return {"model": args.model, "map": str(args.map), "bag": str(args.bag), "frame_id": frame_id, **report.to_json(), "skipped": skipped.__dict__}


@command("ship", "save a finished run's model as a shipped model (float16, inside the package)",
         arg("checkpoint", help="the run's model.pt, chosen on val"),
         arg("--name", required=True, help="shipped name: structvprpp, student-nokd or baseline"), TRUST, needs="torch")
def cmd_ship(args: argparse.Namespace) -> None:
    from .models.checkpoint import ship

    print(f"shipped {args.name}: {ship(args.checkpoint, args.name, trust_checkpoint=args.trust_checkpoint)}")


@command("export", "checkpoint -> ONNX with metadata, parity and TensorRT checks; or a shipped model's INT8 / FP16 graph",
         model(), arg("--out", required=True, help="output .onnx"),
         arg("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
             help="fp32: export the checkpoint; int8 (ONNX Runtime's CPU form) or fp16: a shipped model's graph from the calibration "
                  "kit that ships with it, rebuilt from the weights and recorded ranges (a model of yours: structvpr-edge calibrate)"),
         size("input size (default: the checkpoint's)"),
         arg("--batch", choices=("1", "dynamic"), help="1 (the default): a fixed batch of one frame; dynamic: any batch size"),
         arg("--width", type=_side, help=argparse.SUPPRESS), arg("--height", type=_side, help=argparse.SUPPRESS),  # one side of --size
         arg("--opset", type=_opset, default=17, help="17 is the newest TensorRT 8.6 parses"),
         arg("--uint8-input", action="store_true", help="fold BGR->RGB and (x/255-mean)/std into the graph"),
         arg("--parity-images", help="folder of real images for the parity check (besides random frames)"), TRUST,
         renamed={"--width": "--size", "--height": "--size"}, needs="torch")
def cmd_export(args: argparse.Namespace) -> None:
    from .data.dataset import list_images
    from .deploy.export import export_onnx, read_parity_images
    from .deploy.trt_check import check_trt_friendly

    _check_output(args.out)
    if args.precision != "fp32":
        _export_from_kit(args)
        return
    width, height = args.size or (args.width, args.height)  # a side left out stays the checkpoint's
    images = read_parity_images(list_images(Path(args.parity_images))) if args.parity_images else None
    report = export_onnx(args.model, args.out, width=width, height=height, batch=args.batch or "1", opset=args.opset,
                         uint8_input=args.uint8_input, parity_images=images, trust_checkpoint=args.trust_checkpoint)
    print(f"ONNX written to {report.path} (input {report.input_shape}, simplified with {report.simplifier})")
    print(f"parity over {report.parity_images} frames: min cosine {report.parity_min_cosine:.7f}, max abs diff {report.parity_max_abs_diff:.3g}")
    print(check_trt_friendly(report.path).summary())


def _export_from_kit(args: argparse.Namespace) -> None:
    """``export --precision int8|fp16`` of a shipped model: its kit's graph, rebuilt where missing."""
    import shutil

    from .artifacts import CPU_INT8, FP16, shipped_kit
    from .deploy.calibration import KIT_EXPORT, prepare_kit

    shaping = {"--size": args.size or args.width or args.height, "--batch": args.batch not in (None, KIT_EXPORT["batch"]),
               "--opset": args.opset != KIT_EXPORT["opset"], "--parity-images": args.parity_images}
    if any(shaping.values()):  # the kit's graph is uint8-input, dynamic batch: --uint8-input and --batch dynamic agree with it
        raise ConfigError(f"--precision {args.precision} takes the kit's graph as calibrated ({KIT_EXPORT}): "
                          f"{', '.join(k for k, v in shaping.items() if v)} cannot change it")
    graph = prepare_kit(shipped_kit(args.model)) / {"int8": CPU_INT8, "fp16": FP16}[args.precision]
    replace_whole(args.out, lambda tmp: shutil.copyfile(graph, tmp))  # a kill mid-copy leaves no half graph
    print(f"{args.precision.upper()} ONNX of {args.model} written to {args.out} (from {graph})")


@command("calibrate", "INT8 (CPU and TensorRT forms) and FP16 variants of an FP32 ONNX, with an accuracy gate",
         model("; an ONNX file must be the FP32 export, anything else is exported into OUT/model.onnx"),
         *dataset("calibration images: a dataset root (its train split) or an image folder", split=None),
         arg("--out", required=True, help="calibration folder, e.g. calibration/NAME"),
         arg("--num", type=_positive_int, default=512, help="calibration images, chosen by greedy k-center"),
         arg("--method", choices=("entropy", "minmax", "percentile"), default="entropy", help="how INT8 ranges are chosen from the activations"),
         arg("--max-recall-drop", type=_number(float, lambda v: -100 <= v <= 100, "Recall@1 points in -100..100"), default=None,
             help=f"with --val-dataset: Recall@1 points either INT8 form may lose; sensitive layers are kept in FP32 until it holds, "
                  f"else the kit is rejected (default {DEFAULT_MAX_RECALL_DROP})"),
         arg("--val-dataset", default=None, help="validation dataset root for cosine and Recall@1/5"), arg("--val-split", default="val", help="split of --val-dataset"),
         arg("--min-cosine", type=_number(float, lambda v: -1 <= v <= 1, "a cosine in -1..1"), default=DEFAULT_MIN_COSINE,
             help="without --val-dataset: the mean descriptor cosine to FP32 either INT8 form must keep on the calibration images, "
                  "sensitive layers kept in FP32 until it holds, else the kit is rejected"),
         arg("--reselect", action="store_true", help="choose new images even if OUT/manifest.json exists"),
         arg("--overwrite-shipped", action="store_true", help="allow --out to be a kit that ships with the package (maintainers regenerating it)"),
         THREADS, TRUST,
         renamed={"--images": "--dataset", "--val": "--val-dataset"}, needs="torch unless --model is the FP32 ONNX export")
def cmd_calibrate(args: argparse.Namespace) -> None:
    from .deploy.calibration import CalibrationConfig, calibrate

    report = calibrate(CalibrationConfig(
        model=args.model, images=args.dataset, out=args.out, num=args.num, method=args.method, max_recall_drop=args.max_recall_drop,
        val=args.val_dataset, val_split=args.val_split, min_cosine=args.min_cosine, reselect=args.reselect,
        overwrite_shipped=args.overwrite_shipped, threads=args.threads,
        trust_checkpoint=args.trust_checkpoint))
    print(report.markdown())
    print(f"calibration written to {args.out} in {report.seconds:.1f} s")


@command("build-engine", "TensorRT engine (8.6, 10.x, 11.x) plus its JSON manifest",
         arg("--model", required=True, help="the model as a graph: an ONNX file (the FP32 export, or the FP16 / Q/DQ graph from calibrate), "
                                             "or a shipped name (structvprpp), built from the calibration kit that ships with it (no images "
                                             "needed; its graphs are rebuilt from the weights, which needs torch once)"),
         arg("--precision", choices=("fp32", "fp16", "int8"), required=True,
             help="engine precision; int8 needs a calibration kit (--calibration, or a shipped --model)"),
         arg("--workspace", type=_count(1 << 20), default=1024, help="workspace memory pool in MB"),
         arg("--min-batch", type=_batch, help="dynamic-batch profile: smallest batch"),
         arg("--opt-batch", type=_batch, help="dynamic-batch profile: the batch to tune for"), arg("--max-batch", type=_batch, help="dynamic-batch profile (default 1/1/8)"),
         arg("--timing-cache", help="timing cache file, read if present and written back"),
         arg("--dla-core", type=_number(int, lambda v: 0 <= v <= 15, "a DLA core in 0..15"), default=None, help="build for this DLA core (Jetson), GPU fallback on"),
         arg("--calibration", help="calibration folder from structvpr-edge calibrate (FP16/Q-DQ graphs, TensorRT cache); "
                                   "default for a shipped --model: the kit that ships with it"),
         arg("--out", required=True, help="engines/NAME.engine (manifest written to NAME.engine.json)"),
         renamed={"--onnx": "--model"}, needs="TensorRT")
def cmd_build_engine(args: argparse.Namespace) -> None:
    from .artifacts import FP32, MODEL_SUFFIXES, backend_for, shipped_kit
    from .deploy.calibration import prepare_kit
    from .deploy.engine import EngineBuildConfig, build_engine
    from .trt_compat import import_tensorrt

    trt = import_tensorrt()  # before any graph is written
    calibration, onnx = args.calibration, args.model
    if Path(args.model).suffix not in MODEL_SUFFIXES and Path(args.model).name == args.model:  # a shipped name: its kit holds the graphs
        calibration = prepare_kit(Path(calibration) if calibration else shipped_kit(args.model))
        onnx = calibration / FP32
    elif backend_for(args.model) != "onnxruntime":
        raise ConfigError(f"build-engine builds from an ONNX file or a shipped model's kit, got {args.model}: "
                          "export a checkpoint first (structvpr-edge export --uint8-input --batch dynamic)")
    manifest = build_engine(EngineBuildConfig(
        onnx=onnx, precision=args.precision, out=args.out, min_batch=args.min_batch, opt_batch=args.opt_batch, max_batch=args.max_batch,
        workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core, calibration=calibration), trt=trt)
    print(f"engine written to {args.out} ({manifest['plan']['why']}; TensorRT {manifest['tensorrt_version']}, "
          f"{manifest['gpu_name']}, {manifest['build_seconds']:.0f} s); manifest beside it")
    print(f"the same build with trtexec:\n  {manifest['trtexec']}")


@command("build-map", "describe geo-tagged reference images, or a recorded drive, into a FAISS map",
         *RUNTIME, *dataset("dataset root (its --split database), a folder of @east@north@... images, or a folder of images with --poses",
                            or_bag=True),
         arg("--poses", help="pose CSV of the images in --dataset: columns file, east and north (or lat and lon), optional heading "
                             "and time (docs/drives.md)"),
         IMAGE_TOPIC, POSE_TOPIC, POSE_GAP,
         arg("--spacing", type=_non_negative, default=MAP_SPACING_M, metavar="METRES",
             help=f"with --bag or --poses: a frame closer than this to the last place kept is skipped (default {MAP_SPACING_M}; 0 keeps all)"),
         arg("--out", required=True, help="map folder"),
         arg("--index", default="auto", choices=["auto", "flat", "hnsw", "ivf", "ivfpq"],
             help="FAISS index: flat is exact; auto is flat up to 200,000 places, else ivfpq (4-bit codes, exact re-rank from disk; docs/maps.md)"),
         arg("--append", action="store_true", help="add the images to the existing map in --out"),
         arg("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
             help="describe on Ray (pip install structvpr-edge[cluster]): a cluster's ADDRESS, or none to start Ray on this machine; "
                  "--dataset or --bag (docs/maps.md)"),
         arg("--ray-workers", type=_count(4096), default=2, help="with --ray: workers, one model each (default 2)"),
         arg("--ray-gpus", type=_non_negative, default=0.0, help="with --ray: GPUs per worker (default 0: CPU)"),
         renamed={"--images": "--dataset"}, needs=RUNTIME_NEEDS)
def cmd_build_map(args: argparse.Namespace) -> None:
    from .data.drives import Skipped, read_drive
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import build_map, build_map_from_frames

    _check_drive_options(args, ("image_topic", "pose_topic"))
    if args.poses and args.bag:
        raise ConfigError("--poses names the poses of the images in --dataset; a --bag has its own --pose-topic")
    skipped = Skipped()
    if args.bag:  # topics checked and poses read before the model is loaded
        frames, frame_id, total = read_drive(args.bag, args.image_topic, args.pose_topic, skipped, args.max_pose_gap, args.spacing,
                                             pixels=args.ray is None)  # on Ray the workers decode
    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16, trust_checkpoint=args.trust_checkpoint) as vpr:
        describe = None
        if args.ray is not None:
            from .cluster import RayConfig, ray_describer, ray_frame_describer
            config = RayConfig(address=args.ray or None, workers=args.ray_workers, gpus=args.ray_gpus)
            dim = vpr.info.layout.dim
            describe = (ray_frame_describer(args.model, dim, config, args.bag, args.image_topic, backend=args.backend) if args.bag
                        else ray_describer(args.model, dim, config, backend=args.backend))
        if args.bag:
            place_map = build_map_from_frames(vpr, frames, frame_id, args.out, index_type=args.index, append=args.append, total=total,
                                              describe=describe)
        else:
            place_map = build_map(vpr, args.dataset, args.out, index_type=args.index, append=args.append, split=args.split,
                                  poses=args.poses, min_spacing_m=args.spacing, skipped=skipped, describe=describe)
    frame = f", frame {place_map.manifest.frame_id}" if place_map.manifest.frame_id else ""
    counts = f"; {skipped.summary()}" if args.bag or args.poses else ""
    print(f"map with {len(place_map)} places ({place_map.factory}{frame}) written to {args.out}{counts}")


@command("cut-tiles", "cut a map into square geographic tiles, loaded on the vehicle around a GNSS prior (docs/maps.md)",
         arg("--map", required=True, help="map folder (structvpr-edge build-map; flat or ivfpq index)"),
         arg("--out", required=True, help="tile folder: one map per tile and tiles.json"),
         arg("--tile-size", type=_positive_float, default=500.0, metavar="METRES", help="side of a tile (default 500)"),
         arg("--overlap", type=_non_negative, default=50.0, metavar="METRES",
             help="places this close to a tile are in it too (default 50; a prior radius up to it loads one tile)"))
def cmd_cut_tiles(args: argparse.Namespace) -> None:
    from .runtime.map import PlaceMap
    from .runtime.tiles import cut_tiles

    index = cut_tiles(PlaceMap.load(args.map), args.out, args.tile_size, args.overlap)
    print(f"{len(index.tiles)} tiles of {args.tile_size:g} m (overlap {args.overlap:g} m) written to {args.out}")


@command("calibrate-threshold", "pick the confidence threshold reaching a target precision and store it in the map",
         *RUNTIME, arg("--map", required=True, help="map folder; the threshold is stored in it"),
         *dataset("dataset whose --split queries lie in the map's area (any split)", split="val"),
         arg("--precision", type=_number(float, lambda v: 0 < v < 1, "a number in (0, 1)"), default=0.99,
             help="target precision in (0, 1) on those queries; measuring it needs at least 1/(1 - precision) correct top-1 "
                  "matches among them (100 for 0.99, 10 for 0.9), else the command says the most they can measure"),
         renamed={"--val": "--dataset"}, needs=RUNTIME_NEEDS)
def cmd_calibrate_threshold(args: argparse.Namespace) -> None:
    from .runtime.edgevpr import EdgeVPR
    from .runtime.mapping import calibrate_threshold

    with EdgeVPR(args.model, backend=args.backend, threads=args.threads, max_batch=16, trust_checkpoint=args.trust_checkpoint) as vpr:
        threshold = calibrate_threshold(vpr, args.map, args.dataset, args.precision, split=args.split)
    print(json.dumps(threshold.__dict__, indent=2))
    print(f"threshold stored in {args.map}: precision {threshold.precision:.3f}, recall {threshold.recall:.3f}, measured on the "
          f"{threshold.queries} queries of split {args.split} ({threshold.correct} with a correct top-1 match)", file=sys.stderr)


@command("localize", "localize image files, or the frames of a recorded drive, against a map; one JSON line per frame",
         *RUNTIME, arg("--map", required=True, help="map folder (structvpr-edge build-map)"),
         arg("--top-k", type=_count(1000), default=5, help="map entries listed per frame"),
         arg("--temporal", action="store_true", help="frames are a sequence: apply the temporal filter"),
         arg("frames", nargs="*", help="image files, in order"),
         BAG, IMAGE_TOPIC,
         arg("--out", help="with --bag: write the poses to a ROS 2 .mcap (PoseWithCovarianceStamped + DiagnosticArray per frame) "
                           "or a .csv instead of printing them (docs/drives.md)"), needs=RUNTIME_NEEDS)
def cmd_localize(args: argparse.Namespace) -> None:
    from .data.drives import Skipped, read_drive
    from .runtime.edgevpr import EdgeVPR
    from .runtime.outputs import check_out, localize_frames, write_poses
    from .runtime.preprocess import read_image

    if bool(args.frames) == bool(args.bag):
        raise ConfigError("give image files or --bag, one of them")
    _check_drive_options(args, ("image_topic",))
    if args.out:
        if not args.bag:
            raise ConfigError("--out goes with --bag (image files print one JSON line each)")
        _check_output(args.out)
        check_out(args.out)
    skipped = Skipped()
    if args.bag:
        frames, _, total = read_drive(args.bag, args.image_topic, skipped=skipped)
    with EdgeVPR(args.model, map=args.map, backend=args.backend, top_k=args.top_k, threads=args.threads, temporal=args.temporal,
                 max_batch=16 if args.bag else 1, trust_checkpoint=args.trust_checkpoint) as vpr:
        if not args.bag:
            for path in args.frames:
                print(json.dumps({"frame": path, **vpr.localize(read_image(path)).to_json()}), flush=True)
            return
        results = ((frame.stamp_ns, frame.source, result) for frame, result in localize_frames(vpr, frames, total=total))
        if not args.out:
            for stamp, source, result in results:
                print(json.dumps({"frame": source, "stamp_ns": stamp, **result.to_json()}), flush=True)
            return
        written = write_poses(args.out, results, vpr.map.manifest.frame_id, {"map": str(args.map), "model": str(args.model), "bag": str(args.bag)})
    print(f"{written} poses in frame {vpr.map.manifest.frame_id or 'map'} written to {args.out}; {skipped.summary()}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="structvpr-edge", description=DESCRIPTION, epilog="structvpr-edge COMMAND --help lists a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, options, _, handler) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=_HelpFormatter)
        for flags, kwargs in options:
            target = sub.add_mutually_exclusive_group(required=kwargs.get("required", True)) if "one_of" in kwargs else sub
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


def _reader_gone() -> bool:
    """Whether stdout is a pipe its reader has closed (``| head`` read what it wanted); if so,
    stdout is pointed at devnull, so the interpreter's own flush at exit does not fail again."""
    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, 0)
        gone = any(event & select.POLLERR for _, event in poller.poll(0))  # a pipe without reader: POLLERR on its write end
    except (AttributeError, OSError, ValueError):  # no poll, or a stdout without a descriptor (captured)
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
    return gone


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, also when the reader of stdout stopped early (a
    ``| head`` that has read what it wanted: the output was cut short on purpose, as ``yes | head``);
    2 an operator error, one line on stderr; 130 interrupted (Ctrl-C: 128 + SIGINT, the shell's
    convention), one line on stderr: a file written whole (files.replace_whole) is then the old one
    with no temporary file beside it, and synth or demo start over where they were cut short."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # usage errors and --help: a code to return, also when called in-process
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _check_outputs(args)
        args.func(args)
        sys.stdout.flush()  # a reader gone shows here, not at the interpreter's exit
        return 0
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    except (StructVPRError, OSError) as exc:  # operator errors (a path, a permission, a full disk): one line, no traceback
        if isinstance(exc, BrokenPipeError) and _reader_gone():
            return 0
        code, message = 2, "error: " + (str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    # Said once the exception is gone: the progress bars it cut short are closed with it, their line ended.
    print(f"structvpr-edge {args.command}: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
