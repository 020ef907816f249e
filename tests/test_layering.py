"""The import order the README's layout states, checked on the source: a module may import
its own layer or a lower one, never a higher one (``bench → pipeline → models → hardware``,
and inside ``hardware/``: ``spec``/``errors``/``kinds`` ← ``ir`` ← ``fixed_point`` ←
``simulator`` ← ``formats`` ← ``analysis`` ← ``runtime``). Imports inside functions count."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: lowest first; a module's layer is the longest prefix of its dotted name listed here
LAYERS = [
    ("hardware.spec", "hardware.errors", "hardware.kinds"),
    ("hardware.ir",),
    ("hardware.fixed_point",),
    ("hardware.simulator",),
    ("hardware.formats",),
    ("hardware.analysis",),
    ("hardware.runtime",),
    ("models",),
    ("pipeline",),
]


def layer_of(module: str) -> int | None:
    if module == "hardware":  # the package's own __init__, a docstring
        return 0
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file of module ``name``, relative imports
    resolved."""
    package = name.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # ``from hardware import ir`` imports the sub-module hardware.ir
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


SOURCES = sorted(p for folder in ("hardware", "models", "pipeline")
                 for p in (REPO / folder).rglob("*.py"))


def upward_imports(path: Path, name: str) -> list[str]:
    own = layer_of(name)
    return [f"line {line}: {module}" for line, module in imported_modules(path, name)
            if (rank := layer_of(module)) is not None and rank > own]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_point_downward(path):
    upward = upward_imports(path, module_name(path))
    assert not upward, f"{module_name(path)} imports a higher layer: {upward}"


def test_every_source_module_has_a_layer():
    assert SOURCES and all(layer_of(module_name(p)) is not None for p in SOURCES)


def test_an_upward_import_is_caught(tmp_path):
    source = tmp_path / "validate.py"
    source.write_text("from hardware import ir\n"
                      "def f():\n    from ..runtime.runner import run_lava\n")
    assert upward_imports(source, "hardware.ir.validate") == [
        "line 3: hardware.runtime.runner.run_lava"]
