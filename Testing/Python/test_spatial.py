"""The spatial family end to end at the tiny size: training with the dense loss and per-view
contrast augmentation, a bundle that records its family, evaluation against noise-free references,
and the Slicer analysis showing content maps on real MRML."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import slicer
import torch
from conftest import volume_path

from MultiviewCRLLib.config import PRESETS, VIEW_KEYS, image_key, r2_key
from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.slicer_nodes import analyse_nodes, read_volume_node
from MultiviewCRLLib.training.data import paired_dataset
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.runs import RunRequest, train_run
from MultiviewCRLLib.training.synthetic import noise_free_reference


@pytest.fixture(scope="module")
def spatial_run(tiny_run_and_request, tmp_path_factory):
    _, tiny_request = tiny_run_and_request  # the same cohort and preprocessing cache
    request = RunRequest(
        preset="tiny-spatial",
        model_id="spatial",
        results=tmp_path_factory.mktemp("spatial") / "results",
        data_root=tiny_request.data_root,
    )
    return train_run(request)


def test_spatial_training_lowers_its_losses(spatial_run):
    with open(spatial_run / "Training.csv", newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    train = PRESETS["tiny-spatial"].train
    assert rows[-1]["step"] == train.steps
    assert rows[-1]["reconstruction"] < 0.8 * rows[0]["reconstruction"]
    # The dense loss is logged and stays near or below chance, log(batch x locations), plus the agreement term.
    chance = np.log(train.batch_size * train.dense_locations)
    assert all(0 < row["dense"] < chance + 2 * train.map_agreement_weight for row in rows)


def test_spatial_bundle_and_its_evaluation(spatial_run):
    bundle = load_bundle(spatial_run / "bundle")
    assert bundle.model.family == "spatial" and bundle.settings["family"] == "spatial"
    trained = json.loads((spatial_run / "metrics.json").read_text())["trained"]
    for key in (
        image_key("psnr", "cross_reference", "t2"),
        image_key("ssim", "cross_reference", "t1"),
        image_key("psnr", "cross_ownstyle_reference", "t1"),
        image_key("psnr", "cross_othercontent_reference", "t2"),
        r2_key("ridge", "content", "content"),
    ):
        assert np.isfinite(trained[key]["value"]), key
    # The content map scored as a segmentation, beside the Gaussian-mixture baseline.
    for key in ("map_dice_GM_t1", "map_dice_WM_t2", "mixture_dice_GM_t1", "map_label_agreement_dice"):
        assert 0.0 <= trained[key]["value"] <= 1.0, key
    assert trained["mixture_dice_WM_t1"]["value"] > 0.5
    assert np.isfinite(trained["map_ventricle_volume_r2_t1"]["value"])


def test_spatial_analysis_shows_content_maps(spatial_run, cohort_1mm):
    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    nodes = [read_volume_node(volume_path(cohort_1mm, "sub-0001", view), scene) for view in ("T1w", "T2w")]
    result = analyse_nodes(spatial_run / "bundle", *nodes, scene=scene, prepare=False)
    assert set(result["content_maps"]) == {"T1w", "T2w"}
    channels = PRESETS["tiny-spatial"].model.map_channels
    for node in result["content_maps"].values():
        codes = slicer.util.arrayFromVolume(node)
        assert codes.shape == (24, 28, 24) and codes.min() >= 1 and codes.max() <= channels
    assert len(result["volumes"]) == 10  # 4 images, 4 error maps, 2 content maps


def test_view_augmentation_changes_each_view_on_its_own(cohort64):
    pairs = discover_bids(cohort64).kept[:1]
    preprocessing = PRESETS["tiny"].preprocessing
    plain = paired_dataset(pairs, preprocessing)[0]
    augmented = [paired_dataset(pairs, preprocessing, seed=s, view_augment=True)[0] for s in range(4)]
    for key in VIEW_KEYS:
        inside = plain[f"mask_{key}"] > 0.5
        for item in augmented:
            assert torch.equal(item[f"mask_{key}"], plain[f"mask_{key}"])  # anatomy untouched
            assert (item[key][~inside] == 0).all()
            assert abs(float(item[key][inside].mean())) < 1e-3 and abs(float(item[key][inside].std()) - 1) < 1e-2
    changes = np.array([[float((item[k] - plain[k]).abs().mean()) for k in VIEW_KEYS] for item in augmented])
    assert (changes > 0).any(axis=0).all()
    assert not np.allclose(changes[:, 0], changes[:, 1])  # drawn per view


def test_noise_free_references_are_the_images_without_noise(cohort_1mm):
    path = volume_path(cohort_1mm, "sub-0001", "T2w")
    reference = noise_free_reference(path)
    assert reference is not None and noise_free_reference(path.parent / "missing_T2w.nii.gz") is None
    noisy = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    clean = np.asarray(nib.load(reference).dataobj, dtype=np.float32)
    brain = clean > 0
    assert np.array_equal(brain, noisy > 0) or (brain & (noisy == 0)).mean() < 1e-3
    assert np.corrcoef(noisy[brain], clean[brain])[0, 1] > 0.9
    # Without noise, neighbouring voxels differ less.
    assert np.abs(np.diff(clean, axis=0))[brain[1:]].mean() < np.abs(np.diff(noisy, axis=0))[brain[1:]].mean()
