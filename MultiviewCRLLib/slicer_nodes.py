"""MRML nodes <-> arrays, and the one analysis of a pair of nodes that the Slicer module's Logic,
its self-test and pytest all run (:func:`analyse_nodes`). The library's only Slicer import.

Works with the full Slicer application and with the ``slicer-core`` wheel alike (only MRML and
``slicer.util``'s array helpers are used), so it is tested against real MRML outside Slicer.
Slicer arrays are indexed [k, j, i]; the library's are [i, j, k] with a RAS affine (IJKToRAS).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import slicer
import slicer.util
import vtk
from monai.data import MetaTensor

from .config import VIEWS, other_view
from .runtime.alignment import AlignmentError
from .runtime.bundle import Bundle, BundleError, load_bundle
from .runtime.control import Cancelled, CancelToken
from .runtime.device import DeviceError, select_device
from .runtime.inference import PairAnalysis, analyse_pair, cross_view_name
from .runtime.preparation import BrainMaskError
from .runtime.restoration import GuideMismatch, RestorationError


class NodeError(ValueError):
    """A node that cannot be analysed; the message names the node and the problem."""


# What the user can do about each library error, in the module panel's terms; an error's remedy is
# that of its nearest class here (:func:`remedy`). Cancelled is no failure and has none.
REMEDIES = {
    NodeError: "Select another volume under Inputs.",
    BundleError: "Choose another model folder under Model (Load model folder…).",
    DeviceError: "Choose 'cpu' or 'auto' under Device.",
    BrainMaskError: (
        "Select a brain MRI with background around the head under Inputs; for a raw scan (skull, scalp, "
        "another pose) keep 'Prepare raw scans' on under Model."
    ),
    RestorationError: (
        "Select under Inputs the coarse or thick-slice volume as the T2w and, as its guide, the T1w of the same "
        "session; a volume as fine as the 2 mm grid needs no restoration."
    ),
    GuideMismatch: (
        "Select as the T1w this patient's own scan of the same session, or leave the T1w empty to restore the "
        "view alone."
    ),
    AlignmentError: (
        "Select brain MRI of one subject under Inputs; for scans that are already skull-stripped and aligned "
        "to the model's template, turn 'Prepare raw scans' off under Model."
    ),
}


def remedy(error: BaseException) -> str:
    """What to do about ``error`` in the panel: the remedy of the first class of its MRO that has
    one, or "" for an error the library does not raise on purpose."""
    return next((REMEDIES[kind] for kind in type(error).__mro__ if kind in REMEDIES), "")


def ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def array_affine_from_node(node) -> tuple[np.ndarray, np.ndarray]:
    """An [i, j, k] float32 array and the 4x4 IJKToRAS of a scalar volume node, checked for use."""
    if node is None:
        raise NodeError("no volume node given")
    name = node.GetName()
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise NodeError(f"volume '{name}' is a label map, not an MR image")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise NodeError(f"node '{name}' is a {node.GetClassName()}, not a scalar volume")
    if node.GetImageData() is None:
        raise NodeError(f"volume '{name}' has no image data")
    array = slicer.util.arrayFromVolume(node)  # [k, j, i]
    if array.ndim != 3 or min(array.shape) < 2:
        raise NodeError(f"volume '{name}' is not a 3D image (shape {tuple(array.shape[::-1])})")
    if not np.isfinite(array).all():
        raise NodeError(f"volume '{name}' has {int((~np.isfinite(array)).sum())} non-finite (NaN/Inf) voxels")
    if not np.any(array):
        raise NodeError(f"volume '{name}' is empty (all voxels are zero)")
    return np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32), ijk_to_ras(node)


def read_volume_node(path, scene=None):
    """A scalar volume node read from an image file by Slicer's own storage node (as "Add Data" does)."""
    scene = scene or slicer.mrmlScene
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(path).name.split(".")[0])
    if not storage.ReadData(node):
        raise NodeError(f"could not read a volume from {path}")
    return node


def volume_node_from_array(array: np.ndarray, affine: np.ndarray, name: str, scene=None):
    """A new scalar volume node holding an [i, j, k] array placed by its RAS affine."""
    scene = scene or slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(
        node, np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0))
    )
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(affine, dtype=np.float64)))
    return node


def embedding_table(analysis: PairAnalysis, content_dim: int, name: str, scene=None):
    """A table node: one row per latent dimension, its block, and each view's value."""
    scene = scene or slicer.mrmlScene
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    views = [v for v in VIEWS if v in analysis.latents]
    latent_dim = len(next(iter(analysis.latents.values())))
    columns = {"dimension": np.arange(latent_dim, dtype=np.float64)}
    columns["content"] = (np.arange(latent_dim) < content_dim).astype(np.float64)
    columns.update({v: analysis.latents[v].numpy().astype(np.float64) for v in views})
    slicer.util.updateTableFromArray(table, list(columns.values()), list(columns))
    return table


def content_plot(table, views: list[str], content_dim: int, name: str, scene=None):
    """A plot chart of the content dimensions of each view, one line series per view."""
    scene = scene or slicer.mrmlScene
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.SetTitle(f"Content dimensions 0..{content_dim - 1}")
    chart.SetXAxisTitle("content dimension")
    chart.SetYAxisTitle("value")
    chart.SetXAxisRangeAuto(False)  # the table also holds the style dims; show content only
    chart.SetXAxisRange(-0.5, content_dim - 0.5)
    for view in views:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(f"{name} {view}"))
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName("dimension")
        series.SetYColumnName(view)
        series.SetPlotType(series.PlotTypeScatter)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


def read_inputs(t1_node=None, t2_node=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{view: ([i, j, k] array, IJKToRAS)} of the given nodes, each checked. Main thread only."""
    inputs = {view: node for view, node in zip(VIEWS, (t1_node, t2_node)) if node is not None}
    if not inputs:
        raise NodeError("select at least one of the T1w and T2w volumes")
    return {view: array_affine_from_node(node) for view, node in inputs.items()}


def add_result_nodes(analysis: PairAnalysis, input_names: dict[str, str], content_dim: int, scene=None) -> dict:
    """Output volume nodes (on the model grid), the embedding table and the content plot.

    ``input_names``: {view: name of its input node}. Returns {"volumes": {label: node}, "table",
    "chart", "transform", "images", "errors", "content_maps"}; "transform": for a prepared pair, the
    linear transform node that places the outputs (in the template's space) over the inputs, else
    None; "images", "errors" and "content_maps" hold the same volume nodes by kind: the keys of
    ``analysis.errors`` ("T1w reconstruction", "T2w→T1w", ...) and, for the spatial family, the
    views (each map shown as its strongest channel, 1..K).
    """
    scene = scene or slicer.mrmlScene
    base = " + ".join(input_names[v] for v in VIEWS if v in input_names)
    images = {
        f"{v} reconstruction": (f"{input_names[v]} reconstruction", x) for v, x in analysis.reconstructions.items()
    }
    for target, x in analysis.cross_view.items():
        source = other_view(target)
        images[cross_view_name(source, target)] = (f"{input_names[source]} → {target}", x)
    errors = {kind: (f"{base} error {kind}", x) for kind, x in analysis.errors.items()}
    content_maps = {
        view: (f"{input_names[view]} content map", MetaTensor(m.as_tensor().argmax(0).float() + 1, affine=m.affine))
        for view, m in analysis.content_maps.items()
    }

    def nodes(named: dict) -> dict:
        return {
            kind: volume_node_from_array(x.numpy(), x.affine.numpy(), label, scene)
            for kind, (label, x) in named.items()
        }

    by_kind = {"images": nodes(images), "errors": nodes(errors), "content_maps": nodes(content_maps)}
    volumes = {node.GetName(): node for group in by_kind.values() for node in group.values()}
    transform = None
    if analysis.to_input is not None:  # prepared: the outputs lie in the template's space
        transform = scene.AddNewNodeByClass(
            "vtkMRMLLinearTransformNode", scene.GenerateUniqueName(f"{base} template to input")
        )
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(analysis.to_input))
        for node in volumes.values():
            node.SetAndObserveTransformNodeID(transform.GetID())
    table = embedding_table(analysis, content_dim, f"{base} embeddings", scene)
    chart = content_plot(table, list(analysis.latents), content_dim, f"{base} content", scene)
    return {"volumes": volumes, "table": table, "chart": chart, "transform": transform, **by_kind}


def run_inline(work: Callable[[CancelToken], object]):
    """Run the analysis's torch work right here (scripts, tests), with a token never cancelled."""
    return work(CancelToken())


class BackgroundRunner:
    """Run the analysis's torch work on a worker thread while ``process_events`` keeps the caller's
    event loop (Slicer's GUI) alive. ``work(token)`` checks the runner's token between its stages
    and inside its registrations, so ``cancel()`` (from the event loop or any thread) ends it within
    a step and the call raises :class:`Cancelled`: nothing reaches the scene. MRML is only touched
    on the calling thread. One run per runner: a cancelled runner stays cancelled."""

    def __init__(self, process_events: Callable[[], None] = lambda: None, poll_seconds: float = 0.05):
        self.process_events, self.poll_seconds = process_events, poll_seconds
        self.token = CancelToken()

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    def cancel(self) -> None:
        self.token.cancel()

    def __call__(self, work: Callable[[CancelToken], object]):
        outcome = {}

        def target():
            try:
                outcome["value"] = work(self.token)
            except Exception as err:  # re-raised on the calling thread
                outcome["error"] = err

        thread = threading.Thread(target=target, name="MultiviewCRL analysis", daemon=True)
        thread.start()
        while thread.is_alive():
            self.process_events()
            thread.join(self.poll_seconds)
        if self.cancelled:  # whatever the work ended with, the user asked for nothing
            raise Cancelled("cancelled; nothing was added to the scene") from outcome.get("error")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def bundle_on(model: Bundle | Path | str, device) -> Bundle:
    """A loaded bundle moved to ``device``, or the bundle folder ``model`` loaded there."""
    if not isinstance(model, Bundle):
        return load_bundle(model, device)
    for module in (model.encoder, model.decoder, *model.restoration.values()):
        module.to(device)
    return model


def analyse_nodes(
    model: Bundle | Path | str,
    t1_node=None,
    t2_node=None,
    device: str = "cpu",
    scene=None,
    runner: Callable = run_inline,
    prepare: bool = True,
) -> dict:
    """Analyse a pair of volume nodes (either may be None) and add the results to the scene.

    ``model``: a loaded bundle or a bundle folder (then loaded by the runner, on ``device``).
    ``prepare``: brain extraction and alignment, when the bundle carries a template.
    ``runner(work)`` runs the torch work, ``work(token)``, and returns its result: :func:`run_inline`,
    or a :class:`BackgroundRunner` (whose ``cancel()`` stops it). Inputs are checked first and results
    are added only after the whole analysis succeeded: a failure or a cancel leaves the scene as it was.

    Returns {"analysis": PairAnalysis, "bundle": Bundle, "volumes": {label: node}, "table", "chart",
    "images", "errors"} (see :func:`add_result_nodes`).
    """
    arrays = read_inputs(t1_node, t2_node)
    names = {view: node.GetName() for view, node in zip(VIEWS, (t1_node, t2_node)) if node is not None}

    def work(cancel: CancelToken) -> tuple[Bundle, PairAnalysis]:
        torch_device = select_device(device)
        bundle = bundle_on(model, torch_device)
        cancel.check()
        prepared = prepare and bundle.template is not None
        t1, t2 = arrays.get("T1w"), arrays.get("T2w")
        return bundle, analyse_pair(bundle, t1, t2, torch_device, names=names, prepare=prepared, cancel=cancel)

    bundle, analysis = runner(work)
    nodes = add_result_nodes(analysis, names, bundle.content_dim, scene)
    return {"analysis": analysis, "bundle": bundle, **nodes}


def align_nodes(
    model: Bundle | Path | str, t1_node, t2_node, device: str = "cpu", scene=None, runner: Callable = run_inline
) -> dict:
    """Register the T2w node to the T1w node rigidly through the bundle's content maps and place the T2w
    under a new linear transform node that aligns it, unresampled. A bundle without content maps,
    or a registration that diverges, raises with the nodes' names and adds nothing to the scene.

    Returns {"registration": Registration, "transform": the transform node}.
    """
    from .runtime.registration import register_views

    if t1_node is None or t2_node is None:
        raise NodeError("select both a T1w and a T2w volume to align")
    arrays = read_inputs(t1_node, t2_node)
    names = (f"the T1w '{t1_node.GetName()}'", f"the T2w '{t2_node.GetName()}'")

    def work(cancel: CancelToken):
        bundle = bundle_on(model, select_device(device))
        cancel.check()
        # Rigid: two scans of one patient's brain, and with affine freedom the maps' disagreements
        # pass for scale (benchmarks/registration.py: rigid within 2 mm, affine never).
        return register_views(bundle, *arrays.values(), names=names, kind="rigid", cancel=cancel)

    registration = runner(work)
    scene = scene or slicer.mrmlScene
    transform = scene.AddNewNodeByClass(
        "vtkMRMLLinearTransformNode", scene.GenerateUniqueName(f"{t2_node.GetName()} to {t1_node.GetName()}")
    )
    # The registration maps T1w points to T2w points; the node carries the T2w onto the T1w.
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.linalg.inv(registration.matrix)))
    t2_node.SetAndObserveTransformNodeID(transform.GetID())
    return {"registration": registration, "transform": transform}


def restore_nodes(
    model: Bundle | Path | str, t1_node, t2_node, device: str = "cpu", scene=None, runner: Callable = run_inline
) -> dict:
    """Restore the low-resolution or thick-slice T2w node on a 2 mm grid, guided by the T1w node when
    one is given, and add the restored volume as a new node over the inputs. Inputs are
    skull-stripped, as the model's cohort; a failure or a cancel adds nothing.

    Returns {"restored": the new volume node, "record": what was done, "uncovered": the words for
    the share of the T1w's brain the T2w has no data in, or None}.
    """
    from .runtime.restoration import restore_scan, uncovered_words

    if t2_node is None:
        raise NodeError("select the low-resolution or thick-slice volume as the T2w")
    arrays = read_inputs(t1_node, t2_node)
    names = {"lowres": f"the T2w '{t2_node.GetName()}'"}
    if t1_node is not None:
        names["guide"] = f"the T1w '{t1_node.GetName()}'"

    def work(cancel: CancelToken):
        bundle = bundle_on(model, select_device(device))
        cancel.check()
        return restore_scan(bundle, arrays["T2w"], arrays.get("T1w"), names)

    restored = runner(work)
    node = volume_node_from_array(
        restored.image[0].numpy(), restored.image.affine.numpy(), f"{t2_node.GetName()} restored", scene
    )
    return {"restored": node, "record": restored.record, "uncovered": uncovered_words(restored.record, names)}
