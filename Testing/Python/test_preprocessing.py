"""The shared MONAI pipeline: file and array entries agree; outputs overlay the input in RAS;
orientation, obliquity and anisotropic voxels do not change what the model sees."""

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import volume_path
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

from MultiviewCRLLib.config import PreprocessingConfig
from MultiviewCRLLib.runtime.preprocessing import preprocess_array, preprocess_file, to_array_affine, to_nifti

CONFIG = PreprocessingConfig()


def centroid_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask > 0.5).mean(0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


@pytest.fixture(scope="module")
def t1_path(cohort_1mm):
    return volume_path(cohort_1mm, "sub-0001", "T1w")


@pytest.fixture(scope="module")
def reference(t1_path):
    return preprocess_file(t1_path)


def test_output_is_the_report_grid(reference):
    image, mask = reference
    assert image.shape == mask.shape == (1, 91, 109, 91)
    assert image.dtype == torch.float32
    assert np.allclose(np.abs(np.diag(image.affine[:3, :3])), 2.0)
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    inside = image[mask > 0.5]
    assert abs(float(inside.mean())) < 0.5 and 0.5 < float(inside.std()) < 1.5  # z-scored
    assert float(image[mask < 0.5].abs().max()) == 0.0  # mask applied


def test_file_and_array_entries_agree(t1_path, reference):
    img = nib.load(t1_path)
    image, mask = preprocess_array(np.asanyarray(img.dataobj), img.affine)
    assert float((image - reference[0]).abs().max()) <= 1e-5
    assert float((mask - reference[1]).abs().max()) == 0.0
    assert torch.equal(image.affine, reference[0].affine)


def test_output_overlays_the_input_in_ras(t1_path, reference, tmp_path):
    img = nib.load(t1_path)
    input_centroid = centroid_ras(np.asanyarray(img.dataobj) > CONFIG.mask_threshold, img.affine)
    path = tmp_path / "model_space_mask.nii.gz"
    nib.save(to_nifti(reference[1]), path)
    written = nib.load(path)
    assert np.linalg.norm(centroid_ras(np.asanyarray(written.dataobj), written.affine) - input_centroid) < 2.0
    array, affine = to_array_affine(reference[1])
    assert array.shape == (91, 109, 91)
    assert np.linalg.norm(centroid_ras(array, affine) - input_centroid) < 2.0


@pytest.mark.parametrize("axcodes", [("L", "P", "S"), ("P", "I", "R")])
def test_reoriented_storage_gives_the_same_tensor(t1_path, reference, tmp_path, axcodes):
    img = nib.load(t1_path)
    twin = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(axcodes)))
    assert nib.aff2axcodes(twin.affine) == axcodes
    path = tmp_path / "twin.nii.gz"
    nib.save(twin, path)
    image, _ = preprocess_file(path)
    assert float((image - reference[0]).abs().max()) <= 1e-4
    assert torch.allclose(image.affine, reference[0].affine)


def test_oblique_storage_gives_the_same_tensor(t1_path, reference, tmp_path):
    """The same head stored on a grid rotated by 15 degrees (resampled once, so not bit-equal)."""
    img = nib.load(t1_path)
    angle = np.deg2rad(15)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    centre = np.eye(4)
    centre[:3, 3] = img.affine[:3, :3] @ (np.array(img.shape) / 2) + img.affine[:3, 3]
    oblique_affine = centre @ rotation @ np.linalg.inv(centre) @ img.affine
    # Voxel of the oblique grid -> voxel of the original grid, for the one-off resampling.
    voxel_map = np.linalg.inv(img.affine) @ oblique_affine
    data = ndimage.affine_transform(np.asanyarray(img.dataobj).astype(np.float32), voxel_map, order=1)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(data, oblique_affine), path)
    image, mask = preprocess_file(path)
    # The rotated grid has a larger bounding box, so the 2 mm grid may shift by a fraction of a voxel.
    affine, ref_affine = image.affine.numpy(), reference[0].affine.numpy()
    assert np.allclose(affine[:3, :3], ref_affine[:3, :3], atol=1e-6)
    assert np.abs(affine[:3, 3] - ref_affine[:3, 3]).max() <= 1.0
    shift = centroid_ras(mask[0].numpy(), affine) - centroid_ras(reference[1][0].numpy(), ref_affine)
    assert np.linalg.norm(shift) < 1.0
    both = (mask > 0.5) & (reference[1] > 0.5)
    overlap = float(both.sum()) / float((reference[1] > 0.5).sum())
    r = np.corrcoef(image[both].numpy(), reference[0][both].numpy())[0, 1]
    assert overlap > 0.97 and r > 0.9, (overlap, r)


def test_anisotropic_voxels(t1_path, reference, tmp_path):
    """Thick 3 mm slices along z: the same grid comes out, anatomy in the same place."""
    img = nib.load(t1_path)
    data = np.asanyarray(img.dataobj)[:, :, ::3]
    affine = img.affine @ np.diag([1.0, 1.0, 3.0, 1.0])
    path = tmp_path / "thick.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    image, mask = preprocess_file(path)
    assert image.shape == (1, 91, 109, 91)
    shift = centroid_ras(mask[0].numpy(), image.affine.numpy()) - centroid_ras(
        reference[1][0].numpy(), reference[0].affine.numpy()
    )
    assert np.linalg.norm(shift) < 2.0
    both = (mask > 0.5) & (reference[1] > 0.5)
    assert np.corrcoef(image[both].numpy(), reference[0][both].numpy())[0, 1] > 0.9


def test_config_round_trip_and_fingerprint():
    config = PreprocessingConfig(spacing_mm=(3.0, 3.0, 3.0), spatial_size=(64, 72, 64))
    assert PreprocessingConfig.from_dict(config.to_dict()) == config
    assert config.fingerprint() != PreprocessingConfig().fingerprint()
    assert PreprocessingConfig().fingerprint() == PreprocessingConfig().fingerprint()
    with pytest.raises(ValueError, match="unknown preprocessing settings"):
        PreprocessingConfig.from_dict({"spacing": 2})
    with pytest.raises(ValueError, match="3D volume"):
        preprocess_array(np.zeros((4, 4)), np.eye(4))
