"""Restoring low-resolution and thick-slice T2w views, against interpolation and cross-view synthesis.

    python benchmarks/restoration.py [--bundle Resources/Models/demo]
        [--cohort data/synthetic-adni-n600-s0-2mm] [--train-subjects 100] [--steps 1500]
        [--out benchmarks/results] [--save-into BUNDLE]

Every training and test subject's T2w is acquired twice at low resolution from its noisy image
(k-space truncated by 2 per axis; 6 mm slabs along a random axis with gaps), resampled onto its
T1w's 2 mm grid and restored there; half of the training slabs also miss up to 30 % of the
brain's extent at one end of their slice axis (a slab's field of view), which the guided network learns to fill
from the guide. Six networks are trained on the same subjects: guided by the T1w (its image and the
bundle's content map) and alone, with and without the contrastive loss, alone also with 10 % of
the high-resolution volumes. On the test subjects, against the noise-free
high-resolution references inside the brain, it writes ``restoration.md`` (the table),
``restoration.json``, ``restoration.png`` (PSNR per method) and ``restoration_examples.png``
(three subjects: low resolution, B-spline, cross-view, restored, reference) under ``--out``.
``--save-into`` writes the guided and unguided networks trained with every volume into a bundle,
and calibrates their guide check on 40 validation subjects (measured on 40 test subjects);
``--calibrate-guide-check`` only calibrates the guide check of ``--bundle``'s networks; with
``--raw-val`` and ``--raw-test`` (raw scans, ``training.raw_scans``) it is also calibrated and
measured on pairs prepared from raw scans, as the analysis prepares them.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.inference import decode_views, encode_views
from MultiviewCRLLib.runtime.preprocessing import preprocess_file
from MultiviewCRLLib.runtime.restoration import (
    RESTORATION_GRID,
    RESTORATION_WEIGHTS,
    RestorationConfig,
    guide_channels,
    onto_grid,
    restore,
    save_guide_check,
    save_restoration,
    standardised,
)
from MultiviewCRLLib.training.clinical import LESION_SUBJECT_ML, NEAR_LESION_VOXELS, TISSUES, labels_on_grid
from MultiviewCRLLib.training.data import assign_splits
from MultiviewCRLLib.training.discovery import discover
from MultiviewCRLLib.training.evaluation import psnr_ssim
from MultiviewCRLLib.training.model_card import write_model_card
from MultiviewCRLLib.training.restoration import (
    FIELD_OF_VIEW_CUT_SHARE,
    RestorationTraining,
    all_guide_disagreements,
    guide_check_calibration,
    guide_check_figures,
    restoration_cases,
    train_restoration,
)
from MultiviewCRLLib.training.runs import split_pairs
from MultiviewCRLLib.training.synthetic import tissue_labels

CONTRASTIVE = RestorationTraining.contrastive_weight
GUIDE_CHECK_SUBJECTS = 40
# name -> (guided, share of high-resolution volumes, contrastive weight)
VARIANTS = {
    "guided": (True, 1.0, CONTRASTIVE),
    "guided, no contrastive": (True, 1.0, 0.0),
    "alone": (False, 1.0, CONTRASTIVE),
    "alone, no contrastive": (False, 1.0, 0.0),
    "alone, 10% HR": (False, 0.1, CONTRASTIVE),
    "alone, 10% HR, no contrastive": (False, 0.1, 0.0),
}


def cross_view(bundle, pair, grid_image, mask) -> torch.Tensor:
    """The bundle's T2w from the T1w alone (its content, the cohort's mean T2w style) on the 2 mm grid."""
    t1, _ = preprocess_file(pair.t1, bundle.preprocessing)
    latents, contents = encode_views(bundle, {"T1w": t1[None]})
    decoded = decode_views(bundle, latents, contents)["T1w→T2w"][0, 0].numpy()
    return standardised(onto_grid(decoded, np.asarray(t1.affine), grid_image), mask)


def lesion_measures(image: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(lesion-to-white-matter contrast over the reference's, share of white matter away from
    lesions that looks like lesion: brighter than the reference's white matter by half the
    reference's lesion contrast, or by 1 standard deviation of it without lesions)."""
    lesion = (labels == TISSUES["lesion"]).numpy()
    near = ndimage.binary_dilation(lesion, iterations=NEAR_LESION_VOXELS)
    white = torch.as_tensor((labels == TISSUES["WM"]).numpy() & ~near)
    around = torch.as_tensor(near & (labels == TISSUES["WM"]).numpy())
    wm_level = reference[white].mean()
    ratio, margin = float("nan"), reference[white].std()
    if lesion.sum() and around.sum():
        lesion_mask = torch.as_tensor(lesion)
        reference_contrast = reference[lesion_mask].mean() - reference[around].mean()
        ratio = float((image[lesion_mask].mean() - image[around].mean()) / reference_contrast)
        margin = reference_contrast / 2
    return ratio, float((image[white] > wm_level + margin).float().mean())


def evaluate(cases, pairs, bundle, networks, grid) -> tuple[dict, dict]:
    """Per degradation and method: PSNR, SSIM, lesion contrast kept, lesion-like voxels; and the
    images of the first three subjects for the figure."""
    by_subject = {p.key: p for p in pairs}
    rows, examples, seconds = {}, {}, []
    crossed, labels_of = {}, {}  # per subject, shared by its degradations
    for case in cases:
        pair = by_subject[case.subject]
        mask = case.mask
        if case.subject not in crossed:
            crossed[case.subject] = cross_view(bundle, pair, case.grid, mask)
            labels_of[case.subject] = labels_on_grid(tissue_labels(pair.t1), grid)
        labels = labels_of[case.subject]
        images = {"trilinear": case.lowres, "B-spline": case.bspline, "cross-view (T1w alone)": crossed[case.subject]}
        for name, (network, config) in networks.items():
            start = time.perf_counter()
            images[name] = restore(network, case.lowres, case.guide if config.guided else None, mask)
            seconds.append(time.perf_counter() - start)
        lesion_ml = float((labels == TISSUES["lesion"]).sum()) * np.prod(grid.spacing_mm) / 1000
        for name, image in images.items():
            psnr, ssim = psnr_ssim(image[0], case.reference[0], mask[0] > 0.5)
            kept, lesion_like = lesion_measures(image[0], case.reference[0], labels)
            row = rows.setdefault(case.degradation, {}).setdefault(
                name, {"psnr": [], "ssim": [], "kept": [], "like": []}
            )
            row["psnr"].append(psnr)
            row["ssim"].append(ssim)
            row["kept"].append(kept if lesion_ml >= LESION_SUBJECT_ML else float("nan"))
            row["like"].append(lesion_like)
        if len(examples.setdefault(case.degradation, [])) < 3:
            examples[case.degradation].append({**images, "reference": case.reference, "case": case})
    table = {
        degradation: {name: {k: float(np.nanmean(v)) for k, v in row.items()} for name, row in methods.items()}
        for degradation, methods in rows.items()
    }
    return {"table": table, "restore_seconds_network": float(np.median(seconds))}, examples


def write_table(results: dict, path: Path) -> None:
    lines = []
    for degradation, methods in results["table"].items():
        lines += [f"### {degradation}", "", "| method | PSNR (dB) | SSIM | lesion contrast kept | lesion-like WM |"]
        lines.append("|---|---|---|---|---|")
        for name, m in methods.items():
            lines.append(f"| {name} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['kept']:.2f} | {100 * m['like']:.2f}% |")
        lines.append("")
    lines.append(f"Restoring one view (guide channels and network, 2 mm grid): {results['restore_seconds']:.2f} s")
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, examples: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results["table"]
    methods = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(table)
    for i, (degradation, rows) in enumerate(table.items()):
        ax.bar(np.arange(len(methods)) + i * width, [rows[m]["psnr"] for m in methods], width, label=degradation)
    ax.set_xticks(np.arange(len(methods)) + width / 2, methods, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("PSNR (dB) against the noise-free reference")
    ax.set_ylim(bottom=15)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "restoration.png", dpi=120)
    plt.close(fig)
    shown = ["trilinear", "B-spline", "cross-view (T1w alone)", "guided", "reference"]
    subjects = examples[next(k for k in examples if k.startswith("thick"))]
    fig, axes = plt.subplots(len(subjects), len(shown), figsize=(2.2 * len(shown), 2.6 * len(subjects)))
    for row, example in zip(axes, subjects):
        case = example["case"]
        thick = int(np.argmax(np.linalg.norm(case.acquisition[1][:3, :3], axis=0)))
        across = (thick + 1) % 3  # a plane that holds the thick axis shows its slabs
        for ax, name in zip(row, shown):
            image = example[name][0].movedim(across, 0)[example[name].shape[1 + across] // 2]
            ax.imshow(np.rot90(image.numpy()), cmap="gray", vmin=-2.5, vmax=2.5)
            ax.set_axis_off()
            ax.set_title(f"{name}\n{case.subject}" if name == "trilinear" else name, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "restoration_examples.png", dpi=110)
    plt.close(fig)


def calibrate_guide_check(folder: Path, splits: dict, raw: dict[str, list]) -> None:
    """The guide check of the networks in bundle ``folder``, calibrated on validation subjects and
    measured on test subjects, and for prepared pairs too on ``raw`` ({"val", "test"}: raw pairs,
    or none); its model card is written again."""
    started = time.perf_counter()
    bundle = load_bundle(folder)
    calibration = guide_check_calibration(splits["val"][:GUIDE_CHECK_SUBJECTS], bundle, seed=3, raw_pairs=raw["val"])
    found, counts = all_guide_disagreements(splits["test"][:GUIDE_CHECK_SUBJECTS], bundle, 4, raw["test"])
    calibration.update({f"test_{name}": count for name, count in counts.items()})
    calibration["test"] = guide_check_figures(found, calibration["thresholds"])
    save_guide_check(folder, calibration)
    print(f"guide check calibrated in {time.perf_counter() - started:.0f} s: {json.dumps(calibration, indent=1)}")
    print(f"wrote its model card {write_model_card(folder)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("Resources/Models/demo"))
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic-adni-n600-s0-2mm"))
    parser.add_argument("--train-subjects", type=int, default=100)
    parser.add_argument("--test-subjects", type=int, default=60)
    parser.add_argument("--steps", type=int, default=RestorationTraining.steps)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--save-into", type=Path, help="a bundle folder to write the guided and unguided networks into")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the run that split the cohort")
    parser.add_argument(
        "--calibrate-guide-check", action="store_true", help="only calibrate the guide check of --bundle's networks"
    )
    for split in ("val", "test"):
        parser.add_argument(
            f"--raw-{split}",
            type=Path,
            help=f"raw scans of {split} subjects (training.raw_scans --split {split}): the guide check is also "
            "calibrated and measured on them as the analysis prepares them",
        )
    args = parser.parse_args()
    if (args.raw_val is None) != (args.raw_test is None):
        parser.error("give --raw-val and --raw-test together: thresholds come from the one, figures from the other")
    if args.save_into and (args.save_into / RESTORATION_WEIGHTS).exists():
        parser.error(f"{args.save_into / RESTORATION_WEIGHTS} exists; remove it first to train again")
    torch.set_num_threads(2)
    bundle = load_bundle(args.bundle)
    report = discover(args.cohort)
    splits = split_pairs(report, assign_splits(report.kept, args.seed))
    raw = {
        split: discover(folder).kept if folder else []
        for split, folder in (("val", args.raw_val), ("test", args.raw_test))
    }
    if args.calibrate_guide_check:
        calibrate_guide_check(args.bundle, splits, raw)
        return
    started = time.perf_counter()
    template = RestorationConfig(map_channels=bundle.model.map_channels)
    train = restoration_cases(
        splits["train"][: args.train_subjects], bundle, template, seed=1, cut_share=FIELD_OF_VIEW_CUT_SHARE
    )
    test_pairs = splits["test"][: args.test_subjects]
    test = restoration_cases(test_pairs, bundle, template, seed=2)
    print(f"{len(train)} training and {len(test)} test cases in {time.perf_counter() - started:.0f} s")
    networks, histories = {}, {}
    for name, (guided, share, weight) in VARIANTS.items():
        config = RestorationConfig(guided=guided, map_channels=template.map_channels)
        training = RestorationTraining(steps=args.steps, hr_fraction=share, contrastive_weight=weight)
        started = time.perf_counter()
        network, history = train_restoration(train, config, training, torch.device("cpu"))
        networks[name], histories[name] = (network, config), history
        first, last = (np.mean([h.get("l1", np.nan) for h in part]) for part in (history[:50], history[-50:]))
        print(f"{name}: {time.perf_counter() - started:.0f} s, L1 {first:.3f} -> {last:.3f}")
    results, examples = evaluate(test, test_pairs, bundle, networks, RESTORATION_GRID)
    case = test[0]
    started = time.perf_counter()
    guide = guide_channels(bundle, case.grid.as_tensor(), case.mask, 2.0, "T1w")
    restore(networks["guided"][0], case.lowres, guide, case.mask)
    results["restore_seconds"] = time.perf_counter() - started
    results["settings"] = {**vars(args), "variants": VARIANTS}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "restoration.json").write_text(json.dumps(results, indent=1, default=str))
    write_table(results, args.out / "restoration.md")
    plot(results, examples, args.out)
    print((args.out / "restoration.md").read_text())
    if args.save_into:
        save_restoration(
            args.save_into,
            {"guided": networks["guided"][0], "unguided": networks["alone"][0]},
            {
                "trained_on": str(args.cohort),
                "subjects": args.train_subjects,
                "steps": args.steps,
                "test_subjects": len(test_pairs),
                "measured": results["table"],
            },
        )
        calibrate_guide_check(args.save_into, splits, raw)
        print(f"wrote the restoration networks into {args.save_into}")


if __name__ == "__main__":
    main()
