"""TensorRT engines: build (``structvpr-edge build-engine``), describe in a manifest, check, run.

An engine only runs on the TensorRT version and GPU it was built on, so every engine file
``NAME.engine`` (plain serialized plan, loadable by ``trtexec --loadEngine``) has a manifest
``NAME.engine.json`` beside it: TensorRT/CUDA versions, GPU and compute capability, precision,
profile shapes, hashes of the ONNX and calibration, the build command. Loading checks it and
says how to rebuild. Which builder calls are made depends on the detected API
(:mod:`structvpr_edge.trt_compat`). Torch-free; tensorrt and pycuda are imported lazily.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import ENGINE_FORMAT, FORMATS, FP16, MANIFEST, REPORT, TRT_CACHE, TRT_INT8, engine_manifest_path
from ..errors import BackendError, ConfigError, ModelError
from ..files import open_regular, replace_whole
from ..modelinfo import DTYPES, PREFIX, ModelInfo, info_digest, load_onnx, sha256_file
from ..runtime.tensorrt_backend import GpuInfo, gpu_info
from ..trt_compat import TrtApi, detect, import_tensorrt, require
from .calibration import kit_manifest

if TYPE_CHECKING:  # mypy checks the TensorRT calls against tensorrt-stubs (tests/test_trt_api.py)
    import tensorrt

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_MAX_BATCH = 8
# What a calibration kit's graphs and cache share with the model they were calibrated from.
IDENTITY = ("checkpoint_sha256", "weights_sha256", "width", "height", "uint8_input", "colour")


@dataclass
class EngineBuildConfig:
    onnx: Path
    precision: str
    out: Path
    min_batch: int | None = None  # None: 1, 1 and DEFAULT_MAX_BATCH for a dynamic-batch graph
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mb: int = 1024
    timing_cache: Path | None = None
    dla_core: int | None = None
    calibration: Path | None = None  # calibration/NAME: FP16 and Q/DQ graphs, TensorRT cache

    def __post_init__(self) -> None:
        self.onnx, self.out = Path(self.onnx), Path(self.out)
        self.timing_cache = Path(self.timing_cache) if self.timing_cache else None
        self.calibration = Path(self.calibration) if self.calibration else None
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dla_core is not None and self.precision == "fp32":
            raise ConfigError("DLA runs FP16 or INT8 only; use --precision fp16 or int8 with --dla-core")

    def command(self) -> str:
        """The build-engine command line that rebuilds this engine."""
        args = ["structvpr-edge", "build-engine", "--model", str(self.onnx), "--precision", self.precision, "--workspace", str(self.workspace_mb)]
        for flag, value in (
            ("--min-batch", self.min_batch), ("--opt-batch", self.opt_batch), ("--max-batch", self.max_batch),
            ("--timing-cache", self.timing_cache), ("--dla-core", self.dla_core), ("--calibration", self.calibration),
        ):
            if value is not None:
                args += [flag, str(value)]
        return shlex.join([*args, "--out", str(self.out)])


def _onnx_props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in load_onnx(path, external_data=False).metadata_props}


def _model_info(path: Path) -> ModelInfo:
    return ModelInfo.from_props(_onnx_props(path))


def find_graphs(config: EngineBuildConfig) -> dict[str, Path]:
    """precision tag -> ONNX: ``--model`` under the tag calibrate stamped on it, plus the FP16 and
    Q/DQ graphs of ``--calibration``, once that kit is one of ``--model`` (check_kit_model)."""
    info = _model_info(config.onnx)
    tag = info.extra.get("precision", "fp32")
    if tag in FORMATS and "build-engine" not in FORMATS[tag].consumers:
        raise ModelError(f"{config.onnx} is {FORMATS[tag].what}; TensorRT builds from {TRT_INT8}")
    graphs = {tag: config.onnx}
    if config.calibration is not None:
        made = (f for f in FORMATS.values() if f.producer == "calibrate" and "build-engine" in f.consumers)
        kit = {f.tag: config.calibration / f.file for f in made if (config.calibration / f.file).is_file()}
        check_kit_model(config.onnx, info, config.calibration, list(kit.values()))
        graphs = {**kit, **graphs}  # --model's own precision is built from --model
    return graphs


def check_kit_model(model: Path, info: ModelInfo, kit: Path, graphs: list[Path]) -> None:
    """ConfigError unless calibration ``kit`` was made for ``model`` (``info``): the same checkpoint
    (its manifest), weights fingerprint, input size and format (its ``graphs``' metadata) and the
    graph its report records. Else build-engine would build the kit's graphs in the model's place,
    or apply its cache (TensorRT 8.6) to the ranges of other weights or inputs."""
    wanted = {name: getattr(info, name) for name in IDENTITY}
    recorded = {kit / MANIFEST: {"checkpoint_sha256": kit_manifest(kit, ("weights_sha256",))["weights_sha256"]}}
    for graph in graphs:
        recorded[graph] = {name: getattr(_model_info(graph), name) for name in IDENTITY}
    for path, identity in recorded.items():
        differ = [f"{name} {value!r} there, {wanted[name]!r} in --model" for name, value in identity.items() if value != wanted[name]]
        if differ:
            raise ConfigError(f"--calibration {kit} was calibrated for another model than --model {model} ({path.name}: {'; '.join(differ)}); "
                              f"calibrate {model} (structvpr-edge calibrate --model {model} ...) or pass its own kit")
    _check_kit_record(model, info, kit)


def _check_kit_record(model: Path, info: ModelInfo, kit: Path) -> None:
    """ConfigError unless ``kit``'s report.json records ``model`` as the graph of its precision that
    was calibrated: by its metadata digest (modelinfo.info_digest: weights, input size and type,
    colour, precision), for a kit from before that record by its sha256. The kit's own graphs are
    not committed (``*.onnx`` is git-ignored), so in a clean clone this record is all there is to
    tell a 320x240 or float-input export of the same weights from the calibrated one."""
    report = kit / REPORT
    with open_regular(report, 16 << 20, ConfigError) as handle:
        text = handle.read()
    tag = info.extra.get("precision", "fp32")
    try:
        recorded = json.loads(text)
        name = Path(recorded["model"]).name if tag == "fp32" else FORMATS[tag].file
        graph = recorded.get("graphs", {}).get(name)
        same = graph["info"] == info_digest(info) if graph else recorded["sha256"][name] == sha256_file(model)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{report} does not record which model {kit} was calibrated for ({exc!r}); recalibrate: "
                          f"structvpr-edge calibrate --model {model} ... --out {kit}") from exc
    if not same:
        raise ConfigError(f"--calibration {kit} was calibrated for another model than --model {model} ({REPORT} records another {name} "
                          f"than this {info.width}x{info.height} {DTYPES[info.uint8_input]} {info.colour} input export of checkpoint "
                          f"{info.checkpoint_sha256[:12]}: another input size, input type, colour or export); "
                          f"calibrate {model} (structvpr-edge calibrate --model {model} ...) or pass its own kit")


@dataclass(frozen=True)
class BuildPlan:
    """Which graph TensorRT parses and how precision is asked for; chosen from the detected API."""

    onnx: Path
    flags: tuple[str, ...]  # BuilderFlag names to set
    strongly_typed: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    explicit_batch: bool  # create the network with NetworkDefinitionCreationFlag.EXPLICIT_BATCH (8.x)
    calibration_cache: Path | None  # INT8 through an entropy calibrator reading this cache (TensorRT < 10)
    why: str


def plan_build(api: TrtApi, precision: str, graphs: dict[str, Path], calibration: Path | None) -> BuildPlan:
    """11.x takes precision only from the graph; 10.x prefers the graph (strongly typed) and
    falls back to flags; 8.6 uses flags and, for INT8, the calibrator with the cache."""
    graph_typed = api.opt_in_strong_typing or api.strongly_typed_only

    def plan(key: str, flags: tuple[str, ...] = (), cache: Path | None = None, why: str = "") -> BuildPlan:
        if key not in graphs:
            raise ConfigError(f"--precision {precision} on TensorRT {api.version} needs the {key} ONNX; got {sorted(graphs)}")
        return BuildPlan(graphs[key], flags, api.opt_in_strong_typing and not flags, api.explicit_batch_flag, cache, why)

    if precision == "fp32":
        return plan("fp32", why="FP32 graph")
    if precision == "fp16":
        if graph_typed and "fp16" in graphs:
            return plan("fp16", why="FP16 graph, strongly typed")
        if api.precision_flags:
            return plan("fp32", ("FP16",), why="FP32 graph + FP16 builder flag")
        raise BackendError(
            f"TensorRT {api.version} has no FP16 builder flag: it builds FP16 from {FP16}; "
            "run `structvpr-edge calibrate` and pass its folder with --calibration"
        )
    if graph_typed and "int8-trt" in graphs:
        return plan("int8-trt", why="Q/DQ graph (explicit quantization), strongly typed")
    cache = calibration / TRT_CACHE if calibration is not None else None
    if api.precision_flags and api.calibrators and cache is not None and cache.is_file():
        return plan("fp32", ("INT8",), cache, why="FP32 graph + INT8 builder flag + entropy calibrator reading the calibration cache")
    raise BackendError(
        f"INT8 on TensorRT {api.version} needs "
        + ("the Q/DQ graph" if not api.calibrators else f"the Q/DQ graph or {TRT_CACHE}")
        + " from `structvpr-edge calibrate`: pass its folder with --calibration"
    )


def engine_cache_path(engine: Path) -> Path:
    """``NAME.engine.cache.trt``: the calibration cache an entropy-calibrated engine was built with,
    under the header of the TensorRT that built it (the kit's says ``TRT-8601``; trtexec given that
    one on another version would recalibrate)."""
    return engine.with_name(f"{engine.name}.{TRT_CACHE}")


def trtexec_command(config: EngineBuildConfig, plan: BuildPlan, input_name: str, shapes: dict[str, list[int]]) -> str:
    """The ``trtexec`` line that builds the same engine from the same graph, with the same options
    (for comparing, or for a machine without this package)."""
    args = ["trtexec", f"--onnx={plan.onnx}", f"--saveEngine={config.out}", f"--memPoolSize=workspace:{config.workspace_mb}"]
    args += ["--stronglyTyped"] * plan.strongly_typed + [{"FP16": "--fp16", "INT8": "--int8"}[flag] for flag in plan.flags]
    if plan.calibration_cache is not None:
        args.append(f"--calib={engine_cache_path(config.out)}")
    if shapes["min"] != shapes["max"]:
        args += [f"--{k}Shapes={input_name}:{'x'.join(map(str, shapes[k]))}" for k in ("min", "opt", "max")]
    if config.timing_cache is not None:
        args.append(f"--timingCacheFile={config.timing_cache}")
    if config.dla_core is not None:
        args += [f"--useDLACore={config.dla_core}", "--allowGPUFallback"]
    return shlex.join(args)


def _profile_shapes(shape: tuple, config: EngineBuildConfig) -> dict[str, list[int]]:
    """Optimization profile shapes of the batch; a static-batch graph allows only its own batch."""
    given = (config.min_batch, config.opt_batch, config.max_batch)
    if shape[0] > 0:
        if any(b not in (None, shape[0]) for b in given):
            raise ConfigError(f"{config.onnx} has a static batch of {shape[0]}; export it with --batch dynamic for a batch range")
        return {k: list(shape) for k in ("min", "opt", "max")}
    low, opt, high = (b or default for b, default in zip(given, (1, 1, DEFAULT_MAX_BATCH), strict=True))
    if not 1 <= low <= opt <= high:
        raise ConfigError(f"need 1 <= min-batch <= opt-batch <= max-batch, got {low}, {opt}, {high}")
    return {k: [b, *shape[1:]] for k, b in (("min", low), ("opt", opt), ("max", high))}


def _parse(trt, builder: tensorrt.Builder, logger: tensorrt.ILogger, plan: BuildPlan) -> tensorrt.INetworkDefinition:
    """Network definition of ``plan.onnx``, created with the flags the API generation needs."""
    flags = 0
    if plan.explicit_batch:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(plan.onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT cannot parse {plan.onnx}: {errors}")
    return network


def _configure(
    trt, api: TrtApi, builder: tensorrt.Builder, config: EngineBuildConfig, plan: BuildPlan, tensor: tensorrt.ITensor, shapes: dict
) -> tuple[tensorrt.IBuilderConfig, Any]:
    """Builder config (workspace, precision flags, profiles, calibrator, timing cache, DLA) and its
    calibrator, None without one."""
    from .trt_calibrator import make_entropy_calibrator  # noqa: PLC0415

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    for flag in plan.flags:
        builder_config.set_flag(getattr(trt.BuilderFlag, flag))
    dynamic = tensor.shape[0] <= 0
    if dynamic:
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
        builder_config.add_optimization_profile(profile)
    calibrator = None
    if plan.calibration_cache is not None:
        info = _model_info(plan.onnx)
        manifest = plan.calibration_cache.parent / MANIFEST  # the cache lives in the calibration folder
        calibrator = make_entropy_calibrator(trt, plan.calibration_cache, manifest, info)
        builder_config.int8_calibrator = calibrator
        if dynamic and api.calibration_profile:  # the calibrator feeds single images
            single = [1, *shapes["opt"][1:]]
            calibration_profile = builder.create_optimization_profile()
            calibration_profile.set_shape(tensor.name, trt.Dims(single), trt.Dims(single), trt.Dims(single))
            builder_config.set_calibration_profile(calibration_profile)
    if config.timing_cache is not None and api.timing_cache:
        blob = config.timing_cache.read_bytes() if config.timing_cache.is_file() else b""
        builder_config.set_timing_cache(builder_config.create_timing_cache(blob), False)
    if config.dla_core is not None:
        builder_config.default_device_type = trt.DeviceType.DLA
        builder_config.DLA_core = config.dla_core
        builder_config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return builder_config, calibrator


def _check_outputs(config: EngineBuildConfig) -> None:
    """--out and --timing-cache name files: a folder there is refused before the build, not when
    its result is written."""
    for flag, path in (("--out", config.out), ("--timing-cache", config.timing_cache)):
        if path is not None and path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; it names the file to write")


def _swap_in(files: list[tuple[Path, bytes]]) -> None:
    """Write every file beside its path, then move them in, the first of ``files`` last, only once
    all are written (replace_whole, one inside the next): a failure writing any of them leaves every
    previous file as it was, never a new engine beside an old manifest."""
    if not files:
        return
    (path, data), rest = files[0], files[1:]

    def write(tmp: Path) -> None:
        tmp.write_bytes(data)
        _swap_in(rest)

    replace_whole(path, write)


def build_engine(config: EngineBuildConfig, trt=None, gpu: GpuInfo | None = None) -> dict:
    """Build, write ``config.out``, its manifest, the timing cache and the calibration cache the
    trtexec line reads (engine_cache_path), all or none; returns the manifest. ``trt`` and ``gpu`` are injectable so the version gating is testable without a GPU."""
    from .trt_check import check_trt_friendly  # noqa: PLC0415

    _check_outputs(config)
    trt = trt or import_tensorrt()
    api = detect(trt)
    require(api, "serialized_build", "named_tensors", "memory_pool_limit")
    plan = plan_build(api, config.precision, find_graphs(config), config.calibration)
    check_trt_friendly(plan.onnx)
    gpu = gpu or gpu_info()
    start = time.perf_counter()

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, logger, plan)
    tensor = network.get_input(0)
    shapes = _profile_shapes(tensor.shape[:], config)  # Dims[:] is a tuple
    builder_config, calibrator = _configure(trt, api, builder, config, plan, tensor, shapes)
    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise BackendError(f"TensorRT failed to build an engine from {plan.onnx} (see the TensorRT log above)")
    engine = bytes(serialized)
    manifest = {
        "format": ENGINE_FORMAT,
        "engine": config.out.name,
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "tensorrt_version": api.version,
        "cuda_version": gpu.cuda_version,
        "cuda_driver_version": gpu.driver_version,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": config.precision,
        "plan": {"onnx": str(plan.onnx), "flags": list(plan.flags), "strongly_typed": plan.strongly_typed,
                 "explicit_batch": plan.explicit_batch, "entropy_calibrator": plan.calibration_cache is not None, "why": plan.why},
        "input": tensor.name,
        "profile": shapes,
        "onnx_sha256": sha256_file(plan.onnx),
        "calibration_manifest_sha256": sha256_file(config.calibration / MANIFEST) if config.calibration else None,
        "build_seconds": round(time.perf_counter() - start, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": config.command(),
        "trtexec": trtexec_command(config, plan, tensor.name, shapes),
        "model_info": {k: v for k, v in _onnx_props(plan.onnx).items() if k.startswith(PREFIX)},
    }
    files = [(engine_manifest_path(config.out), (json.dumps(manifest, indent=2) + "\n").encode()), (config.out, engine)]
    if config.timing_cache is not None and api.timing_cache:
        files.append((config.timing_cache, bytes(builder_config.get_timing_cache().serialize())))
    if calibrator is not None:  # the cache the engine was built with: the kit's, or one TensorRT made in its place
        files.append((engine_cache_path(config.out), calibrator.written or calibrator.read_calibration_cache()))
    _swap_in(files)  # replace_whole makes missing folders
    return manifest


