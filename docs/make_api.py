"""Render docs/api.md from the live docstrings and signatures of structvpr_edge's public names.

    python docs/make_api.py           # rewrite docs/api.md
    python docs/make_api.py --check   # exit 1 if docs/api.md is stale or a public name lacks a docstring

Why generated: a hand-written reference drifts from the code; tests/test_api_doc.py fails when the
page differs from what this renders, or when a public name, method or field is undocumented.
Docstrings are plain text; their "name: text" lines (constructor arguments, dataclass fields)
become a list here, and are what the completeness check looks for.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import structvpr_edge

API = Path(__file__).resolve().parent / "api.md"
PACKAGE = structvpr_edge.__name__
FIELD = re.compile(r"([a-z_][a-z0-9_]*(?:, [a-z_][a-z0-9_]*)*): ")  # "name: text" or "east, north: text"
HEADER = """# API reference

Generated from the docstrings by `python docs/make_api.py`; do not edit by hand (tests/test_api_doc.py
fails when this page is stale). Every name below imports from the package, e.g.
`from structvpr_edge import EdgeVPR`; `structvpr_edge.__version__` is the package version.

Conventions: frames are HxWx3 uint8 arrays, BGR unless `colour="RGB"`; positions are metres in the
map's frame (east, north), headings compass degrees (0 = north, 90 = east), times milliseconds.
"""


class _Text(str):
    """An annotation kept as source text (the package postpones annotations): shown without quotes."""

    def __repr__(self) -> str:
        return str(self)


def public_names() -> list[str]:
    return [name for name in structvpr_edge.__all__ if not name.startswith("_")]


def signature(obj: Any, drop_self: bool = False) -> str | None:
    """(arg: type = default, ...) -> type, as written in the source; None where Python has none."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # an exception class without an __init__ of its own
        return None
    params = [p.replace(annotation=_Text(p.annotation)) if isinstance(p.annotation, str) else p for p in sig.parameters.values()]
    if drop_self and params and params[0].name == "self":
        params = params[1:]
    result = inspect.Signature.empty if inspect.isclass(obj) else sig.return_annotation  # a constructor's "-> None" says nothing
    return str(sig.replace(parameters=params, return_annotation=_Text(result.strip("'\"")) if isinstance(result, str) else result))


def own_doc(obj: object) -> str:
    """The docstring written for ``obj`` itself: not inherited, not the one dataclasses generate."""
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc


def members(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties the package defines on ``cls`` (or its package bases), in source order."""
    found: dict[str, object] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(PACKAGE):
            continue
        for name, member in vars(klass).items():
            function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if not name.startswith("_") and inspect.isfunction(function):
                found[name] = member
    return list(found.items())


def documented(doc: str) -> set[str]:
    """The names a docstring's "name: text" lines describe."""
    return {name for line in doc.splitlines() if (match := FIELD.match(line)) for name in match.group(1).split(", ")}


def undocumented() -> list[str]:
    """Every public name, method, property, constructor argument or dataclass field without a description."""
    missing = []
    for name in public_names():
        obj = getattr(structvpr_edge, name)
        doc = own_doc(obj)
        if not doc:
            missing.append(name)
        if not inspect.isclass(obj):
            continue
        for member_name, member in members(obj):
            if not own_doc(member.fget if isinstance(member, property) else getattr(member, "__func__", member)):
                missing.append(f"{name}.{member_name}")
        if issubclass(obj, BaseException):
            continue
        fields = [f.name for f in dataclasses.fields(obj)] if dataclasses.is_dataclass(obj) else list(inspect.signature(obj).parameters)
        missing += [f"{name}({field})" for field in fields if field not in documented(doc)]
    return missing


def markdown(doc: str) -> str:
    """A docstring as Markdown: its "name: text" lines (and their indented continuations) become a list."""
    lines: list[str] = []
    for line in doc.splitlines():
        if FIELD.match(line):
            names, text = line.split(": ", 1)
            lines.append(f"- `{names}`: {text}")
        elif line.startswith("    ") and lines and lines[-1].startswith("- "):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    return "\n".join(lines)


def section(level: str, title: str, code: str | None, doc: str) -> str:
    block = f"```python\n{code}\n```\n\n" if code else ""
    return f"{level} {title}\n\n{block}{markdown(doc)}\n"


def render() -> str:
    """The whole page; the same code gives the same bytes."""
    parts = [HEADER]
    for name in public_names():
        obj = getattr(structvpr_edge, name)
        sig = signature(obj)
        if inspect.isclass(obj) and issubclass(obj, BaseException):  # its bases say what catches it
            bases = ", ".join(base.__name__ for base in obj.__bases__)
            code = f"class {name}({bases})" + (f"\n{name}{sig}" if "__init__" in vars(obj) else "")
            parts.append(section("##", f"`{name}`", code, own_doc(obj)))
            continue
        parts.append(section("##", f"`{name}`", f"{name}{sig}" if sig else None, own_doc(obj)))
        if inspect.isclass(obj):
            for member_name, member in members(obj):
                if isinstance(member, property):
                    parts.append(section("###", f"`{name}.{member_name}`", None, "(property) " + own_doc(member.fget)))
                else:
                    call = getattr(obj, member_name)
                    parts.append(section("###", f"`{name}.{member_name}`", f"{member_name}{signature(call, drop_self=True)}",
                                         own_doc(getattr(member, "__func__", member))))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render docs/api.md from structvpr_edge's docstrings.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if docs/api.md is stale or a docstring is missing")
    args = parser.parse_args(argv)
    missing, page = undocumented(), render()
    if missing:
        print(f"public names without a description: {', '.join(missing)}", file=sys.stderr)
    if args.check:
        stale = not API.is_file() or API.read_text(encoding="utf-8") != page
        if stale:
            print(f"{API} is stale: run python docs/make_api.py", file=sys.stderr)
        return int(stale or bool(missing))
    API.write_text(page, encoding="utf-8")
    print(f"{API} written ({len(public_names())} names)")
    return int(bool(missing))


if __name__ == "__main__":
    sys.exit(main())
