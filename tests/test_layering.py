"""Layers that only point down: the contract on what the core packages import.

The core (bayes, compress, spike, energy) works on models and tensors it is given. Loading
(kwh.app), the trainer (kwh.train), the .kwh file (kwh.format), the data sets (kwh.data), the
command line, the report and the runtime all sit above it, and so does the top-level package
``kwh``. Every import of every core module counts, at module level or inside a function,
``import x``, ``from x import y``, relative, or ``importlib.import_module("x")``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
KWH = SRC / "kwh"

# What a core package may import from kwh, besides itself: the shared leaves (errors, modules,
# metrics, the reference models, soft weight-sharing's prior, the exact fixed-point rule), and
# the core packages below it.
LEAVES = ("kwh.errors", "kwh.modules", "kwh.metrics", "kwh.models", "kwh.sws", "kwh.fixedpoint")
ALLOWED = {
    "bayes": LEAVES,
    "compress": (*LEAVES, "kwh.graph", "kwh.bayes"),
    "spike": (*LEAVES, "kwh.graph", "kwh.bayes", "kwh.compress"),
    "energy": (*LEAVES, "kwh.graph", "kwh.bayes", "kwh.compress", "kwh.binary"),
}
CORE = tuple(ALLOWED)

# The file format left kwh.compress for kwh.format: nothing may remain at the old paths.
MOVED = {
    "kwh.compress.codec": "kwh.format.codec",
    "kwh.compress.bitpack": "kwh.format.bitpack",
    "kwh.compress.format_io": "kwh.format.io",
    "kwh.compress.format_modules": "kwh.format.modules",
    "kwh.compress.format_onnx": "kwh.format.onnx",
    "kwh.compress.format_schema": "kwh.format.schema",
    "kwh.compress.format_shapes": "kwh.format.shapes",
    "kwh.compress.format_tensors": "kwh.format.tensors",
}


def _is_module(name: str) -> bool:
    """``name`` (kwh.a.b) is a module or package under src/."""
    path = SRC.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``, a module of ``package``: relative imports
    resolved, ``from a import b`` counted as ``a.b`` when b is a module, and the string
    argument of ``importlib.import_module`` / ``__import__``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((node.lineno, full if _is_module(full) else base))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                out.append((node.lineno, arg.value))
    return out


def violations(core: str, package: str, source: str, where: str) -> list[str]:
    """'where:line: imports X' for every import of kwh the contract forbids ``core``."""
    allowed = (f"kwh.{core}", *ALLOWED[core])
    bad = []
    for line, name in imports(ast.parse(source), package):
        if name != "kwh" and not name.startswith("kwh."):
            continue  # torch, numpy, the standard library
        if not any(name == a or name.startswith(a + ".") for a in allowed):
            bad.append(f"{where}:{line}: imports {name}")
    return bad


def _core_files():
    for core in CORE:
        for path in sorted((KWH / core).rglob("*.py")):
            rel = path.relative_to(SRC).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            package = ".".join(parts if rel.name == "__init__" else parts[:-1])
            yield core, package, path


def test_core_packages_import_only_what_is_below_them():
    bad = []
    for core, package, path in _core_files():
        bad += violations(core, package, path.read_text(encoding="utf-8"),
                          str(path.relative_to(SRC.parent)))
    assert not bad, ("the core packages must not import a layer above them (allowed: "
                     + "; ".join(f"{c}: {', '.join(a)}" for c, a in ALLOWED.items())
                     + "):\n" + "\n".join(bad))


def test_the_sws_leaf_imports_only_torch_math_and_kwh_errors():
    path = KWH / "sws.py"
    found = {name for _, name in imports(ast.parse(path.read_text(encoding="utf-8")), "kwh")}
    roots = {n.split(".")[0] for n in found if not n.startswith("kwh")}
    assert {n for n in found if n.startswith("kwh")} == {"kwh.errors"}, found
    assert roots <= {"__future__", "math", "collections", "dataclasses", "torch"}, roots


def test_the_fixedpoint_leaf_imports_only_numpy_and_torch():
    path = KWH / "fixedpoint.py"
    found = {name for _, name in imports(ast.parse(path.read_text(encoding="utf-8")), "kwh")}
    assert not {n for n in found if n.startswith("kwh")}, found
    assert {n.split(".")[0] for n in found} <= {"__future__", "numpy", "torch"}, found


def test_the_contract_sees_every_kind_of_import():
    source = '''
import kwh
import kwh.train
from kwh import data
from kwh.format import codec
from ..app import load_model
from .sources import dense_reference
from . import counts
import importlib


def f():
    from kwh.cli.main import main
    importlib.import_module("kwh.report")
    from kwh.bayes import BayesLayer
    from kwh.models import build
'''
    bad = violations("energy", "kwh.energy", source, "x.py")
    assert [b.split(": imports ")[1] for b in bad] == [
        "kwh", "kwh.train", "kwh.data", "kwh.format.codec", "kwh.app", "kwh.cli.main",
        "kwh.report"], bad
    assert violations("bayes", "kwh.bayes", "from kwh.compress import evaluate\n", "y.py") \
        == ["y.py:1: imports kwh.compress"]


def test_core_packages_check_classes_not_their_names():
    """isinstance with the class, never ``type(m).__name__ == "BayesConv2d"``."""
    bad = []
    for _, _, path in _core_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            named = any(isinstance(s, ast.Attribute) and s.attr in ("__name__", "__qualname__")
                        for s in sides)
            strings = [s for s in sides if isinstance(s, ast.Constant) and isinstance(s.value, str)
                       or isinstance(s, (ast.Tuple, ast.List, ast.Set)) and s.elts
                       and all(isinstance(e, ast.Constant) for e in s.elts)]
            if named and strings:
                bad.append(f"{path.relative_to(SRC.parent)}:{node.lineno}")
    assert not bad, "class names compared as strings:\n" + "\n".join(bad)


@pytest.mark.parametrize("old,new", MOVED.items())
def test_the_file_format_lives_in_kwh_format(old, new):
    assert importlib.util.find_spec(old) is None, f"{old} still exists; it moved to {new}"
    assert importlib.util.find_spec(new) is not None
