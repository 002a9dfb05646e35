"""Threading chosen by measurement (runtime/ort_session.py), the timing harness (timing.py) and the lab's rig (bench/rig.py)."""
import json
import time
from pathlib import Path

import numpy as np
import pytest

from structvpr_edge.artifacts import CACHE_ENV
from structvpr_edge.errors import ConfigError, ModelError
from structvpr_edge.runtime import ort_session
from structvpr_edge.runtime.ort_session import AUTO, SPINNING, OrtSession, ThreadCache, candidates, choose_threading, parse_threads
from structvpr_edge.bench.latency import node_profile
from structvpr_edge.bench.rig import RunSpec
from structvpr_edge.timing import SessionSpec, int8_advice, measure_isolated, stage_stats

TIMINGS = {(1, True): 3.0, (1, False): 2.5, (2, True): 1.5, (2, False): 2.0}


@pytest.fixture
def conv_model(tmp_path: Path) -> Path:
    """A one-Conv ONNX graph: enough for ONNX Runtime to open, time and profile."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [weight],
    )
    path = tmp_path / "conv.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> ThreadCache:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return ThreadCache()


def recorder(timings: dict) -> tuple[list, object]:
    calls = []

    def measure(threads: int, spinning: bool) -> float:
        calls.append((threads, spinning))
        return timings[(threads, spinning)]

    return calls, measure


def test_auto_keeps_the_fastest_and_reuses_the_cache(conv_model, cache):
    calls, measure = recorder(TIMINGS)
    chosen = choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=list(TIMINGS))
    assert (chosen.threads, chosen.spinning, chosen.source) == (2, True, "measured")
    assert sorted(calls) == sorted(TIMINGS)
    assert chosen.timings_ms == {"1/spin": 3.0, "1/nospin": 2.5, "2/spin": 1.5, "2/nospin": 2.0}

    def refuse(threads: int, spinning: bool) -> float:
        raise AssertionError("a cached model must not be timed again")

    again = choose_threading(conv_model, None, measure=refuse, cache=cache)
    assert (again.threads, again.spinning, again.source) == (2, True, "cached")
    shared = choose_threading(conv_model, AUTO, shared=True, measure=refuse, cache=cache)
    assert (shared.threads, shared.spinning) == (2, False)  # the fastest without spinning


def test_a_tune_timed_under_heavier_load_is_done_again(conv_model, cache):
    calls, measure = recorder(TIMINGS)
    busy = choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=list(TIMINGS), load=1.8)
    assert busy.source == "measured" and len(calls) == len(TIMINGS)
    entry = json.loads(cache.path.read_text())["entries"][ort_session.machine_key(conv_model)]
    assert entry["load_per_core"] == 1.8
    similar = 1.8 - ort_session.LOAD_SLACK + 0.1
    assert choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=list(TIMINGS), load=similar).source == "cached"
    assert choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=list(TIMINGS), load=2.5).source == "cached"
    assert len(calls) == len(TIMINGS)
    quiet = choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=list(TIMINGS), load=0.2)
    assert quiet.source == "measured" and len(calls) == 2 * len(TIMINGS)
    assert json.loads(cache.path.read_text())["entries"][ort_session.machine_key(conv_model)]["load_per_core"] == 0.2
    cache.put("no-load", {"1/nospin": 1.0})  # where the OS has no load average: reused there
    assert cache.get("no-load", load=None) == {"1/nospin": 1.0}
    assert cache.get("no-load", load=0.0) is None  # but a machine with one cannot tell how busy it was


def test_a_costlier_configuration_must_win_by_the_margin():
    near = {"1/spin": 1.00, "1/nospin": 1.03, "2/spin": 0.99, "2/nospin": 1.2}
    chosen = ort_session.fastest(near, shared=False, source="measured")
    assert (chosen.threads, chosen.spinning) == (1, False)
    clear = {**near, "2/spin": 0.8}
    assert (ort_session.fastest(clear, shared=False, source="measured").threads, ort_session.fastest(clear, False, "m").spinning) == (2, True)
    assert ort_session.fastest(clear, shared=True, source="measured").threads == 1


def test_the_cache_key_is_the_model_bytes(conv_model, cache, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(conv_model.read_bytes() + b"\0")
    calls, measure = recorder({(1, True): 1.0, (1, False): 2.0})
    choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=[(1, True), (1, False)])
    choose_threading(other, AUTO, measure=measure, cache=cache, options=[(1, True), (1, False)])
    assert len(calls) == 4


def test_a_corrupt_cache_is_ignored_and_rewritten(conv_model, cache):
    cache.path.parent.mkdir(parents=True)
    key = ort_session.machine_key(conv_model)
    entries = ({key: {"timings_ms": "x"}}, {key: {"timings_ms": {"two/spin": 1.0}}}, {key: {"timings_ms": {"1/spin": 1.0}}})
    junk = ["{not json", "[1, 2]", *(json.dumps({"format": ort_session.CACHE_FORMAT, "entries": e}) for e in entries)]
    for text in junk:
        cache.path.write_text(text)
        calls, measure = recorder(TIMINGS)
        assert choose_threading(conv_model, AUTO, measure=measure, cache=cache, options=list(TIMINGS)).source == "measured"
        assert calls
        assert json.loads(cache.path.read_text())["entries"][key]["timings_ms"] == {"1/spin": 3.0, "1/nospin": 2.5, "2/spin": 1.5, "2/nospin": 2.0}


def test_the_cache_keeps_the_newest_entries_only(tmp_path):
    cache = ThreadCache(tmp_path / "threads.json", entries=3)
    for i in range(5):
        cache.put(f"model{i}", {"1/spin": float(i), "1/nospin": 1.0})
    assert sorted(json.loads(cache.path.read_text())["entries"]) == ["model2", "model3", "model4"]
    assert cache.get("model4") == {"1/spin": 4.0, "1/nospin": 1.0} and cache.get("model0") is None


def test_a_stray_temp_file_with_an_impossible_pid_cannot_stop_the_cache(tmp_path):
    """The cache clears killed writers' temps before it writes; a name no process id can be is a dead writer's."""
    stray = tmp_path / ".threads.json.tmp-99999999999-0123abcd"
    stray.write_text("{")
    cache = ThreadCache(tmp_path / "threads.json")
    cache.put("model", {"1/spin": 1.0, "1/nospin": 2.0})
    assert cache.get("model") == {"1/spin": 1.0, "1/nospin": 2.0} and not stray.exists()


def test_explicit_threads_and_bad_values():
    assert parse_threads(None) == parse_threads("auto") == AUTO
    assert parse_threads(3) == parse_threads("3") == 3
    for bad in (0, -1, True, 2.5, "two", "0"):
        with pytest.raises(ConfigError):
            parse_threads(bad)
    explicit = choose_threading("unused.onnx", 2)
    assert (explicit.threads, explicit.spinning, explicit.source) == (2, True, "explicit")
    assert not choose_threading("unused.onnx", 2, shared=True).spinning


def test_candidates_cover_powers_of_two_and_all_cores():
    assert candidates(1) == [(1, False)]
    assert [n for n, spin in candidates(6) if spin] == [2, 4, 6]
    assert [n for n, spin in candidates(6) if not spin] == [1, 2, 4, 6]


def test_a_second_session_turns_spinning_off_in_both(conv_model, cache, monkeypatch):
    monkeypatch.setattr(ort_session, "TUNE_SECONDS", 0.02)

    def spinning(session: OrtSession) -> str:
        return session.session.get_session_options().get_session_config_entry(SPINNING)

    first = OrtSession(conv_model, threads=1)
    assert first.threading.spinning and spinning(first) == "1"
    second = OrtSession(conv_model)  # auto: tuned, then the fastest without spinning
    try:
        assert second.threading.source == "measured" and not second.threading.spinning
        assert spinning(first) == spinning(second) == "0"
        assert not first.threading.spinning and first.threading.threads == 1
        assert len(second.threading.timings_ms) == len(candidates(ort_session.usable_cores()))
        x = np.ones((1, 3, 16, 16), np.float32)
        np.testing.assert_allclose(first.session.run(None, {"x": x})[0], second.session.run(None, {"x": x})[0])
    finally:
        first.close()
        second.close()
    alone = OrtSession(conv_model)
    assert alone.threading == ort_session.fastest(second.threading.timings_ms, shared=False, source="cached")
    alone.close()


def test_a_refused_model_leaves_the_open_session_spinning(conv_model, cache, tmp_path):
    first = OrtSession(conv_model, threads=1)
    try:
        assert first.threading.spinning
        damaged = tmp_path / "damaged.onnx"
        damaged.write_bytes(b"\x08\x07 not a model" * 10)
        with pytest.raises(ModelError):
            OrtSession(damaged, threads=1)
        assert first.threading.spinning and first.session.get_session_options().get_session_config_entry(SPINNING) == "1"
    finally:
        first.close()


def test_a_refused_colour_opens_no_session(conv_model, monkeypatch):
    from structvpr_edge import EdgeVPR
    from structvpr_edge.runtime import edgevpr

    monkeypatch.setattr(edgevpr, "open_backend", lambda *args, **kwargs: pytest.fail("a session opened before the arguments were checked"))
    with pytest.raises(ConfigError, match="colour"):
        EdgeVPR(conv_model, colour="bgr")


def test_bare_sessions_are_timed_each_alone_in_its_process(conv_model, cache):
    """calibrate's rule: every artifact in its own process, threads as for a session alone (spinning allowed)."""
    specs = [SessionSpec("one", str(conv_model), 1), SessionSpec("two", str(conv_model), 2)]
    result = measure_isolated(specs, frames=5, warmup=1, block=2, settle_s=0)
    for name, threads in (("one", 1), ("two", 2)):
        assert len(result[name]["samples"]["inference"]) == 5 and all(ms > 0 for ms in result[name]["samples"]["inference"])
        assert result[name]["setup"]["threading"] == [{"threads": threads, "spinning": True, "source": "explicit", "timings_ms": {}}]


def test_node_profile_names_the_work(conv_model):
    """Which op is slowest on a one-Conv graph is timing (ORT's layout reorders can outlast it on a
    busy machine), so this checks what the profile names and how it adds up, not an order of speed."""
    profile = node_profile(conv_model, runs=5)
    by_op = {row["op"]: row for row in profile["by_op"]}
    assert by_op["Conv"]["nodes"] == 1 and by_op["Conv"]["ms"] > 0
    assert [row["ms"] for row in profile["by_op"]] == sorted((row["ms"] for row in profile["by_op"]), reverse=True)
    assert profile["total_ms"] == pytest.approx(sum(row["ms"] for row in profile["by_op"]))
    assert sum(row["share"] for row in profile["by_op"]) == pytest.approx(1)
    assert [row["input"] for row in profile["slowest"] if row["op"] == "Conv"] == [[[1, 3, 16, 16]]]


def test_int8_advice_recommends_full_precision_when_int8_does_not_pay():
    assert int8_advice({"fp32": 2.6, "int8": 1.9}) is None
    slow = int8_advice({"fp32": 2.0, "fp16": 3.0, "int8": 1.8})
    assert "use the FP32 artifact" in slow and "INT8 1.80 ms" in slow and "1.11x" in slow
    assert "use the FP16 artifact" in int8_advice({"fp32": 2.0, "fp16": 1.5, "int8": 1.8})
    assert int8_advice({"fp32": 2.0}) is None


def test_stage_stats_reports_jitter():
    stats = stage_stats([1.0] * 98 + [5.0, 5.0])
    assert stats["p50"] == 1.0 and stats["p99/p50"] == pytest.approx(stats["p99"]) and stats["p99"] > 4


@pytest.fixture
def tiny_uint8_model(tmp_path, monkeypatch) -> str:
    import torch

    from structvpr_edge.deploy.export import export_onnx
    from structvpr_edge.models.checkpoint import save_checkpoint
    from structvpr_edge.models.student import StructVPRStudent, StudentConfig

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    torch.manual_seed(0)
    checkpoint = save_checkpoint(tmp_path / "student.pt", StructVPRStudent(StudentConfig(imagenet=False)).eval(), (64, 48), {})
    return str(export_onnx(checkpoint, tmp_path / "uint8.onnx", uint8_input=True).path)


def test_rig_paces_frames_like_a_camera(tiny_uint8_model):
    """--fps: a frame starts one camera period after the previous one (5 gaps of 40 ms at 25 fps)."""
    from structvpr_edge.bench.rig import Rig

    rig = Rig(RunSpec("paced", tiny_uint8_model, threads=1, map_size=100, frame_size=(128, 96), fps=25))
    try:
        start = time.perf_counter()
        timings = rig.run(6)
        assert time.perf_counter() - start >= 5 / 25 and len(timings) == 6
        assert all(t["frame"] < 1000 / 25 * 5 for t in timings)  # the idle gap is not counted in a frame's time
    finally:
        rig.close()


@pytest.mark.slow
def test_isolated_configurations_and_cameras(tiny_uint8_model):
    """Two configurations in their own processes, one of them two cameras in one process."""
    model = tiny_uint8_model
    common = {"map_size": 300, "frame_size": (128, 96)}
    specs = [RunSpec("one", model, threads=1, **common), RunSpec("two", model, cameras=2, **common)]
    result = measure_isolated(specs, frames=7, warmup=2, block=3, settle_s=0)
    assert set(result) == {"one", "two"}
    for name, cameras in (("one", 1), ("two", 2)):
        assert all(len(result[name]["samples"][stage]) == 7 for stage in ("preprocess", "inference", "search", "total", "frame"))
        assert all(len(result[name]["sustained"][stage]) == 7 for stage in ("preprocess", "inference", "search", "total", "frame"))
        threading = result[name]["setup"]["threading"]
        assert len(threading) == cameras
    assert result["one"]["setup"]["threading"][0]["source"] == "explicit"
    assert [t["spinning"] for t in result["two"]["setup"]["threading"]] == [False, False]


def test_a_missing_model_file_is_a_model_error_before_any_tuning(tmp_path):
    from structvpr_edge.errors import ModelError
    from structvpr_edge.runtime.backends import open_backend

    with pytest.raises(ModelError, match="not found"):
        open_backend(tmp_path / "nope.onnx")


def test_a_worker_that_dies_silently_is_a_backend_error_not_a_hang():
    """A latency worker killed before it reports (native crash, OOM killer) must not block the harness."""
    import multiprocessing
    import os

    from structvpr_edge.errors import BackendError
    from structvpr_edge.timing import receive

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=os._exit, args=(3,), daemon=True)
    process.start()
    start = time.perf_counter()
    with pytest.raises(BackendError, match="exit code 3"):
        receive(process, parent, poll_s=0.05)
    assert time.perf_counter() - start < 30
    child.close()
