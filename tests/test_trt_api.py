"""Our TensorRT and pycuda calls against the real APIs, not against our idea of them.

The names each TensorRT version offers come from NVIDIA's binding wheels (8.6.1, 10.13.0.35,
11.4.0.106) and the 10.13 stubs; pycuda's from its source; all extracted by
benchmarks/trt_api_names.py into tests/data/api/. cuda-python is checked live where installed.

Which attributes the AST walk counts as TensorRT's (pycuda's: the same with the root ``cuda``):

- roots: a name ``trt`` (the module, however it arrived) and whatever ``import_tensorrt()`` returns;
- a variable (local, or ``self.x`` of the same class) assigned from an expression that starts at a
  TensorRT value is one too (``builder = trt.Builder(...)``, ``self.engine = runtime.deserialize...``),
  and so is a parameter of a function of the same module called with one at that position, and
  the result of a function of the module annotated to return a ``tensorrt.`` type;
- except the results of calls that return another library's objects (pycuda's ``pagelocked_empty``
  returns a numpy array);
- every attribute read or called on a TensorRT value is used API; so is every method a class
  derived from a TensorRT class defines (TensorRT calls them), and every name ``trt_compat``
  feature-detects (detecting API that exists nowhere would be a silent ``False``).

Not visible to it: ``getattr`` with a computed name, values passed through containers or across
modules. A use is feature-detected when an enclosing ``if``/``and``/conditional tests ``api.F``
(or a plan field that implies F, see PLAN_FEATURES), or ``require(..., "F")`` ran before it in the
same function; F holds on a version when every name ``trt_compat.detect`` checks for F is there.
"""
from __future__ import annotations

import ast
import dataclasses
import enum
import importlib.util
import itertools
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from structvpr_edge.deploy.engine import plan_build
from structvpr_edge.errors import StructVPRError
from structvpr_edge.trt_compat import TrtApi
from tests.cuda_standin import make_pycuda
from tests.trt_standin import VERSIONS as STANDIN_VERSIONS
from tests.trt_standin import make_tensorrt

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "api"
TRT_MODULES = ["structvpr_edge/trt_compat.py", "structvpr_edge/deploy/engine.py", "structvpr_edge/deploy/trt_calibrator.py",
               "structvpr_edge/runtime/tensorrt_backend.py"]
SUPPORTED = {"8.6": "8.6.1", "10.13": "10.13.0.35", "11.4": "11.4.0.106"}
# BuildPlan fields that plan_build sets only when the API has the feature (proved below).
PLAN_FEATURES = {"explicit_batch": "explicit_batch_flag", "strongly_typed": "strongly_typed_flag", "calibration_cache": "calibrators"}


class Names:
    """One version's names. The linker stores a string inside the tail of a longer one ("INT8" in
    "UINT8"), so a name is present when some listed string ends with it."""

    def __init__(self, path: Path) -> None:
        self.names = set(path.read_text().split())

    def __contains__(self, name: str) -> bool:
        return name in self.names or any(n.endswith(name) for n in self.names)


TRT = {version: Names(DATA / f"tensorrt-{full}.txt") for version, full in SUPPORTED.items()}
STUBS = set((DATA / "tensorrt-stubs-10.13.txt").read_text().split())
PYCUDA = Names(DATA / "pycuda-driver.txt")


@dataclass(frozen=True)
class Use:
    name: str
    where: str  # module:line
    features: frozenset[str] = frozenset()  # TrtApi fields under whose test it runs


@dataclass
class _Walker:
    """One module's uses of the API rooted at ``root`` (see the module docstring for the rule)."""

    root: str
    factory: str
    module: str
    foreign: frozenset[str] = frozenset()  # API calls returning other libraries' objects (numpy arrays)
    root_module: str = "tensorrt"  # the module name return annotations use
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    tainted: set[str] = field(default_factory=set)  # "function:name" and "Class.self.attr" keys
    uses: set[Use] = field(default_factory=set)

    def key(self, node: ast.expr, scope: str, cls: str) -> str | None:
        if isinstance(node, ast.Name):
            return f"{scope}:{node.id}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return f"{cls}.self.{node.attr}"
        return None

    def is_api(self, node: ast.expr, scope: str, cls: str) -> bool:
        """Does the expression evaluate to something of the API (the root or a value it returned)?"""
        if isinstance(node, ast.Name) and node.id == self.root:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and (node.func.id == self.factory or self.returns_api(node.func.id)):
            return True
        if self.key(node, scope, cls) in self.tainted:
            return True
        if isinstance(node, ast.Attribute):
            return self.is_api(node.value, scope, cls)
        if isinstance(node, ast.Call):
            return getattr(node.func, "attr", None) not in self.foreign and self.is_api(node.func, scope, cls)
        if isinstance(node, ast.Subscript):
            return self.is_api(node.value, scope, cls)
        return False

    def returns_api(self, function: str) -> bool:
        """A function of this module annotated to return a TensorRT type (``-> tensorrt.IBuilderConfig``)."""
        returns = getattr(self.functions.get(function), "returns", None)
        return returns is not None and ast.unparse(returns).startswith(f"{self.root_module}.")

    def features(self, test: ast.expr) -> set[str]:
        found = set()
        for node in ast.walk(test):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "api":
                    found.add(node.attr)
                elif node.value.id == "plan" and node.attr in PLAN_FEATURES:
                    found.add(PLAN_FEATURES[node.attr])
        return found

    def walk(self, tree: ast.Module, functions: dict[str, ast.FunctionDef]) -> None:
        self.functions = functions
        self.body(tree.body, "", "", frozenset())

    def body(self, statements: list[ast.stmt], scope: str, cls: str, guards: frozenset[str]) -> None:
        for statement in statements:
            self.statement(statement, scope, cls, guards)
            call = statement.value if isinstance(statement, ast.Expr) else None
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "require":
                guards = guards | {a.value for a in call.args[1:] if isinstance(a, ast.Constant)}

    def statement(self, node: ast.stmt, scope: str, cls: str, guards: frozenset[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            self.body(node.body, f"{cls}.{node.name}" if cls else node.name, cls, guards)
        elif isinstance(node, ast.ClassDef):
            if any(self.is_api(base, scope, cls) for base in node.bases):
                self.expr_uses(node.bases, scope, cls, guards)
                self.uses |= {Use(f.name, f"{self.module}:{f.lineno}", guards) for f in node.body
                              if isinstance(f, ast.FunctionDef) and not f.name.startswith("__")}
            self.body(node.body, scope, node.name, guards)
        elif isinstance(node, ast.If):
            self.expr_uses([node.test], scope, cls, guards)
            self.body(node.body, scope, cls, guards | self.features(node.test))
            self.body(node.orelse, scope, cls, guards)
        else:
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.With)):
                self.assign(node, scope, cls)
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    self.statement(child, scope, cls, guards)
                elif isinstance(child, ast.expr):
                    self.expr_uses([child], scope, cls, guards)
                elif isinstance(child, (ast.withitem, ast.excepthandler)):
                    for grandchild in ast.iter_child_nodes(child):
                        (self.statement if isinstance(grandchild, ast.stmt) else self.expr_uses_one)(grandchild, scope, cls, guards)

    def expr_uses_one(self, node: ast.AST, scope: str, cls: str, guards: frozenset[str]) -> None:
        if isinstance(node, ast.expr):
            self.expr_uses([node], scope, cls, guards)

    def assign(self, node: ast.stmt, scope: str, cls: str) -> None:
        pairs = []
        if isinstance(node, ast.Assign):
            pairs = [(t, node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(node.target, node.value)]
        elif isinstance(node, ast.With):
            pairs = [(item.optional_vars, item.context_expr) for item in node.items if item.optional_vars is not None]
        for target, value in pairs:
            if isinstance(value, ast.BoolOp):  # trt = trt or import_tensorrt()
                api = any(self.is_api(v, scope, cls) for v in value.values)
            else:
                api = self.is_api(value, scope, cls)
            key = self.key(target, scope, cls)
            if api and key is not None and not (isinstance(target, ast.Name) and target.id == self.root):
                self.tainted.add(key)

    def expr_uses(self, nodes: list[ast.expr], scope: str, cls: str, guards: frozenset[str]) -> None:
        for top in nodes:
            for node in ast.walk(top):
                if isinstance(node, ast.Attribute) and self.is_api(node.value, scope, cls):
                    self.uses.add(Use(node.attr, f"{self.module}:{node.lineno}", guards))
                elif isinstance(node, ast.Call):
                    self.propagate(node, scope, cls)
            for node in ast.walk(top):
                if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
                    for i, operand in enumerate(node.values[1:], 1):
                        extra = set().union(*(self.features(v) for v in node.values[:i]))
                        self.expr_uses_guarded(operand, scope, cls, guards | extra)
                elif isinstance(node, ast.IfExp):
                    self.expr_uses_guarded(node.body, scope, cls, guards | self.features(node.test))

    def expr_uses_guarded(self, node: ast.expr, scope: str, cls: str, guards: frozenset[str]) -> None:
        """Re-record the uses inside a guarded operand with its guards (the stricter, unguarded copy goes)."""
        for inner in ast.walk(node):
            if isinstance(inner, ast.Attribute) and self.is_api(inner.value, scope, cls):
                self.uses.discard(Use(inner.attr, f"{self.module}:{inner.lineno}", frozenset()))
                self.uses.add(Use(inner.attr, f"{self.module}:{inner.lineno}", frozenset(guards)))

    def propagate(self, call: ast.Call, scope: str, cls: str) -> None:
        """An API value passed to a function of this module makes that parameter an API value."""
        func = call.func
        name = func.id if isinstance(func, ast.Name) else (
            f"{cls}.{func.attr}" if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self" else None)
        target = self.functions.get(name or "")
        if target is None:
            return
        params = [a.arg for a in target.args.args]
        offset = 1 if params[:1] == ["self"] else 0
        for position, arg in enumerate(call.args):
            if position + offset < len(params) and self.is_api(arg, scope, cls):
                self.tainted.add(f"{name}:{params[position + offset]}")


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({f"{node.name}.{f.name}": f for f in node.body if isinstance(f, ast.FunctionDef)})
    return found


def api_uses(source: str, module: str, root: str = "trt", factory: str = "import_tensorrt", foreign: frozenset[str] = frozenset()) -> set[Use]:
    """Every use of the API rooted at ``root`` in ``source``, walked until the tainted set settles."""
    tree = ast.parse(source)
    walker = _Walker(root, factory, module, foreign)
    while True:
        before = len(walker.tainted)
        walker.walk(tree, _functions(tree))
        if len(walker.tainted) == before:
            return walker.uses


def detected_features() -> dict[str, set[str]]:
    """TrtApi field -> the names trt_compat.detect checks for it (string arguments of _has)."""
    tree = ast.parse((ROOT / "structvpr_edge/trt_compat.py").read_text())
    detect = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "detect")
    call = next(n for n in ast.walk(detect) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "TrtApi")
    return {kw.arg: {c.value for c in ast.walk(kw.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
            for kw in call.keywords if kw.arg != "version"}


FEATURES = detected_features()


def feature_on(feature: str, names: Names) -> bool:
    return all(name in names for name in FEATURES[feature])


def missing(uses: set[Use], versions: dict[str, Names]) -> list[str]:
    """'name (module:line) missing from TensorRT V' for each use no feature detection shields."""
    problems = []
    for use, (version, names) in itertools.product(sorted(uses, key=lambda u: (u.where, u.name)), versions.items()):
        shielded = any(f in FEATURES and not feature_on(f, names) for f in use.features)
        if use.name not in names and not shielded:
            problems.append(f"{use.name} ({use.where}) missing from TensorRT {version}")
    return problems


@pytest.fixture(scope="module")
def trt_uses() -> set[Use]:
    uses = set()
    for module in TRT_MODULES:
        uses |= api_uses((ROOT / module).read_text(), module)
    return uses


def test_every_tensorrt_name_we_use_exists_in_each_supported_version(trt_uses):
    names = {u.name for u in trt_uses}
    # the walk must see the calls that matter, or it proves nothing
    assert {"Builder", "create_network", "OnnxParser", "build_serialized_network", "set_memory_pool_limit", "execute_async_v3",
            "set_tensor_address", "IInt8EntropyCalibrator2", "read_calibration_cache", "get_batch", "int8_calibrator"} <= names
    assert missing(trt_uses, TRT) == []


def test_feature_detection_names_real_api():
    for feature, names in FEATURES.items():
        assert names, feature
        for name in names:
            assert any(name in v for v in TRT.values()), f"trt_compat detects {feature} by {name!r}, which no TensorRT has"
    on = {version: {f for f in FEATURES if feature_on(f, names)} for version, names in TRT.items()}
    assert {"precision_flags", "calibrators", "explicit_batch_flag"} <= on["8.6"] and "strongly_typed_flag" not in on["8.6"]
    assert {"precision_flags", "calibrators", "strongly_typed_flag"} <= on["10.13"] and "explicit_batch_flag" not in on["10.13"]
    assert "strongly_typed_flag" in on["11.4"] and not on["11.4"] & {"precision_flags", "calibrators", "explicit_batch_flag"}


def test_a_wrong_name_fails_the_check():
    source = "def build(trt):\n    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n    return builder.build_serialised_network(None, None)\n"
    problems = missing(api_uses(source, "bad.py"), TRT)
    assert problems == [f"build_serialised_network (bad.py:3) missing from TensorRT {v}" for v in SUPPORTED]


def test_an_api_missing_in_one_version_needs_feature_detection():
    bare = "def run(engine_path, trt):\n    engine = trt.Runtime(None).deserialize_cuda_engine(b'')\n    return engine.num_bindings\n"
    assert [p.split(" missing from ")[1] for p in missing(api_uses(bare, "bare.py"), TRT)] == ["TensorRT 10.13", "TensorRT 11.4"]
    guarded = bare.replace("    return engine.num_bindings", "    if api.explicit_batch_flag:\n        return engine.num_bindings")
    assert missing(api_uses(guarded, "guarded.py"), TRT) == []


def test_plan_fields_imply_the_features_they_stand_for(tmp_path):
    """PLAN_FEATURES is only a guard if plan_build never sets the field without the feature."""
    graphs = {key: tmp_path / f"{key}.onnx" for key in ("fp32", "fp16", "int8-trt")}
    (tmp_path / "cache.trt").write_text("TRT-8601-EntropyCalibration2\n")
    flags = [f.name for f in dataclasses.fields(TrtApi) if f.type in ("bool", bool)]
    for values, precision in itertools.product(itertools.product((False, True), repeat=len(flags)), ("fp32", "fp16", "int8")):
        api = TrtApi(version="x", **dict(zip(flags, values, strict=True)))
        try:
            plan = plan_build(api, precision, graphs, tmp_path)
        except StructVPRError:
            continue
        for plan_field, feature in PLAN_FEATURES.items():
            assert not getattr(plan, plan_field) or getattr(api, feature), (plan_field, api, precision)


@pytest.mark.parametrize(("variant", "version"), [("8.6", "8.6"), ("10", "10.13"), ("11", "11.4")])
def test_the_standin_defines_only_real_api(variant, version):
    assert STANDIN_VERSIONS[variant] == SUPPORTED[version]
    trt = make_tensorrt(variant)
    invented = []
    for name, value in vars(trt).items():
        if name.startswith("_") or name == "calls":  # module dunders; the stand-in's call recorder
            continue
        if name not in TRT[version]:
            invented.append(name)
        members = list(value.__members__) if isinstance(value, type) and issubclass(value, enum.Enum) else [
            m for m in vars(value) if not m.startswith("_")] if isinstance(value, type) else []
        invented += [f"{name}.{m}" for m in members if m not in TRT[version]]
        if version == "10.13":  # the stubs know the owner too
            invented += [f"{name}.{m} (stubs)" for m in members if f"{name}.{m}" not in STUBS]
    assert invented == []


CUDA_MODULES = ["structvpr_edge/runtime/tensorrt_backend.py", "structvpr_edge/deploy/trt_calibrator.py"]


def test_every_pycuda_name_we_use_exists():
    uses = set()
    for module in CUDA_MODULES:
        uses |= api_uses((ROOT / module).read_text(), module, root="cuda", factory="import_pycuda", foreign=frozenset({"pagelocked_empty"}))
    assert {"retain_primary_context", "push", "pop", "detach", "mem_alloc", "memcpy_htod_async", "pagelocked_empty", "Stream"} <= {u.name for u in uses}
    assert [f"{u.name} ({u.where})" for u in uses if u.name not in PYCUDA] == []
    imported = {a.name for m in CUDA_MODULES for n in ast.walk(ast.parse((ROOT / m).read_text())) if isinstance(n, ast.Import) for a in n.names}
    assert "pycuda.driver" in imported and "pycuda.autoinit" not in imported, "pycuda.autoinit makes a second context; use PrimaryContext"


def test_the_cuda_standin_defines_only_real_pycuda_names():
    cuda = make_pycuda()
    defined = [name for name in vars(cuda) if not name.startswith("_") and name != "calls"]
    defined += [member for value in vars(cuda).values() if isinstance(value, type) and value.__module__ == "tests.cuda_standin"
                for member in vars(value) if not member.startswith("_")]
    assert {"mem_alloc", "pagelocked_empty", "Stream", "synchronize", "retain_primary_context"} <= set(defined)
    assert [name for name in defined if name not in PYCUDA] == []


def _repaired_stubs(out: Path) -> Path:
    """tensorrt-stubs 10.13.0.35.1 as mypy can read it: copied out of site-packages (it ships no
    py.typed, so mypy skips it there) with its five unparsable signatures mended (a parameter
    named ``in``; a default before a non-default)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = [f for f in distribution("tensorrt-stubs").files or [] if f.suffix == ".pyi"]
    except PackageNotFoundError:
        pytest.skip("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs: its tensorrt dependency needs a GPU)")
    for stub in files:
        lines = Path(str(stub.locate())).read_text().splitlines()
        while True:
            try:
                ast.parse("\n".join(lines))
                break
            except SyntaxError as exc:
                line = lines[exc.lineno - 1]
                lines[exc.lineno - 1] = re.sub(r"\bin: ", "in_: ", line) if re.search(r"\bin: ", line) else line.replace(" = None", "")
                assert lines[exc.lineno - 1] != line, f"cannot mend {stub}:{exc.lineno}"
        (out / stub).parent.mkdir(parents=True, exist_ok=True)
        (out / stub).write_text("\n".join(lines) + "\n")
    (out / "mypy.ini").write_text(
        "[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n"
        "[mypy-tensorrt.*,tensorrt_bindings.*]\nignore_errors = True\n"  # the stubs' own errors are NVIDIA's
    )
    return out


def _mypy(stubs: Path, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(stubs / "mypy.ini"), "--cache-dir", str(stubs / ".cache"), *paths],
                          cwd=ROOT, env={"MYPYPATH": str(stubs), "PATH": ""}, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_mypy_checks_the_tensorrt_modules_against_the_stubs(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[test]')")
    stubs = _repaired_stubs(tmp_path)
    probe = tmp_path / "probe.py"  # proves the stubs are in effect: a misspelt method must be caught
    probe.write_text("import tensorrt\n\n\ndef f(b: tensorrt.Builder) -> None:\n    b.build_serialised_network()\n")
    caught = _mypy(stubs, str(probe))
    assert '"Builder" has no attribute "build_serialised_network"' in caught.stdout, caught.stdout + caught.stderr
    result = _mypy(stubs, *TRT_MODULES)
    assert result.returncode == 0, result.stdout + result.stderr
