"""The bundled demo model in Resources/Models/demo: small enough to ship, loadable without running
code, matching the demo preset, carrying its evaluation, and working on real MRML nodes."""

import json
from pathlib import Path

import numpy as np
import pytest
import slicer
import slicer.util
from conftest import volume_path

from MultiviewCRLLib.config import PRESETS, image_key, r2_key, retrieval_key
from MultiviewCRLLib.runtime.bundle import EVALUATION_FILES, RESTORATION_FILES, load_bundle
from MultiviewCRLLib.runtime.preparation import TEMPLATE_FILES
from MultiviewCRLLib.slicer_nodes import analyse_nodes, read_volume_node

DEMO_MODEL = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "demo"


@pytest.fixture(scope="module")
def demo_bundle():
    return load_bundle(DEMO_MODEL)


def test_ships_small_and_complete():
    names = {p.name for p in DEMO_MODEL.iterdir()}
    assert names == {"weights.pt", "settings.json", "cohort.pt", *EVALUATION_FILES, *TEMPLATE_FILES, *RESTORATION_FILES}
    assert sum(p.stat().st_size for p in DEMO_MODEL.iterdir()) <= 30 * 2**20


def test_matches_the_spatial_demo_preset(demo_bundle):
    assert demo_bundle.model == PRESETS["spatial-demo"].model
    assert demo_bundle.preprocessing == PRESETS["spatial-demo"].preprocessing
    assert demo_bundle.settings["weights_dtype"] == "float16"
    assert demo_bundle.cohort_content.shape[1] == demo_bundle.content_dim


def test_carries_its_evaluation_on_at_least_50_test_subjects():
    metrics = json.loads((DEMO_MODEL / "metrics.json").read_text())
    assert metrics["subjects"]["test"] >= 50
    trained = metrics["trained"]
    for key in (
        retrieval_key(1, "T1w", "T2w"),
        r2_key("kernel_ridge", "content", "content"),
        image_key("psnr", "cross", "t1"),
    ):
        assert np.isfinite(trained[key]["value"])


def test_analyses_a_pair_of_real_nodes(demo_bundle, cohort_1mm):
    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    nodes = [read_volume_node(volume_path(cohort_1mm, "sub-0001", view), scene) for view in ("T1w", "T2w")]
    result = analyse_nodes(demo_bundle, *nodes, scene=scene, prepare=False)
    assert len(result["volumes"]) == 10  # 2 reconstructions, 2 cross-view images, 4 error maps, 2 content maps
    for node in result["volumes"].values():
        array = slicer.util.arrayFromVolume(node)
        assert array.shape == (48, 56, 48) and np.isfinite(array).all()
    # The same subject's two views share their content far more than chance.
    assert result["analysis"].content_cosine > 0.5
    assert result["analysis"].stratum.startswith("stratum ") and "of 600 subjects" in result["analysis"].stratum


def test_its_strata_follow_content_not_style():
    from MultiviewCRLLib.training.factors import factor_names

    strata = json.loads((DEMO_MODEL / "metrics.json").read_text())["strata"]
    associated = {a["column"] for a in strata["associations"] if a["significant"]}
    content, style = factor_names()
    assert len(associated & set(content)) >= 3
    assert not associated & {name for names in style.values() for name in names}


def test_warns_in_plain_words_about_inputs_unlike_its_training_data(demo_bundle, cohort_1mm, tmp_path):
    import nibabel as nib

    from MultiviewCRLLib.runtime.inference import describe_analysis

    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    t1, t2 = (read_volume_node(volume_path(cohort_1mm, "sub-0001", view), scene) for view in ("T1w", "T2w"))
    clean = analyse_nodes(demo_bundle, t1, t2, scene=scene, prepare=False)["analysis"]
    assert clean.check.passed, clean.check.warnings
    assert "Input check: no warnings" in describe_analysis(clean)

    swapped = analyse_nodes(demo_bundle, t2, t1, scene=scene, prepare=False)["analysis"]
    assert any(f"the T1w '{t2.GetName()}' looks more like a T2w" in w for w in swapped.check.warnings)
    assert describe_analysis(swapped).startswith("Warning: ")

    other = read_volume_node(volume_path(cohort_1mm, "sub-0002", "T2w"), scene)
    mismatched = analyse_nodes(demo_bundle, t1, other, scene=scene, prepare=False)["analysis"]
    assert any("do not look like one person" in w for w in mismatched.check.warnings)

    image = nib.load(volume_path(cohort_1mm, "sub-0001", "T2w"))
    noise = np.abs(np.random.default_rng(0).normal(0, 300, image.shape)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, image.affine), tmp_path / "noise.nii.gz")
    noise_node = read_volume_node(tmp_path / "noise.nii.gz", scene)
    not_brain = analyse_nodes(demo_bundle, t1, noise_node, scene=scene, prepare=False)["analysis"]
    assert any("is unlike the model's training data" in w for w in not_brain.check.warnings)


def test_prepares_raw_scans_and_places_the_outputs_over_them(demo_bundle, cohort_1mm, tmp_path):
    import nibabel as nib

    from MultiviewCRLLib.training.raw_scans import BRAIN_MASK, write_raw_cohort

    raw = write_raw_cohort(cohort_1mm, tmp_path / "raw", n_subjects=1, seed=2)
    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    clean = [read_volume_node(volume_path(cohort_1mm, "sub-0001", view), scene) for view in ("T1w", "T2w")]
    nodes = [read_volume_node(volume_path(raw, "sub-0001", view), scene) for view in ("T1w", "T2w")]
    reference = analyse_nodes(demo_bundle, *clean, scene=scene, prepare=False)["analysis"]
    result = analyse_nodes(demo_bundle, *nodes, scene=scene)
    analysis = result["analysis"]
    assert any("skull and scalp removed" in note for note in analysis.notes)
    # The raw T2w's 3 mm slices are restored with the T1w, whose guide check of prepared pairs passed.
    assert any("it was restored on it (guided by the T1w" in note for note in analysis.notes), analysis.notes
    assert not any("guide check" in note for note in analysis.notes)
    transform = result["transform"]
    assert transform is not None
    for node in result["volumes"].values():
        assert node.GetTransformNodeID() == transform.GetID()
    for view in ("T1w", "T2w"):
        truth = (
            np.asarray(nib.load(raw / BRAIN_MASK / "sub-0001" / "anat" / f"sub-0001_space-{view}_mask.nii.gz").dataobj)
            > 0
        )
        found = analysis.brain_masks[view][0] > 0.5
        assert 2 * (truth & found).sum() / (truth.sum() + found.sum()) >= 0.95
    assert abs(analysis.content_cosine - reference.content_cosine) < 0.05
    # Written from the library, an output overlays its input too: the reconstruction's brain sits
    # where the raw T1w's brain is.
    from MultiviewCRLLib.runtime.preprocessing import to_nifti

    placed = to_nifti(analysis.reconstructions["T1w"] * analysis.masks["T1w"], analysis.to_input)
    truth = nib.load(raw / BRAIN_MASK / "sub-0001" / "anat" / "sub-0001_space-T1w_mask.nii.gz")

    def centroid(image, threshold):
        ijk = np.argwhere(np.abs(np.asarray(image.dataobj)) > threshold).mean(0)
        return image.affine[:3, :3] @ ijk + image.affine[:3, 3]

    assert np.linalg.norm(centroid(placed, 0) - centroid(truth, 0)) < 4.0
    without = analyse_nodes(demo_bundle, *nodes, scene=scene, prepare=False)
    assert without["transform"] is None and not without["analysis"].check.passed  # skull kept: warned
