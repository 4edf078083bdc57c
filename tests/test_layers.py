"""The package's layers point one way: a module imports only from its own layer or lower ones.

cli -> pipeline -> train / export / report -> runs -> checkpoint -> eval -> data -> models -> base (errors,
resources, fileio, console, config, features). The feature schema and id conventions
(``features.py``) sit in the base, so the model and the data layer both read them without importing
each other; the data layer never imports the model, nor torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "purchasepred"

LAYERS = {
    "purchasepred": 0, "errors": 0, "resources": 0, "fileio": 0, "console": 0, "config": 0, "features": 0,
    "models": 1, "data": 2, "eval": 3, "checkpoint": 4, "runs": 4, "train": 4, "export": 4, "report": 4,
    "pipeline": 5, "cli": 6, "__main__": 6,
}


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else parts[0]
    assert key in LAYERS, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return LAYERS[key]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every purchasepred module imported anywhere in the file (also inside functions)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("purchasepred")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("purchasepred"):
            if node.module == "purchasepred":  # from purchasepred import console
                found += [(f"purchasepred.{a.name}", node.lineno) for a in node.names
                          if a.name.split(".")[0] in LAYERS]
            else:
                found.append((node.module, node.lineno))
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = _module_name(path)
        for imported, line in _imports(path):
            if _layer(imported) > _layer(mod):
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {mod} imports {imported}")
    assert upward == []


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text("from purchasepred.train.trainer import Trainer\n")
    assert [(m, _layer(m)) for m, _ in _imports(bad)] == [("purchasepred.train.trainer", 4)]
    assert _layer("purchasepred.data.prepare") < _layer("purchasepred.train.trainer")


@pytest.mark.parametrize("module", ["purchasepred.data.prepare", "purchasepred.data.synth", "purchasepred.data.tensors",
                                    "purchasepred.config", "purchasepred.fileio", "purchasepred.features"])
def test_the_data_layer_loads_no_torch(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('purchasepred.models')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
