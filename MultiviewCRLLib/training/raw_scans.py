"""Raw-looking scans made from a synthetic cohort, with their ground truth, for the tests and
benchmarks of scan preparation and of the input check.

Each subject's skull-stripped T1w and T2w get:

- the head around the brain: layers by distance from the brain (CSF, skull, scalp), each with its
  intensity relative to the subject's own white matter in that view (skull dark in both, scalp fat
  bright on T1w and grey on T2w), and the view's noise in the air;
- a random rigid pose of the head (rotations up to 20 degrees, shifts up to 20 mm);
- its own scan grid per view: the T1w 1 mm isotropic, axis-aligned; the T2w 0.9 x 0.9 x 3 mm
  slices tilted by up to 15 degrees, with a field of view that cuts off part of the head.

Ground truth: each view's brain mask on its scan grid (``derivatives/brainmask``) and the pose
(``poses.tsv``: the 4 x 4 matrix that maps the clean scan's world coordinates to the raw scan's).

    python -m MultiviewCRLLib.training.raw_scans --cohort data/synthetic-adni-n600-s0-2mm --out data/raw-test \\
        --subjects 20 --split test
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

from ..config import VIEWS
from ..runtime.storage import nifti_image, staged_folder
from .discovery import discover_bids

# Layers outward from the brain: (name, thickness in mm).
HEAD_LAYERS_MM = (("CSF", 2.0), ("skull", 6.0), ("scalp", 6.0))
# Each layer's intensity as a multiple of the view's white-matter median ("CSF": of its own CSF).
LAYER_INTENSITY = {
    "T1w": {"CSF": 1.0, "skull": 0.08, "scalp": 1.25},
    "T2w": {"CSF": 1.0, "skull": 0.08, "scalp": 0.7},
}
AIR_NOISE = 0.02  # air's Rician noise, as a multiple of the white-matter median
DSEG = {"CSF": 1, "GM": 2, "WM": 3}
MAX_ROTATION_DEG, MAX_SHIFT_MM = 20.0, 20.0
T2W_TILT_DEG = 15.0
T2W_VOXEL_MM = (0.9, 0.9, 3.0)
BRAIN_MASK = Path("derivatives") / "brainmask"


def rotation(angles_deg) -> np.ndarray:
    """3 x 3 rotation about x, then y, then z, by ``angles_deg``."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def random_pose(center_mm: np.ndarray, rng) -> np.ndarray:
    """A 4 x 4 rigid transform of world coordinates: a rotation about ``center_mm`` and a shift."""
    pose = np.eye(4)
    pose[:3, :3] = rotation(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, 3))
    pose[:3, 3] = center_mm - pose[:3, :3] @ center_mm + rng.uniform(-MAX_SHIFT_MM, MAX_SHIFT_MM, 3)
    return pose


def head(image: np.ndarray, dseg: np.ndarray, distance: np.ndarray, view: str, rng) -> np.ndarray:
    """The skull-stripped ``image`` with the head's layers around its brain (same grid), placed
    by each voxel's ``distance`` from the brain in mm."""
    white = float(np.median(image[dseg == DSEG["WM"]]))
    own_csf = float(np.median(image[dseg == DSEG["CSF"]]))
    out = image.astype(np.float32).copy()
    inner = 0.0
    for name, thickness in HEAD_LAYERS_MM:
        layer = (distance > inner) & (distance <= inner + thickness)
        level = own_csf if name == "CSF" else white * LAYER_INTENSITY[view][name]
        out[layer] = level * rng.uniform(0.9, 1.1, layer.sum())
        inner += thickness
    sigma = AIR_NOISE * white
    air = distance > inner
    out[air] = np.hypot(rng.normal(0, sigma, air.sum()), rng.normal(0, sigma, air.sum()))
    return out


def padded(image: nib.Nifti1Image, margin_mm: float) -> nib.Nifti1Image:
    """``image`` on a grid grown by ``margin_mm`` on every side (zeros), room for the head."""
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(0))
    pad = np.ceil(margin_mm / spacing).astype(int)
    array = np.pad(np.asarray(image.dataobj), [(p, p) for p in pad])
    affine = image.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ pad
    return nib.Nifti1Image(array, affine)


def scan_grid(center_mm: np.ndarray, voxel_mm, extent_mm, tilt: np.ndarray) -> tuple[tuple, np.ndarray]:
    """(shape, affine) of a scan grid of ``voxel_mm`` voxels covering ``extent_mm`` around
    ``center_mm``, its axes turned by the 3 x 3 ``tilt``."""
    shape = tuple(int(round(e / v)) for e, v in zip(extent_mm, voxel_mm))
    affine = np.eye(4)
    affine[:3, :3] = tilt @ np.diag(voxel_mm)
    affine[:3, 3] = center_mm - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    return shape, affine


def raw_subject(t1: Path, t2: Path, dseg: Path, rng, in_plane_mm: float = 1.0) -> dict:
    """{view: (raw scan, brain mask)} NIfTI images and the "pose" of one subject; ``in_plane_mm``:
    the T1w's voxel size, and the T2w's in-plane size in proportion (its slices stay 3 mm)."""
    margin = sum(t for _, t in HEAD_LAYERS_MM) + 10.0
    labels = padded(nib.load(dseg), margin)
    spacing = np.sqrt((labels.affine[:3, :3] ** 2).sum(0))
    brain_voxels = np.argwhere(np.asarray(labels.dataobj) > 0)
    center = labels.affine[:3, :3] @ brain_voxels.mean(0) + labels.affine[:3, 3]
    pose = random_pose(center, rng)
    placed = pose @ labels.affine  # the head as the scanner sees it
    moved_center = pose[:3, :3] @ center + pose[:3, 3]
    grids = {
        "T1w": scan_grid(moved_center + rng.uniform(-10, 10, 3), (in_plane_mm,) * 3, (200, 230, 200), np.eye(3)),
        "T2w": scan_grid(
            moved_center + rng.uniform(-10, 10, 3) + np.array([0, 0, 15.0]),  # a slab that misses the skull base
            (T2W_VOXEL_MM[0] * in_plane_mm, T2W_VOXEL_MM[1] * in_plane_mm, T2W_VOXEL_MM[2]),
            (190, 220, 126),
            rotation((rng.uniform(-T2W_TILT_DEG, T2W_TILT_DEG), 0, rng.uniform(-5, 5))),
        ),
    }
    out = {"pose": pose}
    dseg = np.asarray(labels.dataobj)
    distance = ndimage.distance_transform_edt(dseg == 0, sampling=spacing)  # the views share it
    for view, path in zip(VIEWS, (t1, t2)):
        image = np.asarray(padded(nib.load(path), margin).dataobj, dtype=np.float32)
        with_head = head(image, dseg, distance, view, rng)
        raw = resample_from_to(nib.Nifti1Image(with_head, placed), grids[view], order=1, cval=0.0)
        mask = resample_from_to(
            nib.Nifti1Image((np.asarray(labels.dataobj) > 0).astype(np.uint8), placed), grids[view], order=0
        )
        out[view] = (
            nifti_image(np.clip(np.rint(raw.get_fdata()), 0, 32767).astype(np.int16), raw.affine),
            nifti_image(np.asarray(mask.dataobj).astype(np.uint8), mask.affine),
        )
    return out


def write_raw_cohort(
    cohort: Path, out_dir: Path, n_subjects: int, seed: int = 0, split: str | None = None, in_plane_mm: float = 1.0
) -> Path:
    """Raw-looking scans of the first ``n_subjects`` subjects of the synthetic ``cohort`` (of its
    ``split`` only, when given), as a BIDS folder with the cohort's participants.tsv, written in one go."""
    cohort, out_dir = Path(cohort), Path(out_dir)
    pairs = {p.subject: p for p in discover_bids(cohort).kept}
    chosen = [s for s in sorted(pairs) if split is None or pairs[s].split == split][:n_subjects]
    rng = np.random.default_rng(seed)
    with staged_folder(out_dir) as staging:
        poses = ["subject\t" + "\t".join(f"m{r}{c}" for r in range(4) for c in range(4))]
        for subject in chosen:
            dseg = cohort / "derivatives" / "tissues" / subject / "anat" / f"{subject}_dseg.nii.gz"
            made = raw_subject(pairs[subject].t1, pairs[subject].t2, dseg, rng, in_plane_mm)
            for view in VIEWS:
                scan, mask = made[view]
                (staging / subject / "anat").mkdir(parents=True, exist_ok=True)
                nib.save(scan, staging / subject / "anat" / f"{subject}_{view}.nii.gz")
                mask_dir = staging / BRAIN_MASK / subject / "anat"
                mask_dir.mkdir(parents=True, exist_ok=True)
                nib.save(mask, mask_dir / f"{subject}_space-{view}_mask.nii.gz")
            poses.append(subject + "\t" + "\t".join(f"{v:.9g}" for v in made["pose"].reshape(-1)))
        (staging / "poses.tsv").write_text("\n".join(poses) + "\n")
        for name in ("participants.tsv", "participants.json", "dataset_description.json"):
            if (cohort / name).is_file():
                shutil.copyfile(cohort / name, staging / name)
    return out_dir


def read_poses(raw_cohort: Path) -> dict[str, np.ndarray]:
    """{subject: 4 x 4 pose} from a raw cohort's poses.tsv."""
    lines = (Path(raw_cohort) / "poses.tsv").read_text().splitlines()[1:]
    return {f[0]: np.array(f[1:], dtype=np.float64).reshape(4, 4) for f in (line.split("\t") for line in lines)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m MultiviewCRLLib.training.raw_scans",
        description="Write raw-looking scans (head, pose, field of view, thick oblique T2w slices) of a synthetic "
        "cohort's subjects, with their brain masks and poses.",
    )
    parser.add_argument("--cohort", type=Path, required=True, help="a synthetic cohort (BIDS) with derivatives/tissues")
    parser.add_argument("--out", type=Path, required=True, help="the new folder (must not exist)")
    parser.add_argument("--subjects", type=int, default=20, help="how many subjects, from the first (default 20)")
    parser.add_argument("--split", choices=("train", "val", "test"), help="only subjects of this split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--in-plane-mm",
        type=float,
        default=1.0,
        help="the T1w's voxel size and the T2w's in-plane size over 0.9 (default 1)",
    )
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"--out {args.out}: exists; choose a new folder")
    print(f"wrote {write_raw_cohort(args.cohort, args.out, args.subjects, args.seed, args.split, args.in_plane_mm)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
