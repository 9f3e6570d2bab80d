"""T2w-to-T1w registration through content maps against Mattes mutual information, on synthetic
pairs with a known misalignment, and the content map's rotation equivariance.

    python benchmarks/registration.py --bundle Resources/Models/demo [--raw data/raw-test] \\
        [--cohort data/synthetic-adni-n600-s0-2mm] [--subjects 8] [--magnitudes 5 10 20 30] [--out results/registration]

Each test subject's T2w is moved by a random rigid or affine transform of each magnitude (a
rotation of that many degrees about a random axis through the brain's centre and a shift of as
many millimetres; affine: also per-axis scales up to 10% and shears up to 0.05 at 30) and
registered back to its T1w by both methods, the content maps also with the rigid fit alone
(``runtime.registration``: same optimiser, pyramid and starts, on the same model grids). The error
is the mean distance between where the found and the true transform put the T1w's brain voxels; a
registration succeeds within 2 mm.

With ``--raw`` (raw-looking scans from ``MultiviewCRLLib.training.raw_scans``: skull, pose, a thick
tilted T2w slab), their T2w is moved by rigid transforms too and registered to their T1w by both
methods after preparing each scan on its own (``ThroughPreparation``); the brain voxels are the
ground-truth mask's. (Mutual information on the raw heads themselves, tried first in
development, ended far off and slowly: the slab covers only part of the head.)

Writes ``registration.tsv`` (one row per registration), ``registration.png`` (success against
magnitude), ``registration_example.png`` (the first subject's T1w with its T2w's outline,
misaligned by the largest magnitude and registered back by each method) and prints the table per
scans, method, kind and magnitude, and the equivariance table: the correlation between the map of a
rotated image, rotated back, and the map of the image, per angle, beside what rotating the map
itself and back keeps.
"""

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from MultiviewCRLLib.config import VIEWS
from MultiviewCRLLib.runtime.alignment import AlignmentError, from_ras_matrix, from_sitk, resample, to_sitk
from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.preparation import prepare_pair
from MultiviewCRLLib.runtime.preprocessing import preprocess_array
from MultiviewCRLLib.runtime.registration import (
    CONTENT_MAPS,
    MUTUAL_INFORMATION,
    apply_registration,
    register_views,
    require_content_maps,
)
from MultiviewCRLLib.training.discovery import discover_bids, read_volume
from MultiviewCRLLib.training.misalignment import brain_points, error_mm, misalignment, moved, rotation
from MultiviewCRLLib.training.raw_scans import BRAIN_MASK

SUCCESS_MM = 2.0
# Each method with rigid-then-affine fits; the content maps also with the rigid fit alone.
VARIANTS = {
    CONTENT_MAPS: (CONTENT_MAPS, "affine"),
    "content maps, rigid only": (CONTENT_MAPS, "rigid"),
    MUTUAL_INFORMATION: (MUTUAL_INFORMATION, "affine"),
}
T2W = VIEWS.index("T2w")


class ThroughPreparation:
    """Raw-looking scans registered the way their preparation would: each scan prepared on its own
    (brain extraction and alignment to the bundle's template), the prepared pair registered on the
    template grid by ``method`` (through content maps, or by mutual information on the prepared
    intensities), and the transform carried back to the scans' own worlds. Both methods of one
    pair share its preparation (kept for the last pair), and both are timed with it."""

    def __init__(self, bundle):
        self.bundle, self.last = bundle, None  # (fixed, moving, their preparations, seconds)

    def prepared(self, fixed: tuple, moving: tuple) -> tuple[dict, float]:
        if self.last is None or self.last[0] is not fixed or self.last[1] is not moving:
            started = time.perf_counter()
            prepared = {
                view: prepare_pair({view: scan}, self.bundle.template) for view, scan in zip(VIEWS, (fixed, moving))
            }
            self.last = (fixed, moving, prepared, time.perf_counter() - started)
        return self.last[2], self.last[3]

    def method(self, method: str, kind: str):
        def run(fixed: tuple, moving: tuple) -> tuple[np.ndarray, float]:
            """(4 x 4 RAS matrix from the T1w's world to the T2w's, seconds)."""
            prepared, seconds = self.prepared(fixed, moving)
            found = register_views(self.bundle, *(prepared[view].images[view] for view in VIEWS), method, kind=kind)
            to_input = {view: prepared[view].to_input[view] for view in VIEWS}
            return to_input["T2w"] @ found.matrix @ np.linalg.inv(to_input["T1w"]), seconds + found.seconds

        return run


@torch.no_grad()
def equivariance(
    bundle, scans: list, angles: list[float], rng: np.random.Generator
) -> dict[float, tuple[float, float]]:
    """Per angle, two mean correlations inside the brain with the image's own content map: of the
    map of the image rotated by that angle (about a random axis through the grid's centre), rotated
    back; and of the map itself rotated and back, which is what the interpolation alone loses."""
    out = {angle: [] for angle in angles}
    for array, affine in scans:
        image, mask = preprocess_array(array, affine, bundle.preprocessing)
        grid = image.affine.numpy()
        reference = to_sitk(image[0].numpy(), grid)

        def turned(volume: np.ndarray, matrix: np.ndarray, grid=grid, reference=reference) -> np.ndarray:
            return from_sitk(resample(to_sitk(volume, grid), reference, from_ras_matrix(matrix)))[0]

        centre = grid[:3, :3] @ (np.array(image.shape[1:]) - 1) / 2 + grid[:3, 3]
        own = bundle.encoder(image.as_tensor()[None], with_content=True, views=T2W)[1][0].numpy()
        inside = mask[0].numpy() > 0.5
        for angle in angles:
            turn = np.eye(4)
            turn[:3, :3] = np.array(rotation(rng.normal(size=3), angle)).reshape(3, 3)
            turn[:3, 3] = centre - turn[:3, :3] @ centre
            rotated = torch.from_numpy(turned(image[0].numpy(), turn))[None, None].float()
            content = bundle.encoder(rotated, with_content=True, views=T2W)[1][0].numpy()
            back = np.stack([turned(c, np.linalg.inv(turn)) for c in content])
            round_trip = np.stack([turned(turned(c, turn), np.linalg.inv(turn)) for c in own])
            # Only voxels that stayed inside the field of view while rotated.
            kept = inside & (turned(inside.astype(np.float32), turn) > 0.5)
            out[angle].append([np.corrcoef(m[:, kept].ravel(), own[:, kept].ravel())[0, 1] for m in (back, round_trip)])
    return {angle: tuple(np.mean(values, axis=0)) for angle, values in out.items()}


def example_figure(bundle, fixed: tuple, moving: tuple, magnitude: float, rng, out_png: Path) -> None:
    """What a reader of the images sees: an axial slice of the T1w with the outline of its T2w
    (its brighter 30%) misaligned by a rigid transform of ``magnitude``, and once registered back
    by each method, each titled with its error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = brain_points(fixed[0] > bundle.preprocessing.mask_threshold, fixed[1])
    truth = misalignment(rng, magnitude, "rigid", points.mean(0))
    shifted = moved(moving, truth)
    on_fixed = from_sitk(resample(to_sitk(*shifted), to_sitk(*fixed), from_ras_matrix(np.eye(4))))[0]
    panels = {f"misaligned ({magnitude:g} degrees, {magnitude:g} mm)": on_fixed}
    for name, (method, kind) in VARIANTS.items():
        found = register_views(bundle, fixed, shifted, method, kind=kind)
        panels[f"{name}: {error_mm(found.matrix, truth, points):.2f} mm"] = apply_registration(found, fixed, shifted)[0]
    k = fixed[0].shape[2] // 2
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 4.0))
    for ax, (title, image) in zip(axes, panels.items()):
        ax.imshow(fixed[0][:, :, k].T, cmap="gray", origin="lower")
        ax.contour(
            image[:, :, k].T, levels=[np.percentile(image[image > 0], 70)], colors="r", linewidths=0.6, origin="lower"
        )
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def plot(rows: list[dict], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(dict.fromkeys((r["scans"], r["kind"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, (label, kind) in zip(axes, panels):
        for method in dict.fromkeys(r["method"] for r in rows):
            chosen = [r for r in rows if (r["scans"], r["kind"], r["method"]) == (label, kind, method)]
            magnitudes = sorted({r["magnitude"] for r in chosen})
            rates = [np.mean([r["error_mm"] <= SUCCESS_MM for r in chosen if r["magnitude"] == m]) for m in magnitudes]
            ax.plot(magnitudes, rates, marker="o", label=method)
        ax.set_title(f"{label} scans, {kind} misalignment")
        ax.set_xlabel("magnitude (degrees and mm)")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel(f"success (error <= {SUCCESS_MM:g} mm)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def registrations(bundle, scans: list, kinds: tuple, magnitudes: list, methods: dict, rng, label: str) -> list[dict]:
    """One row per scan pair, kind, magnitude and method: ``scans`` (subject, T1w, T2w, the brain's
    (N, 3) points in the T1w's world); ``methods`` {name: register(fixed, moving) -> (4 x 4 RAS
    matrix, seconds)}, where AlignmentError (a refused registration) counts as a failure."""
    rows = []
    for subject, fixed, moving, points in scans:
        for kind in kinds:
            for magnitude in magnitudes:
                truth = misalignment(rng, magnitude, kind, points.mean(0))
                shifted = moved(moving, truth)
                for method, run in methods.items():
                    started = time.perf_counter()
                    try:
                        matrix, seconds = run(fixed, shifted)
                    except AlignmentError:
                        error, seconds = float("inf"), time.perf_counter() - started
                    else:
                        error = error_mm(matrix, truth, points)
                    rows.append(
                        dict(
                            scans=label,
                            subject=subject,
                            kind=kind,
                            magnitude=magnitude,
                            method=method,
                            error_mm=error,
                            seconds=seconds,
                        )
                    )
                    print(
                        f"{label} {subject} {kind} {magnitude:g}: {method} {error:.2f} mm in {seconds:.1f} s",
                        flush=True,
                    )
    return rows


def print_table(rows: list[dict], label: str) -> None:
    chosen = [r for r in rows if r["scans"] == label]
    methods = list(dict.fromkeys(r["method"] for r in chosen))
    print(
        f"\n{label} scans\n{'kind':7} {'magnitude':>9}  "
        + "  ".join(f"{m + ': success, median mm, s':>40}" for m in methods)
    )
    for kind, magnitude in dict.fromkeys((r["kind"], r["magnitude"]) for r in chosen):
        cells = []
        for method in methods:
            cell = [r for r in chosen if (r["kind"], r["magnitude"], r["method"]) == (kind, magnitude, method)]
            errors = [r["error_mm"] for r in cell]
            cells.append(
                f"{np.mean(np.array(errors) <= SUCCESS_MM):.2f}, {np.median(errors):.2f}, "
                f"{np.median([r['seconds'] for r in cell]):.1f}"
            )
        print(f"{kind:7} {magnitude:9g}  " + "  ".join(f"{c:>40}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("Resources/Models/demo"))
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic-adni-n600-s0-2mm"))
    parser.add_argument(
        "--raw", type=Path, help="raw-looking scans of test subjects (training.raw_scans), also registered"
    )
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--magnitudes", type=float, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--angles", type=float, nargs="+", default=[0, 10, 20, 30, 90])
    parser.add_argument("--out", type=Path, default=Path("results/registration"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    bundle = load_bundle(args.bundle)
    require_content_maps(bundle)
    args.out.mkdir(parents=True, exist_ok=False)  # an earlier benchmark's figures are never overwritten
    rng = np.random.default_rng(args.seed)

    def registered(method, kind):
        def run(fixed, moving):
            found = register_views(bundle, fixed, moving, method, kind=kind)
            return found.matrix, found.seconds

        return run

    pairs = [p for p in discover_bids(args.cohort).kept if p.split == "test"][: args.subjects]
    clean = []
    for pair in pairs:
        fixed = read_volume(pair.t1)
        points = brain_points(fixed[0] > bundle.preprocessing.mask_threshold, fixed[1])
        clean.append((pair.subject, fixed, read_volume(pair.t2), points))
    methods = {name: registered(*variant) for name, variant in VARIANTS.items()}
    rows = registrations(bundle, clean, ("rigid", "affine"), args.magnitudes, methods, rng, "clean")
    if args.raw:
        raw = []
        for pair in discover_bids(args.raw).kept[: args.subjects]:
            fixed = read_volume(pair.t1)
            truth = read_volume(args.raw / BRAIN_MASK / pair.subject / "anat" / f"{pair.subject}_space-T1w_mask.nii.gz")
            raw.append((pair.subject, fixed, read_volume(pair.t2), brain_points(truth[0] > 0.5, truth[1])))
        through = ThroughPreparation(bundle)
        methods = {name: through.method(*variant) for name, variant in VARIANTS.items()}
        rows += registrations(bundle, raw, ("rigid",), args.magnitudes, methods, rng, "raw-looking")
    with open(args.out / "registration.tsv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "registration.png")
    # Its own generator: the same picture whatever else was run.
    example = np.random.default_rng(args.seed)
    example_figure(
        bundle, clean[0][1], clean[0][2], max(args.magnitudes), example, args.out / "registration_example.png"
    )
    for label in dict.fromkeys(r["scans"] for r in rows):
        print_table(rows, label)
    scans = [moving for _, _, moving, _ in clean]
    print(
        "\ncontent-map equivariance, T2w (correlation with the unrotated map): the map of the rotated image "
        "rotated back / the map itself rotated and back (the interpolation's own loss)"
    )
    for angle, (value, interpolation) in equivariance(bundle, scans, args.angles, rng).items():
        print(f"  {angle:5g} degrees: {value:.3f} / {interpolation:.3f}")
    print(f"wrote registration.tsv, registration.png and registration_example.png into {args.out}")


if __name__ == "__main__":
    main()
