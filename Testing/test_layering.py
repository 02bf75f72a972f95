"""Layering rules of architecture.md, checked on the source (ast): the engine never imports Qt or
CTK, only the SCORERefineLib/mrml/ package imports slicer (and vtk), and the session/job/TotalSegmentator modules stay
importable without Slicer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "SCORERefineLib"
GUI = {"qt", "ctk", "PythonQt", "PyQt5", "PyQt6", "PySide2", "PySide6", "qSlicerBaseQTCorePythonQt"}
SLICER_ONLY = {"slicer", "vtk", "vtkmodules", "mrml", "MRMLCore", "slicer_core"}
MRML = LIB / "mrml"


def imported_roots(path: Path) -> dict[str, int]:
    """Top-level package of every import anywhere in the file (functions included) -> line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.setdefault(alias.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.setdefault(node.module.split(".")[0], node.lineno)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.setdefault(str(node.args[0].value).split(".")[0], node.lineno)
    return out


ENGINE_FILES = sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_engine_has_files():
    names = {p.name for p in ENGINE_FILES}
    assert {"session.py", "conversion.py", "jobs.py", "training_job.py", "totalseg.py"} <= names


@pytest.mark.parametrize("path", ENGINE_FILES, ids=lambda p: str(p.relative_to(LIB)))
def test_no_qt_or_ctk_and_slicer_only_in_the_bridge(path):
    roots = imported_roots(path)
    gui = {m: line for m, line in roots.items() if m in GUI}
    assert not gui, f"{path.relative_to(REPO)} imports Qt/CTK {gui}; the engine must stay Qt-free"
    if MRML not in path.parents:
        bad = {m: line for m, line in roots.items() if m in SLICER_ONLY}
        assert not bad, (f"{path.relative_to(REPO)} imports {bad}; only SCORERefineLib/mrml/ "
                         f"may import slicer/vtk")


def test_the_mrml_package_really_is_the_one_importing_slicer():
    assert "slicer" in imported_roots(MRML / "conversion.py")
    assert not (LIB / "mrml_bridge.py").exists()


def test_the_checker_catches_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import qt\n    from slicer.util import getNode\n")
    assert {"qt", "slicer"} <= set(imported_roots(bad))


def test_engine_modules_import_without_slicer_qt_or_vtk():
    """A fresh interpreter where importing slicer, qt, ctk or vtk fails still imports the
    session, the job, the TotalSegmentator runner and the device info."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('slicer', 'qt', 'ctk', 'vtk', 'vtkmodules'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import SCORERefineLib.session, SCORERefineLib.training_job, SCORERefineLib.totalseg\n"
        "import SCORERefineLib.device_info, SCORERefineLib.feedback, SCORERefineLib.regions\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_the_slicer_module_does_not_hold_engine_logic():
    """The widget file delegates: it never touches numpy arrays or writes files itself."""
    module = REPO / "SCORERefine" / "SCORERefine.py"
    roots = imported_roots(module)
    assert "SCORERefineLib" in roots
    src = module.read_text(encoding="utf-8")
    for forbidden in ("write_volume(", "save_feedback(", "sitk.", "subprocess.", "os.killpg"):
        assert forbidden not in src, f"SCORERefine.py calls {forbidden} itself; move it to SCORERefineLib"
