"""The Slicer extension's files: CMake lists what exists, s4ext and catalog JSON are complete, the
.ui is valid and holds every widget the module code uses, the parameter node matches the .ui."""

from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SCORERefine"
MODULE_PY = MODULE_DIR / "SCORERefine.py"
UI = MODULE_DIR / "Resources" / "UI" / "SCORERefine.ui"
ICON = MODULE_DIR / "Resources" / "Icons" / "SCORERefine.png"


def _cmake_set(text: str, name: str) -> list[str]:
    m = re.search(rf"set\(\s*{name}\s+(.*?)\)", text, re.S)
    assert m, f"set({name} ...) not found"
    return [t for t in re.findall(r'"[^"]*"|\S+', m.group(1))]


def _cmake_value(text: str, name: str) -> str:
    m = re.search(rf'set\(\s*{name}\s+"([^"]*)"\s*\)', text)
    assert m, f'set({name} "...") not found'
    return m.group(1)


# --------------------------------------------------------------------------- CMake

def test_top_level_cmake_has_extension_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert _cmake_value(text, f"EXTENSION_{key}").strip(), f"EXTENSION_{key} is empty"
    assert _cmake_value(text, "EXTENSION_CATEGORY") == "Segmentation"
    assert "PyTorch" in _cmake_value(text, "EXTENSION_DEPENDS").split()
    assert _cmake_value(text, "EXTENSION_ICONURL").endswith("SCORERefine/Resources/Icons/SCORERefine.png")
    assert re.search(r"add_subdirectory\(\s*SCORERefine\s*\)", text)
    assert "find_package(Slicer REQUIRED)" in text and "Slicer_EXTENSION_CPACK" in text


def test_module_cmake_lists_files_that_exist_and_covers_the_engine():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = [s.replace("${MODULE_NAME}", "SCORERefine") for s in _cmake_set(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [s.replace("${MODULE_NAME}", "SCORERefine") for s in _cmake_set(text, "MODULE_PYTHON_RESOURCES")]
    assert scripts == ["SCORERefine.py"]
    for rel in scripts + resources:
        assert (MODULE_DIR / rel).is_file(), f"CMake lists {rel}, which does not exist"
    on_disk_resources = sorted(str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*")
                               if p.is_file())
    assert sorted(resources) == on_disk_resources, "Resources/ and the CMake resource list differ"
    m = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S)
    assert m and "WITH_GENERIC_TESTS" in m.group(1) and "NAME ${MODULE_NAME}" in m.group(1)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", text)
    # the engine: a recursive glob of SCORERefineLib/*.py relative to the repository root
    glob = re.search(r"file\(GLOB_RECURSE\s+SCORERefineLib_PYTHON_SCRIPTS(.*?)\)", text, re.S)
    assert glob and "${SCORERefineLib_SOURCE_DIR}/SCORERefineLib/*.py" in glob.group(1)
    assert re.search(r"set\(SCORERefineLib_SOURCE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}/\.\.\)", text)
    assert "SOURCE_DIR ${SCORERefineLib_SOURCE_DIR}" in text
    # what that glob copies is an importable package: every folder with .py has __init__.py
    lib = REPO / "SCORERefineLib"
    py = [p for p in lib.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(py) > 10
    for folder in {p.parent for p in py}:
        assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"
    for sub in ("refiner", "commands"):
        assert (lib / sub / "__init__.py").exists()
    if "add_subdirectory(Testing)" in text:
        assert (MODULE_DIR / "Testing" / "CMakeLists.txt").exists()


# --------------------------------------------------------------------------- s4ext and catalog JSON

S4EXT_FIELDS = ("scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                "category", "iconurl", "status", "description", "screenshoturls", "enabled")


def _s4ext() -> dict:
    out = {}
    for line in (REPO / "SCORERefine.s4ext").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out[key] = value.strip()
    return out


def test_s4ext_has_every_field_filled():
    d = _s4ext()
    missing = [k for k in S4EXT_FIELDS if not d.get(k)]
    assert not missing, f"s4ext fields missing or empty: {missing}"
    assert d["scm"] == "git" and d["scmrevision"] == "main" and d["category"] == "Segmentation"
    assert d["enabled"] in ("0", "1") and d["scmurl"].startswith("https://")
    assert "PyTorch" in d["depends"].split()
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert d["depends"].split() == _cmake_value(cmake, "EXTENSION_DEPENDS").split()
    assert d["iconurl"] == _cmake_value(cmake, "EXTENSION_ICONURL")
    assert d["homepage"] == _cmake_value(cmake, "EXTENSION_HOMEPAGE")


CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "dicom_support_rule", "build_subdirectory", "enabled", "tier"}


def test_catalog_json_follows_the_extensions_index_schema():
    d = json.loads((REPO / "SCORERefine.json").read_text())
    for key in ("$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"):
        assert key in d, f"SCORERefine.json lacks {key}"
    assert set(d) <= CATALOG_KEYS, f"keys the schema does not allow: {set(d) - CATALOG_KEYS}"
    assert re.search(r"slicer-extension-catalog-entry-schema-v1\.\d+\.\d+\.json#?$", d["$schema"])
    assert isinstance(d["tier"], int) and 1 <= d["tier"] <= 5
    assert isinstance(d["build_dependencies"], list) and "PyTorch" in d["build_dependencies"]
    s4 = _s4ext()
    assert d["category"] == s4["category"] and d["scm_revision"] == s4["scmrevision"]
    assert d["scm_url"] == s4["scmurl"] and d["build_dependencies"] == s4["depends"].split()


# --------------------------------------------------------------------------- .ui and module code

def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI).getroot()
    assert root.tag == "ui"
    return {w.get("name"): w for w in root.iter("widget")}


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_PY.read_text(encoding="utf-8"))


def test_ui_is_valid_and_holds_every_widget_the_module_uses():
    widgets = _ui_widgets()
    src = MODULE_PY.read_text(encoding="utf-8")
    used = set(re.findall(r"\b(?:self\.ui|u)\.([A-Za-z_]\w*)", src))
    used |= {f"score{i}Button" for i in range(1, 6)} if 'f"score{score}Button"' in src else set()
    assert used, "found no widget reference in SCORERefine.py"
    missing = sorted(used - set(widgets))
    assert not missing, f"SCORERefine.py uses widgets missing from the .ui: {missing}"
    names = [w.get("name") for w in ET.parse(UI).getroot().iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names in the .ui"


def test_parameter_node_fields_match_the_ui_bindings():
    fields = set()
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.ClassDef) and node.name == "SCORERefineParameterNode":
            assert any(getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list)
            fields = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    assert fields, "SCORERefineParameterNode not found"
    bound = {}
    for name, w in _ui_widgets().items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                bound[name] = p.find("string").text
    assert bound, "no widget is bound with SlicerParameterName"
    unknown = {w: f for w, f in bound.items() if f not in fields}
    assert not unknown, f".ui binds parameters the parameter node lacks: {unknown}"
    for needed in ("inputVolume", "regionCount", "bandWidthMm", "trainSteps", "modelPath", "datasetFolder"):
        assert needed in bound.values()


def test_module_defines_the_scripted_module_classes_and_metadata():
    tree = _module_tree()
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    bases = {name: [getattr(b, "id", "") for b in c.bases] for name, c in classes.items()}
    assert "ScriptedLoadableModule" in bases["SCORERefine"]
    assert "ScriptedLoadableModuleWidget" in bases["SCORERefineWidget"]
    assert "ScriptedLoadableModuleLogic" in bases["SCORERefineLogic"]
    assert "ScriptedLoadableModuleTest" in bases["SCORERefineTest"]
    src = MODULE_PY.read_text(encoding="utf-8")
    for attr in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert f"self.parent.{attr} =" in src
    assert '"Segmentation"' in src and 'loadUI(self.resourcePath("UI/SCORERefine.ui"))' in src
    assert ".connectGui(self.ui)" in src
    test_methods = {f.name for f in classes["SCORERefineTest"].body if isinstance(f, ast.FunctionDef)}
    assert {"runTest", "test_full_workflow"} <= test_methods


def test_icon_is_a_128_pixel_png():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


def test_module_requirements_parse_and_leave_torch_to_the_pytorch_extension():
    lines = [ln.strip() for ln in (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    names = [re.split(r"[<>=!~\[; ]", ln)[0].lower() for ln in lines]
    assert "monai" in names and "torch" not in names
    try:
        from packaging.requirements import Requirement
    except ImportError:
        pytest.skip("packaging not installed")
    for ln in lines:
        Requirement(ln)


# --------------------------------------------------------------------------- the module, headless

def test_module_metadata_and_logic_with_slicers_real_python_layer():
    """SCORERefine.py imported with Slicer 5.10's real ScriptedLoadableModule, parameterNodeWrapper
    and i18n (Testing/slicer_harness.py); its self-test runs in Testing/test_panel.py."""
    import types

    import slicer_harness as H
    if H.missing_reason():
        pytest.skip(H.missing_reason())
    H.activate("5.10")
    module = H.load_module()
    meta = module.SCORERefine(types.SimpleNamespace(path=str(MODULE_PY)))
    assert meta.parent.categories == ["Segmentation"] and "1-5" in meta.parent.helpText
    assert meta.parent.contributors == ["SCORERefine team"]
    logic = module.SCORERefineLogic()
    assert isinstance(logic.missing_dependencies(), list)
    assert logic.describe_device("cpu").startswith("CPU")
    with pytest.raises(module.SCORERefineError, match="not installed while testing"):
        logic.install_dependencies(confirm=False)           # nothing is ever installed by tests


def test_defect8_catalog_files_are_real():
    """Apache-2.0 licence at the root, screenshots that exist in the repo, a real contributors
    entry, and only PyTorch forced on install (TotalSegmentator is optional)."""
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert _cmake_value(cmake, "EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert _cmake_value(cmake, "EXTENSION_CONTRIBUTORS") == "SCORERefine team"
    s4 = (REPO / "SCORERefine.s4ext").read_text()
    for url in _cmake_value(cmake, "EXTENSION_SCREENSHOTURLS").split():
        path = REPO / url.split("/main/", 1)[1]
        assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url
        assert url in s4
    assert "TotalSegmentator" not in json.loads((REPO / "SCORERefine.json").read_text())["build_dependencies"]
