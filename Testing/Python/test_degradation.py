"""The degradations of clinical scans (k-space truncation, thick slices, cut fields of view, random
intensity curves) and the training data built from them: contrast-randomised views, restoration cases."""

from pathlib import Path

import numpy as np
import pytest
import torch

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.restoration import RestorationConfig
from MultiviewCRLLib.training.data import MAP_INPUT_KEYS, assign_splits, paired_dataset
from MultiviewCRLLib.training.degradation import (
    IntensityCurve,
    KSpaceTruncation,
    RandIntensityCurved,
    RandThickSlicesd,
    ThickSlices,
    field_of_view_cut,
    random_field_of_view_cut,
)
from MultiviewCRLLib.training.discovery import discover, discover_bids
from MultiviewCRLLib.training.restoration import restoration_cases
from MultiviewCRLLib.training.runs import split_pairs


def smooth_volume(shape=(20, 24, 18)) -> torch.Tensor:
    grid = torch.stack(torch.meshgrid(*(torch.linspace(-1, 1, n) for n in shape), indexing="ij"))
    return torch.exp(-(grid**2).sum(0) * 2)[None] + 0.1


def test_kspace_truncation_removes_fine_detail_and_keeps_coarse_structure():
    smooth = smooth_volume()
    torch.testing.assert_close(KSpaceTruncation(1.0)(smooth), smooth, atol=1e-5, rtol=1e-5)
    checker = (torch.arange(20)[:, None, None] + torch.arange(24)[None, :, None] + torch.arange(18)) % 2
    fine = checker[None].float() - 0.5
    assert KSpaceTruncation(2.0)(fine).abs().max() < 1e-4  # the finest pattern is gone
    kept = KSpaceTruncation(2.0)(smooth)
    assert kept.shape == smooth.shape
    assert (kept - smooth).abs().mean() < 0.02 * smooth.mean()


def test_thick_slices_average_slabs_along_one_axis_only():
    ramp = torch.arange(30, dtype=torch.float32).view(1, 1, 1, 30).expand(1, 6, 5, 30).clone()
    thick = ThickSlices(axis=2, thickness=3)(ramp)
    # Slab means of a linear ramp, interpolated between slab centres, give the ramp back inside.
    torch.testing.assert_close(thick[..., 2:-2], ramp[..., 2:-2])
    impulse = torch.zeros(1, 6, 5, 30)
    impulse[..., 15] = 1
    spread = ThickSlices(axis=2, thickness=3)(impulse)
    assert spread[0, 0, 0].max() < 0.5 and (spread[0, 0, 0] > 0).sum() >= 3
    # The other axes are untouched: a pattern across them survives.
    across = torch.rand(1, 6, 5, 1).expand(1, 6, 5, 30).clone()
    torch.testing.assert_close(ThickSlices(axis=2, thickness=4, spacing=6, offset=1)(across), across)


def test_a_field_of_view_cut_drops_slices_at_one_end_and_keeps_the_rest_in_place():
    volume = np.random.default_rng(0).uniform(1, 2, (10, 12, 20)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 6.0, 1.0])
    affine[:3, 3] = [-10.0, -12.0, -60.0]
    end, end_affine = field_of_view_cut((volume, affine), axis=2, lost=5, at_start=False)
    np.testing.assert_array_equal(end, volume[..., :15])
    np.testing.assert_array_equal(end_affine, affine)
    start, start_affine = field_of_view_cut((volume, affine), axis=0, lost=3, at_start=True)
    np.testing.assert_array_equal(start, volume[3:])
    # Each kept voxel stays where it was in the world: voxel 0 of the cut is voxel 3 of the whole.
    np.testing.assert_allclose(start_affine @ [0, 5, 7, 1], affine @ [3, 5, 7, 1])
    assert field_of_view_cut((volume, affine), axis=1, lost=50, at_start=True)[0].shape == (10, 1, 20)


def test_a_random_field_of_view_cut_misses_up_to_its_share_of_the_brain_at_one_end():
    brain = np.zeros((10, 30, 12), dtype=np.float32)
    brain[:, 5:25] = 1.0  # the brain spans 20 of the 30 slices along axis 1
    rng = np.random.default_rng(1)
    for _ in range(30):
        drawn, drawn_affine = random_field_of_view_cut((brain, np.eye(4)), rng, max_share=0.4, axis=1)
        first = int(round(drawn_affine[1, 3]))  # the whole's slice that the cut's slice 0 is
        np.testing.assert_array_equal(drawn, brain[:, first : first + drawn.shape[1]])
        kept_brain = int(drawn.any(axis=(0, 2)).sum())
        assert 20 - round(0.4 * 20) <= kept_brain <= 20  # up to 40 % of the brain's extent is lost
        assert first >= 5 or first + drawn.shape[1] <= 25  # at one end: its empty slices go first


def test_intensity_curve_maps_brain_voxels_only_and_may_invert_the_contrast():
    image = torch.linspace(1, 5, 60).view(1, 3, 4, 5)
    mask = torch.ones_like(image)
    mask[0, 0] = 0
    inverted = IntensityCurve([1.0, 0.0])(image, mask)
    assert (inverted[mask == 0] == 0).all()
    inside = inverted[mask > 0]
    assert inside.argmax() == image[mask > 0].argmin() and (inside > 0).all()
    identity = IntensityCurve([0.0, 0.5, 1.0])(image, mask)[mask > 0]
    assert torch.allclose(identity.diff(), identity.diff()[0].expand_as(identity.diff()), atol=1e-5)


def test_random_degradations_draw_per_call_and_need_a_mask_for_curves():
    image = smooth_volume()
    item = {"t1": image.clone(), "mask_t1": torch.ones_like(image)}
    curve = RandIntensityCurved("t1", prob=1.0)
    curve.set_random_state(seed=0)
    first, second = curve(item)["t1"], curve(item)["t1"]
    assert not torch.allclose(first, second)
    with pytest.raises(KeyError, match="mask_<key>"):
        curve({"t1": image})
    monotone = RandIntensityCurved("t1", prob=1.0, monotone=True)
    monotone.set_random_state(seed=0)
    ramp = torch.linspace(1, 5, 200).view(1, 5, 8, 5)
    for _ in range(20):  # the darkest voxel stays darkest, whatever the draw
        assert (monotone({"t1": ramp, "mask_t1": torch.ones_like(ramp)})["t1"].flatten().diff() >= 0).all()
    slices = RandThickSlicesd("t1", prob=1.0)
    slices.set_random_state(seed=0)
    assert not torch.allclose(slices(item)["t1"], image)


def test_contrast_randomised_items_stay_masked_and_z_scored_and_differ_per_view(cohort64):
    pairs = discover_bids(cohort64).kept[:2]
    preprocessing = PRESETS["tiny-spatial"].preprocessing
    plain = paired_dataset(pairs, preprocessing)[0]
    draws = [paired_dataset(pairs, preprocessing, seed=s, view_augment=True, randomise=1.0)[0] for s in range(3)]
    for item in draws:
        for key in ("t1", "t2"):
            inside = item[f"mask_{key}"] > 0.5
            assert (item[key][~inside] == 0).all()
            assert abs(float(item[key][inside].mean())) < 1e-3 and abs(float(item[key][inside].std()) - 1) < 1e-2
    # Random curves move the tissue intensities away from the plain view's, each draw differently.
    correlations = [np.corrcoef(plain["t1"].flatten(), item["t1"].flatten())[0, 1] for item in draws]
    assert min(correlations) < 0.95 and np.ptp(correlations) > 0.01


def test_a_randomised_map_input_is_a_masked_z_scored_copy_and_leaves_the_views_realistic(cohort64):
    pairs = discover_bids(cohort64).kept[:2]
    preprocessing = PRESETS["tiny-spatial"].preprocessing
    plain = paired_dataset(pairs, preprocessing, seed=0, view_augment=True)[0]
    item = paired_dataset(pairs, preprocessing, seed=0, view_augment=True, randomise=1.0, map_input=True)[0]
    for view, copy in zip(("t1", "t2"), MAP_INPUT_KEYS):
        inside = item[f"mask_{view}"] > 0.5
        assert (item[copy][~inside] == 0).all()
        assert abs(float(item[copy][inside].mean())) < 1e-3 and abs(float(item[copy][inside].std()) - 1) < 1e-2
        # The view itself is drawn as without randomisation; only the map's copy is randomised.
        torch.testing.assert_close(item[view], plain[view])
        assert np.corrcoef(item[view].flatten(), item[copy].flatten())[0, 1] < 0.99


def test_a_randomised_map_input_has_a_bias_field_of_its_own(cohort64):
    pairs = discover_bids(cohort64).kept[:1]
    preprocessing = PRESETS["tiny-spatial"].preprocessing
    slopes = []
    for seed in range(6):  # contrast and resolution almost never drawn: what is left is the copy's field
        item = paired_dataset(pairs, preprocessing, seed=seed, view_augment=True, randomise=1e-9, map_input=True)[0]
        difference, inside = item["map_t1"][0] - item["t1"][0], item["mask_t1"][0] > 0.5
        half = len(difference) // 2
        slopes.append(float(difference[:half][inside[:half]].mean() - difference[half:][inside[half:]].mean()))
    # Left and right of the brain the copy departs from the view, each draw with its own sign and size.
    assert min(slopes) < -0.1 and max(slopes) > 0.1, slopes


def test_training_cases_with_cut_slabs_are_z_scored_where_they_have_data(cohort64):
    report = discover(cohort64)
    pairs = split_pairs(report, assign_splits(report.kept, 0))["train"][:4]
    bundle = load_bundle(Path(__file__).resolve().parents[2] / "Resources" / "Models" / "demo")
    config = RestorationConfig(map_channels=bundle.model.map_channels)
    cases = restoration_cases(pairs, bundle, config, seed=0, cut_share=0.3)
    shares = [float(c.covered.sum() / (c.mask > 0.5).sum()) for c in cases]
    assert min(shares) < 0.95, shares  # some slabs miss part of the brain; 3D acquisitions never do
    assert all(share == 1.0 for case, share in zip(cases, shares) if case.degradation == "k-space x2"), shares
    for case, share in zip(cases, shares):
        covered, missed = case.covered > 0.5, (case.mask > 0.5) & (case.covered < 0.5)
        for volume in (case.lowres, case.reference):  # input and target in one set of units, as restore_scan's
            assert abs(float(volume[covered].mean())) < 1e-4 and abs(float(volume[covered].std()) - 1) < 1e-3
        if share < 1.0:  # where the slab has no data, the input lies below any tissue; the target is anatomy
            assert float(case.lowres[missed].max()) < float(case.lowres[covered].quantile(0.01))
            assert float(case.reference[missed].std()) > 0.3
