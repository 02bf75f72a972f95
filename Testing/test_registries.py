"""One registry per extension point, named in the torch-free catalog; the library never calls its
own command line; the refiner API imports without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "SCORERefineLib"
CLI_SIDE = {LIB / "cli.py"} | set((LIB / "commands").rglob("*.py"))


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """Absolute dotted module of an ``ImportFrom`` in ``path`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    pkg = list(path.relative_to(REPO).with_suffix("").parts)[:-1]
    base = pkg[:len(pkg) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def cli_imports(path: Path) -> list[int]:
    """Lines of ``path`` that import ``SCORERefineLib.cli`` or ``SCORERefineLib.commands``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(path, node)
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        if any(n in ("SCORERefineLib.cli", "SCORERefineLib.commands")
               or n.startswith(("SCORERefineLib.cli.", "SCORERefineLib.commands.")) for n in names):
            bad.append(node.lineno)
    return bad


def test_no_library_module_imports_the_cli():
    offenders = {str(p.relative_to(REPO)): cli_imports(p)
                 for p in sorted(LIB.rglob("*.py")) if p not in CLI_SIDE and "__pycache__" not in p.parts}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_cli_check_can_fail(tmp_path):
    pkg = tmp_path / "SCORERefineLib" / "refiner"
    pkg.mkdir(parents=True)
    for text in ("from ..cli import main\n", "from SCORERefineLib import cli\n",
                 "import SCORERefineLib.commands.train\n", "from .. import commands\n"):
        f = pkg / "x.py"
        f.write_text(text)
        global REPO
        old, REPO = REPO, tmp_path
        try:
            assert cli_imports(f) == [1], text
        finally:
            REPO = old


def test_catalog_names_equal_the_registries():
    from SCORERefineLib import catalog
    from SCORERefineLib.refiner.modes import MODES
    from SCORERefineLib.refiners import BUILTIN

    assert catalog.names(catalog.TRAINING_MODES) == list(MODES)
    for name, cls in MODES.items():
        assert cls.name == name
        assert set(cls.requires) == set(catalog.TRAINING_MODES[name].requires)
    assert sorted(catalog.BUILTIN_REFINERS) == sorted(BUILTIN)


def test_cli_and_benchmark_read_the_catalog():
    from SCORERefineLib import catalog
    from SCORERefineLib.benchmark import ROW_TRAINING
    from SCORERefineLib.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    mode_action = next(a for a in train._actions if a.dest == "mode")
    assert list(mode_action.choices) == catalog.names(catalog.TRAINING_MODES)
    assert {spec.mode for spec in ROW_TRAINING.values()} <= set(catalog.TRAINING_MODES)


def test_refiners_import_without_torch():
    code = ("import sys, SCORERefineLib.refiners as r, SCORERefineLib.catalog, "
            "SCORERefineLib.refiner.targets; assert 'torch' not in sys.modules, 'torch imported'; "
            "import numpy as np; from SCORERefineLib.imageio import Geometry, Volume; "
            "m = np.zeros((6, 6, 6), np.uint8); m[2:4, 2:4, 2:4] = 1; v = Volume(m, Geometry.isotropic(m.shape)); "
            "assert (r.make_refiner('identity')(v, v).array == m).all(); "
            "assert r.make_refiner('classical')(None, v).array.sum() == 8; "
            "assert isinstance(r.make_refiner('classical'), r.Refiner); "
            "assert 'torch' not in sys.modules")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr


def test_make_refiner_rejects_foreign_settings():
    from SCORERefineLib.errors import InputError
    from SCORERefineLib.refiners import make_refiner

    with pytest.raises(InputError, match="identity"):
        make_refiner("identity", closing_mm=3)
