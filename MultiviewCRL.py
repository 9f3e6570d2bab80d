"""3D Slicer module: content/style embeddings, reconstructions and cross-view images of a T1w/T2w pair.

A thin front end over MultiviewCRLLib: the Logic calls the library's one node-level analysis
(``MultiviewCRLLib.slicer_nodes.analyse_nodes``), whose torch work runs on a background thread
while the panel stays live; torch, monai and nibabel are imported only after a dependency check.
"""

import logging
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
DEMO_MODEL = MODULE_DIR / "Resources" / "Models" / "demo"
TEST_DATA = MODULE_DIR / "Resources" / "TestData"


class MultiviewCRL(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Multiview CRL"
        self.parent.categories = ["Neuroimaging"]
        self.parent.dependencies = []
        self.parent.contributors = ["MultiviewCRL developers"]
        self.parent.helpText = """
Learned content (anatomy shared by T1w and T2w) and style (contrast) embeddings of a brain MRI pair.
<ol>
<li>Select a T1-weighted and/or a T2-weighted volume (a missing view is synthesised with the
training cohort's mean style).</li>
<li>Keep the bundled demo model or load a model folder trained with <code>trainer_cli.py</code>.</li>
<li>Apply. New volumes: reconstructions, cross-view images (T1w&rarr;T2w, T2w&rarr;T1w) and error
maps, on the model's grid, overlaid on the inputs; a table and a plot of the embeddings; the
content cosine, style distance and nearest training subjects in the panel.</li>
</ol>
"""
        self.parent.acknowledgementText = """
Builds on MONAI, PyTorch, nibabel and 3D Slicer. The embedded demo cohort is simulated from the MNI
ICBM152 2009a template (nilearn) with BrainWeb tissue parameters.
"""


@parameterNodeWrapper
class MultiviewCRLParameterNode:
    inputT1: vtkMRMLScalarVolumeNode
    inputT2: vtkMRMLScalarVolumeNode
    modelFolder: Path = DEMO_MODEL
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    prepare: bool = True


class MultiviewCRLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._runner = None
        self._busy = False
        self._previousLayout = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MultiviewCRL.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MultiviewCRLLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.alignButton.connect("clicked(bool)", self.onAlign)
        self.ui.restoreButton.connect("clicked(bool)", self.onRestore)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.modelCardButton.connect("clicked(bool)", self.onOpenModelCard)
        self.ui.restoreLayoutButton.connect("clicked(bool)", self.onRestoreLayout)
        self.setBusy(False)
        self.initializeParameterNode()

    def cleanup(self):
        self.cancelRun()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.cancelRun()  # leaving the module ends its run, as closing the scene does
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event):
        self.cancelRun()  # its inputs are leaving the scene
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def updateButtons(self, caller=None, event=None):
        """Apply with a model and at least one input, Align with a model and both, neither during a
        run; the model card's button when the bundle has one."""
        from MultiviewCRLLib.runtime.control import can_align, can_apply, can_restore, model_card

        p = self._parameterNode
        choices = (p.inputT1, p.inputT2, p.modelFolder) if p else (None, None, None)
        self.ui.applyButton.setEnabled(not self._busy and can_apply(*choices))
        self.ui.alignButton.setEnabled(not self._busy and can_align(*choices))
        self.ui.restoreButton.setEnabled(not self._busy and can_restore(*choices))
        self.ui.modelCardButton.setEnabled(model_card(choices[2]) is not None)

    def onLoadModel(self):
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Model bundle folder (weights.pt + settings.json)"
        )
        if folder:
            self._parameterNode.modelFolder = Path(folder)

    def onOpenModelCard(self):
        from MultiviewCRLLib.runtime.control import model_card

        card = model_card(self._parameterNode.modelFolder) if self._parameterNode else None
        if card is not None:
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(card)))

    def ensureDependencies(self) -> bool:
        """Ask before installing what the run path imports: PyTorch through the PyTorch extension,
        the rest of Resources/requirements.txt through pip."""
        missing = self.logic.missingRequirements()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            f"Multiview CRL needs {', '.join(missing)}. PyTorch is installed through the PyTorch extension, "
            "the others with pip. Install now?"
        ):
            return False
        with slicer.util.tryWithErrorDisplay("Multiview CRL could not install its dependencies.", waitCursor=True):
            return self.logic.installRequirements(missing)
        return False

    def setBusy(self, busy: bool):
        self._busy = busy
        self.ui.cancelButton.setEnabled(busy)
        self.ui.progressBar.setVisible(busy)
        self.ui.progressBar.setRange(0, 0)
        self.updateButtons()

    def runInBackground(self, status: str, work):
        """``work(runner)`` with the panel busy and Cancel live; its result, or None after a
        failure (shown with what to do about it) or a cancel."""
        if not self.ensureDependencies():
            return None
        from MultiviewCRLLib.slicer_nodes import BackgroundRunner, Cancelled, remedy

        self.setBusy(True)
        self.ui.statusLabel.text = status
        try:
            self._runner = BackgroundRunner(slicer.app.processEvents)
            return work(self._runner)
        except Cancelled as err:
            self.ui.statusLabel.text = str(err).capitalize() + "."
            return None
        except Exception as err:  # a library error says what is wrong; the panel adds what to do
            logging.exception("Multiview CRL failed")
            message = f"{err}\n\n{remedy(err)}".strip()
            self.ui.statusLabel.text = f"Failed: {err}"
            slicer.util.errorDisplay(f"Multiview CRL failed: {message}")
            return None
        finally:
            self._runner = None
            self.setBusy(False)

    def onApply(self):
        p = self._parameterNode
        result = self.runInBackground(
            "Running the encoder and decoder…",
            lambda runner: self.logic.process(p.inputT1, p.inputT2, p.modelFolder, p.device, p.prepare, runner=runner),
        )
        if result is None:
            return
        self.ui.statusLabel.text = self.logic.summary(result)
        self._previousLayout = slicer.app.layoutManager().layout
        self.showComparison(p, result)
        check = result["analysis"].check
        if check is not None and check.warnings:  # shown after the outputs, which stay for inspection
            slicer.util.warningDisplay("\n\n".join(check.warnings), windowTitle="Multiview CRL: check the inputs")

    def runPairAction(self, status: str, action, summary):
        """``action(t1, t2, model folder, device, runner=…)`` of the logic in the background, its
        ``summary`` in the status line; its result, or None after a failure or a cancel."""
        p = self._parameterNode
        result = self.runInBackground(
            status, lambda runner: action(p.inputT1, p.inputT2, p.modelFolder, p.device, runner=runner)
        )
        if result is not None:
            self.ui.statusLabel.text = summary(result)
        return result

    def onAlign(self):
        self.runPairAction(
            "Registering the T2w to the T1w through the content maps…", self.logic.align, self.logic.alignmentSummary
        )

    def onRestore(self):
        result = self.runPairAction(
            "Restoring the thick-slice T2w on a 2 mm grid…", self.logic.restore, self.logic.restorationSummary
        )
        if result is not None:
            slicer.util.setSliceViewerLayers(background=result["restored"], fit=True)

    def onCancel(self):
        if self.cancelRun():
            self.ui.statusLabel.text = "Cancelling…"

    def cancelRun(self) -> bool:
        """Cancel the run in progress, if any (it stops within a step); whether there was one."""
        if self._runner is None:
            return False
        self._runner.cancel()
        return True

    def onRestoreLayout(self):
        if self._previousLayout is not None:
            slicer.app.layoutManager().setLayout(self._previousLayout)

    @staticmethod
    def showComparison(parameterNode, result: dict):
        """Inputs above, reconstructions and cross-view images below, linked slice views."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutThreeOverThreeView)
        inputs = [node for node in (parameterNode.inputT1, parameterNode.inputT2) if node is not None]
        outputs = list(result["images"].values())
        views = ["Red", "Yellow", "Green", "Slice4", "Slice5", "Slice6"]
        for viewName, node in zip(views, (inputs + [None] * 3)[:3] + outputs[:3]):
            widget = layoutManager.sliceWidget(viewName)
            if widget is None or node is None:
                continue
            composite = widget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetLinkedControl(True)
            widget.sliceLogic().FitSliceToAll()


class MultiviewCRLLogic(ScriptedLoadableModuleLogic):
    """Nodes in, nodes out, through the library's one node-level analysis; no dialogs, no layout."""

    def getParameterNode(self):
        return MultiviewCRLParameterNode(super().getParameterNode())

    @staticmethod
    def missingRequirements() -> list:
        """Requirements of Resources/requirements.txt that this Slicer's Python does not meet."""
        from MultiviewCRLLib.dependencies import missing_requirements

        return missing_requirements()

    @staticmethod
    def installRequirements(requirements: list) -> bool:
        """torch through the PyTorch extension's installer, the rest with Slicer's pip."""
        torch = [r for r in requirements if r.startswith("torch")]
        others = [r for r in requirements if not r.startswith("torch")]
        if torch:
            try:
                import PyTorchUtils
            except ImportError as err:
                raise RuntimeError(
                    "PyTorch is needed: install the 'PyTorch' extension from the Extensions Manager and restart Slicer"
                ) from err
            version = torch[0][len("torch") :]
            installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=version
            )
            if installed is None:
                return False
        if others:
            slicer.util.pip_install(" ".join(f'"{r}"' for r in others))
        return True

    def process(self, t1Node, t2Node, modelFolder=DEMO_MODEL, device="auto", prepare=True, runner=None) -> dict:
        """Analyse the pair and add the result nodes; ``prepare``: brain extraction and alignment
        for models that carry a template; ``runner``: where the torch work runs (inline when None,
        or a ``BackgroundRunner``)."""
        from MultiviewCRLLib.slicer_nodes import analyse_nodes, run_inline

        return analyse_nodes(
            Path(modelFolder), t1Node, t2Node, device, slicer.mrmlScene, runner or run_inline, prepare=prepare
        )

    def align(self, t1Node, t2Node, modelFolder=DEMO_MODEL, device="auto", runner=None) -> dict:
        """Register the T2w node to the T1w node through the model's content maps and place the
        T2w under the new transform node."""
        from MultiviewCRLLib.slicer_nodes import align_nodes, run_inline

        return align_nodes(Path(modelFolder), t1Node, t2Node, device, slicer.mrmlScene, runner or run_inline)

    def restore(self, t1Node, t2Node, modelFolder=DEMO_MODEL, device="auto", runner=None) -> dict:
        """Restore the low-resolution or thick-slice T2w node on a 2 mm grid (guided by the T1w node
        when given) and add the restored volume node."""
        from MultiviewCRLLib.slicer_nodes import restore_nodes, run_inline

        return restore_nodes(Path(modelFolder), t1Node, t2Node, device, slicer.mrmlScene, runner or run_inline)

    @staticmethod
    def restorationSummary(result: dict) -> str:
        record = result["record"]
        guide = "guided by the T1w" if record["network"] == "guided" else "alone"
        note = f" Note: {result['uncovered']}." if result.get("uncovered") else ""
        return (
            f"Added '{result['restored'].GetName()}': the T2w restored on a {record['grid_spacing_mm'][0]:g} mm grid "
            f"({guide}; {record['seconds']:.1f} s).{note}"
        )

    @staticmethod
    def alignmentSummary(result: dict) -> str:
        registration = result["registration"]
        return (
            f"The T2w now lies under the transform '{result['transform'].GetName()}' (rigid, through "
            f"the content maps; {registration.seconds:.1f} s). Residual: {registration.residual:.3f} "
            "(1 minus the aligned maps' correlation inside the brain)."
        )

    @staticmethod
    def summary(result: dict) -> str:
        """The analysis in plain lines: the input check's warnings first, then the figures."""
        from MultiviewCRLLib.runtime.inference import describe_analysis

        return describe_analysis(result["analysis"])


class MultiviewCRLTest(ScriptedLoadableModuleTest):
    """Inside Slicer: the bundled demo model, with scan preparation, on MRBrainT1/MRBrainT2
    (CTMRBrain sample data: heads with skull), or on the raw-looking synthetic pair shipped in
    Resources/TestData (skull, pose, an oblique T2w slab) when the sample data cannot be downloaded."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MultiviewCRL_pair()
        self.setUp()
        self.test_MultiviewCRL_cancel()

    def loadPair(self):
        try:
            import SampleData

            SampleData.downloadSample("CTMRBrain")
            t1, t2 = slicer.util.getNode("MRBrainT1"), slicer.util.getNode("MRBrainT2")
            if t1 is not None and t2 is not None:
                return t1, t2
        except Exception as err:  # no network: the pair shipped with the module
            logging.info(f"CTMRBrain sample data unavailable ({err}); using the shipped raw-looking synthetic pair")
        from MultiviewCRLLib.config import VIEWS

        return tuple(slicer.util.loadVolume(str(TEST_DATA / f"synthetic_{view}.nii.gz")) for view in VIEWS)

    def test_MultiviewCRL_pair(self):
        self.delayDisplay("Running the bundled demo model on a T1w/T2w pair")
        logic = MultiviewCRLLogic()
        missing = logic.missingRequirements()
        self.assertTrue(not missing or logic.installRequirements(missing))
        t1, t2 = self.loadPair()
        from MultiviewCRLLib.slicer_nodes import BackgroundRunner

        result = logic.process(t1, t2, DEMO_MODEL, "cpu", runner=BackgroundRunner(slicer.app.processEvents))
        import numpy as np

        self.assertEqual(len(result["volumes"]), 10)  # with the two content maps
        for node in result["volumes"].values():
            self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(node)).all())
        self.assertIsNotNone(result["analysis"].content_cosine)
        self.assertIsNotNone(result["transform"])  # prepared: the outputs sit under the template-to-input transform
        self.assertEqual(result["chart"].GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")

    def test_MultiviewCRL_cancel(self):
        self.delayDisplay("Cancelling an analysis as soon as it starts")
        t1, t2 = self.loadPair()
        from MultiviewCRLLib.slicer_nodes import BackgroundRunner, Cancelled

        def cancelAtOnce():  # the runner's first poll of the event loop
            runner.cancel()
            slicer.app.processEvents()

        runner = BackgroundRunner(cancelAtOnce)
        before = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(Cancelled):
            MultiviewCRLLogic().process(t1, t2, DEMO_MODEL, "cpu", runner=runner)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)  # nothing added part-way
        self.delayDisplay("Test passed")
