"""Low-resolution acquisitions on their own grids, and their restoration: training, the bundled
networks through the command line, the analysis and the Slicer nodes, and the inputs refused."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import volume_path

import trainer_cli
from MultiviewCRLLib.config import PreprocessingConfig
from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.runtime.preprocessing import preprocess_file
from MultiviewCRLLib.runtime.restoration import (
    RestorationConfig,
    RestorationError,
    RestorationNetwork,
    acquisition_kind,
    load_restoration,
    onto_grid,
    restore,
    restore_scan,
    save_restoration,
)
from MultiviewCRLLib.runtime.storage import nifti_image
from MultiviewCRLLib.training.data import assign_splits
from MultiviewCRLLib.training.degradation import (
    BRAIN_OF_MAXIMUM,
    LOWRES_ACQUISITIONS,
    KSpaceTruncation,
    ThickSlices,
    field_of_view_cut,
)
from MultiviewCRLLib.training.discovery import discover, read_volume
from MultiviewCRLLib.training.evaluation import psnr_ssim
from MultiviewCRLLib.training.restoration import (
    PatchSampler,
    RestorationTraining,
    restoration_cases,
    train_restoration,
)
from MultiviewCRLLib.training.runs import split_pairs
from MultiviewCRLLib.training.synthetic import generate_cohort, lowres_view, noise_free_reference

DEMO = Path(__file__).resolve().parents[2] / "Resources" / "Models" / "demo"
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0]) + np.array([[0, 0, 0, -40.0], [0, 0, 0, -50.0], [0, 0, 0, -30.0], [0, 0, 0, 0]])


def world_to_voxel(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (np.linalg.inv(affine) @ np.c_[points, np.ones(len(points))].T)[:3].T


def test_kspace_acquisition_samples_the_band_limited_image_on_a_grid_twice_as_coarse():
    i, j, k = np.meshgrid(*(np.arange(n) for n in (40, 48, 40)), indexing="ij")
    volume = 3 + np.cos(2 * np.pi * 3 * i / 40) + np.sin(2 * np.pi * 2 * j / 48) * np.cos(2 * np.pi * k / 40)
    low, affine = KSpaceTruncation(2.0).acquire(volume, AFFINE)
    assert low.shape == (20, 24, 20)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [4.0, 4.0, 4.0])
    # Each coarse voxel holds the image at the fine voxel its affine places it on.
    coarse = np.stack(np.meshgrid(*(np.arange(n) for n in low.shape), indexing="ij"), -1).reshape(-1, 3)
    fine = world_to_voxel(AFFINE, (affine @ np.c_[coarse, np.ones(len(coarse))].T)[:3].T)
    np.testing.assert_allclose(fine, coarse * 2, atol=1e-9)
    np.testing.assert_allclose(low[tuple(coarse.T)], volume[tuple((coarse * 2).T)], rtol=1e-4)


def test_thick_slices_acquisition_places_each_slab_at_its_centre_gaps_included():
    volume = np.broadcast_to(np.arange(30, dtype=np.float32)[None, :, None], (10, 30, 12)).copy()
    low, affine = ThickSlices(axis=1, thickness=3, spacing=4, offset=1).acquire(volume, AFFINE)
    assert low.shape == (10, 7, 12)
    slabs = np.c_[np.zeros(7), np.arange(7), np.zeros(7)]
    centres = world_to_voxel(AFFINE, (affine @ np.c_[slabs, np.ones(7)].T)[:3].T)[:, 1]
    # A linear image's slab mean is its value at the slab's centre (here voxel 2, 6, 10, ...).
    np.testing.assert_allclose(low[0, :, 0], centres, atol=1e-4)
    np.testing.assert_allclose(centres, 2 + 4 * np.arange(7), atol=1e-9)
    grid = preprocess_like(volume + 1, AFFINE)
    back = onto_grid(low, affine, grid)[0].numpy()
    np.testing.assert_allclose(back[:, 2:27, :], volume[:, 2:27, :], atol=1e-3)  # linear between slab centres


def preprocess_like(volume: np.ndarray, affine: np.ndarray):
    """A MetaTensor (1, X, Y, Z) carrying ``affine``: the grid ``onto_grid`` resamples onto."""
    from monai.data import MetaTensor

    return MetaTensor(torch.as_tensor(volume)[None], affine=torch.as_tensor(affine))


@pytest.fixture(scope="module")
def cohort_cases(cohort64):
    report = discover(cohort64)
    splits = split_pairs(report, assign_splits(report.kept, 0))
    bundle = load_bundle(DEMO)
    config = RestorationConfig(map_channels=bundle.model.map_channels, channels=(4, 8))
    return restoration_cases(splits["train"][:3], bundle, config, seed=0), config


def test_restoration_training_lowers_the_loss_and_its_networks_round_trip(cohort_cases, tmp_path):
    cases, config = cohort_cases
    assert {c.degradation for c in cases} == {"k-space x2", "thick slices 6 mm"}
    training = RestorationTraining(steps=80, patch=16, hr_fraction=0.5, lr=1e-2)
    network, history = train_restoration(cases, config, training, torch.device("cpu"))
    first, last = (np.mean([h["l1"] for h in part]) for part in (history[:10], history[-10:]))
    assert last < 0.9 * first, (first, last)
    assert all(h["features"] > 0 and h["contrastive"] > 0 for h in history)
    save_restoration(tmp_path, {"guided": network})
    loaded = load_restoration(tmp_path)["guided"]
    case = cases[0]
    np.testing.assert_allclose(
        restore(loaded, case.lowres, case.guide, case.mask), restore(network, case.lowres, case.guide, case.mask)
    )


def test_training_patches_are_mirrored_alike_in_every_channel(cohort_cases):
    cases, _ = cohort_cases
    case = cases[0]
    sampler = PatchSampler(cases, 16, np.random.default_rng(0))
    patches = [sampler.patch(0) for _ in range(16)]
    assert {p.flipped for p in patches} - {()}, "no patch was mirrored"
    assert not PatchSampler(cases, 16, np.random.default_rng(0), flip=False).patch(0).flipped
    for patch in patches:
        # Voxel (i, j, k) of a patch mirrored along axis a is voxel size - 1 - i along a of the volume.
        i, j, k = (15 - 3 if axis in patch.flipped else 3 for axis in range(3))
        x, y, z = (c + v for c, v in zip(patch.corner, (i, j, k)))
        for volume in (case.lowres, case.guide, case.reference, case.mask):
            assert torch.equal(sampler.crop(volume, patch)[:, 3, 3, 3], volume[:, x, y, z])


def test_settings_saved_before_the_norm_was_named_load_instance_norm_networks(tmp_path):
    network = RestorationNetwork(RestorationConfig(guided=False, channels=(4, 8), norm="instance"))
    save_restoration(tmp_path, {"unguided": network})
    settings = json.loads((tmp_path / "restoration.json").read_text())
    del settings["networks"]["unguided"]["norm"]
    (tmp_path / "restoration.json").write_text(json.dumps(settings))
    assert load_restoration(tmp_path)["unguided"].config.norm == "instance"
    assert RestorationConfig().norm is None


def test_a_restoration_file_that_is_not_plain_tensors_is_refused(tmp_path):
    from MultiviewCRLLib.runtime.restoration import RestorationError

    network = RestorationNetwork(RestorationConfig(guided=False, channels=(4, 8)))
    save_restoration(tmp_path, {"unguided": network})
    torch.save({"unguided": {"weights": object()}}, tmp_path / "restoration.pt")
    with pytest.raises(RestorationError, match="restoration.pt"):
        load_restoration(tmp_path)


def write_acquisition(source: Path, degradation, out: Path) -> Path:
    image = nib.load(source)
    low, affine = degradation.acquire(np.asarray(image.dataobj, dtype=np.float32), image.affine)
    nib.save(nifti_image(low, affine), out)
    return out


def scored(path: Path, reference: Path) -> float:
    """PSNR of a volume against the noise-free reference on the reference's preprocessed grid."""
    ref, mask = preprocess_file(reference, PreprocessingConfig())
    volume = onto_grid(*read_volume(path), ref)
    inside = mask[0].as_tensor() > 0.5
    z = (volume[0] - volume[0][inside].mean()) / volume[0][inside].std() * inside
    return psnr_ssim(z, ref[0].as_tensor(), inside)[0]


def test_the_bundled_guided_restoration_beats_interpolation_through_the_command_line(cohort64, tmp_path):
    subject = "sub-0005"
    t2 = volume_path(cohort64, subject, "T2w")
    lowres = write_acquisition(t2, ThickSlices(axis=2, thickness=3, spacing=3.5, offset=1), tmp_path / "thick.nii.gz")
    out = tmp_path / "restored"
    args = ["restore", "--lowres", str(lowres), "--guide", str(volume_path(cohort64, subject, "T1w"))]
    assert trainer_cli.main([*args, "--bundle", str(DEMO), "--out", str(out)]) == 0
    record = json.loads((out / "restoration.json").read_text())
    assert record["network"] == "guided" and record["lowres_spacing_mm"] == [2.0, 2.0, 7.0]
    check = record["guide_check"]  # the same person's guide passes the guide check
    assert check["acquisition"] == "thick slices" and check["disagreement"] < check["threshold"]
    restored = nib.load(out / "restored.nii.gz")
    np.testing.assert_allclose(restored.header.get_zooms(), (2.0, 2.0, 2.0))
    reference = noise_free_reference(t2)
    assert scored(out / "restored.nii.gz", reference) > scored(lowres, reference) + 1.0
    assert trainer_cli.main([*args, "--bundle", str(DEMO), "--out", str(out)]) == 2  # results are never replaced


def test_a_guide_of_another_person_is_refused_by_name_and_the_analysis_restores_alone(cohort64, tmp_path, capsys):
    t2 = volume_path(cohort64, "sub-0005", "T2w")
    lowres = write_acquisition(t2, ThickSlices(axis=2, thickness=3, spacing=3.5, offset=1), tmp_path / "thick.nii.gz")
    stranger = volume_path(cohort64, "sub-0006", "T1w")
    out = tmp_path / "restored"
    args = ["restore", "--lowres", str(lowres), "--guide", str(stranger), "--bundle", str(DEMO), "--out", str(out)]
    assert trainer_cli.main(args) == 2
    message = capsys.readouterr().err
    assert f"the guide {stranger} does not look like the same person as the low-resolution view {lowres}" in message
    assert not out.exists()
    names = {"T1w": "other.nii.gz", "T2w": "thick.nii.gz"}
    analysis = analyse_pair(load_bundle(DEMO), read_volume(stranger), read_volume(lowres), names=names, prepare=False)
    assert any("it was restored on it (alone: the T1w 'other.nii.gz' does not look like" in n for n in analysis.notes)
    assert "the T1w 'other.nii.gz' does not look like the same person" in analysis.check.warnings[0]


def test_restoration_refuses_a_view_as_fine_as_the_grid(cohort64, tmp_path, capsys):
    t2 = volume_path(cohort64, "sub-0005", "T2w")
    fine = ["restore", "--lowres", str(t2), "--bundle", str(DEMO), "--out", str(tmp_path / "a")]
    assert trainer_cli.main(fine) == 2
    message = capsys.readouterr().err
    assert str(t2) in message and "needs no restoration" in message
    assert not (tmp_path / "a").exists()


def test_the_analysis_restores_a_view_much_coarser_than_the_restoration_grid_and_says_so(cohort64, tmp_path):
    bundle = load_bundle(DEMO)
    t1, t2 = (read_volume(volume_path(cohort64, "sub-0005", view)) for view in ("T1w", "T2w"))
    thick = ThickSlices(axis=2, thickness=3.5, spacing=4).acquire(*t2)
    names = {"T1w": "t1.nii.gz", "T2w": "thick.nii.gz"}
    analysis = analyse_pair(bundle, t1, thick, names=names, prepare=False)
    said = "much coarser than the 2 mm restoration grid: it was restored on it (guided by"
    assert any("thick.nii.gz" in n and said in n for n in analysis.notes)
    # 3 mm slabs are finer than the bundle's 4 mm grid, yet lose anatomy across slices.
    slabs = ThickSlices(axis=2, thickness=1.5).acquire(*t2)
    assert float(np.max(bundle.preprocessing.spacing_mm)) > 3.0
    notes = analyse_pair(bundle, t1, slabs, prepare=False).notes
    assert any("(2.0 x 2.0 x 3.0 mm voxels)" in n and said in n for n in notes), notes
    clean = analyse_pair(bundle, t1, t2, names=names, prepare=False)
    assert not any("restored" in n for n in clean.notes)
    bundle.restoration = {}
    unrestored = analyse_pair(bundle, t1, thick, names=names, prepare=False)
    # Restored, the thick-slice pair's content agrees with the clean pair's more closely.
    gap, unrestored_gap = (abs(a.content_cosine - clean.content_cosine) for a in (analysis, unrestored))
    assert gap < unrestored_gap, (clean.content_cosine, analysis.content_cosine, unrestored.content_cosine)


def test_a_slab_that_misses_part_of_the_brain_is_filled_from_the_guide_and_said(cohort64, tmp_path, capsys):
    bundle = load_bundle(DEMO)
    t1_path = volume_path(cohort64, "sub-0005", "T1w")
    t1, t2 = read_volume(t1_path), read_volume(volume_path(cohort64, "sub-0005", "T2w"))
    slabs = ThickSlices(axis=2, thickness=1.5).acquire(*t2)  # 3 mm slices, as clinical T2w
    brain = np.flatnonzero((slabs[0] > BRAIN_OF_MAXIMUM * slabs[0].max()).any(axis=(0, 1)))  # slices through the brain
    lost = int(brain[0] + 0.3 * (brain[-1] - brain[0]))
    cut = field_of_view_cut(slabs, axis=2, lost=lost, at_start=True)  # the slab misses the skull base
    guided, whole = restore_scan(bundle, cut, t1), restore_scan(bundle, slabs, t1)
    share = guided.record["uncovered_share"]
    assert 0.05 < share < 0.3 and whole.record["uncovered_share"] == 0.0
    # The same person's guide passes the check, which reads only where the slab has data.
    assert guided.record["guide_check"]["disagreement"] < guided.record["guide_check"]["threshold"]
    grid = preprocess_file(t1_path, PreprocessingConfig())[0]
    missed = (onto_grid(*cut, grid)[0] == 0) & (whole.image[0] > 0)
    # Where the slab ends, the guided restoration draws the anatomy that the whole slab shows: closer
    # to it than the best uniform fill, and following it voxel by voxel.
    truth, filled = whole.image[0][missed], guided.image[0][missed]
    assert (filled - truth).abs().mean() < 0.8 * (truth - truth.median()).abs().mean()
    assert np.corrcoef(filled.numpy(), truth.numpy())[0, 1] > 0.6, np.corrcoef(filled.numpy(), truth.numpy())
    names = {"T1w": "t1.nii.gz", "T2w": "cut.nii.gz"}
    notes = analyse_pair(bundle, t1, cut, names=names, prepare=False).notes
    said = f"the T2w 'cut.nii.gz' has no data in {share:.0%} of the brain of the T1w 't1.nii.gz' (its field of view"
    assert any(n.startswith(said) and n.endswith("drawn from the anatomy of the T1w 't1.nii.gz'") for n in notes)
    lowres = tmp_path / "cut.nii.gz"
    nib.save(nifti_image(*cut), lowres)
    args = ["restore", "--lowres", str(lowres), "--guide", str(t1_path), "--bundle", str(DEMO)]
    assert trainer_cli.main([*args, "--out", str(tmp_path / "restored")]) == 0
    assert f"has no data in {share:.0%} of the brain of the guide {t1_path}" in capsys.readouterr().out
    elsewhere = cut[1].copy()
    elsewhere[0, 3] += 300.0  # the slab 30 cm to the side of the guide's brain
    with pytest.raises(RestorationError, match="off.nii.gz: it has data in only 0% of the brain of the guide"):
        restore_scan(bundle, (cut[0], elsewhere), t1, {"lowres": "off.nii.gz", "guide": "the guide t1.nii.gz"})


def test_a_prepared_thick_slice_view_is_restored_as_acquired_not_as_resampled(cohort64):
    # The preparation resamples both views onto the template's 2 mm grid; what decides the
    # restoration is the voxels the view was acquired with.
    bundle = load_bundle(DEMO)
    t1, t2 = (read_volume(volume_path(cohort64, "sub-0005", view)) for view in ("T1w", "T2w"))
    thick = ThickSlices(axis=2, thickness=3.5, spacing=4).acquire(*t2)
    analysis = analyse_pair(bundle, t1, thick, names={"T2w": "thick.nii.gz"}, prepare=True)
    assert any("'thick.nii.gz' (2.0 x 2.0 x 8.0 mm voxels)" in n and "restored" in n for n in analysis.notes)
    # The bundle's check of prepared pairs is calibrated on raw scans' 3 mm slices, not on 8 mm slabs.
    assert any("not calibrated for thick slices, prepared from raw scans" in n for n in analysis.notes)


def test_the_kind_of_a_tilted_slab_does_not_hang_on_its_affine_s_rounding():
    # A raw scan's 0.9 x 0.9 x 3 mm slab, rotated and resampled by the preparation, comes back with
    # voxel edges a hair either side of 3 mm; its guide-check threshold must not flip with them.
    for error in (-1e-6, 0.0, 1e-6):
        spacing = np.array([0.9, 0.9, 3.0]) + error
        assert acquisition_kind(spacing) == "slices under 4.5 mm", spacing
    assert acquisition_kind([4.0, 4.0, 4.0]) == "coarse voxels"
    assert acquisition_kind([2.0, 2.0, 6.0]) == "thick slices"
    assert acquisition_kind([2.0, 2.0, 4.5 - 1e-6]) == "thick slices"
    assert acquisition_kind([2.0, 2.0, 2.9]) == "coarse voxels"


def test_the_generator_writes_each_t2w_acquired_at_low_resolution_beside_its_references(tmp_path):
    cohort = generate_cohort(tmp_path / "bids", n_subjects=2, seed=1, spacing_mm=2.0, workers=1, lowres_views=True)
    t2 = volume_path(cohort, "sub-0001", "T2w")
    kspace, thick = (nib.load(lowres_view(t2, label)) for label, _ in LOWRES_ACQUISITIONS.values())
    np.testing.assert_allclose(kspace.header.get_zooms(), (4.0, 4.0, 4.0), atol=0.1)
    zooms = sorted(thick.header.get_zooms())
    assert zooms[:2] == [2.0, 2.0] and 6.0 <= zooms[2] <= 7.8, zooms
    assert noise_free_reference(t2).is_file() and volume_path(cohort, "sub-0001", "T1w").is_file()
    assert not lowres_view(volume_path(cohort, "sub-0001", "T1w"), "kspace2").exists()  # the T2w is the coarse view


def test_the_slicer_action_adds_the_restored_volume_over_its_inputs_and_nothing_on_cancel(cohort64, tmp_path):
    import slicer
    import slicer.util

    from MultiviewCRLLib.slicer_nodes import BackgroundRunner, Cancelled, NodeError, read_volume_node, restore_nodes

    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    t2 = volume_path(cohort64, "sub-0007", "T2w")
    thick = write_acquisition(t2, ThickSlices(axis=1, thickness=3, spacing=3), tmp_path / "thick_t2.nii.gz")
    t1_node = read_volume_node(volume_path(cohort64, "sub-0007", "T1w"), scene)
    t2_node = read_volume_node(thick, scene)
    before = scene.GetNumberOfNodes()
    cancelling = BackgroundRunner()
    cancelling.cancel()
    with pytest.raises(Cancelled):
        restore_nodes(DEMO, t1_node, t2_node, scene=scene, runner=cancelling)
    assert scene.GetNumberOfNodes() == before
    result = restore_nodes(DEMO, t1_node, t2_node, scene=scene, runner=BackgroundRunner())
    node = result["restored"]
    assert node.GetName() == "thick_t2 restored" and result["record"]["network"] == "guided"
    np.testing.assert_allclose(node.GetSpacing(), (2.0, 2.0, 2.0))
    restored = slicer.util.arrayFromVolume(node)
    assert restored.min() >= 0 and restored.max() > 0  # in the scan's units, zero outside the brain
    with pytest.raises(NodeError, match="T2w"):
        restore_nodes(DEMO, t1_node, None, scene=scene)
