"""Each module imports only from lower layers (style.md §2), so data flows one way."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "inferenceguard"
LAYERS = {
    "errors": 0,
    "_io": 0,
    "stats": 0,
    "models": 1,
    "safety": 1,
    "critic": 1,
    "datasets": 1,
    "scorers": 2,
    "engine": 3,
    "strategies": 4,
    "guard": 5,
    "training": 6,
    "harness": 6,
    "recipes": 7,
    "report": 7,
    "server": 8,
    "cli": 8,
}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "inferenceguard" and len(parts) > 1 else None


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("__init__.py", "__main__.py"):
            continue
        yield rel.parts[0].removesuffix(".py"), path


@pytest.mark.parametrize("layer_name, path", list(_modules()), ids=lambda x: str(x).split("inferenceguard/")[-1])
def test_imports_only_from_lower_layers(layer_name, path):
    own = LAYERS[layer_name]
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            top = _top(name)
            if top is None or top == layer_name:
                continue
            assert top in LAYERS, f"{path.name} imports unknown module inferenceguard.{top}: give it a layer"
            assert LAYERS[top] <= own, f"{path} (layer {own}) imports inferenceguard.{top} (layer {LAYERS[top]})"


def test_nothing_imports_the_top_layer():
    for layer_name, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and layer_name not in ("server", "cli"):
                assert _top(node.module) not in ("server", "cli"), f"{path} imports {node.module}"
