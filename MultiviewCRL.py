"""3D Slicer module: content/style embeddings, reconstructions and cross-view images of a T1w/T2w pair.

A thin front end over MultiviewCRLLib: the analysis runs on a background thread (torch, monai and
nibabel are imported only then, after a dependency check) and the results come back as new
volume, table and plot nodes.
"""

import logging
import threading
from pathlib import Path
from typing import Annotated

import qt
import slicer
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
TORCH_REQUIREMENT = ">=2.1"
PIP_REQUIREMENTS = ("monai>=1.3", "nibabel>=5.0")


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


class MultiviewCRLWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.timeout.connect(self._poll)
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
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.loadModelButton.connect("clicked(bool)", self.onLoadModel)
        self.ui.restoreLayoutButton.connect("clicked(bool)", self.onRestoreLayout)
        self.ui.progressBar.setVisible(False)
        self.ui.cancelButton.setEnabled(False)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onLoadModel(self):
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), "Model bundle folder (weights.pt + settings.json)"
        )
        if folder:
            self._parameterNode.modelFolder = Path(folder)

    def onApply(self):
        with slicer.util.tryWithErrorDisplay("Multiview CRL could not start.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            p = self._parameterNode
            self._job = self.logic.start(p.inputT1, p.inputT2, p.modelFolder, p.device)
            self.ui.applyButton.setEnabled(False)
            self.ui.cancelButton.setEnabled(True)
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.setRange(0, 0)
            self.ui.statusLabel.text = "Running the encoder and decoder…"
            self._timer.start()

    def onCancel(self):
        if self._job:
            self._job.cancelled = True
            self.ui.statusLabel.text = "Cancelling; the current step finishes first…"

    def _poll(self):
        job = self._job
        if job is None or job.thread.is_alive():
            return
        self._timer.stop()
        self._job = None
        self.ui.applyButton.setEnabled(True)
        self.ui.cancelButton.setEnabled(False)
        self.ui.progressBar.setVisible(False)
        if job.cancelled:
            self.ui.statusLabel.text = "Cancelled; nothing was added to the scene."
            return
        if job.error is not None:
            self.ui.statusLabel.text = f"Failed: {job.error}"
            slicer.util.errorDisplay(f"Multiview CRL failed: {job.error}")
            return
        with slicer.util.tryWithErrorDisplay("Could not add the results to the scene.", waitCursor=True):
            result = self.logic.finish(job)
            self.ui.statusLabel.text = self.logic.summary(result)
            self._previousLayout = slicer.app.layoutManager().layout
            self.logic.showComparison(job, result)

    def onRestoreLayout(self):
        if self._previousLayout is not None:
            slicer.app.layoutManager().setLayout(self._previousLayout)


class AnalysisJob:
    """One analysis on a background thread: inputs are copied arrays, so no MRML is touched there."""

    def __init__(self, arrays, names, bundle_folder, device):
        self.arrays, self.names, self.bundle_folder, self.device = arrays, names, bundle_folder, device
        self.bundle = self.analysis = self.error = None
        self.cancelled = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            from MultiviewCRLLib.runtime.bundle import load_bundle
            from MultiviewCRLLib.runtime.inference import analyse_pair
            from MultiviewCRLLib.training.trainer import select_device

            device = select_device(self.device)
            self.bundle = load_bundle(self.bundle_folder, device)
            if not self.cancelled:
                self.analysis = analyse_pair(self.bundle, self.arrays.get("T1w"), self.arrays.get("T2w"), device)
        except Exception as err:  # shown to the user in a dialog by the widget
            logging.exception("Multiview CRL analysis failed")
            self.error = err


class MultiviewCRLLogic(ScriptedLoadableModuleLogic):
    """Nodes in, nodes out. The analysis itself lives in MultiviewCRLLib."""

    def getParameterNode(self):
        return MultiviewCRLParameterNode(super().getParameterNode())

    def ensureDependencies(self) -> bool:
        """torch through the PyTorch extension; monai and nibabel through pip after confirmation."""
        try:
            import torch  # noqa: F401
        except ImportError:
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay(
                    "Multiview CRL needs PyTorch. Install the 'PyTorch' extension from the Extensions Manager, "
                    "restart Slicer, and apply again."
                )
                return False
            if (
                PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT
                )
                is None
            ):
                return False
        missing = []
        for requirement in PIP_REQUIREMENTS:
            name = requirement.split(">")[0]
            try:
                __import__(name)
            except ImportError:
                missing.append(requirement)
        if missing:
            if not slicer.util.confirmOkCancelDisplay(f"Multiview CRL needs {', '.join(missing)}. Install now?"):
                return False
            slicer.util.pip_install(" ".join(missing))
        return True

    def start(self, t1Node, t2Node, modelFolder, device="auto") -> AnalysisJob:
        from MultiviewCRLLib.slicer_nodes import read_inputs

        arrays = read_inputs(t1Node, t2Node)
        names = {view: node.GetName() for view, node in (("T1w", t1Node), ("T2w", t2Node)) if node is not None}
        job = AnalysisJob(arrays, names, Path(modelFolder), device)
        job.thread.start()
        return job

    def finish(self, job: AnalysisJob) -> dict:
        from MultiviewCRLLib.slicer_nodes import add_result_nodes

        return {"analysis": job.analysis, **add_result_nodes(job.analysis, job.names, job.bundle.content_dim)}

    def process(self, t1Node, t2Node, modelFolder=DEMO_MODEL, device="auto") -> dict:
        """Blocking: for scripts and tests."""
        job = self.start(t1Node, t2Node, modelFolder, device)
        job.thread.join()
        if job.error is not None:
            raise job.error
        return self.finish(job)

    @staticmethod
    def summary(result: dict) -> str:
        analysis = result["analysis"]
        lines = []
        if analysis.content_cosine is not None:
            lines.append(
                f"Content cosine T1w/T2w: {analysis.content_cosine:.3f}; style distance: {analysis.style_distance:.2f}"
            )
        if analysis.nearest_cohort:
            nearest = ", ".join(f"{name} ({similarity:.2f})" for name, similarity in analysis.nearest_cohort[:3])
            lines.append(f"Nearest training subjects by content: {nearest}")
        return "\n".join(lines) or "Done."

    @staticmethod
    def showComparison(job: AnalysisJob, result: dict):
        """Inputs above, reconstructions and cross-view images below, linked slice views."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutThreeOverThreeView)
        volumes = result["volumes"]
        inputs = [slicer.util.getFirstNodeByName(name) for name in job.names.values()]
        outputs = [node for label, node in volumes.items() if "error" not in label]
        views = ["Red", "Yellow", "Green", "Slice4", "Slice5", "Slice6"]
        for viewName, node in zip(views, (inputs + [None] * 3)[:3] + outputs[:3]):
            widget = layoutManager.sliceWidget(viewName)
            if widget is None or node is None:
                continue
            composite = widget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(node.GetID())
            composite.SetLinkedControl(True)
            widget.sliceLogic().FitSliceToAll()


class MultiviewCRLTest(ScriptedLoadableModuleTest):
    """Inside Slicer: the bundled demo model on MRBrainT1/MRBrainT2 (CTMRBrain sample data), or on a
    synthetic pair when the sample data cannot be downloaded."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MultiviewCRL_pair()

    def loadPair(self):
        try:
            import SampleData

            SampleData.downloadSample("CTMRBrain")
            t1, t2 = slicer.util.getNode("MRBrainT1"), slicer.util.getNode("MRBrainT2")
            if t1 is not None and t2 is not None:
                return t1, t2
        except Exception as err:  # no network: fall back to the embedded cohort
            logging.info(f"CTMRBrain sample data unavailable ({err}); using a synthetic pair")
        from MultiviewCRLLib.training.synthetic import generate_cohort

        folder = generate_cohort(Path(slicer.app.temporaryPath) / "MultiviewCRLTest", 1, seed=0, spacing_mm=2.0)
        anat = folder / "sub-0001" / "anat"
        return slicer.util.loadVolume(str(anat / "sub-0001_T1w.nii.gz")), slicer.util.loadVolume(
            str(anat / "sub-0001_T2w.nii.gz")
        )

    def test_MultiviewCRL_pair(self):
        self.delayDisplay("Running the bundled demo model on a T1w/T2w pair")
        logic = MultiviewCRLLogic()
        self.assertTrue(logic.ensureDependencies())
        t1, t2 = self.loadPair()
        result = logic.process(t1, t2, DEMO_MODEL, "cpu")
        import numpy as np

        self.assertEqual(len(result["volumes"]), 8)
        for node in result["volumes"].values():
            self.assertTrue(np.isfinite(slicer.util.arrayFromVolume(node)).all())
        self.assertIsNotNone(result["analysis"].content_cosine)
        self.assertEqual(result["chart"].GetNumberOfPlotSeriesNodes(), 2)
        self.delayDisplay("Test passed")
