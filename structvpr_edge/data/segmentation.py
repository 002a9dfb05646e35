"""Label maps for real data from your own segmentation model, in the format the SDK reads.

The dataset loader looks for ``ROOT/labels/SPLIT/.../name.png`` next to each
``ROOT/images/SPLIT/.../name.jpg``, holding Cityscapes train ids (see ``labels.py``). For the
standard VPR layout pass the two roots, and every split and subset is covered:

    structvpr-edge labels --images ROOT/images --out ROOT/labels       # the shipped ESPNet (deploy/segmenter.py)
    structvpr-edge labels --images ROOT/images --out ROOT/labels --onnx seg.onnx --scheme ade20k
    structvpr-edge labels --images ROOT/images --out ROOT/labels --pngs PREDICTIONS --scheme ade20k

Label PNGs already written are kept (a cache): segmenting a dataset on a CPU takes long, and a
rerun after an interruption carries on where it stopped. Only maps of the same labeller are kept:
``labeller.json`` in the label root records the one that wrote them (model or weights, input size,
normalisation), and a rerun with another is refused unless it writes every map again (--overwrite).
Each PNG is written aside and renamed, so an interrupted run never leaves half a label map that a
rerun would keep.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import BackendError, ConfigError, DatasetError, ModelError
from ..files import replace_whole
from ..images import header_size, imread, imwrite_whole, read_rgb
from ..labels import check_class_ids, check_scheme, model_class_counts, to_cityscapes
from ..modelinfo import sha256_file
from ..safety import check_onnx
from .dataset import IMAGE_EXTENSIONS

# What most segmentation models (mmseg, torchvision, SegFormer) were trained with, RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
LABELLER_FILE = "labeller.json"  # in a label root: what wrote its label maps (segment_folder)
HEADER_BYTES = 1 << 18  # where a PNG's or JPEG's size is read first (the whole file only if it lies further)


@dataclass
class SegmentSummary:
    written: int  # label PNGs written by this run
    cached: int  # label PNGs that were already there and were kept


def label_path(image: Path, images_root: Path, labels_root: Path) -> Path:
    """Where the label map of ``image`` lives: same relative path under ``labels_root``, .png."""
    return labels_root / image.relative_to(images_root).with_suffix(".png")


def _files_under(root: Path, extensions: tuple[str, ...], out: Path) -> list[Path]:
    """Files under ``root``, sorted, minus our own output when ``out`` sits inside ``root``."""
    if not root.is_dir():
        raise DatasetError(f"missing folder {root}")
    root_abs, out_abs = root.resolve(), out.resolve()
    if out_abs == root_abs:
        raise ConfigError(f"write label maps to their own folder, not into the input folder {root}")
    nested = out_abs.is_relative_to(root_abs)
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix.lower() in extensions and not (nested and p.resolve().is_relative_to(out_abs))
    )
    if not files:
        raise DatasetError(f"no {'/'.join(extensions)} files under {root}")
    return files


def image_files(images_root: Path, labels_root: Path) -> list[Path]:
    """The images under ``images_root`` (sorted; DatasetError if none), minus ``labels_root`` if
    nested; two images that would share one label map (``a.jpg`` and ``a.png``) are a DatasetError."""
    images = _files_under(images_root, IMAGE_EXTENSIONS, labels_root)
    owner: dict[Path, Path] = {}
    for image in images:
        label = label_path(image, images_root, labels_root)
        if label in owner:
            raise DatasetError(f"{owner[label]} and {image} would share the label map {label}: rename one")
        owner[label] = image
    return images


def _pixel_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG or JPEG header, without decoding; None for other formats. The
    file's head is read first: a rerun over a large folder must not read every image whole."""
    with path.open("rb") as handle:
        head = handle.read(HEADER_BYTES)
    size = header_size(head)
    if size is None and len(head) == HEADER_BYTES:  # the size marker may lie past the head (a large EXIF block)
        size = header_size(path.read_bytes())
    return size


def _to_segment(images: list[Path], images_root: Path, labels_root: Path, overwrite: bool) -> list[Path]:
    """The images whose label map is written: all with ``overwrite``, else those without one. A kept
    map of another size than its image was made for another frame: a DatasetError, not a label."""
    if overwrite:
        return images
    todo = []
    for image in images:
        label = label_path(image, images_root, labels_root)
        if not label.exists():
            todo.append(image)
        elif None not in (sizes := (_pixel_size(image), _pixel_size(label))) and sizes[0] != sizes[1]:
            raise DatasetError(f"{label} is {sizes[1][0]}x{sizes[1][1]}, its image {image} {sizes[0][0]}x{sizes[0][1]}: "
                               "a label map of another frame; write them again with --overwrite")
    return todo


def _claim_labels(labels_root: Path, labeller: dict, kept: int, present: int) -> bool:
    """Label maps kept from an earlier run must be this run's labeller's (model, weights, input size,
    normalisation): kept maps of another, or of an unrecorded one, would mix two labellers in one
    dataset without a word. Returns whether the record may be written before the first map: not when
    this run writes over ``present`` maps of another labeller (--overwrite), whose record is then
    removed before the first map and written again after the last, so a run cut short leaves no record
    to vouch for maps of two labellers."""
    stamp = labels_root / LABELLER_FILE
    recorded = json.loads(stamp.read_text()) if stamp.is_file() else None
    if recorded == labeller or not present:
        return True
    if kept:
        origin = f"by {recorded}" if recorded else f"by a segmenter not recorded ({LABELLER_FILE} absent)"
        raise ConfigError(f"{kept} label maps under {labels_root} were written {origin}, not by this run's {labeller}: "
                          "write them again with --overwrite, or choose another --out")
    return False


def missing_labels(images_root: Path, labels_root: Path) -> list[Path]:
    """Images under ``images_root`` without a label map (the loader needs one for every image)."""
    return [p for p in image_files(images_root, labels_root) if not label_path(p, images_root, labels_root).exists()]


def _as_uint8(ids: np.ndarray, error: type[Exception], source: str) -> np.ndarray:
    """Class ids as uint8 (what a label PNG holds), refusing ids that would wrap around."""
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise error(f"{source} has class ids outside 0..255 (min {ids.min()}, max {ids.max()})")
    return ids.astype(np.uint8)


def convert_label_pngs(src_dir: Path, out_dir: Path, scheme: str) -> int:
    """Convert predicted class-id PNGs of ``scheme`` to Cityscapes-train-id PNGs at the same paths.

    For predictions made elsewhere (e.g. on a GPU box); returns the number of PNGs written.
    """
    check_scheme(scheme)
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    pngs = _files_under(src_dir, (".png",), out_dir)
    for src in tqdm(pngs, desc="convert", unit="image", leave=False):
        ids = imread(src, cv2.IMREAD_UNCHANGED, what="class-id PNG")
        if ids.ndim != 2:
            raise DatasetError(f"{src} is not a single-channel class-id PNG")
        ids = _as_uint8(ids, DatasetError, str(src))
        check_class_ids(ids, scheme, str(src))
        imwrite_whole(out_dir / src.relative_to(src_dir), to_cityscapes(ids, scheme))
    return len(pngs)


def _open_model(path: Path):  # -> onnxruntime.InferenceSession, imported lazily
    if not path.is_file():
        raise ModelError(f"segmentation model not found: {path}")
    check_onnx(path)
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as exc:
        raise BackendError("an ONNX segmentation model needs onnxruntime (pip install onnxruntime)") from exc
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ModelError(f"cannot load ONNX model {path}: {exc}") from exc
    inputs = session.get_inputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise ModelError(f"{path} must take one RGB batch (B, 3, H, W), takes {[(i.name, i.shape) for i in inputs]}")
    if inputs[0].type not in _INPUT_DTYPES:
        raise ModelError(f"{path} must take a float input, takes {inputs[0].type}")
    return session


def _class_ids(output: np.ndarray, batch: int, model: Path, scheme: str) -> np.ndarray:
    """(B, h, w) uint8 class ids of ``scheme`` from logits (B, C, h, w) or ids (B, h, w); a class
    count or an id the scheme does not have means the model was made for other classes."""
    if output.ndim == 4 and output.shape[0] == batch:
        if output.shape[1] not in model_class_counts(scheme):
            counts = " or ".join(map(str, model_class_counts(scheme)))
            raise ModelError(f"{model} outputs {output.shape[1]} classes; a {scheme} model outputs {counts}")
        output = output.argmax(axis=1)
    elif not (output.ndim == 3 and output.shape[0] == batch and np.issubdtype(output.dtype, np.integer)):
        raise ModelError(
            f"{model} must output logits (B, C, h, w) or integer class ids (B, h, w); "
            f"got {output.dtype} {output.shape} for a batch of {batch}"
        )
    ids = _as_uint8(output, ModelError, str(model))
    check_class_ids(ids, scheme, str(model), ModelError)
    return ids


def _preprocess(rgb: np.ndarray, size: tuple[int, int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h, w) float32 normalised, at the network's (w, h)."""
    if (rgb.shape[1], rgb.shape[0]) != size:
        shrink = size[0] < rgb.shape[1]
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return ((rgb.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)


def segment_folder(
    images_root: Path,
    onnx_model: Path,
    out_root: Path,
    scheme: str,
    input_size: tuple[int, int] | None = None,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    batch_size: int = 4,
    overwrite: bool = False,
    labeller: dict | None = None,
) -> SegmentSummary:
    """Segment every image under ``images_root`` and write Cityscapes-train-id PNGs under ``out_root``.

    The model takes (B, 3, H, W) float RGB normalised as ``(x / 255 - mean) / std``; its first
    output is logits (B, C, h, w) with C the class count of ``scheme``, or class ids (B, h, w) of
    ``scheme`` (anything else is a ModelError naming the model). Every image is resized to the
    network input, ``input_size`` (W, H), else the model's fixed input size, else the first
    image's size, so frames of mixed sizes share one input; ids are resized back to each image's
    size with nearest neighbour. A model exported with a fixed batch runs at that batch.
    Existing label PNGs are kept unless ``overwrite`` (one of another size than its image is
    refused: it was made for another frame), and only when ``labeller`` (default: the model file's
    sha256, ``scheme``, ``input_size``, ``mean`` and ``std``) is the one recorded in ``LABELLER_FILE``
    by the run that wrote them; a ConfigError otherwise.
    """
    check_scheme(scheme)
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    images_root, onnx_model, out_root = Path(images_root), Path(onnx_model), Path(out_root)
    images = image_files(images_root, out_root)
    session = _open_model(onnx_model)
    model_input, first_output = session.get_inputs()[0], session.get_outputs()[0].name
    batch_dim, _, height, width = model_input.shape
    fixed_size = (width, height) if isinstance(width, int) and isinstance(height, int) else None
    if input_size is not None and fixed_size is not None and tuple(input_size) != fixed_size:
        raise ConfigError(
            f"{onnx_model} takes a fixed {fixed_size[0]}x{fixed_size[1]} input, not {input_size[0]}x{input_size[1]}"
        )
    size = tuple(input_size) if input_size is not None else fixed_size
    if isinstance(batch_dim, int):
        batch_size = batch_dim
    mean_, std_ = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    todo = _to_segment(images, images_root, out_root, overwrite)
    labeller = json.loads(json.dumps(labeller or {"onnx_sha256": sha256_file(onnx_model), "scheme": scheme, "input_size": input_size,
                                                  "mean": mean, "std": std}))  # as the record reads back
    present = sum(label_path(image, images_root, out_root).exists() for image in images)
    record_first = _claim_labels(out_root, labeller, len(images) - len(todo), present)
    started = False

    def record() -> None:
        replace_whole(out_root / LABELLER_FILE, lambda tmp: tmp.write_text(json.dumps(labeller, sort_keys=True) + "\n"))

    with tqdm(total=len(todo), desc="segment", unit="image", leave=False) as progress:
        for start in range(0, len(todo), batch_size):
            paths = todo[start : start + batch_size]
            rgbs = [read_rgb(p, None) for p in paths]
            size = size or (rgbs[0].shape[1], rgbs[0].shape[0])
            batch = np.stack([_preprocess(rgb, size, mean_, std_) for rgb in rgbs])
            if isinstance(batch_dim, int) and len(batch) < batch_size:  # a fixed-batch model: pad the last one
                batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - len(batch), axis=0)])
            try:
                output = session.run([first_output], {model_input.name: batch.astype(_INPUT_DTYPES[model_input.type])})[0]
            except Exception as exc:  # onnxruntime's own types: a shape the model cannot take, mostly
                raise ModelError(f"{onnx_model} failed on {paths[0]} (input {size[0]}x{size[1]}): {exc}") from exc
            class_ids = _class_ids(output, len(batch), onnx_model, scheme)
            if not started:  # before the first map, once the model has answered
                if record_first:
                    record()
                else:
                    (out_root / LABELLER_FILE).unlink(missing_ok=True)
                started = True
            for path, rgb, ids in zip(paths, rgbs, class_ids):
                ids = cv2.resize(ids, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
                imwrite_whole(label_path(path, images_root, out_root), to_cityscapes(ids, scheme))
            progress.update(len(paths))
    if not record_first:
        record()
    return SegmentSummary(written=len(todo), cached=len(images) - len(todo))
