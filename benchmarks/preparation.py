"""Scan preparation on raw-looking scans against their ground truth, and the model's figures on
the prepared scans against the same subjects' clean scans.

    python -m MultiviewCRLLib.training.raw_scans --cohort data/synthetic-adni-n600-s0-2mm --out data/raw-test \\
        --subjects 20 --split test
    python benchmarks/preparation.py [--bundle Resources/Models/demo] [--raw data/raw-test] \\
        [--cohort data/synthetic-adni-n600-s0-2mm]

Per subject: brain-mask Dice of each view against the ground truth; alignment error (the mean
distance, over the clean brain's voxels, between where the preparation and the known pose put
them), the same for the clean scans (which need no alignment: the error's floor) and the raw
scans' error against where the clean scans' preparation puts them (how well the pose is undone);
seconds of the prepared analysis. Then, prepared raw against clean (the clean scans
analysed without preparation): content cosine of each pair, self-reconstruction PSNR, and top-1
retrieval T1w→T2w among the subjects. Last, the clean scans' retrieval as given, prepared, and
with each of the preparation's two changes alone: the rigid resampling (keeping each brain's own
outline) and the template's brain mask (without rotation).
"""

import argparse
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from MultiviewCRLLib.config import VIEWS
from MultiviewCRLLib.runtime.alignment import from_ras_matrix, from_sitk, resample, to_sitk
from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.training.discovery import discover_bids, read_volume
from MultiviewCRLLib.training.evaluation import psnr_ssim
from MultiviewCRLLib.training.raw_scans import BRAIN_MASK, read_poses


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def alignment_error(to_input: np.ndarray, pose: np.ndarray, brain_mm: np.ndarray) -> float:
    """Mean distance (mm) between where ``to_input`` and the true ``pose`` put the clean brain's points."""
    moved = [brain_mm @ m[:3, :3].T + m[:3, 3] for m in (to_input, pose)]
    return float(np.linalg.norm(moved[0] - moved[1], axis=1).mean())


def figures(analysis, content_dim: int) -> dict:
    content = {v: analysis.latents[v][:content_dim] for v in VIEWS}
    psnr = {
        v: psnr_ssim(
            analysis.reconstructions[v].as_tensor(), analysis.inputs[v].as_tensor(), analysis.masks[v].as_tensor() > 0.5
        )[0]
        for v in VIEWS
    }
    return {"cosine": analysis.content_cosine, "psnr": psnr, "content": content}


OUTLINE_KINDS = (
    "as given",
    "prepared",
    "rotated by the preparation, own outline",
    "not rotated, the template's outline",
)


def top1(contents: list[dict]) -> float:
    queries = torch.stack([torch.nn.functional.normalize(c["T1w"], dim=0) for c in contents])
    keys = torch.stack([torch.nn.functional.normalize(c["T2w"], dim=0) for c in contents])
    return float(((queries @ keys.T).argmax(1) == torch.arange(len(contents))).float().mean())


def on_template(volume_: tuple, template, to_input: np.ndarray, cut: bool) -> tuple[np.ndarray, np.ndarray]:
    """A scan resampled onto the template grid through ``to_input`` (template world to the
    scan's), cut by the template's brain mask when ``cut``."""
    array, affine = from_sitk(
        resample(to_sitk(*volume_), to_sitk(template.image, template.affine), from_ras_matrix(to_input))
    )
    return (array * template.mask if cut else array), affine


def print_figures(rows: list, prepared_figures: list, clean_figures: list, contents: dict, raw, bundle_path) -> None:
    """The table of figures over every pair, then retrieval by what the preparation changes."""

    def median(key):
        return float(np.median([r[key] for r in rows]))

    cosine_gap = np.abs([p["cosine"] - c["cosine"] for p, c in zip(prepared_figures, clean_figures)])
    psnr_gap = {
        v: np.mean([p["psnr"][v] - c["psnr"][v] for p, c in zip(prepared_figures, clean_figures)]) for v in VIEWS
    }
    print(f"\n{len(rows)} raw-looking pairs of {raw}, bundle {bundle_path}\n")
    print("| figure | value | target |\n|---|---|---|")
    for view in VIEWS:
        print(
            f"| brain-mask Dice {view}, median (min) | {median(f'dice_{view}'):.3f} "
            f"({min(r[f'dice_{view}'] for r in rows):.3f}) | ≥ 0.95 |"
        )
    print(
        f"| alignment error, median (max) | {median('error'):.2f} ({max(r['error'] for r in rows):.2f}) mm | ≤ 2 mm |"
    )
    print(
        f"| the clean scans' own alignment error (no pose to undo), median (max) | {median('clean_error'):.2f} "
        f"({max(r['clean_error'] for r in rows):.2f}) mm | |"
    )
    print(
        f"| pose recovery: prepared raw against the prepared clean scans, median (max) | {median('pose_error'):.2f} "
        f"({max(r['pose_error'] for r in rows):.2f}) mm | |"
    )
    print(
        f"| content cosine, prepared raw − clean, mean (max) absolute | {cosine_gap.mean():.3f} "
        f"({cosine_gap.max():.3f}) | ≤ 0.02 |"
    )
    for view in VIEWS:
        print(
            f"| self-reconstruction PSNR {view}, prepared raw − clean, mean | {psnr_gap[view]:+.2f} dB | within 1 dB |"
        )
    retrieval = (top1([f["content"] for f in prepared_figures]), top1([f["content"] for f in clean_figures]))
    print(
        f"| top-1 retrieval T1w→T2w among the {len(rows)}, prepared raw / clean | "
        f"{retrieval[0]:.2f} / {retrieval[1]:.2f} | within 0.05 |"
    )
    for raw_view in VIEWS:  # which raw view costs the retrieval: one prepared raw, the other clean
        mixed = [
            {v: (p if v == raw_view else c)["content"][v] for v in VIEWS}
            for p, c in zip(prepared_figures, clean_figures)
        ]
        print(f"| top-1 retrieval with only the {raw_view} prepared raw, the other clean | {top1(mixed):.2f} | |")
    print(
        f"| seconds: prepared analysis of a raw pair, median (max) | {median('seconds'):.1f} "
        f"({max(r['seconds'] for r in rows):.1f}) | ≤ 30 |"
    )
    print(
        f"| peak memory of this process | "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB | ≤ 3 GB |"
    )
    print("\ntop-1 retrieval T1w→T2w of the clean scans, by what the preparation changes:")
    for kind, found in contents.items():
        print(f"  {kind}: {top1(found):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("Resources/Models/demo"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw-test"))
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic-adni-n600-s0-2mm"))
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    if bundle.template is None:
        parser.error(f"{args.bundle} carries no template to prepare against")
    poses = read_poses(args.raw)
    clean = {p.subject: p for p in discover_bids(args.cohort).kept}
    rows, contents = [], {kind: [] for kind in OUTLINE_KINDS}
    prepared_figures, clean_figures = [], []
    for pair in discover_bids(args.raw).kept:
        raw = {view: read_volume(path) for view, path in zip(VIEWS, (pair.t1, pair.t2))}
        start = time.perf_counter()
        analysis = analyse_pair(bundle, *raw.values(), prepare=True)
        row = {"subject": pair.subject, "seconds": time.perf_counter() - start}
        labels = nib.load(
            args.cohort / "derivatives" / "tissues" / pair.subject / "anat" / f"{pair.subject}_dseg.nii.gz"
        )
        brain_mm = np.argwhere(np.asarray(labels.dataobj) > 0) @ labels.affine[:3, :3].T + labels.affine[:3, 3]
        for view in VIEWS:
            truth = nib.load(args.raw / BRAIN_MASK / pair.subject / "anat" / f"{pair.subject}_space-{view}_mask.nii.gz")
            row[f"dice_{view}"] = dice(np.asarray(truth.dataobj) > 0, analysis.brain_masks[view][0] > 0.5)
        row["error"] = alignment_error(analysis.to_input, poses[pair.subject], brain_mm)
        rows.append(row)
        prepared_figures.append(figures(analysis, bundle.content_dim))
        # The same subject's clean scans: as given, prepared, and the preparation's two changes apart.
        source = {
            view: read_volume(path) for view, path in zip(VIEWS, (clean[pair.subject].t1, clean[pair.subject].t2))
        }
        clean_figures.append(figures(analyse_pair(bundle, *source.values(), prepare=False), bundle.content_dim))
        prepared_clean = analyse_pair(bundle, *source.values(), prepare=True)
        # The clean scans need no alignment, so where their preparation puts them is the floor of
        # the error; against it, how well the pose itself is recovered.
        row["clean_error"] = alignment_error(prepared_clean.to_input, np.eye(4), brain_mm)
        row["pose_error"] = alignment_error(analysis.to_input, poses[pair.subject] @ prepared_clean.to_input, brain_mm)
        variants = {
            "as given": clean_figures[-1]["content"],
            "prepared": figures(prepared_clean, bundle.content_dim)["content"],
            "rotated by the preparation, own outline": (prepared_clean.to_input, False),
            "not rotated, the template's outline": (np.eye(4), True),
        }
        for kind, variant in variants.items():
            if isinstance(variant, tuple):
                moved = [on_template(source[view], bundle.template, *variant) for view in VIEWS]
                variant = figures(analyse_pair(bundle, *moved, prepare=False), bundle.content_dim)["content"]
            contents[kind].append(variant)
        print(
            f"{pair.subject}: Dice T1w {row['dice_T1w']:.3f} T2w {row['dice_T2w']:.3f}; alignment error "
            f"{row['error']:.2f} mm; prepared analysis {row['seconds']:.1f} s",
            flush=True,
        )

    print_figures(rows, prepared_figures, clean_figures, contents, args.raw, args.bundle)


if __name__ == "__main__":
    main()
