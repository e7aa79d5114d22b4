"""Imports only go down: every module of ``brio`` imports its own layer or the ones below.

The layers are those of docs/architecture.md. Modules of one layer may import each other
within their own package; across packages of the same layer they may not (the mesh and the
HTTP API know nothing of each other: the root wires them). Imports inside functions count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BRIO = Path(__file__).resolve().parent.parent / "brio"

#: package (first part after ``brio.``) -> layer; lower layers know nothing of higher ones.
LAYERS: dict[str, int] = {
    "": 0,  # brio itself: __version__
    "core": 0,  # sans-io logic
    "_pb": 0,  # generated protobuf code
    "exc": 0,
    "config": 1,
    "aio": 1,  # the only module that touches trio-asyncio
    "logs": 2,
    "certs": 2,
    "store": 3,
    "agents": 3,
    "tasks": 4,  # supervisor, service, events
    "mesh": 5,
    "api": 5,
    "node": 6,  # the composition root
    "cli": 7,  # and brio.__main__, its entry point
}


def _package(module: str) -> str:
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 else ""
    return "cli" if package == "__main__" else package


def _module_name(path: Path, root: Path = BRIO) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every ``brio`` import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "brio"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "brio":
                continue
            if node.module == "brio":  # from brio import aio, __version__
                found += [(node.lineno, f"brio.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def upward_imports(root: Path = BRIO) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        importer = _module_name(path, root)
        own = _package(importer)
        if own == "_pb":
            continue  # generated
        for line, imported in _imports(path):
            other = _package(imported)
            if other not in LAYERS:
                other = ""  # brio.__version__ and the like
            if other == own:
                continue
            if LAYERS[other] >= LAYERS[own]:
                where = f"{path.relative_to(root.parent)}:{line}"
                problems.append(
                    f"{where}: {importer} (layer {LAYERS[own]}) imports {imported} "
                    f"(layer {LAYERS[other]})"
                )
    return problems


def test_every_package_has_a_layer() -> None:
    packages = {_package(_module_name(p)) for p in BRIO.rglob("*.py")}
    assert packages <= set(LAYERS), f"give these a layer: {sorted(packages - set(LAYERS))}"


def test_no_module_imports_upward_or_sideways() -> None:
    assert upward_imports() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from brio.api.app import create_app\n", "imports brio.api.app (layer 5)"),
        ("def f():\n    from brio.node import root\n", "imports brio.node (layer 6)"),
        ("import brio.cli.main\n", "imports brio.cli.main (layer 7)"),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path: Path, source: str, expected: str) -> None:
    fake = tmp_path / "brio"
    (fake / "mesh").mkdir(parents=True)
    (fake / "mesh" / "bad.py").write_text(source)
    problems = upward_imports(fake)
    assert len(problems) == 1
    assert "brio.mesh.bad (layer 5)" in problems[0]
    assert expected in problems[0]
