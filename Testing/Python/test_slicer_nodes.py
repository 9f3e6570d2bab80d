"""The Slicer-side analysis against real MRML (slicer-core): nodes read from NIfTI by Slicer's own
storage node, outputs on the model grid that overlay the inputs, and clear errors for bad nodes."""

import json
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
import torch
from conftest import volume_path

from MultiviewCRLLib.config import PRESETS, PreprocessingConfig
from MultiviewCRLLib.runtime.bundle import BundleError, load_bundle, save_bundle
from MultiviewCRLLib.runtime.device import DeviceError
from MultiviewCRLLib.runtime.networks import Decoder, Encoder
from MultiviewCRLLib.runtime.preprocessing import preprocess_file
from MultiviewCRLLib.slicer_nodes import (
    BackgroundRunner,
    Cancelled,
    NodeError,
    analyse_nodes,
    array_affine_from_node,
    ijk_to_ras,
    read_volume_node,
)


@pytest.fixture
def scene():
    slicer.mrmlScene = slicer.vtkMRMLScene()
    return slicer.mrmlScene


@pytest.fixture(scope="module")
def report_grid_bundle(tmp_path_factory):
    """The tiny networks on the report's preprocessing grid (2 mm, 91x109x91): geometry checks need
    the real grid, not a trained model."""
    model, preprocessing = PRESETS["tiny"].model, PreprocessingConfig()
    torch.manual_seed(0)
    encoder, decoder = Encoder(model).eval(), Decoder(model, preprocessing.spatial_size).eval()
    means = {view: torch.zeros(model.style_dim) for view in ("T1w", "T2w")}
    cohort = (["sub-a", "sub-b", "sub-c"], torch.randn(3, model.content_dim))
    folder = save_bundle(
        tmp_path_factory.mktemp("bundle"), encoder, decoder, model, preprocessing, means, cohort=cohort
    )
    return load_bundle(folder)


def centroid_ras(array_ijk, affine, threshold):
    ijk = np.argwhere(array_ijk > threshold).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def test_node_path_equals_file_path(scene, cohort_1mm):
    path = volume_path(cohort_1mm, "sub-0001", "T2w")
    array, affine = array_affine_from_node(read_volume_node(scene=scene, path=path))
    from MultiviewCRLLib.runtime.preprocessing import preprocess_array

    from_node, _ = preprocess_array(array, affine)
    from_file, _ = preprocess_file(path)
    assert float((from_node - from_file).abs().max()) <= 1e-5
    assert torch.allclose(from_node.affine, from_file.affine)


def test_outputs_overlay_the_inputs(scene, cohort_1mm, report_grid_bundle):
    t1 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T1w"))
    t2 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T2w"))
    result = analyse_nodes(report_grid_bundle, t1, t2, scene=scene)
    expected = {
        "sub-0001_T1w reconstruction",
        "sub-0001_T2w reconstruction",
        "sub-0001_T2w → T1w",
        "sub-0001_T1w → T2w",
        "sub-0001_T1w + sub-0001_T2w error T1w reconstruction",
        "sub-0001_T1w + sub-0001_T2w error T2w reconstruction",
        "sub-0001_T1w + sub-0001_T2w error T2w→T1w",
        "sub-0001_T1w + sub-0001_T2w error T1w→T2w",
    }
    assert set(result["volumes"]) == expected
    kinds = {"T1w reconstruction", "T2w reconstruction", "T2w→T1w", "T1w→T2w"}
    assert set(result["images"]) == set(result["errors"]) == kinds
    assert result["images"]["T2w→T1w"] is result["volumes"]["sub-0001_T2w → T1w"]
    model_grid = result["analysis"].inputs["T1w"].affine.numpy()
    input_array, input_affine = array_affine_from_node(t1)
    input_centroid = centroid_ras(input_array, input_affine, 50)
    for label, node in result["volumes"].items():
        assert scene.GetNodeByID(node.GetID()) is node and node.GetName() == label
        array = slicer.util.arrayFromVolume(node)
        assert array.shape == (91, 109, 91) and np.isfinite(array).all()
        assert np.allclose(ijk_to_ras(node), model_grid)
        if "error" in label:  # error maps are zero outside the brain mask
            ijk_array = array.transpose(2, 1, 0)
            assert np.linalg.norm(centroid_ras(ijk_array, ijk_to_ras(node), 0) - input_centroid) < 2.0
    analysis = result["analysis"]
    content_dim = result["bundle"].content_dim
    t1_latent, t2_latent = (analysis.latents[view].numpy() for view in ("T1w", "T2w"))
    (c1, s1), (c2, s2) = ((z[:content_dim], z[content_dim:]) for z in (t1_latent, t2_latent))
    assert analysis.content_cosine == pytest.approx(c1 @ c2 / np.linalg.norm(c1) / np.linalg.norm(c2), abs=1e-5)
    assert analysis.style_distance == pytest.approx(np.linalg.norm(s1 - s2), rel=1e-5)
    assert [name for name, _ in analysis.nearest_cohort] and len(analysis.nearest_cohort) == 3
    table = result["table"]
    assert table.GetNumberOfRows() == PRESETS["tiny"].model.latent_dim
    assert slicer.util.arrayFromTableColumn(table, "T1w").shape == (PRESETS["tiny"].model.latent_dim,)
    assert result["chart"].GetNumberOfPlotSeriesNodes() == 2


def oblique_thick_slab(path, out_path):
    """The scan at ``path`` resliced as another scanner would give it: 0.9 x 0.9 x 3 mm voxels,
    rotated 15 degrees about x and 10 about z, shifted, and a slab of 36 slices that leaves the
    top and bottom of the brain unscanned. Returns the new file's affine and shape."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    source = nib.load(path)
    rx, rz = np.deg2rad(15), np.deg2rad(10)
    rotation = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]]) @ np.array(
        [[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]]
    )
    shape = (220, 240, 36)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 0.9, 3.0])
    centre = source.affine[:3, :3] @ (np.array(source.shape) / 2) + source.affine[:3, 3]
    affine[:3, 3] = centre + np.array([6.0, -8.0, 5.0]) - affine[:3, :3] @ (np.array(shape) / 2)
    nib.save(resample_from_to(source, (shape, affine), order=1), out_path)
    return affine, shape


def test_a_t2w_of_another_field_of_view_voxel_size_and_orientation_overlays_its_input(
    scene, cohort_1mm, report_grid_bundle, tmp_path
):
    t1 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T1w"))
    t2 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T2w"))
    slab_affine, slab_shape = oblique_thick_slab(volume_path(cohort_1mm, "sub-0001", "T2w"), tmp_path / "slab.nii.gz")
    slab = read_volume_node(scene=scene, path=tmp_path / "slab.nii.gz")
    reference = analyse_nodes(report_grid_bundle, t1, t2, scene=scene)["analysis"]
    result = analyse_nodes(report_grid_bundle, t1, slab, scene=scene)
    analysis = result["analysis"]
    grid = analysis.inputs["T1w"].affine.numpy()
    assert np.allclose(analysis.inputs["T2w"].affine.numpy(), grid)
    for node in result["volumes"].values():  # every output and error map on the grid that overlays the inputs
        assert np.allclose(ijk_to_ras(node), grid)
    # Within the slab, the T2w on the grid is the same picture as the full scan's, voxel for voxel.
    inside = (analysis.masks["T2w"] > 0.5) & (reference.masks["T2w"] > 0.5)
    a, b = (x.inputs["T2w"][inside].numpy() for x in (analysis, reference))
    assert np.corrcoef(a, b)[0, 1] > 0.9
    # Nothing outside the slab is filled in: grid voxels beyond its coverage are not brain.
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in analysis.masks["T2w"].shape), indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ grid[:3, :3].T + grid[:3, 3]
    in_slab = np.linalg.solve(slab_affine[:3, :3], (world - slab_affine[:3, 3]).T).T
    outside = ((in_slab < -0.5) | (in_slab > np.array(slab_shape) - 0.5)).any(1)
    assert outside.sum() > 0 and (reference.masks["T2w"].numpy().reshape(-1)[outside] > 0.5).sum() > 1000
    assert (analysis.masks["T2w"].numpy().reshape(-1)[outside] > 0.5).sum() == 0


def test_missing_view_uses_the_cohort_mean_style(scene, cohort_1mm, report_grid_bundle):
    t1 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0002", "T1w"))
    result = analyse_nodes(report_grid_bundle, t1, None, scene=scene)
    assert set(result["volumes"]) == {
        "sub-0002_T1w reconstruction",
        "sub-0002_T1w → T2w",
        "sub-0002_T1w error T1w reconstruction",
    }
    assert result["analysis"].content_cosine is None
    with pytest.raises(NodeError, match="at least one"):
        analyse_nodes(report_grid_bundle, None, None, scene=scene)


def test_bad_nodes_get_clear_errors(scene, cohort_1mm, tmp_path):
    not_an_image = tmp_path / "notes.nii.gz"
    not_an_image.write_text("not an image")
    with pytest.raises(NodeError, match="could not read a volume from .*notes.nii.gz"):
        read_volume_node(not_an_image, scene)
    good = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T1w"))
    data = slicer.util.arrayFromVolume(good).astype(np.float32)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(label, (data > 100).astype(np.int16))
    with pytest.raises(NodeError, match="'labels' is a label map"):
        array_affine_from_node(label)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no data")
    with pytest.raises(NodeError, match="'no data' has no image data"):
        array_affine_from_node(empty)
    flat = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "flat")
    slicer.util.updateVolumeFromArray(flat, data[80:81])
    with pytest.raises(NodeError, match="'flat' is not a 3D image"):
        array_affine_from_node(flat)
    nan = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "with NaN")
    broken = data.copy()
    broken[50, 50, 50:60] = np.nan
    slicer.util.updateVolumeFromArray(nan, broken)
    with pytest.raises(NodeError, match="'with NaN' has 10 non-finite"):
        array_affine_from_node(nan)
    zeros = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "zeros")
    slicer.util.updateVolumeFromArray(zeros, np.zeros_like(data))
    with pytest.raises(NodeError, match="'zeros' is empty"):
        array_affine_from_node(zeros)
    with pytest.raises(NodeError, match="no volume node"):
        array_affine_from_node(None)


def node_like(scene, template, name, array):
    """A new scalar volume node with ``template``'s geometry and the (K, J, I) ``array``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, array.astype(np.float32))
    node.CopyOrientation(template)
    return node


def test_scans_stored_in_another_intensity_range_are_handled(scene, cohort_1mm, report_grid_bundle):
    t1 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T1w"))
    t2 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T2w"))
    data = slicer.util.arrayFromVolume(t1).astype(np.float32)
    reference = analyse_nodes(report_grid_bundle, t1, t2, scene=scene)["analysis"]
    assert not reference.notes  # a scan in a scanner range is left exactly as it is
    for name, stored in {
        "unit range": data / data.max(),
        "negative offset": data - 2000.0,
        "12-bit": data * (4095.0 / data.max()),
    }.items():
        analysis = analyse_nodes(report_grid_bundle, node_like(scene, t1, name, stored), t2, scene=scene)["analysis"]
        mask, expected = analysis.masks["T1w"] > 0.5, reference.masks["T1w"] > 0.5
        assert (mask & expected).sum() / (mask | expected).sum() > 0.97, name  # not masked to nothing
        assert np.corrcoef(analysis.inputs["T1w"][mask].numpy(), reference.inputs["T1w"][mask].numpy())[0, 1] > 0.99
        assert (name == "12-bit") != any(f"the T1w '{name}': intensities from" in note for note in analysis.notes)


def test_a_volume_whose_brain_mask_cannot_be_a_brain_is_refused(scene, cohort_1mm, report_grid_bundle):
    t1 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T1w"))
    data = slicer.util.arrayFromVolume(t1).astype(np.float32)
    rng = np.random.default_rng(0)
    box = rng.normal(0, 20, data.shape)
    box[40:-40, 40:-40, 40:-40] += 500
    before = scene.GetNumberOfNodes()
    boxed = node_like(scene, t1, "box", box)
    with pytest.raises(ValueError, match="the T2w 'box': its brain mask covers 100% of the model's field of view"):
        analyse_nodes(report_grid_bundle, t1, boxed, scene=scene)
    assert scene.GetNumberOfNodes() == before + 1  # only the input itself: nothing added part-way


def test_background_runner_gives_the_same_nodes_and_keeps_the_scene_on_cancel_or_failure(
    scene, cohort_1mm, report_grid_bundle, tmp_path
):
    t1 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T1w"))
    t2 = read_volume_node(scene=scene, path=volume_path(cohort_1mm, "sub-0001", "T2w"))
    polled = []
    runner = BackgroundRunner(process_events=lambda: polled.append(1), poll_seconds=0.001)
    background = analyse_nodes(report_grid_bundle, t1, t2, scene=scene, runner=runner)
    inline = analyse_nodes(report_grid_bundle, t1, t2, scene=scene)
    assert polled, "the caller's event loop was not kept alive"
    assert [k for k in background["volumes"]] == [k.replace(" (1)", "") for k in background["volumes"]]
    for kind, node in background["images"].items():
        other = inline["images"][kind]
        assert np.array_equal(slicer.util.arrayFromVolume(node), slicer.util.arrayFromVolume(other))

    before = scene.GetNumberOfNodes()
    cancelling = BackgroundRunner()
    cancelling.cancel()
    with pytest.raises(Cancelled):
        analyse_nodes(report_grid_bundle, t1, t2, scene=scene, runner=cancelling)
    with pytest.raises(BundleError, match="folder not found"):
        analyse_nodes(tmp_path / "no-bundle", t1, t2, scene=scene, runner=BackgroundRunner())
    with pytest.raises(DeviceError, match="CUDA is not available"):
        analyse_nodes(report_grid_bundle, t1, t2, device="cuda:7", scene=scene, runner=BackgroundRunner())
    assert scene.GetNumberOfNodes() == before


def test_a_training_subject_finds_itself_first_among_the_nearest_and_the_rest_well_below(scene, tiny_run_dir):
    source = Path(json.loads((tiny_run_dir / "settings.json").read_text())["data"]["source"])
    bundle = load_bundle(tiny_run_dir / "bundle")
    subject = bundle.cohort_subjects[0]
    t1, t2 = (read_volume_node(scene=scene, path=volume_path(source, subject, view)) for view in ("T1w", "T2w"))
    nearest = analyse_nodes(bundle, t1, t2, scene=scene, prepare=False)["analysis"].nearest_cohort
    assert nearest[0][0] == subject and nearest[0][1] > 0.99
    # About the cohort's mean the similarities spread out; raw cosines of content all lie near 1.
    assert nearest[1][1] < 0.95
