"""``structvpr-edge demo``: the whole product in under two minutes, from the installed package: a
small SynthCity route, its reference traversal (day, summer) mapped with the shipped model as ONNX,
its query traversal (night or dusk, rain or fog, autumn or winter, drawn per street) localized in
order; Recall@1, latency, a PNG of queries beside their matches, the figures in demo.json.

``--from-bags`` runs the same route as a vehicle team records it: two ROS 2 bags (MCAP, compressed
JPEG frames, GNSS fixes), the map built from the first, the second localized and scored against
its own fixes, the error along the route drawn to error.png (needs ``.[ros]``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from .data.dataset import load_dataset
from .errors import ModelError
from .eval.plots import GREEN, RED
from .metrics import within
from .modelinfo import read_onnx_info, sha256_file
from .runtime.edgevpr import EdgeVPR
from .runtime.mapping import build_map
from .runtime.preprocess import read_image
from .timing import stage_stats


def export_shipped(out: Path, model: str, trust_checkpoint: bool = False) -> Path:
    """The checkpoint as an ONNX file with uint8 input (needs torch; cached until the weights change).
    ``trust_checkpoint``: also open a checkpoint that needs code to load (models/checkpoint.py)."""
    if str(model).endswith(".onnx"):
        return Path(model)
    from .deploy.export import export_onnx  # noqa: PLC0415
    from .models.checkpoint import resolve_checkpoint  # noqa: PLC0415

    path = out / f"{Path(model).stem}.onnx"
    try:  # a missing, damaged or outdated cached export is exported again
        cached = read_onnx_info(path).checkpoint_sha256 == sha256_file(resolve_checkpoint(model))
    except ModelError:
        cached = False
    if not cached:
        export_onnx(model, path, uint8_input=True, trust_checkpoint=trust_checkpoint)
    return path


def sheet(queries: list[Path], matches: list[Path], correct: list[bool], out_png: Path, radius: float, rows: int = 6) -> Path:
    """Query | its top-1 match (green frame when within the positive radius, red otherwise), a few
    rows under a legend that says so (a figure is read without the code beside it)."""
    picks = np.linspace(0, len(queries) - 1, min(rows, len(queries))).astype(int)
    legend = np.full((64, 648, 3), 255, np.uint8)
    for x, text in ((8, "query: night or dusk, rain or fog"), (336, "its top-1 place in the day map")):
        cv2.putText(legend, text, (x, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    for x, colour, text in ((8, GREEN, f"green frame: within {radius:g} m of the query"), (336, RED, "red frame: a wrong place")):
        cv2.rectangle(legend, (x, 38), (x + 18, 56), colour, -1)
        cv2.putText(legend, text, (x + 26, 53), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    lines = [legend]
    for i in picks:
        query = cv2.resize(read_image(queries[i]), (320, 240))
        match = cv2.resize(read_image(matches[i]), (320, 240))
        cv2.rectangle(match, (0, 0), (319, 239), GREEN if correct[i] else RED, 6)
        lines.append(np.hstack([query, np.full((240, 8, 3), 255, np.uint8), match]))
    cv2.imwrite(str(out_png), np.vstack(lines))
    return out_png


def run_demo(out: str | Path = "demo-output", model: str = "structvprpp", places: int = 120, seed: int = 3, threads: int | None = None,
             trust_checkpoint: bool = False) -> dict:
    from .data.synthcity.route import generate_route  # noqa: PLC0415

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_shipped(out, model, trust_checkpoint)  # a model that cannot be opened fails before the route is drawn
    route = generate_route(out / "route", seed=seed, places=places)
    dataset = load_dataset(route, "test")
    order = np.argsort([int(v) for v in dataset.queries.column("place_id")], kind="stable")  # driving order
    query_paths = [dataset.queries.paths[i] for i in order]
    truth = dataset.queries.utm[order]
    results, summary = {}, {"model": str(model), "places": places}
    with EdgeVPR(onnx_path, threads=threads, max_batch=16) as vpr:
        build_map(vpr, route, out / "map")
        for temporal in (False, True):
            vpr.set_map(out / "map", temporal=temporal)
            label = "localize" + (" (temporal filter)" if temporal else "")
            found = results[temporal] = [vpr.localize(read_image(p)) for p in tqdm(query_paths, desc=label, unit="frame")]
            correct = within([(r.east, r.north) for r in found], truth, dataset.positive_radius)
            summary["recall@1_temporal" if temporal else "recall@1"] = float(np.mean(correct))
    single = results[False]
    summary["latency_ms"] = {stage: stage_stats([r.timing_ms[stage] for r in single]) for stage in ("preprocess", "inference", "search", "total")}
    matches = [route / vpr.map.places[r.matches[0].row].source for r in single]
    correct = list(within([(r.matches[0].east, r.matches[0].north) for r in single], truth, dataset.positive_radius))
    summary["figure"] = str(sheet(query_paths, matches, correct, out / "demo.png", dataset.positive_radius))
    summary["seconds"] = time.perf_counter() - started
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_bag_demo(out: str | Path = "demo-output", model: str = "structvprpp", places: int = 120, seed: int = 3, threads: int | None = None,
                 trust_checkpoint: bool = False) -> dict:
    """The demo route as two recorded drives: map from drive1's bag, drive2's bag localized and scored."""
    from .data.drives import read_drive  # noqa: PLC0415  (rosbags and pyproj: the ros extra)
    from .data.synthcity.bags import CAMERA_TOPIC, FIX_TOPIC, generate_route_bags  # noqa: PLC0415
    from .eval.drive import evaluate_drive, plot_drive_errors  # noqa: PLC0415
    from .runtime.mapping import build_map_from_frames  # noqa: PLC0415

    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_shipped(out, model, trust_checkpoint)
    bags = generate_route_bags(out / "bags", seed=seed, places=places)
    with EdgeVPR(onnx_path, threads=threads, max_batch=16, top_k=10) as vpr:
        frames, frame_id, total = read_drive(bags["drive1"], CAMERA_TOPIC, FIX_TOPIC)
        build_map_from_frames(vpr, frames, frame_id, out / "map", total=total)
        vpr.set_map(out / "map")
        frames, frame_id, total = read_drive(bags["drive2"], CAMERA_TOPIC, FIX_TOPIC)
        report = evaluate_drive(vpr, frames, frame_id, total=total)
    plot = plot_drive_errors(report, out / "error.png", title=f"{bags['drive2'].name} in the map of {bags['drive1'].name}")
    summary = {"model": str(model), "places": places, "bags": {k: str(v) for k, v in bags.items()}, **report.to_json(),
               "figure": str(plot), "seconds": time.perf_counter() - started}
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict) -> None:
    if "bags" in summary:
        print(f"\nRecall@1 of drive2's {summary['frames']} frames from its bag: {100 * summary['recall']['1']:.1f}%; "
              f"position error median {summary['error_m']['median']:.1f} m, p90 {summary['error_m']['p90']:.1f} m")
        print(f"error along the route: {summary['figure']}  ({summary['seconds']:.0f} s in all)")
        return
    latency = summary["latency_ms"]
    print(f"\nRecall@1 of {summary['places']} hard-condition frames (night or dusk, rain or fog): {100 * summary['recall@1']:.1f}% single frame, "
          f"{100 * summary['recall@1_temporal']:.1f}% with the temporal filter")
    print("latency p50 (ms): " + ", ".join(f"{stage} {latency[stage]['p50']:.2f}" for stage in latency))
    print(f"queries beside their matches: {summary['figure']}  ({summary['seconds']:.0f} s in all)")
