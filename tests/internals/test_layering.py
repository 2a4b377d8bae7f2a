"""Each module imports only from strictly lower layers (style.md §2; docs/architecture.md), so data flows one way.

The rule, as this test enforces it:
- A module may import its own top-level package (``engine.search`` -> ``engine.kv``) and any module of a
  strictly lower layer. Modules of the *same* layer never import each other: they are siblings that a
  higher layer combines (``training`` reads ``harness``, so it sits above it; ``cli`` starts ``server``, so
  it sits above it). A new same-layer import means the layers must be redrawn here and in the doc.
- Every spelling of an import counts: ``import inferenceguard.x``, ``from inferenceguard.x import y``,
  ``from inferenceguard import x`` (a module) and relative imports, at any depth (imports inside functions too).
- Inside the package nothing imports the package root (``from inferenceguard import Guard``): the root only
  re-exports the public surface for users, and importing it from within would hide the real dependency.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "src" / "inferenceguard"
LAYERS = {
    "errors": 0,
    "stats": 0,
    "_io": 1,
    "models": 1,
    "safety": 1,
    "critic": 2,
    "datasets": 2,
    "scorers": 2,
    "engine": 3,
    "strategies": 4,
    "guard": 5,
    "harness": 6,
    "training": 7,
    "recipes": 7,
    "report": 7,
    "server": 8,
    "cli": 9,
}
ROOT = "<package root>"


def _submodules() -> set[str]:
    """Top-level names under inferenceguard/ that are modules or packages."""
    return {p.stem for p in PKG.glob("*.py") if p.name != "__init__.py"} | {
        p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    }


def _targets(node: ast.AST, path: Path) -> list[str]:
    """The top-level inferenceguard modules an import node reads (ROOT for a name taken from the root)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against this file's package
            here = list(path.relative_to(PKG.parent).with_suffix("").parts)[: -node.level]
            base = ".".join([*here, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        if base == "inferenceguard":  # from inferenceguard import x: a submodule, or a name of the root
            subs = _submodules()
            return [a.name if a.name in subs else ROOT for a in node.names]
        names = [base]
    else:
        return []
    out = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "inferenceguard":
            out.append(parts[1] if len(parts) > 1 else ROOT)
    return out


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("__init__.py", "__main__.py"):
            continue
        yield rel.parts[0].removesuffix(".py"), path


def _violations(layer_name: str, path: Path, source: str) -> list[str]:
    own = LAYERS[layer_name]
    found = []
    for node in ast.walk(ast.parse(source)):
        for top in _targets(node, path):
            if top == layer_name:
                continue
            if top == ROOT:
                found.append(f"{path.name} imports the package root: import the name from its own module")
            elif top not in LAYERS:
                found.append(f"{path.name} imports unknown module inferenceguard.{top}: give it a layer")
            elif LAYERS[top] >= own:
                found.append(f"{path} (layer {own}) imports inferenceguard.{top} (layer {LAYERS[top]})")
    return found


@pytest.mark.parametrize("layer_name, path", list(_modules()), ids=lambda x: str(x).split("inferenceguard/")[-1])
def test_imports_only_from_lower_layers(layer_name, path):
    assert _violations(layer_name, path, path.read_text()) == []


def test_every_module_has_a_layer():
    assert _submodules() - {"__main__"} == set(LAYERS)


@pytest.mark.parametrize(
    "source, caught",
    [
        ("from inferenceguard import guard", True),  # a module named through the root, upward
        ("from inferenceguard import Guard", True),  # a name of the root
        ("import inferenceguard", True),
        ("from inferenceguard.server import app", True),
        ("from inferenceguard.scorers import base", True),  # same layer (2): siblings do not import each other
        ("from ..harness import run", True),  # relative, upward
        ("def f():\n    from inferenceguard.cli import app", True),  # inside a function
        ("from inferenceguard import safety", False),  # a lower layer through the root's namespace
        ("from inferenceguard.models.loading import LM", False),
        ("from . import base", False),  # its own package
    ],
)
def test_the_check_sees_every_spelling(source, caught):
    """The checker itself: each way of writing an upward, sideways or root import is reported (as if written
    in critic.py's layer, for a module inside critic/)."""
    fake = PKG / "critic" / "thing.py"
    assert bool(_violations("critic", fake, source)) is caught


def test_the_package_root_reexports_the_public_surface():
    """``from inferenceguard import X`` gives the very object of X's own module, loaded on first use."""
    import inferenceguard

    for name in inferenceguard.__all__:
        obj = getattr(inferenceguard, name)
        home = importlib.import_module(getattr(inferenceguard, "_LAZY", {}).get(name, "inferenceguard.errors"))
        assert getattr(home, name) is obj, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        inferenceguard.nope  # noqa: B018
