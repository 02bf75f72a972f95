"""SCORERefine: refine a foundation model's segmentation from regional quality ratings.

The panel is thin: it binds Qt widgets to SCORERefineLib objects (the rating session, the MRML
bridge, the background training job, the TotalSegmentator runner). Every decision about the data
is made there, where pytest reaches it without Slicer; this file only forwards clicks and keys and
redraws when the engine says something changed.

(No ``from __future__ import annotations`` here: parameterNodeWrapper reads the annotations.)
"""

import importlib.util
import logging
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import qt

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# In an extension build SCORERefineLib sits beside this file (qt-scripted-modules/); when the module
# is loaded from the source tree (developer mode) it is one folder up.
try:
    import SCORERefineLib  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import SCORERefineLib  # noqa: F401

from SCORERefineLib import catalog, device_info
from SCORERefineLib import mrml as bridge
from SCORERefineLib.errors import SCORERefineError
from SCORERefineLib.session import EVENT_ALL_RATED, EVENT_CURRENT, KEY_HELP, RatingSession

#: Python packages the engine needs (import name -> what to tell the person)
ENGINE_IMPORTS = {"torch": "PyTorch", "monai": "MONAI", "scipy": "SciPy", "tqdm": "tqdm"}
RATING_KEYS = ("1", "2", "3", "4", "5", "O", "U", "N", "Space", "A")


#
# SCORERefine
#

class SCORERefine(ScriptedLoadableModule):
    """Module metadata (see ScriptedLoadableModule)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("SCORE Refine")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []  # PyTorch and TotalSegmentator extensions are used when present
        self.parent.contributors = ["SCORERefine team"]
        self.parent.helpText = _("""
Refine a segmentation (TotalSegmentator's humerus in CT) from light feedback.
<ol>
<li><b>Input</b>: choose the CT; run TotalSegmentator (structures to keep, default humerus left and
right) or pick an existing segmentation and segment.</li>
<li><b>Regions</b>: split the segment's boundary into numbered, coloured regions.</li>
<li><b>Rate</b>: for each region give a score 1-5 (5 = correct) and say whether it is over- (O) or
under-segmented (U). Keys: 1-5, O, U, N or Space for the next unrated region. Click a region in a
slice view to make it current. Ratings are kept in the scene. Suggest shows the quality
predictor's score, over/under and confidence on each region; A accepts it as your rating;
Doubtful first offers the regions the predictor is least sure of first.</li>
<li><b>Scribbles</b> (optional): draw strokes in the segments "scribble: inside" and "scribble:
outside" with the Segment Editor's Paint effect where the segment is wrong; they are saved with the
case.</li>
<li><b>Dataset</b>: save the case (image, initial mask, regions, ratings) into a dataset folder;
Next case loads the next one you have not rated.</li>
<li><b>Train</b>: train the refiner in the background from the ratings, the scribbles, dense
references or a few dense cases plus many weak ones (hybrid); Cancel keeps the last checkpoint.</li>
<li><b>Apply</b>: refine the segment in place; Undo restores the initial segment exactly.</li>
</ol>
See the <a href="https://github.com/scorerefine/SlicerSCORERefine/blob/main/docs/slicer-module.md">module documentation</a>.
""")
        self.parent.acknowledgementText = _("""
SCORE (Segmentation COrrection from Regional Evaluations). Uses 3D Slicer, MONAI, PyTorch and
TotalSegmentator (Wasserthal et al., Radiology: AI 2023). Panel structure follows the Slicer
scripted module template.
""")


#
# Parameter node
#

@parameterNodeWrapper
class SCORERefineParameterNode:
    """Everything the panel shows, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentId: str = ""
    structures: str = "humerus_left humerus_right"
    fast: bool = True
    # Choice lists come from the torch-free catalog: the connector fills the combo boxes from them
    regionMethod: Annotated[str, Choice(catalog.names(catalog.REGION_METHODS))] = "patches"
    regionCount: Annotated[int, WithinRange(1, 200)] = 12
    bandWidthMm: Annotated[float, WithinRange(0.5, 20.0)] = 3.0
    regions: vtkMRMLSegmentationNode
    raterName: str = "clinician"
    datasetFolder: Path = Path.home() / "SCORERefine" / "dataset"
    caseId: str = "case_000"
    trainMode: Annotated[str, Choice(catalog.names(catalog.TRAINING_MODES))] = "score"
    trainSteps: Annotated[int, WithinRange(1, 100000)] = 300
    # hybrid training (shown for the hybrid mode only): dense cases by ID or by count, weak
    # feedback and weighting, choices from the catalog
    hybridDense: str = ""
    hybridDenseCount: Annotated[int, WithinRange(0, 100000)] = 0
    hybridWeak: Annotated[str, Choice(catalog.names(catalog.HYBRID_WEAK_KINDS))] = "score"
    hybridIndicator: Annotated[str, Choice(catalog.names(catalog.HYBRID_INDICATORS))] = "dynamic"
    # score training (shown for the score mode only): a named loss setting from the catalog
    trainProfile: Annotated[str, Choice(catalog.names(catalog.SCORE_PROFILES))] = "default"
    # the scribble segmentation ("scribble: inside" / "scribble: outside", step 3b)
    scribbles: vtkMRMLSegmentationNode
    # Not bound to a widget (no SlicerParameterName): the device list is dynamic (cuda:N), and
    # the wrapper's combo-box connector needs a fixed Choice it would refill the box with.
    device: str = "auto"
    # empty: <dataset folder>/model.pt (each dataset its own model)
    modelPath: Path = Path("")


#
# Widget
#

class SCORERefineWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Binds the .ui to the logic; holds no state of its own beyond Qt objects."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SCORERefineLogic] = None
        self._parameterNode: Optional[SCORERefineParameterNode] = None
        self._parameterNodeGuiTag = None
        self._shortcuts: list = []
        self._clickObservers: list = []
        self._pressPosition = None
        self._timer = qt.QTimer()
        self._timer.setInterval(500)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SCORERefine.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SCORERefineLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)

        u = self.ui
        u.installDependenciesButton.clicked.connect(self.onInstallDependencies)
        u.runTotalSegmentatorButton.clicked.connect(self.onRunTotalSegmentator)
        u.segmentSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        u.segmentSelector.currentSegmentChanged.connect(self.onSegmentChanged)
        u.splitButton.clicked.connect(self.onSplit)
        for score in range(1, 6):
            getattr(u, f"score{score}Button").clicked.connect(lambda _=False, s=score: self.onKey(str(s)))
        u.overButton.clicked.connect(lambda: self.onKey("O"))
        u.underButton.clicked.connect(lambda: self.onKey("U"))
        u.previousButton.clicked.connect(lambda: self.runCommand("previous"))
        u.nextButton.clicked.connect(lambda: self.runCommand("next"))
        u.nextUnratedButton.clicked.connect(lambda: self.runCommand("next_unrated"))
        u.undoRatingButton.clicked.connect(lambda: self.runCommand("undo"))
        u.regionTable.cellClicked.connect(self.onTableClicked)
        u.saveCaseButton.clicked.connect(self.onSaveCase)
        u.nextCaseButton.clicked.connect(self.onNextCase)
        u.trainButton.clicked.connect(self.onTrain)
        u.cancelTrainingButton.clicked.connect(self.onCancelTraining)
        u.applyButton.clicked.connect(self.onApply)
        u.undoRefineButton.clicked.connect(self.onUndoRefine)
        # created here (not in the .ui) so the .ui stays loadable by older module versions
        self.cancelApplyButton = qt.QPushButton("Cancel")
        self.cancelApplyButton.setObjectName("cancelApplyButton")
        self.cancelApplyButton.setEnabled(False)
        u.applyButtonsWidget.layout().addWidget(self.cancelApplyButton)
        self.cancelApplyButton.clicked.connect(self.onCancelApply)
        self.alsoModelsLineEdit = qt.QLineEdit()
        self.alsoModelsLineEdit.setObjectName("alsoModelsLineEdit")
        self.alsoModelsLineEdit.placeholderText = "optional: other seeds' checkpoints, ';'-separated"
        self.alsoModelsLineEdit.toolTip = (
            "An ensemble: checkpoints of the model's setting trained with other seeds. The refiner "
            "averages their probabilities with the model's, then applies the guard. On real CT three "
            "seeds averaged made no test case worse where single seeds did (docs/score-loss.md).")
        u.applyCollapsibleButton.layout().insertRow(1, "Also average:", self.alsoModelsLineEdit)
        self.ttaCheckBox = qt.QCheckBox("Test-time augmentation (safer; several times slower on a CPU)")
        self.ttaCheckBox.setObjectName("ttaCheckBox")
        self.ttaCheckBox.setChecked(True)
        self.ttaCheckBox.toolTip = (
            "Each window's prediction is the mean over its 16 flipped and turned views, views the "
            "network was trained on, so a decision only one orientation takes cancels out (on real "
            "CT this turned single models' harm to a case into gains). Untick for one network "
            "pass per window (scorerefine refine --no-tta).")
        u.applyCollapsibleButton.layout().insertRow(2, "", self.ttaCheckBox)
        self.showInitialCheckBox = qt.QCheckBox("Show initial segment as outline")
        self.showInitialCheckBox.setObjectName("showInitialCheckBox")
        self.showInitialCheckBox.setChecked(True)
        u.applyButtonsWidget.layout().addWidget(self.showInitialCheckBox)
        self.showInitialCheckBox.toggled.connect(self.onShowInitial)
        self.setupScribblesAndHybrid(uiWidget)
        self._timer.timeout.connect(self.onTimer)
        self._applyTimer = qt.QTimer()
        self._applyTimer.setInterval(100)
        self._applyTimer.timeout.connect(self.onApplyTimer)
        self._tsTimer = qt.QTimer()
        self._tsTimer.setInterval(200)
        self._tsTimer.timeout.connect(self.onTotalSegmentatorTimer)
        self.setupQualityPredictor()

        self.fillDeviceChoices()
        u.trainDeviceComboBox.currentTextChanged.connect(self.onDeviceChanged)
        for combo, registry in ((u.regionMethodComboBox, catalog.REGION_METHODS),
                                (u.trainModeComboBox, catalog.TRAINING_MODES)):
            combo.toolTip = "; ".join(f"{e.name}: {e.label} ({e.description})" for e in registry.values())
        u.keyHelpLabel.text = "Keys: " + "; ".join(f"{k} {what}" for k, what in KEY_HELP) + \
            ". Click a region in a slice view to make it current."
        self.initializeParameterNode()
        self.onTrainModeChanged(self.ui.trainModeComboBox.currentText)
        self.updateDependencyStatus()
        self.restoreSessionFromScene()

    def setupScribblesAndHybrid(self, uiWidget) -> None:
        """Step 3b (scribbles) and the hybrid settings of step 5, made here (not in the .ui, like
        the Apply section's extras) and bound to the parameter node through SlicerParameterName."""
        import ctk

        u = self.ui
        box = self.scribbleCollapsibleButton = ctk.ctkCollapsibleButton()
        box.setObjectName("scribbleCollapsibleButton")
        box.text = "3b. Scribbles (optional)"
        box.collapsed = True
        form = qt.QFormLayout(box)
        self.drawScribblesButton = qt.QPushButton("Draw scribbles")
        self.drawScribblesButton.setObjectName("drawScribblesButton")
        self.drawScribblesButton.toolTip = ("Create the segments 'scribble: inside' (strokes on the "
                                            "structure) and 'scribble: outside' (just outside it) and "
                                            "paint them with the Segment Editor's Paint effect")
        self.countStrokesButton = qt.QPushButton("Count strokes")
        self.countStrokesButton.setObjectName("countStrokesButton")
        buttons = qt.QWidget()
        row = qt.QHBoxLayout(buttons)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.drawScribblesButton)
        row.addWidget(self.countStrokesButton)
        form.addRow(buttons)
        self.scribbleStatusLabel = qt.QLabel("Strokes where the segment is wrong: inside on the "
                                             "structure, outside just beyond it. Saved with the case.")
        self.scribbleStatusLabel.setObjectName("scribbleStatusLabel")
        self.scribbleStatusLabel.wordWrap = True
        form.addRow(self.scribbleStatusLabel)
        layout = uiWidget.layout()
        layout.insertWidget(layout.indexOf(u.datasetCollapsibleButton), box)
        self.drawScribblesButton.clicked.connect(self.onDrawScribbles)
        self.countStrokesButton.clicked.connect(self.onCountStrokes)

        self.hybridSettingsWidget = qt.QWidget()
        self.hybridSettingsWidget.setObjectName("hybridSettingsWidget")
        hform = qt.QFormLayout(self.hybridSettingsWidget)
        hform.setContentsMargins(0, 0, 0, 0)
        widgets = (("hybridDenseLineEdit", qt.QLineEdit, "hybridDense", "Dense cases:",
                    "Case IDs with a full reference (reference.nii.gz), e.g. case_000, case_003"),
                   ("hybridDenseCountSpinBox", qt.QSpinBox, "hybridDenseCount", "or dense count:",
                    "0: use the IDs above; K: the first K cases with a reference"),
                   ("hybridWeakComboBox", qt.QComboBox, "hybridWeak", "Weak feedback:",
                    "; ".join(f"{e.name}: {e.description}" for e in catalog.HYBRID_WEAK_KINDS.values())),
                   ("hybridIndicatorComboBox", qt.QComboBox, "hybridIndicator", "Weighting:",
                    "; ".join(f"{e.name}: {e.description}" for e in catalog.HYBRID_INDICATORS.values())))
        for name, cls, parameter, label, tip in widgets:
            w = cls()
            w.setObjectName(name)
            w.setProperty("SlicerParameterName", parameter)
            w.toolTip = tip
            if cls is qt.QSpinBox:
                w.maximum = 100000
            hform.addRow(label, w)
            setattr(u, name, w)
        u.trainCollapsibleButton.layout().insertRow(1, self.hybridSettingsWidget)

        u.trainProfileComboBox.toolTip = "; ".join(f"{e.name}: {e.description}"
                                                   for e in catalog.SCORE_PROFILES.values())
        u.trainModeComboBox.currentTextChanged.connect(self.onTrainModeChanged)

    def onTrainModeChanged(self, mode) -> None:
        from SCORERefineLib.training_job import MODE_SETTINGS
        shown = MODE_SETTINGS.get(str(mode), ())
        self.hybridSettingsWidget.setVisible("dense" in shown)
        self.ui.scoreSettingsWidget.setVisible("profile" in shown)

    def cleanup(self) -> None:
        """Module reload or application exit: stop observing; a running training is cancelled."""
        self._timer.stop()
        self._applyTimer.stop()
        self._tsTimer.stop()
        self._qualityTimer.stop()
        self.removeObservers()
        self.enableRatingInput(False)
        if self.logic is not None:
            self.logic.cancel_training(wait=False)
            self.logic.cancel_refine()
            self.logic.cancel_totalsegmentator()
            self.logic.cancel_quality_training()
            self.logic.detach_session()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.enableRatingInput(True)

    def exit(self) -> None:
        self.enableRatingInput(False)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    # ---------------------------------------------------------------- scene and parameter node
    def onSceneStartClose(self, caller, event) -> None:
        self.logic.detach_session()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self.refreshRating()

    def onSceneImported(self, caller, event) -> None:
        self.initializeParameterNode()
        self.restoreSessionFromScene()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            node = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if node:
                self._parameterNode.inputVolume = node

    def setParameterNode(self, inputParameterNode: Optional[SCORERefineParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            p = self._parameterNode
            self._parameterNodeGuiTag = p.connectGui(self.ui)
            # Read both before touching the selector: setting its node announces the node's first
            # segment, and onSegmentChanged would overwrite the stored segment ID with it.
            segmentation, segmentId = p.segmentation, p.segmentId
            if segmentation:
                self.ui.segmentSelector.setCurrentNode(segmentation)
                if segmentId:
                    self.ui.segmentSelector.setCurrentSegmentID(segmentId)
                    p.segmentId = segmentId
            self.selectDevice(p.device)

    def onSegmentationChanged(self, node) -> None:
        if self._parameterNode:
            self._parameterNode.segmentation = node

    def onSegmentChanged(self, segmentId) -> None:
        if self._parameterNode:
            self._parameterNode.segmentId = segmentId or ""

    # ---------------------------------------------------------------- helpers
    def _run(self, label, function, *args, **kwargs):
        """Run an engine call; its SCORERefineError is shown as it is (no traceback needed)."""
        try:
            with slicer.util.WaitCursor():
                return function(*args, **kwargs)
        except SCORERefineError as exc:
            label.text = str(exc)
            slicer.util.errorDisplay(str(exc), windowTitle="SCORERefine")
        except Exception as exc:  # a bug: keep the traceback in the log
            logging.exception("SCORERefine")
            label.text = f"Unexpected error: {exc}"
            slicer.util.errorDisplay(f"Unexpected error: {exc}", detailedText=str(exc))
        return None

    def updateDependencyStatus(self) -> None:
        missing = self.logic.missing_dependencies()
        self.ui.dependencyStatusLabel.text = (
            "All dependencies are installed." if not missing else
            f"Missing: {', '.join(missing)}. Click 'Install dependencies' (you are asked first).")
        self.ui.installDependenciesButton.enabled = bool(missing)
        self.updateDeviceLabel()

    def fillDeviceChoices(self) -> None:
        """The device list (auto, cpu, cuda:N): dynamic, so it lives outside the parameter node."""
        combo = self.ui.trainDeviceComboBox
        wanted = self._parameterNode.device if self._parameterNode else "auto"
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(device_info.choices() if self.logic.has_torch() else ["auto", "cpu"])
        combo.blockSignals(False)
        self.selectDevice(wanted)

    def selectDevice(self, device: str) -> None:
        combo = self.ui.trainDeviceComboBox
        index = combo.findText(device or "auto")
        combo.setCurrentIndex(index if index >= 0 else 0)
        self.updateDeviceLabel()

    def onDeviceChanged(self, text) -> None:
        if self._parameterNode and text:
            self._parameterNode.device = text
        self.updateDeviceLabel()

    def updateDeviceLabel(self, *_args) -> None:
        requested = self.ui.trainDeviceComboBox.currentText or "auto"
        self.ui.deviceLabel.text = self.logic.describe_device(requested)

    # ---------------------------------------------------------------- 0 set-up
    def onInstallDependencies(self) -> None:
        if self._run(self.ui.dependencyStatusLabel, self.logic.install_dependencies, True) is not None:
            self.updateDependencyStatus()
            self.fillDeviceChoices()   # torch may just have arrived: offer its GPUs

    # ---------------------------------------------------------------- 1 input
    def onRunTotalSegmentator(self) -> None:
        p = self._parameterNode
        result = self._run(self.ui.inputStatusLabel, self.logic.run_totalsegmentator,
                           p.inputVolume, p.structures.split(), p.fast)
        if result is None:
            return
        segmentation, segmentId, message = result
        self.ui.inputStatusLabel.setText(message)
        if segmentId is None:     # running in the background: poll it
            self.ui.runTotalSegmentatorButton.setEnabled(False)
            self._tsTimer.start()
            return
        self.ui.segmentSelector.setCurrentNode(segmentation)
        self.ui.segmentSelector.setCurrentSegmentID(segmentId)

    def onTotalSegmentatorTimer(self) -> None:
        result = self._run(self.ui.inputStatusLabel, self.logic.poll_totalsegmentator)
        job = self.logic.tsJob
        if job is not None and job.running:
            self.ui.inputStatusLabel.setText("TotalSegmentator is running in the background... " + job.status_text())
            return
        self._tsTimer.stop()
        self.ui.runTotalSegmentatorButton.setEnabled(True)
        if result is not None:
            segmentation, segmentId, message = result
            self.ui.segmentSelector.setCurrentNode(segmentation)
            self.ui.segmentSelector.setCurrentSegmentID(segmentId)
            self.ui.inputStatusLabel.setText(message)

    # ---------------------------------------------------------------- 2 regions
    def onSplit(self) -> None:
        p = self._parameterNode
        session = self.logic.session
        if session is not None and session.n_rated and not slicer.util.confirmOkCancelDisplay(
                f"Splitting again deletes the {session.n_rated} rating(s) of this case from the scene "
                f"(ratings saved in the dataset stay). Split again?", windowTitle="SCORERefine"):
            self.ui.regionsStatusLabel.setText("Not split: the ratings are kept.")
            return
        result = self._run(self.ui.regionsStatusLabel, self.logic.split, p.inputVolume, p.segmentation,
                           p.segmentId, p.regionMethod, p.regionCount, p.bandWidthMm, p.regions,
                           p.caseId, p.raterName)
        if result is None:
            return
        p.regions = result.regions_node
        self.ui.regionsStatusLabel.text = f"{result.n_regions} regions. {result.message}".strip()
        self.attachSession()

    # ---------------------------------------------------------------- 3 rate
    def attachSession(self) -> None:
        session = self.logic.session
        if session is not None:
            session.add_observer(self.onSessionEvent)
        self.refreshRating()
        self.centreOnCurrent()

    def restoreSessionFromScene(self) -> None:
        p = self._parameterNode
        restored = self._run(self.ui.rateStatusLabel, self.logic.restore_session,
                             p.inputVolume if p else None, p.regions if p else None)
        if restored:
            if p is not None:
                p.regions = self.logic.regions_node
            self.attachSession()
            self.ui.rateStatusLabel.text = "Ratings restored from the scene. " + self.logic.session.status_text()

    def onSessionEvent(self, event, session) -> None:
        self.refreshRating()
        if event == EVENT_CURRENT:
            self.centreOnCurrent()
        elif event == EVENT_ALL_RATED:
            self.ui.rateStatusLabel.text = "All regions are rated. Save the case (step 4)."

    def refreshRating(self) -> None:
        table = self.ui.regionTable
        session = self.logic.session if self.logic else None
        rows = session.rows() if session is not None else []
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells + (row.suggestion,)):
                item = qt.QTableWidgetItem(text)
                if row.current:
                    item.setBackground(qt.QBrush(qt.QColor(255, 230, 150)))
                table.setItem(r, c, item)
        if session is not None:
            table.selectRow(session.current_index)
            self.ui.rateStatusLabel.text = session.status_text()
        self.ui.undoRatingButton.enabled = bool(session and session.can_undo)
        self.doubtfulFirstCheckBox.blockSignals(True)
        self.doubtfulFirstCheckBox.checked = bool(session is not None and session.order == "uncertainty")
        self.doubtfulFirstCheckBox.blockSignals(False)

    def centreOnCurrent(self) -> None:
        if self.logic.session is not None:
            self.logic.centre_views_on_current()

    def onKey(self, key: str) -> None:
        if self.logic.session is None:
            self.ui.rateStatusLabel.text = "Split the segment into regions first (step 2)."
            return
        self._run(self.ui.rateStatusLabel, self.logic.session.handle_key, key)
        message = self.logic.session.last_message
        if message:
            self.ui.rateStatusLabel.setText(message + "  [" + self.logic.session.progress_text() + "]")

    def runCommand(self, name: str) -> None:
        if self.logic.session is not None:
            from SCORERefineLib.session import Command
            self._run(self.ui.rateStatusLabel, self.logic.session.execute, Command(name))

    def onTableClicked(self, row, _column) -> None:
        if self.logic.session is not None:
            self.logic.session.go_to(self.logic.session.labels[row])

    def enableRatingInput(self, enable: bool) -> None:
        """Rating keys and clicks in slice views act only while this module is shown."""
        for shortcut in self._shortcuts:
            shortcut.activated.disconnect()
            shortcut.setParent(None)
        self._shortcuts = []
        for interactor, tag in self._clickObservers:
            interactor.RemoveObserver(tag)
        self._clickObservers = []
        if not enable:
            return
        # the application's main window (the keys work wherever the mouse is), else the panel
        mainWindow = slicer.util.mainWindow() or self.parent
        for key in RATING_KEYS:
            shortcut = qt.QShortcut(qt.QKeySequence(key), mainWindow)
            shortcut.activated.connect(lambda k=key: self.onKey(k))
            self._shortcuts.append(shortcut)
        if slicer.app.layoutManager() is None:
            return
        lm = slicer.app.layoutManager()
        for name in lm.sliceViewNames():
            sliceWidget = lm.sliceWidget(name)
            interactor = sliceWidget.sliceView().interactor()
            for event in ("LeftButtonPressEvent", "LeftButtonReleaseEvent"):
                tag = interactor.AddObserver(event, lambda caller, ev, w=sliceWidget: self.onSliceClick(w, caller, ev))
                self._clickObservers.append((interactor, tag))

    def onSliceClick(self, sliceWidget, interactor, event) -> None:
        position = interactor.GetEventPosition()
        if event == "LeftButtonPressEvent":
            self._pressPosition = position
            return
        if self._pressPosition is None or self.logic.session is None:
            return
        moved = abs(position[0] - self._pressPosition[0]) + abs(position[1] - self._pressPosition[1])
        self._pressPosition = None
        if moved <= 2:  # a click, not a drag (window/level, panning)
            self.logic.select_region_at(sliceWidget.mrmlSliceNode(), position)

    # ---------------------------------------------------------------- 3b scribbles
    def onDrawScribbles(self) -> None:
        p = self._parameterNode
        result = self._run(self.scribbleStatusLabel, self.logic.draw_scribbles, p.inputVolume, p.scribbles)
        if result is None:
            return
        segments, opened, summary = result
        p.scribbles = segments.node
        where = ("the Segment Editor is open with the Paint effect" if opened else
                 f"open the Segment Editor on '{segments.node.GetName()}' and use its Paint effect")
        self.scribbleStatusLabel.text = (f"Paint 'scribble: inside' on the structure and 'scribble: "
                                         f"outside' just outside it, where the segment is wrong: {where}. "
                                         + self.logic.describe_strokes(summary))

    def onCountStrokes(self) -> None:
        p = self._parameterNode
        summary = self._run(self.scribbleStatusLabel, self.logic.count_scribbles, p.scribbles, p.inputVolume)
        if summary is not None:
            self.scribbleStatusLabel.text = self.logic.describe_strokes(summary)

    # ---------------------------------------------------------------- 3b quality predictor (issue 11)
    def setupQualityPredictor(self) -> None:
        """Widgets made here (not in the .ui, so the .ui stays loadable by older versions): the
        Suggested column, Suggest, Doubtful first, the quality model, Train quality predictor."""
        u = self.ui
        u.regionTable.setColumnCount(5)
        u.regionTable.setHorizontalHeaderItem(4, qt.QTableWidgetItem("Suggested"))
        box = qt.QWidget()
        box.setObjectName("qualityWidget")
        row = qt.QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        self.suggestButton = qt.QPushButton("Suggest")
        self.suggestButton.setObjectName("suggestButton")
        self.suggestButton.toolTip = ("Predict every region's score, over/under and confidence with "
                                      "the quality predictor; A accepts the current region's.")
        self.doubtfulFirstCheckBox = qt.QCheckBox("Doubtful first")
        self.doubtfulFirstCheckBox.setObjectName("doubtfulFirstCheckBox")
        self.doubtfulFirstCheckBox.toolTip = "Offer the regions the predictor is least sure of first."
        self.qualityModelLineEdit = qt.QLineEdit()
        self.qualityModelLineEdit.setObjectName("qualityModelLineEdit")
        self.qualityModelLineEdit.placeholderText = "<dataset>/quality.pt"
        self.trainQualityButton = qt.QPushButton("Train quality predictor")
        self.trainQualityButton.setObjectName("trainQualityButton")
        for w in (self.suggestButton, self.doubtfulFirstCheckBox, self.qualityModelLineEdit,
                  self.trainQualityButton):
            row.addWidget(w)
        self.qualityStatusLabel = qt.QLabel("")
        self.qualityStatusLabel.setObjectName("qualityStatusLabel")
        self.qualityStatusLabel.wordWrap = True
        u.rateCollapsibleButton.layout().addRow(box)
        u.rateCollapsibleButton.layout().addRow(self.qualityStatusLabel)
        self.suggestButton.clicked.connect(self.onSuggest)
        self.doubtfulFirstCheckBox.toggled.connect(self.onDoubtfulFirst)
        self.trainQualityButton.clicked.connect(self.onTrainQuality)
        self._qualityTimer = qt.QTimer()
        self._qualityTimer.setInterval(500)
        self._qualityTimer.timeout.connect(self.onQualityTimer)

    def qualityModelChoice(self):
        from SCORERefineLib.quality.assist import quality_model_path
        p = self._parameterNode
        return quality_model_path(self.qualityModelLineEdit.text, p.datasetFolder)

    def onSuggest(self) -> None:
        p = self._parameterNode
        n = self._run(self.qualityStatusLabel, self.logic.suggest, p.inputVolume, p.segmentation,
                      p.segmentId, self.qualityModelChoice())
        if n is not None:
            self.qualityStatusLabel.text = self.logic.session.last_message
            self.refreshRating()

    def onDoubtfulFirst(self, checked) -> None:
        session = self.logic.session
        if session is None:
            return
        self._run(self.qualityStatusLabel, session.set_order, "uncertainty" if checked else "regions")

    def onTrainQuality(self) -> None:
        p = self._parameterNode
        job = self._run(self.qualityStatusLabel, self.logic.start_quality_training, p.datasetFolder,
                        self.qualityModelChoice(), p.trainSteps)
        if job is None:
            return
        self.trainQualityButton.enabled = False
        self.qualityStatusLabel.text = "Training the quality predictor in the background..."
        self._qualityTimer.start()

    def onQualityTimer(self) -> None:
        job = self._pollJob(self.logic.poll_quality_training, self._qualityTimer, self.qualityStatusLabel)
        if job is not None and not job.running:
            self.trainQualityButton.enabled = True
            if job.state == "finished" and job.checkpoint is not None:
                self.qualityModelLineEdit.text = str(job.checkpoint)
                self.qualityStatusLabel.text = f"Quality predictor written: {job.checkpoint}. Click Suggest."
            elif job.error_message:
                self.qualityStatusLabel.text = job.error_message

    # ---------------------------------------------------------------- 4 dataset
    def onSaveCase(self) -> None:
        p = self._parameterNode
        case = self._run(self.ui.datasetStatusLabel, self.logic.save_case, p.datasetFolder, p.caseId,
                         p.inputVolume, p.segmentation, p.segmentId, p.scribbles)
        if case is not None:
            self.ui.datasetStatusLabel.text = f"Saved {case.case_id} to {case.folder}"
            if p.scribbles is not None:
                summary = self._run(self.scribbleStatusLabel, self.logic.count_scribbles, p.scribbles,
                                    p.inputVolume)
                if summary is not None:
                    saved = "saved as scribbles.nii.gz" if summary["n_strokes"] else "nothing saved"
                    self.scribbleStatusLabel.text = self.logic.describe_strokes(summary) + f" ({saved})"

    def onNextCase(self) -> None:
        p = self._parameterNode
        loaded = self._run(self.ui.datasetStatusLabel, self.logic.next_case, p.datasetFolder,
                           p.raterName, p.caseId)
        if loaded is None:
            return
        if loaded is False:
            self.ui.datasetStatusLabel.text = "Every case of this dataset is rated by you."
            return
        p.inputVolume = loaded.volume_node
        p.caseId = loaded.case.case_id
        p.regions = loaded.regions_node
        p.scribbles = loaded.scribbles_node
        self.ui.segmentSelector.setCurrentNode(loaded.segmentation_node)
        self.ui.segmentSelector.setCurrentSegmentID(loaded.segment_id)
        slicer.util.setSliceViewerLayers(background=loaded.volume_node, fit=True)
        self.attachSession()
        self.ui.datasetStatusLabel.text = f"Loaded {loaded.case.case_id}."

    # ---------------------------------------------------------------- 5 train
    def onTrain(self) -> None:
        p = self._parameterNode
        out = self.logic.model_path(p.modelPath, p.datasetFolder)
        settings = {"dense": p.hybridDense, "dense_count": p.hybridDenseCount, "weak": p.hybridWeak,
                    "indicator": p.hybridIndicator, "profile": p.trainProfile}
        job = self._run(self.ui.trainStatusLabel, self.logic.start_training, p.datasetFolder, out,
                        p.trainMode, p.trainSteps, self.ui.trainDeviceComboBox.currentText,
                        settings=settings)
        if job is None:
            return
        self.ui.trainButton.enabled = False
        self.ui.cancelTrainingButton.enabled = True
        self.ui.trainProgressBar.value = 0
        self._timer.start()

    def _pollJob(self, poll, timer, label):
        """One tick of a background job's timer: ``poll()`` the logic, show the job's status on
        ``label`` and stop ``timer`` when there is no job or it has ended. Returns the job (None
        when there is none)."""
        job = poll()
        if job is None:
            timer.stop()
            return None
        label.text = job.status_text()
        if not job.running:
            timer.stop()
        return job

    def onTimer(self) -> None:
        job = self._pollJob(self.logic.poll_training, self._timer, self.ui.trainStatusLabel)
        if job is None:
            return
        self.ui.trainProgressBar.value = job.progress.percent
        if not job.running:
            self.ui.trainButton.enabled = True
            self.ui.cancelTrainingButton.enabled = False
            if job.state == "finished" and job.checkpoint is not None:
                self._parameterNode.modelPath = job.checkpoint

    def onCancelTraining(self) -> None:
        self.logic.cancel_training(wait=False)
        self.ui.trainStatusLabel.text = "stopping..."

    # ---------------------------------------------------------------- 6 apply
    def onApply(self) -> None:
        """Refine in a background process; the panel stays responsive and Cancel stops it."""
        p = self._parameterNode
        model = self.modelChoice()
        job = self._run(self.ui.applyStatusLabel, self.logic.start_refine, p.inputVolume, p.segmentation,
                        p.segmentId, model, p.device, self.alsoModelsLineEdit.text,
                        self.ttaCheckBox.checked)
        if job is None:
            return
        self.ui.applyButton.setEnabled(False)
        self.cancelApplyButton.setEnabled(True)
        self.ui.applyStatusLabel.setText("Refining in the background...")
        self._applyTimer.start()

    def modelChoice(self) -> str:
        p = self._parameterNode
        text = str(p.modelPath or "").strip()
        if text in catalog.BUILTIN_REFINERS:
            return text
        return str(self.logic.model_path(p.modelPath, p.datasetFolder))

    def onApplyTimer(self) -> None:
        result = self._run(self.ui.applyStatusLabel, self.logic.poll_refine, self._parameterNode.segmentation,
                           self._parameterNode.segmentId)
        job = self.logic.refineJob
        if job is not None and job.running:
            self.ui.applyStatusLabel.setText(job.status_text())
            return
        self._applyTimer.stop()
        self.ui.applyButton.setEnabled(True)
        self.cancelApplyButton.setEnabled(False)
        if result is not None and result is not False:
            self.ui.applyStatusLabel.setText(result.summary())
            self.onShowInitial(self.showInitialCheckBox.checked)
        elif job is not None and job.state != "finished":
            self.ui.applyStatusLabel.setText(job.error_message)

    def onCancelApply(self) -> None:
        self.logic.cancel_refine()
        self.ui.applyStatusLabel.setText("stopping...")

    def onShowInitial(self, visible) -> None:
        bridge.show_initial_outline(self._parameterNode.segmentation if self._parameterNode else None,
                                    bool(visible))

    def onUndoRefine(self) -> None:
        p = self._parameterNode
        done = self._run(self.ui.applyStatusLabel, self.logic.undo_refine, p.segmentation, p.segmentId)
        if done is not None:
            self.ui.applyStatusLabel.text = ("Initial segment restored." if done else
                                             "Nothing to undo: the segment was not refined.")


#
# Logic
#

class SCORERefineLogic(ScriptedLoadableModuleLogic):
    """Thin: calls SCORERefineLib (mrml, session, training_job, totalseg) on slicer.mrmlScene."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.session: Optional[RatingSession] = None
        self.regions_node = None
        self.job = None
        self.refineJob = None
        self._refinePrepared = None
        self.tsJob = None
        self._tsPending = None
        self._sessionObserver = None
        self.qualityJob = None

    def getParameterNode(self):
        return SCORERefineParameterNode(super().getParameterNode())

    @staticmethod
    def model_path(modelPath, datasetFolder) -> Path:
        """The checkpoint to train or apply: the chosen file, else ``<dataset>/model.pt``."""
        text = str(modelPath or "").strip()
        return Path(text) if text not in ("", ".") else Path(datasetFolder) / "model.pt"

    # ---------------------------------------------------------------- dependencies and device
    @staticmethod
    def missing_dependencies() -> list[str]:
        return [what for name, what in ENGINE_IMPORTS.items() if importlib.util.find_spec(name) is None]

    @staticmethod
    def has_torch() -> bool:
        return importlib.util.find_spec("torch") is not None

    def describe_device(self, requested: str = "auto") -> str:
        if not self.has_torch():
            return device_info.describe(requested, device_info.DeviceInfo(False))
        return device_info.describe(requested)

    def install_dependencies(self, confirm: bool = True) -> bool:
        """Install what is missing, after asking. Never called by tests (nothing installed there)."""
        if slicer.app.testingEnabled():
            raise SCORERefineError("dependencies are not installed while testing.")
        missing = self.missing_dependencies()
        if not missing:
            return True
        if confirm and not slicer.util.confirmOkCancelDisplay(
                f"SCORERefine needs {', '.join(missing)}. Install now? This downloads packages "
                f"from the internet and can take several minutes.", windowTitle="SCORERefine"):
            return False
        if "PyTorch" in missing:
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise SCORERefineError("PyTorch is missing and the PyTorch extension is not installed: "
                                       "install 'PyTorch' from the Extensions Manager, restart Slicer "
                                       "and try again.") from exc
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torchLogic.installTorch(askConfirmation=False)
        requirements = Path(__file__).resolve().parent / "Resources" / "requirements.txt"
        # Keep the torch the PyTorch extension chose (CUDA-matched): pin it as a pip constraint,
        # so MONAI cannot pull another torch. (slicer.packaging exists only from Slicer 5.12 and
        # must be imported; plain pip with a constraints file works on every version.)
        constraints = device_info.torch_constraints(Path(tempfile.mkdtemp(prefix="scorerefine-pip-")))
        slicer.util.pip_install(["-r", str(requirements), *constraints])
        return True

    # ---------------------------------------------------------------- 1 input
    def run_totalsegmentator(self, volumeNode, structures, fast=True):
        """Segment with TotalSegmentator and merge the structures into one segment.

        Returns ``(segmentation node, segment ID, message)``.
        """
        from SCORERefineLib import totalseg

        image = bridge.volume_from_node(volumeNode)  # says "no volume selected" when None
        structures = list(structures) or list(totalseg.DEFAULT_STRUCTURES)
        name = "+".join(structures)
        segmentation = bridge.new_segmentation_node(slicer.mrmlScene, f"{volumeNode.GetName()} TotalSegmentator",
                                                    volumeNode)
        useCpu = not self._cuda_available()
        try:
            if hasattr(slicer.modules, "totalsegmentator"):
                tsLogic = slicer.util.getModuleLogic("TotalSegmentator")
                totalseg.prepare_extension(tsLogic, fast=fast)       # its pip package, offline weights
                kwargs = totalseg.extension_process_kwargs(tsLogic.process, fast=fast, cpu=useCpu,
                                                           subset=structures)
                tsLogic.process(volumeNode, segmentation, **kwargs)   # bound by its signature, once
                segmentId = bridge.merge_segments(segmentation, structures, image.geometry, name,
                                                  totalseg.segment_name_candidates)
                return segmentation, segmentId, f"TotalSegmentator (extension): {name}"
            # the command-line TotalSegmentator runs in the background (poll_totalsegmentator)
            from SCORERefineLib import jobs
            run = totalseg.prepare_run(image, structures, fast=fast, device="cpu" if useCpu else "gpu")
            self.tsJob = jobs.BackgroundJob(run.command, run.work / "totalsegmentator.log", checkpoint=None,
                                            env=dict(run.env, PYTHONUNBUFFERED="1"), cwd=str(run.work),
                                            what="TotalSegmentator").start()
            self._tsPending = (run, segmentation, name, image.geometry)
            if self.tsJob.state == jobs.FAILED:
                self._tsPending = None
                run.cleanup()
                raise totalseg.TotalSegmentatorNotInstalled(self.tsJob.error_message)
            return segmentation, None, "TotalSegmentator is running in the background..."
        except Exception:
            slicer.mrmlScene.RemoveNode(segmentation)   # no empty node left behind
            raise

    def poll_totalsegmentator(self):
        """``None`` while running; then ``(segmentation, segmentId, message)``; raises on failure
        (the segmentation node it would have filled is removed)."""
        from SCORERefineLib import totalseg

        if self.tsJob is None or self._tsPending is None:
            return None
        self.tsJob.poll()
        if self.tsJob.running:
            return None
        run, segmentation, name, geometry = self._tsPending
        self._tsPending = None
        try:
            if self.tsJob.state == "cancelled":
                raise SCORERefineError("TotalSegmentator cancelled; nothing was added.")
            log = self.tsJob.log_path.read_text(encoding="utf-8", errors="replace")
            result = totalseg.finish_run(run, self.tsJob.returncode, log, geometry)
            segmentId = bridge.add_mask_segment(segmentation, result.mask, name)
        except Exception:
            slicer.mrmlScene.RemoveNode(segmentation)
            raise
        finally:
            run.cleanup()
        empty = f" Not found in this CT: {', '.join(result.empty)}." if result.empty else ""
        return segmentation, segmentId, f"TotalSegmentator: {name}.{empty}"

    def cancel_totalsegmentator(self) -> None:
        if self.tsJob is not None and self.tsJob.running:
            self.tsJob.cancel(wait=False)

    @staticmethod
    def _cuda_available() -> bool:
        if importlib.util.find_spec("torch") is None:
            return False
        import torch
        return bool(torch.cuda.is_available())

    # ---------------------------------------------------------------- 2 regions, 3 rate
    def split(self, volumeNode, segmentationNode, segmentId, method, count, bandMm, regionsNode=None,
              caseId="case_000", rater="clinician"):
        from SCORERefineLib.regions import RegionParams

        params = RegionParams(method=method, n_regions=int(count), band_mm=float(bandMm))
        self.detach_session()
        result = bridge.split_segment_into_regions(slicer.mrmlScene, volumeNode, segmentationNode,
                                                   segmentId, params, regionsNode)
        self.session = RatingSession(caseId, result.regions, rater=rater, region_info=params.info(),
                                     auto_advance=True)
        self.regions_node = result.regions_node
        self._sessionObserver = bridge.attach_session(self.session, self.regions_node)
        self.session.add_observer(self._onSession)
        bridge.highlight_region(self.regions_node, self.session.current)
        return result

    def _onSession(self, event, session) -> None:
        if event == EVENT_CURRENT:
            bridge.highlight_region(self.regions_node, session.current)

    def detach_session(self) -> None:
        self.session = None
        self.regions_node = None
        self._sessionObserver = None

    def restore_session(self, volumeNode=None, regionsNode=None) -> bool:
        """After a module reload or a scene load: take the ratings stored in the scene back."""
        session, node = bridge.restore_session(slicer.mrmlScene, volumeNode, regionsNode)
        if session is None:
            return False
        self.session, self.regions_node = session, node
        session.auto_advance = True
        self._sessionObserver = bridge.attach_session(session, node)
        session.add_observer(self._onSession)
        return True

    def centre_views_on_current(self) -> None:
        bridge.frame_region(slicer.mrmlScene, self.regions_node, self.session.current,
                            self.session.bounds_ras())
        bridge.highlight_region(self.regions_node, self.session.current)

    def select_region_at(self, sliceNode, xy) -> Optional[int]:
        ras = bridge.slice_xy_to_ras(sliceNode, xy)
        label = self.session.region_at_ras(ras)
        if label is not None:
            self.session.go_to(label)
        return label

    # ---------------------------------------------------------------- 3b scribbles
    def draw_scribbles(self, volumeNode, scribblesNode=None):
        """Create (or find) the two scribble segments and open the Segment Editor's Paint on them.
        Returns ``(ScribbleSegments, editor opened, stroke summary)``."""
        segments = bridge.ensure_scribble_segments(slicer.mrmlScene, volumeNode, scribblesNode)
        opened = bridge.open_segment_editor(segments, volumeNode)
        return segments, opened, bridge.count_scribbles(segments.node, volumeNode)

    @staticmethod
    def count_scribbles(scribblesNode, volumeNode) -> dict:
        return bridge.count_scribbles(scribblesNode, volumeNode)

    @staticmethod
    def describe_strokes(summary) -> str:
        from SCORERefineLib.scribbles import describe_strokes
        text = describe_strokes(summary)
        if summary.get("conflicts"):
            text += (f" {summary['conflicts']} voxel(s) are painted both inside and outside and "
                     f"are left out.")
        return text

    # ---------------------------------------------------------------- 3b quality predictor
    def suggest(self, volumeNode, segmentationNode, segmentId, modelPath, device="cpu") -> int:
        """The quality predictor's suggestions for every region of the session (in-process)."""
        from SCORERefineLib.quality import assist

        if self.session is None:
            raise SCORERefineError("split the segment into regions first (step 2), then Suggest.")
        image = bridge.volume_from_node(volumeNode)
        mask = bridge.segment_mask(segmentationNode, segmentId, image.geometry).mask
        return assist.suggest_for_session(self.session, image, mask, modelPath, device=device)

    def start_quality_training(self, dataset, out, steps=300, extra=()):
        from SCORERefineLib.quality import assist

        if self.qualityJob is not None and self.qualityJob.running:
            raise SCORERefineError("the quality predictor is already training; wait for it to end.")
        self.qualityJob = assist.start_quality_training(dataset, out, steps=int(steps), extra=extra)
        if self.qualityJob.state == "failed":
            raise SCORERefineError(self.qualityJob.error_message)
        return self.qualityJob

    def poll_quality_training(self):
        if self.qualityJob is not None:
            self.qualityJob.poll()
        return self.qualityJob

    def cancel_quality_training(self) -> None:
        if self.qualityJob is not None and self.qualityJob.running:
            self.qualityJob.cancel(wait=False)

    # ---------------------------------------------------------------- 4 dataset
    def save_case(self, dataset, caseId, volumeNode, segmentationNode, segmentId, scribblesNode=None):
        if self.session is not None and self.session.case_id != caseId:
            self.session.rename_case(caseId)
        return bridge.save_case_from_scene(dataset, caseId, volumeNode, segmentationNode, segmentId,
                                           self.regions_node, self.session, scribbles_node=scribblesNode)

    def next_case(self, dataset, rater, after=None):
        from SCORERefineLib.session import next_case_to_rate

        case = next_case_to_rate(dataset, rater, after=after)
        if case is None:
            return False
        self.detach_session()
        loaded = bridge.load_case_into_scene(slicer.mrmlScene, case, rater=rater)
        self.session, self.regions_node = loaded.session, loaded.regions_node
        if self.session is not None:
            self.session.auto_advance = True
            self.session.add_observer(self._onSession)
        return loaded

    # ---------------------------------------------------------------- 5 train
    def start_training(self, dataset, out, mode="score", steps=300, device="auto", extra=(), settings=None):
        """``settings``: the mode's panel settings (score: profile; hybrid: dense, dense_count,
        weak, indicator),
        turned into ``scorerefine train`` flags by ``training_job.mode_arguments``."""
        from SCORERefineLib import training_job

        if self.job is not None and self.job.running:
            raise SCORERefineError("training is already running; cancel it or wait for it to end.")
        extra = [*training_job.mode_arguments(mode, dataset=dataset, **(settings or {})), *extra]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        self.job = training_job.start_training(dataset, out, mode=mode, steps=int(steps),
                                               device=device or "auto", extra=extra)
        if self.job.state == training_job.FAILED:
            raise SCORERefineError(self.job.error_message)
        return self.job

    def poll_training(self):
        if self.job is not None:
            self.job.poll()
        return self.job

    def cancel_training(self, wait: bool = False) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel(wait=wait)

    # ---------------------------------------------------------------- 6 apply
    def refine(self, volumeNode, segmentationNode, segmentId, modelPath, device="auto", refineFunction=None,
               also=(), tta=True):
        """Refine the segment in place with the model, guarded as ``scorerefine refine`` (or with
        ``refineFunction(image, initial)``); ``also``: checkpoints to average with the model;
        ``tta``: test-time augmentation (False: one network pass per window)."""
        refine = refineFunction or bridge.model_refiner(modelPath, device or "auto", also=also,
                                                        tta=tta)
        return bridge.refine_segment(volumeNode, segmentationNode, segmentId, refine)

    def start_refine(self, volumeNode, segmentationNode, segmentId, model, device="auto", also="",
                     tta=True):
        """Start ``scorerefine refine`` on the segment in a background process. ``also``: more
        checkpoints of the model's setting (other seeds) to average with it, a list of paths or
        the panel's ``;``-separated text (:func:`SCORERefineLib.refiners.checkpoint_list`);
        ``tta=False``: one network pass per window (``--no-tta``)."""
        from SCORERefineLib import jobs
        from SCORERefineLib.refiners import checkpoint_list

        if self.refineJob is not None and self.refineJob.running:
            raise SCORERefineError("a refinement is already running; cancel it or wait for it to end.")
        if str(model) not in catalog.BUILTIN_REFINERS and not Path(str(model)).is_file():
            raise SCORERefineError(f"no model at {model}: train one (step 5) or choose a checkpoint "
                                   f"or 'classical'.")
        also = checkpoint_list(also) if isinstance(also, str) else [Path(a) for a in also]
        if also and str(model) in catalog.BUILTIN_REFINERS:
            raise SCORERefineError(f"'{model}' is a built-in refiner; only trained checkpoints can be "
                                   f"averaged. Choose a checkpoint as the model or clear 'Also average'.")
        self._refinePrepared = bridge.prepare_refine(volumeNode, segmentationNode, segmentId, model,
                                                     device or "auto", also=also, tta=tta)
        self.refineJob = jobs.BackgroundJob(self._refinePrepared.command,
                                            Path(self._refinePrepared.workdir) / "refine.log",
                                            checkpoint=None, what="refinement").start()
        if self.refineJob.state == jobs.FAILED:
            raise SCORERefineError(self.refineJob.error_message)
        return self.refineJob

    def poll_refine(self, segmentationNode, segmentId):
        """Poll the refinement; when it finished, write the result into the segment and return it."""
        job = self.refineJob
        if job is None:
            return None
        job.poll()
        if job.running or self._refinePrepared is None:
            return None
        prepared, self._refinePrepared = self._refinePrepared, None
        if job.state != "finished":
            import shutil
            shutil.rmtree(prepared.workdir, ignore_errors=True)
            return False
        regions = self.session.regions.array if self.session is not None else None
        return bridge.finish_refine(prepared, segmentationNode, segmentId, regions)

    def cancel_refine(self) -> None:
        if self.refineJob is not None and self.refineJob.running:
            self.refineJob.cancel(wait=False)

    def undo_refine(self, segmentationNode, segmentId) -> bool:
        return bridge.undo_refinement(segmentationNode, bridge.find_segment(segmentationNode, segmentId))


#
# Test (runs inside Slicer: Reload and Test in developer mode, or ctest in an extension build)
#

class SCORERefineTest(ScriptedLoadableModuleTest):
    """The whole workflow on a synthetic CT (no download) with a tiny CPU training."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_bad_input()
        self.setUp()
        self.test_full_workflow()

    def _synthetic_case(self):
        import numpy as np
        from SCORERefineLib.imageio import Geometry, Volume

        geometry = Geometry(size=(48, 44, 24), spacing=(0.9, 0.9, 2.0), origin=(-20.0, 15.0, -60.0))
        zz, yy, xx = np.indices(geometry.shape, dtype=float)
        shaft = ((yy - 22) / 7.0) ** 2 + ((xx - 24) / 6.0) ** 2 <= 1.0
        ct = np.where(shaft, 900.0, -50.0).astype(np.float32)
        initial = np.roll(shaft, 1, axis=2).astype(np.uint8)  # a shifted (imperfect) initial mask
        volumeNode = bridge.volume_to_node(slicer.mrmlScene, Volume(ct, geometry), "SyntheticCT")
        segmentation = bridge.new_segmentation_node(slicer.mrmlScene, "Initial", volumeNode)
        segmentId = bridge.add_mask_segment(segmentation, Volume(initial, geometry), "humerus_left")
        return volumeNode, segmentation, segmentId, initial

    def test_bad_input(self):
        self.delayDisplay("Bad input gives clear errors")
        logic = SCORERefineLogic()
        empty = bridge.new_segmentation_node(slicer.mrmlScene, "Empty")
        for call, expected in ((lambda: logic.split(None, empty, "x", "patches", 4, 3.0), "no volume selected"),):
            try:
                call()
            except SCORERefineError as exc:
                self.assertIn(expected, str(exc))
            else:
                self.fail("bad input was accepted")
        volumeNode, _segmentation, _segmentId, _initial = self._synthetic_case()
        with self.assertRaises(SCORERefineError):
            logic.split(volumeNode, empty, "humerus_left", "patches", 4, 3.0)
        self.delayDisplay("Bad input test passed")

    def test_full_workflow(self):
        import numpy as np

        self.delayDisplay("Full SCORERefine workflow")
        logic = SCORERefineLogic()
        volumeNode, segmentation, segmentId, initial = self._synthetic_case()

        # 2 regions
        result = logic.split(volumeNode, segmentation, segmentId, "slabs", 4, 3.0, caseId="case_000",
                             rater="tester")
        self.assertEqual(result.n_regions, len(logic.session.labels))
        # 3 rate with the keys: under-segmented everywhere but the last region
        session = logic.session
        for _label in session.labels[:-1]:
            session.handle_key("3")
            session.handle_key("U")
            session.handle_key("N")
        session.handle_key("5")
        self.assertTrue(session.all_rated)
        # the module reloaded in the middle: ratings come back from the scene
        reloaded = SCORERefineLogic()
        self.assertTrue(reloaded.restore_session(volumeNode))
        self.assertEqual(reloaded.session.feedback.to_dict(), session.feedback.to_dict())

        # 3b scribbles: the two segments, one stroke in each (written as a Paint stroke would be)
        segments = bridge.ensure_scribble_segments(slicer.mrmlScene, volumeNode)
        image = bridge.volume_from_node(volumeNode)
        L = slicer.vtkSlicerSegmentationsModuleLogic
        for sid, (y, x) in ((segments.inside_id, (22, 24)), (segments.outside_id, (22, 33))):
            stroke = np.zeros(image.geometry.shape, np.uint8)
            stroke[12, y - 3:y + 4, x] = 1
            self.assertTrue(L.SetBinaryLabelmapToSegment(
                bridge._oriented_image(image.with_array(stroke)), segments.node, sid, L.MODE_REPLACE))
        counted = logic.count_scribbles(segments.node, volumeNode)
        self.assertEqual((counted["foreground"], counted["background"], counted["slices"]), (1, 1, 1))

        # 4 dataset
        dataset = Path(tempfile.mkdtemp(prefix="SCORERefineTest-"))
        case = logic.save_case(dataset, "case_000", volumeNode, segmentation, segmentId, segments.node)
        self.assertTrue(case.feedback_path.exists() and case.regions_path.exists())
        self.assertEqual(sorted(np.unique(case.load_scribbles().array).tolist()), [0, 1, 2])

        # 5 train (background process, tiny network, CPU), Slicer stays responsive
        job = logic.start_training(dataset, dataset / "model.pt", "score", 3, "cpu",
                                   extra=["--network", "tiny", "--patch", "16", "16", "16", "--batch", "1"])
        import time
        deadline = time.monotonic() + 300
        while job.running and time.monotonic() < deadline:
            slicer.app.processEvents()
            logic.poll_training()
            time.sleep(0.1)
        self.assertEqual(job.state, "finished", job.error_message)
        self.assertTrue((dataset / "model.pt").exists())

        # 6 apply in place, then undo restores the initial segment exactly
        res = logic.refine(volumeNode, segmentation, segmentId, dataset / "model.pt", "cpu")
        self.assertGreaterEqual(res.volume_after_ml, 0.0)
        self.assertTrue(logic.undo_refine(segmentation, segmentId))
        image = bridge.volume_from_node(volumeNode)
        restored = bridge.segment_mask(segmentation, segmentId, image.geometry).mask.array
        self.assertTrue(np.array_equal(restored, initial))
        self.delayDisplay("Full workflow test passed")
