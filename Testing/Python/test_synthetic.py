"""The embedded synthetic cohort: contrast, content factors that act, style independent of content,
determinism and argument checks — all on real NIfTI files."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import exit_code_and_stderr
from scipy import ndimage

from MultiviewCRLLib.training import factors, synthetic
from MultiviewCRLLib.training.montage import write_montage

LABELS = {name: index for index, name in synthetic.DSEG_LABELS.items()}


def read_participants(bids: Path) -> list[dict[str, str]]:
    with open(bids / "participants.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def load(bids: Path, subject: str, view: str) -> np.ndarray:
    return np.asarray(nib.load(bids / subject / "anat" / f"{subject}_{view}.nii.gz").dataobj)


def load_labels(bids: Path, subject: str) -> np.ndarray:
    path = bids / "derivatives" / "tissues" / subject / "anat" / f"{subject}_dseg.nii.gz"
    return np.asarray(nib.load(path).dataobj)


def test_bids_layout_and_factor_table(cohort64):
    rows = read_participants(cohort64)
    content, style = synthetic.factor_names()
    assert len(rows) == 64
    columns = {"participant_id", "split", *factors.CLINICAL_NAMES, *content, *factors.VOLUME_NAMES}
    assert set(rows[0]) == columns | {*style["T1w"], *style["T2w"]}
    assert {r["diagnosis"] for r in rows} == {"CN", "MCI", "AD"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert len({r["participant_id"] for r in rows}) == 64  # each subject in exactly one split
    assert (cohort64 / "dataset_description.json").is_file()
    img = nib.load(cohort64 / "sub-0001" / "anat" / "sub-0001_T1w.nii.gz")
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.header.get_zooms(), 2.0)
    for name, (low, high) in synthetic.CONTENT_RANGES.items():
        if name in content:
            values = np.array([float(r[name]) for r in rows])
            assert values.min() >= low and values.max() <= high


@pytest.mark.parametrize("index", range(64))
def test_tissue_contrast_in_every_subject(cohort64, index):
    subject = f"sub-{index + 1:04d}"
    labels = load_labels(cohort64, subject)
    lesion = labels == LABELS["lesion"]
    assert lesion.sum() > 0
    # Lesions are read against the white matter around them (within 8 mm), as a radiologist
    # would: the bias field makes distant white matter brighter or darker.
    near_lesion = ndimage.binary_dilation(lesion, iterations=4) & (labels == LABELS["WM"])
    medians = {}
    for view in synthetic.VIEWS:
        image = load(cohort64, subject, view)
        medians[view] = {name: np.median(image[labels == LABELS[name]]) for name in ("CSF", "GM", "WM", "lesion")}
        medians[view]["WM near lesion"] = np.median(image[near_lesion])
    t1, t2 = medians["T1w"], medians["T2w"]
    assert t1["WM"] > t1["GM"] > t1["CSF"], t1
    assert t2["CSF"] > t2["GM"] > t2["WM"], t2
    assert t1["lesion"] < t1["WM near lesion"], t1
    assert t2["lesion"] > t2["WM near lesion"], t2


def test_content_factors_act(cohort64):
    rows = read_participants(cohort64)
    brain_volume, ventricle_ratio, ventricle_voxels, lesion_volume = [], [], [], []
    for row in rows:
        subject = row["participant_id"]
        labels = load_labels(cohort64, subject)
        affine = nib.load(cohort64 / subject / "anat" / f"{subject}_T1w.nii.gz").affine
        brain = labels > 0
        brain_volume.append(brain.sum())
        # Lateral ventricles: CSF inside the central box of MNI space, scaled with the brain.
        ijk = np.argwhere(labels == LABELS["CSF"])
        mm = ijk @ affine[:3, :3].T + affine[:3, 3]
        centre = np.argwhere(brain).mean(0) @ affine[:3, :3].T + affine[:3, 3]
        rel = (mm - centre) / float(row["brain_scale"])
        central = (np.abs(rel[:, 0]) < 25) & (np.abs(rel[:, 1] - 10) < 30) & (np.abs(rel[:, 2] - 6) < 16)
        ventricle_ratio.append(central.sum() / brain.sum())
        ventricle_voxels.append(central.sum())
        lesion_volume.append((labels == LABELS["lesion"]).sum())

    def factor(name):
        return np.array([float(r[name]) for r in rows])

    def explained(measured, names):
        """R² and coefficients of a least-squares line from the named factors to a measurement: the
        ADNI design drives several factors together, so each is read with the others held."""
        x = np.column_stack([factor(n) for n in names] + [np.ones(len(rows))])
        coefficients, *_ = np.linalg.lstsq(x, measured, rcond=None)
        residual = measured - x @ coefficients
        return 1 - residual.var() / np.var(measured), coefficients

    r_scale = np.corrcoef(brain_volume, factor("brain_scale") ** 3)[0, 1]
    assert r_scale > 0.9, r_scale
    r2, (enlargement, atrophy, *_) = explained(
        np.array(ventricle_ratio), ["ventricle_enlargement", "cortical_atrophy", "brain_scale"]
    )
    assert r2 > 0.9 and enlargement > 0 and atrophy > 0, (r2, enlargement, atrophy)
    r2, (load, *_) = explained(np.array(lesion_volume, dtype=float), ["lesion_load", "brain_scale"])
    assert r2 > 0.75 and load > 0, (r2, load)
    # The generator's own volumes agree with the labels it wrote.
    assert np.corrcoef(factor("lesion_ml"), lesion_volume)[0, 1] > 0.95
    r_ventricles = np.corrcoef(factor("ventricle_ml"), ventricle_voxels)[0, 1]
    assert r_ventricles > 0.8, r_ventricles


def test_adni_design_groups_and_ages():
    rows = factors.draw_design(600, seed=0)
    groups = np.array([r["diagnosis"] for r in rows])
    for group, share in factors.DIAGNOSES.items():
        assert abs((groups == group).sum() - share * 600) <= 1, group
    ages = np.array([r["age"] for r in rows])
    assert factors.AGE_RANGE[0] <= ages.min() and ages.max() <= factors.AGE_RANGE[1]
    assert abs(ages.mean() - factors.AGE_MEAN) < 1.0

    def mean(name, group):
        return np.mean([r[name] for r in rows if r["diagnosis"] == group])

    for name in ("ventricle_enlargement", "cortical_atrophy", "medial_temporal_atrophy"):
        assert mean(name, "CN") < mean(name, "MCI") < mean(name, "AD"), name
    lesions = np.array([r["lesion_load"] for r in rows])
    assert np.corrcoef(ages, lesions)[0, 1] > 0.4
    # Scanner, sequence and head size stay independent of group, as sites are in a well-run study.
    is_ad = (groups == "AD").astype(float)
    _, style = synthetic.factor_names()
    for name in ["brain_scale", "deform_1", *style["T1w"], *style["T2w"]]:
        assert abs(np.corrcoef(is_ad, [r[name] for r in rows])[0, 1]) < 0.15, name


def test_independent_design_has_no_groups():
    rows = factors.draw_design(200, seed=0, design="independent")
    assert "diagnosis" not in rows[0] and "age" not in rows[0]
    content, _ = synthetic.factor_names()
    names = [n for n in content if n in synthetic.CONTENT_RANGES]
    table = np.array([[r[n] for n in names] for r in rows])
    correlations = np.corrcoef(table.T)[np.triu_indices(len(names), 1)]
    assert np.abs(correlations).max() < 0.2
    with pytest.raises(ValueError, match="adni, independent"):
        factors.draw_design(10, seed=0, design="adni-like")


def test_atrophy_turns_grey_matter_into_csf():
    generator = synthetic.SubjectGenerator(synthetic.load_tissue_atlas(), spacing_mm=4.0)
    base = factors.draw_design(1, seed=0, design="independent")[0]
    volumes = {}
    for name in ("none", "cortical_atrophy", "medial_temporal_atrophy"):
        design = dict(base, cortical_atrophy=0.0, medial_temporal_atrophy=0.0)
        if name != "none":
            design[name] = 0.5
        tissues = generator.tissues(design, generator.lesion_centers(design, np.random.default_rng(0)))
        volumes[name] = generator.volumes(tissues, tissues["coordinates"])
    for name in ("cortical_atrophy", "medial_temporal_atrophy"):
        lost = volumes["none"]["gm_ml"] - volumes[name]["gm_ml"]
        assert lost > 2.0, (name, lost)
        assert volumes[name]["csf_ml"] - volumes["none"]["csf_ml"] == pytest.approx(lost, rel=1e-3)
        assert volumes[name]["wm_ml"] == pytest.approx(volumes["none"]["wm_ml"])
    assert volumes["none"]["gm_ml"] - volumes["cortical_atrophy"]["gm_ml"] > 40  # about a tenth of the cortex


def test_style_independent_of_content(cohort64):
    rows = read_participants(cohort64)
    content, style = synthetic.factor_names()
    table = {name: np.array([float(r[name]) for r in rows]) for name in content + style["T1w"] + style["T2w"]}
    for c in content:
        for s in style["T1w"] + style["T2w"]:
            r = np.corrcoef(table[c], table[s])[0, 1]
            assert abs(r) < 0.3, (c, s, r)
    # The two views' styles are drawn independently of each other too.
    for a, b in zip(style["T1w"], style["T2w"]):
        assert abs(np.corrcoef(table[a], table[b])[0, 1]) < 0.3, (a, b)


def test_same_arguments_give_identical_bytes(tmp_path):
    a = synthetic.generate_cohort(tmp_path / "a", n_subjects=3, seed=11, spacing_mm=4.0)
    b = synthetic.generate_cohort(tmp_path / "b", n_subjects=3, seed=11, spacing_mm=4.0, workers=1)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 3 * 5 + 5  # per subject: 2 views, 2 references, tissues
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = synthetic.generate_cohort(tmp_path / "c", n_subjects=3, seed=12, spacing_mm=4.0)
    assert (c / "sub-0001/anat/sub-0001_T1w.nii.gz").read_bytes() != (
        a / "sub-0001/anat/sub-0001_T1w.nii.gz"
    ).read_bytes()


def run_cli(capsys, *args: str) -> tuple[int, str]:
    return exit_code_and_stderr(synthetic.main, list(args), capsys)


@pytest.mark.parametrize("count", ["0", "-4"])
def test_bad_subject_count(tmp_path, capsys, count):
    code, stderr = run_cli(capsys, "--out", str(tmp_path / "out"), "--subjects", count)
    assert code == 2
    assert "--subjects must be at least 1" in stderr
    assert not (tmp_path / "out").exists()


def test_existing_folder_needs_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("precious")
    code, stderr = run_cli(capsys, "--out", str(out), "--subjects", "1", "--spacing", "6")
    assert code == 2
    assert "not empty" in stderr and "--overwrite" in stderr
    assert keep.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left behind
    code, stderr = run_cli(capsys, "--out", str(out), "--subjects", "1", "--spacing", "6", "--overwrite")
    assert code == 0, stderr
    assert not keep.exists() and (out / "participants.tsv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["file", "readonly"])
def test_unwritable_output(tmp_path, capsys, where):
    if where == "file":
        blocker = tmp_path / "plain.txt"
        blocker.write_text("x")
        out, expected = blocker / "cohort", "is not a folder"
    else:
        out, expected = Path("/proc/multiviewcrl-cohort"), "cannot write"
    code, stderr = run_cli(capsys, "--out", str(out), "--subjects", "2")
    assert code == 2
    assert expected in stderr and str(out) in stderr


def test_montage_png(cohort64, tmp_path):
    png = write_montage(cohort64, tmp_path / "montage.png", n_subjects=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] > 100 and pixels[..., :3].std() > 0.05  # an image, not a blank canvas
