"""The layers the tree shows, checked: who may import whom, and functions that fit a screen.

Why a test: the layering is the map newcomers read (docs/architecture.md); one stray import
from the domain into an adapter, or a 200-line function, quietly redraws it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "etl_engine"
TOOLS = ROOT / "tools" / "etl_devtools"
MAX_LINES = 60

# layer -> the etl_engine layers it may import (besides itself and the shared kernel:
# etl_engine.settings, etl_engine.errors and the package's __version__).
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "observability": set(),
    "adapters": {"domain", "observability"},
    "runtime": {"adapters", "domain", "observability"},
    "ops": {"adapters", "domain", "observability", "runtime"},
}
KERNEL = {"etl_engine", "etl_engine.settings", "etl_engine.errors"}


def _modules(base: Path) -> list[Path]:
    return sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else "kernel"


@pytest.mark.parametrize("path", _modules(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    layer = _layer(path)
    allowed = {layer} | ALLOWED.get(layer, set())
    for name in sorted(_imports(path)):
        assert not name.startswith("etl_devtools"), f"{name}: development tooling at run time"
        if not name.startswith("etl_engine.") or name in KERNEL:
            continue
        target = name.split(".")[1]
        if target in ("settings", "errors", "__version__"):
            continue
        if layer == "kernel":
            pytest.fail(f"{path.name} imports {name}: the kernel imports no layer")
        assert target in allowed, f"{layer} imports {name} (allowed: {sorted(allowed)})"


@pytest.mark.parametrize("path", _modules(PACKAGE) + _modules(TOOLS),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_fit_a_screen(path: Path) -> None:
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_no_test_hooks_in_the_package() -> None:
    """Fault injection and waits are installed from tests/, never switched on by a setting."""
    for path in _modules(PACKAGE):
        text = path.read_text()
        assert "FAULT" not in text and "fault_point" not in text, path  # grep -r FAULT src/
        assert "._processes" not in text, f"{path}: private executor state"


def test_a_function_over_the_limit_is_caught(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    long_file = tmp_path / "long.py"
    long_file.write_text(f"def f() -> None:\n{body}\n")
    with pytest.raises(AssertionError, match="over 60 lines"):
        test_functions_fit_a_screen(long_file)
