"""The layering rules of docs/architecture.md, checked: the runtime imports neither torch nor
training code; data knows no model; models know no command line; one table dispatches by suffix."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from structvpr_edge.artifacts import backend_for

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "structvpr_edge"


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


def _imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every structvpr_edge module ``path`` (below ``root``) imports, at the top or inside a function, absolute names."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.startswith("structvpr_edge.")}


def _violations(part: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in (PACKAGE / part).rglob("*.py")
        for module in _imports(path)
        if module.startswith(tuple(f"structvpr_edge.{f}" for f in forbidden))
    )


@pytest.mark.parametrize("part, forbidden", [
    ("data", ("models", "train", "eval", "deploy", "runtime", "cli", "demo")),  # data knows no model
    ("models", ("train", "eval", "deploy", "runtime", "cli", "demo")),  # models know no pipeline step, no CLI
    ("runtime", ("train", "eval", "cli", "demo")),  # the runtime never reaches back into training or evaluation
    ("train", ("deploy", "runtime", "cli", "demo")),
])
def test_layers_import_only_downwards(part, forbidden):
    assert _violations(part, forbidden) == []


def test_the_rule_check_sees_lazy_and_relative_imports(tmp_path):
    """A violation written the way this code base writes imports (relative, inside a function) is caught."""
    planted = tmp_path / "structvpr_edge" / "data" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("def f():\n    from ..models.student import StructVPRStudent\n    from . import places\n")
    assert {"structvpr_edge.models.student", "structvpr_edge.data.places"} <= _imports(planted, tmp_path)


@pytest.mark.parametrize("model, backend", [
    ("e/m.int8.engine", "tensorrt"), ("e/m.plan", "tensorrt"), ("m.int8.cpu.onnx", "onnxruntime"),
    ("runs/x/model.pt", "torch"), ("structvprpp", "torch"),
])
def test_one_suffix_table_picks_the_backend(model, backend):
    assert backend_for(model) == backend
