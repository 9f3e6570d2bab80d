"""T2w-to-T1w registration through content maps against Mattes mutual information, on synthetic
pairs with a known misalignment, and the content map's rotation equivariance.

    python benchmarks/registration.py --bundle Resources/Models/demo \\
        [--cohort data/synthetic-n600-s0-2mm] [--subjects 8] [--magnitudes 5 10 20 30] [--out results/registration]

Each test subject's T2w is moved by a random rigid or affine transform of each magnitude (a
rotation of that many degrees about a random axis through the brain's centre and a shift of as
many millimetres; affine: also per-axis scales up to 10% and shears up to 0.05 at 30) and
registered back to its T1w by both methods (``runtime.registration``: same optimiser, pyramid and
starts, on the same model grids). The error is the mean distance between where the found and
the true transform put the T1w's brain voxels; a registration succeeds within 2 mm. Writes
``registration.tsv`` (one row per registration), ``registration.png`` (success against magnitude)
and prints the table per method, kind and magnitude, and the equivariance table: the correlation
between the map of a rotated image, rotated back, and the map of the image, per angle.
"""

import argparse
import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch

from MultiviewCRLLib.config import VIEWS
from MultiviewCRLLib.runtime.alignment import AlignmentError, from_ras_matrix, from_sitk, ras_matrix, resample, to_sitk
from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.preprocessing import preprocess_array
from MultiviewCRLLib.runtime.registration import CONTENT_MAPS, METHODS, register_views, require_content_maps
from MultiviewCRLLib.training.discovery import discover_bids

SUCCESS_MM = 2.0
T2W = VIEWS.index("T2w")
PAD_VOXELS = 16  # room around the moved brain, so no part of it leaves the scan's field of view


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    return sitk.VersorTransform(tuple(axis / np.linalg.norm(axis)), np.radians(degrees)).GetMatrix()


def misalignment(rng: np.random.Generator, magnitude: float, kind: str, centre: np.ndarray) -> np.ndarray:
    """A 4 x 4 RAS matrix: a rotation of ``magnitude`` degrees about ``centre`` and a shift of
    ``magnitude`` mm, with affine scales and shears growing with it for ``kind`` "affine"."""
    linear = np.array(rotation(rng.normal(size=3), magnitude)).reshape(3, 3)
    if kind == "affine":
        strength = magnitude / 30
        shear = np.eye(3) + np.triu(rng.uniform(-0.05, 0.05, (3, 3)) * strength, 1)
        linear = linear @ np.diag(1 + rng.uniform(-0.1, 0.1, 3) * strength) @ shear
    shift = rng.normal(size=3)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + magnitude * shift / np.linalg.norm(shift)
    return matrix


def padded(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.pad(array, PAD_VOXELS)
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, :3] @ np.full(3, PAD_VOXELS)
    return out, shifted


def moved(scan: tuple[np.ndarray, np.ndarray], truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scan as seen after the misalignment: moved(truth p) = scan(p), on a padded grid."""
    grid = to_sitk(*padded(*scan))
    return from_sitk(resample(grid, grid, from_ras_matrix(np.linalg.inv(truth))))


def error_mm(found: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    a, b = (points @ m[:3, :3].T + m[:3, 3] for m in (found, truth))
    return float(np.linalg.norm(a - b, axis=1).mean())


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


@torch.no_grad()
def equivariance(bundle, scans: list, angles: list[float], rng: np.random.Generator) -> dict[float, float]:
    """Mean correlation, inside the brain, between the content map of an image rotated by each
    angle (about a random axis through the grid's centre), rotated back, and the image's own map."""
    out = {angle: [] for angle in angles}
    for array, affine in scans:
        image, mask = preprocess_array(array, affine, bundle.preprocessing)
        reference = to_sitk(image[0].numpy(), image.affine.numpy())
        centre = image.affine.numpy()[:3, :3] @ (np.array(image.shape[1:]) - 1) / 2 + image.affine.numpy()[:3, 3]
        own = bundle.encoder(image.as_tensor()[None], with_content=True, views=T2W)[1][0]
        inside = mask[0].numpy() > 0.5
        for angle in angles:
            turn = np.eye(4)
            turn[:3, :3] = np.array(rotation(rng.normal(size=3), angle)).reshape(3, 3)
            turn[:3, 3] = centre - turn[:3, :3] @ centre
            turned = from_sitk(resample(reference, reference, from_ras_matrix(turn)))[0]
            content = bundle.encoder(torch.from_numpy(turned)[None, None].float(), with_content=True, views=T2W)[1][0]
            back = np.stack(
                [from_sitk(resample(to_sitk(c.numpy(), image.affine.numpy()), reference, from_ras_matrix(np.linalg.inv(turn))))[0]
                 for c in content]
            )
            # Only voxels that stayed inside the field of view while rotated.
            kept = inside & (from_sitk(resample(to_sitk(inside.astype(np.float32), image.affine.numpy()), reference,
                                                from_ras_matrix(turn)))[0] > 0.5)
            out[angle].append(np.corrcoef(back[:, kept].ravel(), own.numpy()[:, kept].ravel())[0, 1])
    return {angle: float(np.mean(values)) for angle, values in out.items()}


def plot(rows: list[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, kind in zip(axes, ("rigid", "affine")):
        for method in METHODS:
            chosen = [r for r in rows if r["kind"] == kind and r["method"] == method]
            magnitudes = sorted({r["magnitude"] for r in chosen})
            rates = [np.mean([r["error_mm"] <= SUCCESS_MM for r in chosen if r["magnitude"] == m]) for m in magnitudes]
            ax.plot(magnitudes, rates, marker="o", label=method)
        ax.set_title(f"{kind} misalignment")
        ax.set_xlabel("magnitude (degrees and mm)")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel(f"success (error <= {SUCCESS_MM:g} mm)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("Resources/Models/demo"))
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic-n600-s0-2mm"))
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--magnitudes", type=float, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 10, 20, 30, 90])
    parser.add_argument("--out", type=Path, default=Path("results/registration"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    bundle = load_bundle(args.bundle)
    require_content_maps(bundle)
    pairs = [p for p in discover_bids(args.cohort).kept if p.split == "test"][: args.subjects]
    args.out.mkdir(parents=True, exist_ok=False)  # an earlier benchmark's figures are never overwritten
    rng = np.random.default_rng(args.seed)
    rows = []
    for pair in pairs:
        fixed, moving = load(pair.t1), load(pair.t2)
        brain = np.argwhere(fixed[0] > bundle.preprocessing.mask_threshold)
        points = brain @ fixed[1][:3, :3].T + fixed[1][:3, 3]
        for kind in ("rigid", "affine"):
            for magnitude in args.magnitudes:
                truth = misalignment(rng, magnitude, kind, points.mean(0))
                shifted = moved(moving, truth)
                for method in METHODS:
                    started = time.perf_counter()
                    try:
                        found = register_views(bundle, fixed, shifted, method)
                    except AlignmentError:  # refused as diverged: a failure
                        error, seconds, residual = float("inf"), time.perf_counter() - started, float("nan")
                    else:
                        error, seconds, residual = error_mm(found.matrix, truth, points), found.seconds, found.residual
                    rows.append(dict(subject=pair.subject, kind=kind, magnitude=magnitude, method=method,
                                     error_mm=error, seconds=seconds, residual=residual))
                    print(f"{pair.subject} {kind} {magnitude:g}: {method} {error:.2f} mm in {seconds:.1f} s")
    with open(args.out / "registration.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "registration.png")
    print(f"\n{'kind':7} {'magnitude':>9}  " + "  ".join(f"{m + ': success, median mm, s':>40}" for m in METHODS))
    for kind in ("rigid", "affine"):
        for magnitude in args.magnitudes:
            cells = []
            for method in METHODS:
                chosen = [r for r in rows if (r["kind"], r["magnitude"], r["method"]) == (kind, magnitude, method)]
                errors = [r["error_mm"] for r in chosen]
                cells.append(f"{np.mean(np.array(errors) <= SUCCESS_MM):.2f}, {np.median(errors):.2f}, "
                             f"{np.median([r['seconds'] for r in chosen]):.1f}")
            print(f"{kind:7} {magnitude:9g}  " + "  ".join(f"{c:>40}" for c in cells))
    scans = [load(p.t2) for p in pairs]
    print("\ncontent-map equivariance (correlation with the unrotated map, T2w):")
    for angle, value in equivariance(bundle, scans, args.angles, rng).items():
        print(f"  {angle:5g} degrees: {value:.3f}")
    print(f"wrote {args.out / 'registration.tsv'} and {args.out / 'registration.png'}")


if __name__ == "__main__":
    main()
