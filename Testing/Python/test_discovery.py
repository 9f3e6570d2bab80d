"""Finding pairs in BIDS folders, manifests and folder-per-subject layouts; every rejection
reason, with a message naming the file; the report and its TSV."""

import csv
import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest
from conftest import volume_path

from MultiviewCRLLib.training.discovery import (
    DiscoveryError,
    discover,
    discover_bids,
    discover_folders,
    discover_manifest,
)


def copy_pair(cohort, subject, dest_t1, dest_t2):
    for view, dest in (("T1w", dest_t1), ("T2w", dest_t2)):
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(volume_path(cohort, subject, view), dest)


def save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def test_bids_with_sessions_and_participants(cohort64, tmp_path):
    root = tmp_path / "bids"
    copy_pair(cohort64, "sub-0001", root / "sub-01/anat/sub-01_T1w.nii.gz", root / "sub-01/anat/sub-01_T2w.nii.gz")
    for ses in ("ses-1", "ses-2"):
        anat = root / "sub-02" / ses / "anat"
        copy_pair(cohort64, "sub-0002", anat / f"sub-02_{ses}_T1w.nii.gz", anat / f"sub-02_{ses}_T2w.nii.gz")
    (root / "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz").write_bytes(b"not used: FLAIR is not a view")
    (root / "participants.tsv").write_text("participant_id\tsplit\tdiagnosis\nsub-01\ttest\tAD\nsub-02\ttrain\tCN\n")
    report = discover_bids(root)
    assert [p.key for p in report.kept] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    assert not report.rejected
    assert report.kept[0].split == "test" and report.kept[0].labels == {"diagnosis": "AD"}
    assert report.kept[1].t2.name == "sub-02_ses-1_T2w.nii.gz"


def test_bids_custom_view_suffixes(cohort64, tmp_path):
    root = tmp_path / "bids"
    anat = root / "sub-01/anat"
    copy_pair(cohort64, "sub-0001", anat / "sub-01_T1w.nii.gz", anat / "sub-01_FLAIR.nii.gz")
    assert [p.key for p in discover_bids(root, views=("T1w", "FLAIR")).kept] == ["sub-01"]
    report = discover_bids(root)  # FLAIR is never taken for T2w
    assert not report.kept and report.rejected[0].reason == "missing T2w view"


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_manifest_relative_paths_split_and_labels(cohort64, tmp_path, suffix):
    copy_pair(cohort64, "sub-0001", tmp_path / "img/a_t1.nii.gz", tmp_path / "img/a_t2.nii.gz")
    copy_pair(cohort64, "sub-0002", tmp_path / "img/b_t1.nii.gz", tmp_path / "img/b_t2.nii.gz")
    sep = "," if suffix == ".csv" else "\t"
    rows = [["subject", "t1", "t2", "split", "age"], ["a", "img/a_t1.nii.gz", "img/a_t2.nii.gz", "val", "71"]]
    rows.append(["b", str(tmp_path / "img/b_t1.nii.gz"), "img/b_t2.nii.gz", "", "64"])
    manifest = tmp_path / f"manifest{suffix}"
    manifest.write_text("\n".join(sep.join(r) for r in rows) + "\n")
    report = discover(manifest)
    assert [p.subject for p in report.kept] == ["a", "b"]
    assert report.kept[0].t1 == (tmp_path / "img/a_t1.nii.gz").resolve()
    assert report.kept[0].split == "val" and report.kept[1].split == ""
    assert report.kept[1].labels == {"age": "64"}


def test_manifest_without_required_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,t1\nx,a.nii.gz\n")
    with pytest.raises(DiscoveryError, match=r"m\.csv: manifest lacks the column\(s\) \['subject', 't2'\]"):
        discover_manifest(manifest)


def test_folder_layout_as_in_the_report(cohort64, tmp_path):
    dataroot, dataset_name = tmp_path / "dataroot", "ADNI"
    for subject in ("sub-0001", "sub-0002"):
        folder = dataroot / dataset_name / f"{subject[-2:]}_S_0001"
        copy_pair(cohort64, subject, folder / "mri/T1_brain.nii.gz", folder / "mri/T2_brain.nii.gz")
    (dataroot / dataset_name / "empty_subject").mkdir()
    report = discover(dataroot / dataset_name, t1_pattern="mri/T1*.nii.gz", t2_pattern="mri/T2*.nii.gz")
    assert [p.subject for p in report.kept] == ["01_S_0001", "02_S_0001"]
    assert [(r.subject, r.reason) for r in report.rejected] == [("empty_subject", "missing T1 view")]
    with pytest.raises(DiscoveryError, match="both a T1 and a T2 pattern"):
        discover(dataroot / dataset_name, t1_pattern="mri/T1*.nii.gz")


def bad_inputs(cohort, root):
    """One subject per rejection reason (plus a good one and an accepted 4D single volume)."""
    good = volume_path(cohort, "sub-0001", "T1w")
    data = np.asanyarray(nib.load(good).dataobj).astype(np.float32)
    anat = lambda s: root / s / "anat"  # noqa: E731
    copy_pair(cohort, "sub-0001", anat("sub-good") / "sub-good_T1w.nii.gz", anat("sub-good") / "sub-good_T2w.nii.gz")
    copy_pair(cohort, "sub-0002", anat("sub-noT2") / "sub-noT2_T1w.nii.gz", None)
    copy_pair(cohort, "sub-0003", anat("sub-dup") / "sub-dup_run-1_T1w.nii.gz", anat("sub-dup") / "sub-dup_T2w.nii.gz")
    shutil.copy(good, anat("sub-dup") / "sub-dup_run-2_T1w.nii.gz")
    expected = {"sub-noT2": "missing T2w view", "sub-dup": "duplicate T1w: 2 files"}
    cases = {
        "sub-flat": (data[:, :, 40], "not a 3D image"),
        "sub-multi": (np.stack([data, data], -1), "4D image with 2 volumes"),
        "sub-nan": (np.where(data > 500, np.nan, data), "non-finite voxels"),
        "sub-zero": (np.zeros_like(data), "empty volume"),
        "sub-single4d": (data[..., None], None),
    }
    for subject, (array, reason) in cases.items():
        save(array, anat(subject) / f"{subject}_T1w.nii.gz")
        shutil.copy(volume_path(cohort, "sub-0004", "T2w"), anat(subject) / f"{subject}_T2w.nii.gz")
        if reason:
            expected[subject] = reason
    copy_pair(
        cohort, "sub-0005", anat("sub-trunc") / "sub-trunc_T1w.nii.gz", anat("sub-trunc") / "sub-trunc_T2w.nii.gz"
    )
    full = (anat("sub-trunc") / "sub-trunc_T2w.nii.gz").read_bytes()
    (anat("sub-trunc") / "sub-trunc_T2w.nii.gz").write_bytes(full[: len(full) // 2])
    copy_pair(cohort, "sub-0006", anat("sub-text") / "sub-text_T1w.nii.gz", None)
    (anat("sub-text") / "sub-text_T2w.nii.gz").write_text("subject notes, not an image\n")
    expected["sub-trunc"] = "unreadable"
    expected["sub-text"] = "unreadable"
    return expected


def test_every_rejection_reason_names_the_file(cohort64, tmp_path):
    root = tmp_path / "bids"
    expected = bad_inputs(cohort64, root)
    report = discover_bids(root)
    assert sorted(p.key for p in report.kept) == ["sub-good", "sub-single4d"]
    reasons = {r.subject: r for r in report.rejected}
    assert set(reasons) == set(expected)
    for subject, reason in expected.items():
        assert reason in reasons[subject].reason, (subject, reasons[subject])
        assert subject in reasons[subject].file  # the message names the offending file
    assert reasons["sub-trunc"].file.endswith("sub-trunc_T2w.nii.gz")
    assert reasons["sub-text"].file.endswith("sub-text_T2w.nii.gz")
    summary = report.summary()
    assert "2 subjects kept, 8 rejected" in summary and "sub-text_T2w.nii.gz" in summary


def test_report_tsv_and_usability(cohort64, tmp_path):
    root = tmp_path / "bids"
    bad_inputs(cohort64, root)
    report = discover_bids(root)
    path = report.write_tsv(tmp_path / "discovery.tsv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert len(rows) == 10
    assert {r["status"] for r in rows} == {"kept", "rejected"}
    assert all(r["reason"] for r in rows if r["status"] == "rejected")
    report.require_usable()
    with pytest.raises(DiscoveryError, match="--strict: 8 subjects rejected"):
        report.require_usable(strict=True)
    empty = tmp_path / "empty"
    (empty / "sub-x/anat").mkdir(parents=True)
    with pytest.raises(DiscoveryError, match="no usable subjects"):
        discover_bids(empty).require_usable()


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(DiscoveryError, match="nowhere: BIDS folder not found"):
        discover(tmp_path / "nowhere")
    with pytest.raises(DiscoveryError, match="data folder not found"):
        discover_folders(tmp_path / "nowhere", "*T1*", "*T2*")


def test_gzip_member_check_reads_whole_file(cohort64, tmp_path):
    """A truncated .nii.gz whose header still parses is caught when the voxels are read."""
    src = volume_path(cohort64, "sub-0001", "T1w")
    raw = gzip.decompress(src.read_bytes())
    truncated = tmp_path / "cut.nii.gz"
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    from MultiviewCRLLib.training.discovery import volume_problem

    assert volume_problem(truncated).startswith("unreadable")
    assert volume_problem(src) is None
