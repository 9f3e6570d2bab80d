"""Scan preparation's pieces: SimpleITK images and transforms in RAS, the bundle's template, and
registrations that are refused with the volume's name."""

import nibabel as nib
import numpy as np
import pytest

from MultiviewCRLLib.runtime.alignment import AlignmentError, from_ras_matrix, from_sitk, ras_matrix, resample, to_sitk
from MultiviewCRLLib.runtime.bundle import BundleError, export_bundle, load_bundle
from MultiviewCRLLib.runtime.preparation import TEMPLATE_MASK, Template, load_template, prepare_pair, save_template


def oblique_affine() -> np.ndarray:
    angle = np.deg2rad(20)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([1.0, 1.2, 3.0])
    affine[:3, 3] = [-40.0, 12.0, 7.5]
    return affine


def test_arrays_and_ras_affines_survive_simpleitk():
    array = np.random.default_rng(0).normal(size=(12, 9, 7)).astype(np.float32)
    back, affine = from_sitk(to_sitk(array, oblique_affine()))
    assert np.array_equal(back, array) and np.allclose(affine, oblique_affine())
    # A voxel's RAS position is the same for nibabel's affine and SimpleITK's physical point (LPS).
    ijk = (3, 4, 5)
    lps = to_sitk(array, oblique_affine()).TransformIndexToPhysicalPoint(ijk)
    assert np.allclose(np.diag([-1, -1, 1]) @ lps, oblique_affine()[:3, :3] @ ijk + oblique_affine()[:3, 3])


def test_a_ras_matrix_moves_an_image_where_it_says():
    array = np.zeros((40, 40, 40), dtype=np.float32)
    array[15:25, 15:25, 15:25] = 1
    affine = np.eye(4)
    image = to_sitk(array, affine)
    shift = np.eye(4)
    shift[:3, 3] = [6.0, 0.0, -4.0]  # reference points -> image points, in RAS
    assert np.allclose(ras_matrix(from_ras_matrix(shift)), shift)
    moved, _ = from_sitk(resample(image, image, from_ras_matrix(shift)))
    centroid = np.argwhere(moved > 0.5).mean(0)
    assert np.allclose(centroid, np.argwhere(array > 0.5).mean(0) - shift[:3, 3], atol=0.01)


def test_the_template_travels_with_the_bundle_and_a_broken_one_is_refused(tiny_run_dir, tmp_path):
    exported = export_bundle(tiny_run_dir / "bundle", tmp_path / "exported")
    template = load_bundle(exported).template
    assert template is not None and template.image.shape == template.mask.shape
    assert np.allclose(np.linalg.norm(template.affine[:3, :3], axis=0), 2.0)
    assert 1.0e6 < template.mask.sum() * 8 < 2.0e6  # a brain of 1 to 2 litres on the 2 mm grid
    save_template(tmp_path, Template(template.image, template.mask, template.affine))
    assert np.array_equal(load_template(tmp_path).mask, template.mask)
    mask = nib.load(exported / TEMPLATE_MASK)
    nib.save(nib.Nifti1Image(np.asarray(mask.dataobj)[:-1], mask.affine), exported / TEMPLATE_MASK)
    with pytest.raises(BundleError, match="template.nii.gz is invalid"):
        load_bundle(exported)


def test_a_volume_that_cannot_be_aligned_is_refused_with_its_name(tiny_run_dir):
    template = load_bundle(tiny_run_dir / "bundle").template
    rng = np.random.default_rng(0)
    small = np.zeros((60, 60, 60), dtype=np.float32)
    small[25:35, 25:35, 25:35] = 1000 + rng.normal(0, 50, (10, 10, 10))  # a 2 cm cube, not a head
    with pytest.raises(AlignmentError, match="the T1w 'cube': registration to the template diverged"):
        prepare_pair({"T1w": (small, np.diag([1.0, 1.0, 1.0, 1.0]))}, template, names={"T1w": "cube"})


def test_a_second_view_that_does_not_align_with_the_first_is_refused_with_its_name(tiny_run_dir):
    template = load_bundle(tiny_run_dir / "bundle").template
    noise = np.random.default_rng(1).uniform(0, 1000, template.image.shape).astype(np.float32)
    given = {"T1w": (template.image, template.affine), "T2w": (noise, template.affine)}
    with pytest.raises(
        AlignmentError, match=r"the T2w 'noise': registration to the T1w 'brain' diverged \(mutual information"
    ):
        prepare_pair(given, template, names={"T1w": "brain", "T2w": "noise"})
