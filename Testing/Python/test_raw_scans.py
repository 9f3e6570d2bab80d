"""Raw-looking scans made from the synthetic cohort: a head around the brain, a rigid pose, each
view on its own grid, and ground truth (brain masks, pose) that agrees with the clean scans."""

import nibabel as nib
import numpy as np
import pytest

from MultiviewCRLLib.training.raw_scans import BRAIN_MASK, MAX_ROTATION_DEG, T2W_VOXEL_MM, read_poses, write_raw_cohort


@pytest.fixture(scope="module")
def raw_cohort(cohort64, tmp_path_factory):
    return write_raw_cohort(cohort64, tmp_path_factory.mktemp("raw") / "raw", n_subjects=1, seed=1)


def centroid_mm(image) -> np.ndarray:
    voxels = np.argwhere(np.asarray(image.dataobj) > 0)
    return image.affine[:3, :3] @ voxels.mean(0) + image.affine[:3, 3]


def test_the_pose_is_rigid_and_moves_the_brain_where_the_masks_say(cohort64, raw_cohort):
    pose = read_poses(raw_cohort)["sub-0001"]
    rotation = pose[:3, :3]
    assert np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) and np.isclose(np.linalg.det(rotation), 1)
    assert np.degrees(np.arccos((np.trace(rotation) - 1) / 2)) <= np.sqrt(3) * MAX_ROTATION_DEG
    clean = nib.load(cohort64 / "derivatives" / "tissues" / "sub-0001" / "anat" / "sub-0001_dseg.nii.gz")
    expected = pose[:3, :3] @ centroid_mm(clean) + pose[:3, 3]
    mask = nib.load(raw_cohort / BRAIN_MASK / "sub-0001" / "anat" / "sub-0001_space-T1w_mask.nii.gz")
    assert np.linalg.norm(centroid_mm(mask) - expected) < 1.5
    brain_ml = (np.asarray(clean.dataobj) > 0).sum() * abs(np.linalg.det(clean.affine[:3, :3])) / 1000
    mask_ml = np.asarray(mask.dataobj).sum() * abs(np.linalg.det(mask.affine[:3, :3])) / 1000
    assert abs(mask_ml / brain_ml - 1) < 0.03


def test_the_head_surrounds_the_brain_and_each_view_has_its_own_grid(raw_cohort):
    anat = raw_cohort / "sub-0001" / "anat"
    t1, t2 = (nib.load(anat / f"sub-0001_{view}.nii.gz") for view in ("T1w", "T2w"))
    assert np.allclose(t1.header.get_zooms(), (1, 1, 1)) and np.allclose(t2.header.get_zooms(), T2W_VOXEL_MM)
    assert not np.allclose(t1.affine, t2.affine)
    mask = (
        np.asarray(nib.load(raw_cohort / BRAIN_MASK / "sub-0001" / "anat" / "sub-0001_space-T1w_mask.nii.gz").dataobj)
        > 0
    )
    from scipy import ndimage

    scalp = ndimage.binary_dilation(mask, iterations=14) & ~ndimage.binary_dilation(mask, iterations=8)
    t1_array = np.asarray(t1.dataobj, dtype=np.float32)
    white = np.percentile(t1_array[mask], 75)
    assert np.median(t1_array[scalp]) > 0.8 * white  # fat of the scalp is bright on the T1w
    assert (t1_array[~ndimage.binary_dilation(mask, iterations=20)] < 0.2 * white).mean() > 0.95  # air around the head
