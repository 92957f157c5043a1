"""Imports point down the layers: no module imports from a layer above its own (function-level imports count).

A new module must be given a floor here; the test fails for a module it cannot place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "coinseg"

# Longest prefix wins. Floors, bottom up: plumbing and contracts; data, pure metrics and figures; networks;
# what the method is (and the attribution baselines built on it); trainers and the predictor; commands.
FLOORS = {
    "coinseg": 0,
    "coinseg.errors": 0,
    "coinseg.config": 0,
    "coinseg.registry": 0,
    "coinseg.io": 0,
    "coinseg.runtime": 0,
    "coinseg.data": 1,
    "coinseg.losses": 1,
    "coinseg.evaluation": 1,  # the package's __init__; its modules are placed one by one
    "coinseg.evaluation.metrics": 1,
    "coinseg.evaluation.cases": 1,
    "coinseg.evaluation.fid": 1,
    "coinseg.reporting": 1,
    "coinseg.models": 2,
    "coinseg.method": 3,
    "coinseg.attribution": 3,
    "coinseg.training": 4,
    "coinseg.predictor": 4,
    "coinseg.inference": 5,
    "coinseg.evaluation.runner": 5,
    "coinseg.export": 5,
    "coinseg.demo": 6,
    "coinseg.cli": 7,
    "coinseg.__main__": 7,
}


def floor_of(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS and (prefix != "coinseg" or module == "coinseg"):
            return FLOORS[prefix]
    raise KeyError(module)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def coinseg_imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coinseg"):
            # `from coinseg.pkg import mod` imports the module coinseg.pkg.mod; `from coinseg.x import y`, x
            folder = PACKAGE.parent.joinpath(*node.module.split("."))
            submodules = [a.name for a in node.names if (folder / f"{a.name}.py").is_file()]
            names += [f"{node.module}.{s}" for s in submodules] or [node.module]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("coinseg")]
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path: Path) -> None:
    importer = module_name(path)
    own = floor_of(importer)
    upward = [name for name in coinseg_imports(path) if floor_of(name) > own]
    assert not upward, f"{importer} (floor {own}) imports from above: {upward}"


def test_floor_of_places_known_modules() -> None:
    assert floor_of("coinseg.evaluation.runner") == 5
    assert floor_of("coinseg.evaluation.metrics") == 1
    assert floor_of("coinseg.training.gan") == 4
    with pytest.raises(KeyError):
        floor_of("coinseg.unplaced")
