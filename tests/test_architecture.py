"""The layering of docs/architecture.md, checked: every part imports only the parts its row of the
table allows, the one arrow outside the table is the lazy torch backend, the import graph has no
cycle, the runtime imports neither torch nor training code, one table dispatches by suffix and one
function calls cv2.imread beside the runtime's reader."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from structvpr_edge.artifacts import backend_for

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "structvpr_edge"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


@pytest.mark.parametrize("code", [
    "import structvpr_edge.runtime.edgevpr, structvpr_edge.runtime.map, structvpr_edge.runtime.backends, structvpr_edge.runtime.mapping",
    "from structvpr_edge import EdgeVPR, PlaceMap",
])
def test_the_runtime_imports_neither_torch_nor_training_code(code):
    loaded = _modules_after(code)
    assert {"structvpr_edge.runtime.edgevpr", "structvpr_edge.runtime.map"} <= loaded  # the probe imported the runtime
    assert sorted(m for m in loaded if m == "torch" or m.startswith(("torch.", "structvpr_edge.train"))) == []


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = ROOT) -> list[tuple[str, bool]]:
    """(module, inside a function) for every structvpr_edge import of ``path`` (below ``root``),
    relative or absolute, at the top or lazy; ``from P import name`` names module P.name when there
    is one, else P itself."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    modules = {_module_name(p, root) for p in (root / "structvpr_edge").rglob("*.py")}
    tree = ast.parse(path.read_text())
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(name, id(node) in lazy) for name in names if name == "structvpr_edge" or name.startswith("structvpr_edge.")]
    return found


def _parts() -> dict[str, tuple[set[str], set[str]]]:
    """part -> (what it holds: files and folders of the package, the parts it may import), read
    from the table of parts in docs/architecture.md."""
    table = ARCHITECTURE.read_text().split("## The parts", 1)[1].split("\n## ", 1)[0]
    parts = {}
    for line in table.splitlines()[4:]:
        if not line.startswith("| "):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        parts[cells[0]] = (set(re.findall(r"`([\w/.]+)`", cells[1])), {p.strip() for p in cells[-1].split(",")})
    return parts


def _part_of(module: str, parts: dict) -> str:
    """The part holding ``module`` (structvpr_edge.x.y)."""
    path = module.split(".")[1:] or ["__init__"]
    held = f"{path[0]}/" if (PACKAGE / path[0]).is_dir() else f"{path[0]}.py"
    owners = [name for name, (holds, _) in parts.items() if held in holds]
    assert len(owners) == 1, f"{module} is held by {owners or 'no part'} in the table of docs/architecture.md"
    return owners[0]


def _arrows() -> list[tuple[str, str, str, bool]]:
    """(file, its part, imported module, lazy) for every import of the package from the package."""
    parts = _parts()
    return [(str(path.relative_to(PACKAGE)), _part_of(_module_name(path, ROOT), parts), module, lazy)
            for path in sorted(PACKAGE.rglob("*.py")) for module, lazy in _imports(path)]


def _declared_arrows() -> set[tuple[str, str]]:
    """The arrows outside the table, as docs/architecture.md lists them: (file, module)."""
    section = ARCHITECTURE.read_text().split("### The one arrow outside the table", 1)[1].split("\n#", 1)[0]
    return {(f, f"structvpr_edge.{m}") for f, m in re.findall(r"^- `([\w/.]+)` → `([\w.]+)`", section, re.M)}


def test_every_module_belongs_to_one_part():
    parts = _parts()
    assert {"vocabulary", "data", "models", "runtime", "timing", "eval", "deploy", "train", "apps", "bench"} <= set(parts)
    for path in PACKAGE.rglob("*.py"):
        _part_of(_module_name(path, ROOT), parts)


def test_every_part_imports_only_what_its_row_allows():
    """The table's rows for every part, the vocabulary, eval, deploy, bench and the apps included;
    the lazy torch backend is the one arrow outside them, declared, lazy and still there."""
    parts = _parts()
    outside = {(file, module, lazy) for file, part, module, lazy in _arrows() if _part_of(module, parts) not in parts[part][1] | {part}}
    assert {(file, module) for file, module, _ in outside} == _declared_arrows() == {("runtime/backends.py", "structvpr_edge.models.checkpoint")}
    assert all(lazy for _, _, lazy in outside)


def test_only_the_lab_and_the_apps_sit_above_the_library():
    """Nothing imports the lab; only the lab imports the apps (and cli.py the demo)."""
    imported = {(part, module) for _, part, module, _ in _arrows()}
    assert not [p for p, m in imported if m.startswith("structvpr_edge.bench") and p != "bench"]
    apps = tuple(f"structvpr_edge.{Path(held).stem}" for held in _parts()["apps"][0])
    assert {p for p, m in imported if m.startswith(apps)} <= {"apps", "bench"}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (node -> the nodes it points to), [] when there is none."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = "done"
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return []


def test_the_import_graph_has_no_cycle():
    """Every import counts, lazy ones too: a cycle through a lazy import still ties the parts together."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        graph.setdefault(_module_name(path, ROOT), set()).update(m for m, _ in _imports(path))
    for node in graph:
        graph[node].discard(node)
    assert _cycle(graph) == []


def test_the_checks_see_lazy_relative_imports_and_cycles(tmp_path):
    """A violation written the way this code base writes imports (relative, inside a function) is
    caught, and so is a cycle."""
    planted = tmp_path / "structvpr_edge" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    (planted.parent / "places.py").write_text("")
    planted.write_text("def f():\n    from ..models.student import StructVPRStudent\n    from . import places\n")
    assert {("structvpr_edge.models.student", True), ("structvpr_edge.data.places", True)} <= set(_imports(planted, tmp_path))
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) != [] and _cycle({"a": {"b"}, "b": {"c"}}) == []


@pytest.mark.parametrize("model, backend", [
    ("e/m.int8.engine", "tensorrt"), ("e/m.plan", "tensorrt"), ("m.int8.cpu.onnx", "onnxruntime"),
    ("runs/x/model.pt", "torch"), ("structvprpp", "torch"),
])
def test_one_suffix_table_picks_the_backend(model, backend):
    assert backend_for(model) == backend


def test_one_image_path():
    """Image files are decoded by images.py (``imread``, ``read_rgb``, ``read_label``) and the
    runtime's checked ``read_image`` (through ``images.decode_image``), nowhere else."""
    calls = sorted(str(p.relative_to(ROOT)) for p in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")] if "cv2.imread(" in p.read_text())
    assert calls == ["structvpr_edge/images.py"]


def test_one_formats_table_names_every_precision():
    """The precisions calibrate stamps are the rows it produces in artifacts.FORMATS, one file each,
    and the engine builder takes its graphs from the rows build-engine reads."""
    from structvpr_edge.artifacts import FORMATS
    from structvpr_edge.deploy import quantize

    stamped = {f"int8-{form.name}" for form in (quantize.CPU_FORM, quantize.TRT_FORM)} | {"fp16"}
    assert stamped == {tag for tag, f in FORMATS.items() if f.producer == "calibrate"}
    assert len({f.file for f in FORMATS.values()}) == len(FORMATS)
    assert {tag for tag, f in FORMATS.items() if "build-engine" in f.consumers} == {"fp32", "fp16", "int8-trt"}
