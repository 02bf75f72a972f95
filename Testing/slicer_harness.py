"""Build the SCORERefine panel outside Slicer with Slicer's own Python layer and a real Qt.

What is real here:

- Qt: PySide6 (``QT_QPA_PLATFORM=offscreen``), the ``.ui`` loaded by Slicer's real
  ``slicer.util.loadUI`` through PySide6's ``QUiLoader``;
- MRML: the ``slicer-core`` wheel (``slicer.vtkMRMLScene`` and the segmentations logic);
- Slicer's Python layer: ``parameterNodeWrapper``, ``ScriptedLoadableModule``, ``util`` and
  ``i18n`` of Slicer 5.8 or 5.10, unmodified, from ``../shared/slicer-python/<version>/``.

What is a stand-in (only the C++ widgets and application objects that exist solely inside
Slicer): ``qt`` (a module exposing PySide6 with PythonQt's conventions: Qt properties read and
written as attributes, ``name`` = objectName), ``ctk`` widgets, ``slicer.qMRML*`` widgets,
``slicer.app`` and the module manager. The stand-ins behave like the real ones where the panel
depends on it: the segment selector selects and announces its first segment when its node is
set, combo boxes emit only on change, node combo boxes follow the scene.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "slicer-python"
VERSIONS = ("5.8", "5.10")
_SUBMODULES = ("slicer.util", "slicer.i18n", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper")


def missing_reason() -> str:
    if not (SHARED / "5.10" / "slicer" / "util.py").exists():
        return f"Slicer's Python sources not found at {SHARED} (../shared/slicer-python beside the repo)"
    try:
        import PySide6  # noqa: F401
    except ImportError:
        return "PySide6 is not installed (pip install -r requirements.txt)"
    try:
        import slicer  # noqa: F401
        slicer.vtkMRMLScene  # noqa: B018
    except (ImportError, AttributeError):
        return "slicer-core is not installed"
    return ""


# --------------------------------------------------------------------------- qt (PythonQt style)

def _make_qt_module():
    from PySide6 import QtCore, QtGui, QtWidgets
    from PySide6.QtUiTools import QUiLoader

    qt = types.ModuleType("qt")
    for mod in (QtCore, QtGui, QtWidgets):
        for k in dir(mod):
            if not k.startswith("_"):
                setattr(qt, k, getattr(mod, k))
    qt.Qt = QtCore.Qt
    qt.Signal = QtCore.Signal

    cache: dict = {}

    def pythonqt(base):
        """A subclass of ``base`` whose Qt properties are attributes (as in PythonQt)."""
        if base in cache:
            return cache[base]
        ns: dict = {}
        meta = base.staticMetaObject
        for i in range(meta.propertyCount()):
            name = meta.property(i).name()
            if name in ("objectName",):
                continue
            ns[name] = property(lambda self, n=name: QtCore.QObject.property(self, n),
                                lambda self, v, n=name: QtCore.QObject.setProperty(self, n, v))
        ns["name"] = property(lambda self: self.objectName(), lambda self, v: self.setObjectName(v))
        cls = type(base.__name__, (base,), ns)
        cache[base] = cls
        return cls

    for k in ("QWidget", "QLabel", "QPushButton", "QCheckBox", "QComboBox", "QLineEdit", "QSpinBox",
              "QDoubleSpinBox", "QTableWidget", "QProgressBar", "QTextEdit", "QSlider", "QToolButton",
              "QGroupBox", "QFrame", "QRadioButton", "QMainWindow", "QTimer", "QMenu"):
        setattr(qt, k, pythonqt(getattr(QtWidgets, k, None) or getattr(QtCore, k)))
    qt._pythonqt = pythonqt

    class Loader(QUiLoader):
        def createWidget(self, className, parent=None, name=""):
            factory = _CUSTOM.get(className) or getattr(qt, className, None)
            if factory is not None and isinstance(factory, type) and issubclass(factory, QtWidgets.QWidget):
                w = factory(parent)
                w.setObjectName(name)
                return w
            return super().createWidget(className, parent, name)

    qt.QUiLoader = Loader
    return qt


_CUSTOM: dict = {}


def _make_ctk_and_mrml_widgets(qt, slicer):
    from PySide6 import QtCore

    pq = qt._pythonqt
    ctk = types.ModuleType("ctk")

    class ctkCollapsibleButton(pq(qt.QGroupBox.__mro__[1])):  # a titled box holding a layout
        def __init__(self, parent=None):
            super().__init__(parent)
            self.collapsed = False

        def event(self, e):  # the .ui sets "text" (ctk's title property): show it as the title
            if e.type() == QtCore.QEvent.DynamicPropertyChange and bytes(e.propertyName()) == b"text":
                self.setTitle(str(QtCore.QObject.property(self, "text")))
            return super().event(e)

    class ctkDirectoryButton(pq(qt.QPushButton.__mro__[1])):
        directoryChanged = QtCore.Signal(str)

        def __init__(self, parent=None):
            super().__init__(parent)
            self._dir = ""

        @property
        def directory(self):
            return self._dir

        @directory.setter
        def directory(self, value):
            if str(value) != self._dir:
                self._dir = str(value)
                self.directoryChanged.emit(self._dir)

    class ctkPathLineEdit(pq(qt.QLineEdit.__mro__[1])):
        currentPathChanged = QtCore.Signal(str)

        def __init__(self, parent=None):
            super().__init__(parent)
            self.textChanged.connect(self.currentPathChanged.emit)

        @property
        def currentPath(self):
            return self.text

        @currentPath.setter
        def currentPath(self, value):
            self.setText(str(value))

    for name, cls in (("ctkCollapsibleButton", ctkCollapsibleButton), ("ctkDirectoryButton", ctkDirectoryButton),
                      ("ctkPathLineEdit", ctkPathLineEdit)):
        setattr(ctk, name, cls)
        _CUSTOM[name] = cls
    # referenced by the connectors' type checks only: distinct classes nobody instantiates here
    for name in ("ctkCheckBox", "ctkCheckablePushButton", "ctkComboBox", "ctkSliderWidget", "ctkDoubleSlider",
                 "ctkDoubleSpinBox", "ctkRangeWidget", "ctkDoubleRangeSlider", "ctkColorPickerButton",
                 "ctkSearchBox", "ctkMenuButton"):
        setattr(ctk, name, type(name, (qt.QWidget,), {}))
    ctk.ctkWidgetsUtils = types.SimpleNamespace()

    class qMRMLWidget(qt.QWidget):
        def __init__(self, parent=None):
            super().__init__(parent)
            self._scene = None

        def mrmlScene(self):
            return self._scene

        def setMRMLScene(self, scene):
            self._scene = scene
            for child in self.findChildren(qt.QWidget):   # the .ui's mrmlSceneChanged connections
                if child is not self and hasattr(child, "setMRMLScene") and not isinstance(child, qMRMLWidget):
                    child.setMRMLScene(scene)

    class qMRMLNodeComboBox(qt.QWidget):
        """Holds a current node of ``nodeTypes``; emits currentNodeChanged only on change."""
        currentNodeChanged = QtCore.Signal(object)

        def __init__(self, parent=None):
            super().__init__(parent)
            self._scene, self._node, self.nodeTypes = None, None, []
            self.noneEnabled = True

        def setMRMLScene(self, scene):
            self._scene = scene

        def currentNode(self):
            return self._node

        def setCurrentNode(self, node):
            if node is not self._node:
                self._node = node
                self.currentNodeChanged.emit(node)

        def currentNodeID(self):
            return self._node.GetID() if self._node is not None else ""

    class qMRMLSegmentSelectorWidget(qt.QWidget):
        """Like the real one: setting a node selects (and announces) its first segment."""
        currentNodeChanged = QtCore.Signal(object)
        currentSegmentChanged = QtCore.Signal(str)

        def __init__(self, parent=None):
            super().__init__(parent)
            self._scene, self._node, self._segment = None, None, ""

        def setMRMLScene(self, scene):
            self._scene = scene

        def currentNode(self):
            return self._node

        def currentSegmentID(self):
            return self._segment

        def setCurrentNode(self, node):
            if node is self._node:
                return
            self._node = node
            self.currentNodeChanged.emit(node)
            first = ""
            if node is not None and node.GetSegmentation().GetNumberOfSegments():
                first = node.GetSegmentation().GetNthSegmentID(0)
            self._set(first)

        def setCurrentSegmentID(self, sid):
            self._set(sid or "")

        def _set(self, sid):
            if sid != self._segment:
                self._segment = sid
                self.currentSegmentChanged.emit(sid)

    for cls in (qMRMLWidget, qMRMLNodeComboBox, qMRMLSegmentSelectorWidget):
        setattr(slicer, cls.__name__, cls)
        _CUSTOM[cls.__name__] = cls
    for name in ("qMRMLSliderWidget", "qMRMLSpinBox", "qMRMLRangeWidget", "qMRMLSubjectHierarchyTreeView"):
        setattr(slicer, name, type(name, (qt.QWidget,), {}))
    slicer.qMRMLScreenShotDialog = types.SimpleNamespace(FullLayout=0, ThreeD=1, Red=2, Yellow=3, Green=4)
    return ctk


class FakeModuleManager:
    def __init__(self, qt):
        from PySide6 import QtCore

        class Mgr(QtCore.QObject):
            moduleAboutToBeUnloaded = QtCore.Signal(str)
        self.obj = Mgr()

    def connect(self, signal, slot):
        self.obj.moduleAboutToBeUnloaded.connect(slot)


class FakeApp:
    """``slicer.app``: what the panel and ScriptedLoadableModule use, no layout (no views)."""

    def __init__(self, qapp, qt):
        self._qapp = qapp
        self._mm = FakeModuleManager(qt)
        self._settings = qt.QSettings("SCORERefineHarness", "harness")
        self.testing = True
        self.commandOptions = lambda: types.SimpleNamespace(noMainWindow=True)

    def translate(self, context, text):
        return text

    def testingEnabled(self):
        return self.testing

    def processEvents(self, *a):
        self._qapp.processEvents()

    def layoutManager(self):
        return None

    def moduleManager(self):
        return self._mm

    def userSettings(self):
        return self._settings

    def settings(self):
        return self._settings

    def keyboardModifiers(self):
        return self._qapp.keyboardModifiers()

    def mainWindow(self):
        return None

    def topLevelWidgets(self):
        return self._qapp.topLevelWidgets()


_STATE: dict = {}


def activate(version: str):
    """Make ``import qt, ctk, slicer`` give the harness with Slicer ``version``'s Python layer.

    Returns the ``slicer`` package. Can be called again with another version (the Slicer
    submodules are re-imported from the other folder)."""
    import slicer
    from PySide6 import QtWidgets

    if "qt" not in _STATE:
        _STATE["qapp"] = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["harness"])
        qt = _make_qt_module()
        sys.modules["qt"] = qt
        _STATE["qt"] = qt
        _STATE["ctk"] = _make_ctk_and_mrml_widgets(qt, slicer)
        sys.modules["ctk"] = _STATE["ctk"]
        _STATE["core_path"] = list(slicer.__path__)
    for name in list(sys.modules):
        if name in _SUBMODULES or any(name.startswith(s + ".") for s in _SUBMODULES) or name == "SCORERefine":
            del sys.modules[name]
    slicer.__path__[:] = [str(SHARED / version / "slicer")] + _STATE["core_path"]
    from SCORERefineLib.mrml import new_scene
    slicer.mrmlScene = new_scene()
    slicer.app = FakeApp(_STATE["qapp"], _STATE["qt"])
    slicer.modules = types.SimpleNamespace()
    slicer.selfTests = {}
    import slicer.util as util
    import slicer.i18n  # noqa: F401
    import slicer.parameterNodeWrapper  # noqa: F401
    import slicer.ScriptedLoadableModule  # noqa: F401
    slicer.util = util
    util.modulePath = lambda name: str(REPO / "SCORERefine" / f"{name}.py")
    # dialogs answer like a person who says yes (tests override when they need "no")
    util.confirmOkCancelDisplay = lambda *a, **k: _STATE.get("confirm", True)
    util.confirmYesNoDisplay = lambda *a, **k: _STATE.get("confirm", True)
    util.errorDisplay = lambda text, *a, **k: _STATE.setdefault("errors", []).append(text)
    util.infoDisplay = lambda text, *a, **k: None
    util.delayDisplay = lambda *a, **k: None
    util.mainWindow = lambda: None
    _STATE["version"] = version
    return slicer


def set_confirm(answer: bool) -> None:
    _STATE["confirm"] = bool(answer)


def errors() -> list:
    return _STATE.setdefault("errors", [])


def qapp():
    return _STATE["qapp"]


def load_module():
    """Import SCORERefine/SCORERefine.py as Slicer does (module name = file name)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("SCORERefine", REPO / "SCORERefine" / "SCORERefine.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["SCORERefine"] = module
    spec.loader.exec_module(module)
    return module


def build_widget(module):
    """What Slicer does when the module is first shown: the module, its widget, setup(), enter()."""
    qt = _STATE["qt"]
    import slicer
    parent = slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    moduleObj = module.SCORERefine(types.SimpleNamespace(isEntered=True, path=str(REPO / "SCORERefine" / "SCORERefine.py")))
    widget = module.SCORERefineWidget(parent)
    widget.setup()
    widget.enter()
    return moduleObj, widget, parent


def pump(ms: int = 0) -> None:
    import time
    end = time.monotonic() + ms / 1000.0
    while True:
        qapp().processEvents()
        if time.monotonic() >= end:
            break
        time.sleep(0.005)
