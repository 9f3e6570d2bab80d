"""A raw cohort prepared once before training (``trainer_cli.py --prepare``): prepared pairs on the
template's grid with their labels, a cache that prepares nothing twice, and a pair that cannot be
prepared rejected with its file and reason."""

import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import trainer_cli
from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.training.atlas import mni_brain_template
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.prepared_cohort import prepare_cohort
from MultiviewCRLLib.training.raw_scans import write_raw_cohort


@pytest.fixture(scope="module")
def raw_with_constant(cohort64, tmp_path_factory):
    """A raw-looking subject and a second whose T1w is constant (it passes discovery, which refuses
    only an all-zero volume)."""
    raw = write_raw_cohort(cohort64, tmp_path_factory.mktemp("raw_cohort") / "raw", n_subjects=1, seed=2)
    anat = raw / "sub-0003" / "anat"
    shutil.copytree(raw / "sub-0001" / "anat", anat)
    for path in anat.iterdir():
        path.rename(anat / path.name.replace("sub-0001", "sub-0003"))
    t1 = nib.load(anat / "sub-0003_T1w.nii.gz")
    constant = np.full(t1.shape, 500, dtype=np.float32)
    nib.save(nib.Nifti1Image(constant, t1.affine), anat / "sub-0003_T1w.nii.gz")
    return raw


def test_raw_pairs_are_prepared_once_onto_the_template_grid(raw_with_constant, tmp_path):
    template, threshold = mni_brain_template(), PRESETS["tiny"].preprocessing.mask_threshold
    report = discover_bids(raw_with_constant)
    prepared = prepare_cohort(report, tmp_path, template, threshold)
    assert [p.subject for p in prepared.kept] == ["sub-0001"]
    [failed] = prepared.rejected
    assert failed.subject == "sub-0003" and failed.file.endswith("sub-0003_T1w.nii.gz")
    assert "preparation failed" in failed.reason and "every voxel is 500, so there is nothing to align" in failed.reason
    for pair, raw_pair in zip(prepared.kept, report.kept):
        assert pair.labels == raw_pair.labels and pair.split == raw_pair.split
        for path in (pair.t1, pair.t2):
            image = nib.load(path)
            assert image.shape == template.image.shape and np.allclose(image.affine, template.affine)
            brain = np.asarray(image.dataobj) > 0  # skull and scalp removed: what is left is a brain
            assert abs(brain.sum() / template.mask.sum() - 1) < 0.25
            assert not brain[~ndimage.binary_dilation(template.mask, iterations=5)].any()
    written = {path: path.stat().st_mtime_ns for pair in prepared.kept for path in (pair.t1, pair.t2)}
    again = prepare_cohort(discover_bids(raw_with_constant), tmp_path, template, threshold)
    assert [p.t1 for p in again.kept] == [p.t1 for p in prepared.kept]
    assert {path: path.stat().st_mtime_ns for path in written} == written


def test_the_cli_asks_for_preparation(tmp_path):
    parser = trainer_cli.build_parser()
    args = parser.parse_args(["--prepare", "--bids", str(tmp_path)])
    assert trainer_cli.request_from_args(args, parser).prepare
    args = parser.parse_args(["--bids", str(tmp_path)])
    assert not trainer_cli.request_from_args(args, parser).prepare
