"""Training inputs: place-balanced batches, label-group fractions and cached frozen features.

On a 2-core CPU the frozen ImageNet part of the backbone dominates a training step, and its
output never changes: it is computed once per (images, size, frozen blocks) and cached as a
float16 array on disk, shared by every run of a results table.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.dataset import file_stamp
from ..data.real_frames import photometric
from ..errors import DatasetError
from ..images import normalize, read_label, read_rgb, resize_area
from ..labels import label_fractions
from ..models.efficientnet_lite import MEAN_RGB, STD_RGB


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float normalised as the backbone expects."""
    return torch.from_numpy(normalize(images, MEAN_RGB, STD_RGB))


def cache_path(cache_dir: Path, kind: str, paths: list[Path], params: str) -> Path:
    """Keyed by each path and its file's size and time: a file re-made in place is not read stale."""
    digest = hashlib.sha256()
    for p in paths:
        digest.update(f"{Path(p).resolve()}|{file_stamp(p)}".encode())
    digest.update(params.encode())
    return cache_dir / f"{kind}-{digest.hexdigest()[:20]}.npy"


def cached_array(
    cache_dir: Path, kind: str, paths: list[Path], params: str, compute: Callable[[list[Path]], np.ndarray], batch_size: int = 64
) -> np.ndarray:
    """Compute ``compute(batch_of_paths)`` for all paths once, keep it as a .npy, memory-map it after."""
    target = cache_path(Path(cache_dir), kind, paths, params)
    if target.exists():
        return np.load(target, mmap_mode="r")
    target.parent.mkdir(parents=True, exist_ok=True)
    first = compute(paths[:1])
    partial = target.with_suffix(f".partial-{os.getpid()}.npy")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=first.dtype, shape=(len(paths), *first.shape[1:]))
    for start in tqdm(range(0, len(paths), batch_size), desc=f"cache {kind}", unit="batch"):
        out[start : start + batch_size] = compute(paths[start : start + batch_size])
    out.flush()
    del out
    partial.rename(target)  # whole file or nothing: an interrupted run leaves only the partial
    return np.load(target, mmap_mode="r")


def read_many(read: Callable, paths: list[Path], size: tuple[int, int]) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return np.stack(list(pool.map(lambda p: read(p, size), paths)))


def fraction_array(label_paths: list[Path], size: tuple[int, int], cache_dir: Path) -> np.ndarray:
    def compute(batch: list[Path]) -> np.ndarray:
        return np.stack([label_fractions(read_label(p, None), size) for p in batch])

    return cached_array(cache_dir, "fractions", label_paths, f"{size}", compute)


def relit_reader(share: float) -> Callable[[Path, tuple[int, int]], np.ndarray]:
    """``read_rgb``, with ``share`` of the images under the real frames' random light (chosen and lit
    by the file name's CRC, so every run and seed reads the same pixels and shares one cache)."""

    def read(path: Path, size: tuple[int, int]) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(Path(path).name.encode()))
        if rng.random() >= share:
            return read_rgb(path, size)
        return resize_area(photometric(read_rgb(path, None), rng), size)

    return read


def frozen_feature_array(
    backbone: torch.nn.Module, paths: list[Path], image_size: tuple[int, int], cache_dir: Path, relight: float = 0.0
) -> np.ndarray:
    """float16 output of the frozen blocks (keyed by their weights); the raw uint8 images when nothing is frozen.
    ``relight``: the share of images read through ``relit_reader`` (0: the files as they are)."""
    read = relit_reader(relight) if relight > 0 else read_rgb
    params = f"{image_size}" + (f"-relight{relight}" if relight > 0 else "")
    if not backbone.frozen_blocks:
        return cached_array(cache_dir, "images", paths, params, lambda b: read_many(read, b, image_size))

    @torch.inference_mode()
    def compute(batch: list[Path]) -> np.ndarray:
        was_training = backbone.training
        backbone.eval()
        device = next(backbone.parameters()).device
        features = backbone.forward_frozen(normalize_images(read_many(read, batch, image_size)).to(device))
        backbone.train(was_training)
        return features.float().cpu().numpy().astype(np.float16)

    return cached_array(cache_dir, "frozen", paths, f"{params}-{backbone.frozen_blocks}-{backbone.frozen_digest()[:16]}", compute)


def to_model_input(array: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Rows of a cache as a float tensor (images are normalised, features converted)."""
    rows = np.asarray(array[indices])
    if rows.dtype == np.uint8:
        return normalize_images(rows)
    return torch.from_numpy(rows.astype(np.float32))


class RowStack:
    """Rows of several arrays (memory-mapped caches) addressed as one array: each source keeps a
    cache of its own, so adding real frames to a run does not rebuild the synthetic cache."""

    def __init__(self, *arrays: np.ndarray) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices)
        if indices.size and not 0 <= indices.min() <= indices.max() < len(self):
            raise IndexError(f"rows {indices.min()}..{indices.max()} asked of a RowStack of {len(self)} rows")
        source = np.searchsorted(self.starts, indices, side="right") - 1
        out = np.empty((len(indices), *self.arrays[0].shape[1:]), self.arrays[0].dtype)
        for k, array in enumerate(self.arrays):
            rows = source == k
            if rows.any():
                out[rows] = array[indices[rows] - self.starts[k]]
        return out


def near_places(positions: torch.Tensor, places: torch.Tensor, key_places: torch.Tensor, radius_m: float) -> torch.Tensor:
    """(anchors, keys) True where the two images are of different places less than ``radius_m`` apart;
    ``positions``: (places, 2) metres, indexed by place label."""
    apart = torch.cdist(positions[places], positions[key_places])
    return (apart < radius_m) & (places[:, None] != key_places[None, :])


def draw(members: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` images of a place: without replacement when it has ``k``; else each image once, then
    the rest drawn again, so a place of two images always holds a positive pair."""
    if len(members) >= k:
        return rng.choice(members, size=k, replace=False)
    return np.concatenate([rng.permutation(members), rng.choice(members, size=k - len(members))])


class PlaceBatchSampler:
    """Endless P places x K images batches; with ``world`` ranks each rank gets its own P places.

    Every epoch shuffles the places; a batch never repeats a place, and K images of a place are
    drawn without replacement when the place has that many (``draw``: a smaller place shows each once).
    """

    def __init__(self, places: list[np.ndarray], places_per_batch: int, images_per_place: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        if places_per_batch < 1:
            raise DatasetError(f"places_per_batch must be >= 1, got {places_per_batch}")
        if places_per_batch * world > len(places):
            raise DatasetError(f"{places_per_batch} places per batch x {world} ranks > {len(places)} places")
        if images_per_place < 2:
            raise DatasetError("images_per_place must be >= 2: a place needs a positive pair")
        self.places, self.p, self.k = places, places_per_batch, images_per_place
        self.seed, self.rank, self.world = seed, rank, world

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yields (epoch, image indices, place labels)."""
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.places))
            span = self.p * self.world
            for start in range(0, len(self.places) // span * span, span):  # whole batches only
                chosen = order[start + self.rank * self.p : start + (self.rank + 1) * self.p]
                yield epoch, np.concatenate([draw(self.places[place], self.k, rng) for place in chosen]), np.repeat(chosen, self.k)
            epoch += 1


class MixedPlaceSampler:
    """Every batch: the main sampler's places, then the real sampler's (their place labels shifted
    past the main ones, so no real place shares a label with a synthetic one)."""

    def __init__(self, main: PlaceBatchSampler, real: PlaceBatchSampler) -> None:
        self.main, self.real = main, real

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for (epoch, indices, labels), (_, real_indices, real_labels) in zip(self.main, self.real):
            yield epoch, np.concatenate([indices, real_indices]), np.concatenate([labels, real_labels + len(self.main.places)])
