"""A bundle's model card (``MODEL_CARD.md``), written from its settings and its evaluation.

Sections: intended use and what it must not be used for, training data, preparation, the model,
metrics beside their targets, known limitations with figures, the input check's false-alarm
rate, and the restoration networks with their figures. Every figure is read from the bundle's
``metrics.json`` or ``restoration.json``; none is typed in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import VIEWS, image_key, r2_key, retrieval_key, view_accuracy_key
from ..runtime.control import MODEL_CARD
from ..runtime.restoration import RESTORATION_SETTINGS
from ..runtime.storage import atomic_write_bytes

SECTIONS = (
    "Intended use",
    "Not for",
    "Training data",
    "Preparation",
    "Model",
    "Metrics",
    "Known limitations",
    "Input check",
    "Restoration",
)


@dataclass(frozen=True)
class Target:
    """A metric of the test split, the bar it should meet (``at_least`` or at most), and its words."""

    label: str
    key: str
    bar: float
    at_least: bool = True

    def met(self, value: float) -> bool:
        return value >= self.bar if self.at_least else value <= self.bar

    def bar_words(self) -> str:
        return f"{'≥' if self.at_least else '≤'} {self.bar:g}"


TARGETS = (
    *(Target(f"retrieval top-1, {a}→{b}", retrieval_key(1, a, b), 0.9) for a, b in (VIEWS, VIEWS[::-1])),
    *(
        Target(f"cross-view PSNR vs noise-free {view} (dB)", image_key("psnr", "cross_reference", key), 26.0)
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
    *(
        Target(f"cross-view SSIM vs noise-free {view}", image_key("ssim", "cross_reference", key), 0.9)
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
    Target("kernel-ridge R², content → content factors", r2_key("kernel_ridge", "content", "content"), 0.8),
    Target("kernel-ridge R², content → style factors", r2_key("kernel_ridge", "content", "style"), 0.2, False),
    Target("view accuracy from content (chance 0.5)", view_accuracy_key("content"), 0.6, False),
    # What clinicians read (training.clinical); the tissue bar is the one for a 4 mm model grid.
    *(
        Target(f"content map Dice {tissue}, {view}", f"map_dice_{tissue}_{key}", 0.8)
        for tissue in ("CSF", "GM", "WM")
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
    *(
        Target(f"content map lesion Dice, {view} (above-median lesion load)", f"map_dice_lesion_loaded_{key}", 0.6)
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
    Target("the two views' map labels agree (Dice)", "map_label_agreement_dice", 0.9),
    Target("view accuracy from the content map (chance 0.5)", view_accuracy_key("content_map"), 0.6, False),
    *(
        Target(f"{name} volume R² from the {view} map", f"map_{name}_volume_r2_{key}", bar)
        for name, bar in (("ventricle", 0.9), ("lesion", 0.8))
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
    *(
        Target(f"Alzheimer's vs normal AUROC from {view} content", f"diagnosis_auroc_{key}", 0.9)
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
    *(
        Target(f"lesion contrast kept in the cross-view {view}", f"cross_lesion_contrast_kept_{key}", 0.8)
        for key, view in zip(("t1", "t2"), VIEWS)
    ),
)
# Per-factor content probes that a reader of the card looks for: what clinicians read.
CLINICAL_FACTORS = ("ventricle_enlargement", "lesion_load")


def _value(group: dict, key: str) -> float | None:
    entry = group.get(key)
    return None if entry is None else entry.get("value")


def metrics_rows(metrics: dict) -> list[str]:
    """Markdown rows: figure | trained | untrained | target | met."""
    trained, untrained = metrics.get("trained", {}), metrics.get("untrained_baseline", {})
    rows = ["| figure (test split) | trained | untrained | target | met |", "|---|---|---|---|---|"]
    for target in TARGETS:
        value = _value(trained, target.key)
        if value is None:
            continue
        baseline = _value(untrained, target.key)
        words = "—" if baseline is None else f"{baseline:.3f}"
        met = "yes" if target.met(value) else "**no**"
        rows.append(f"| {target.label} | {value:.3f} | {words} | {target.bar_words()} | {met} |")
    return rows


def baseline_words(metrics: dict) -> str:
    """What the clinical rows are read beside: the Gaussian-mixture segmentation and the AUROC
    ceiling (empty when the evaluation had neither)."""
    trained = metrics.get("trained", {})
    parts = []
    for key, view in zip(("t1", "t2"), VIEWS):
        dice = [_value(trained, f"mixture_dice_{tissue}_{key}") for tissue in ("CSF", "GM", "WM")]
        if None not in dice:
            parts.append(
                f"a 3-class Gaussian mixture on the {view}'s brain intensities gives Dice CSF / GM / WM "
                + " / ".join(f"{d:.3f}" for d in dice)
            )
    ceiling = _value(trained, "diagnosis_auroc_ceiling")
    if ceiling is not None:
        parts.append(f"the AUROC probe on the true content factors (the ceiling) gives {ceiling:.3f}")
    return f"Beside these: {'; '.join(parts)}." if parts else ""


def limitations(metrics: dict, settings: dict) -> list[str]:
    """Bullet lines: every target missed, the clinical factors' probes, the grid and the data."""
    trained = metrics.get("trained", {})
    lines = []
    for target in TARGETS:
        value = _value(trained, target.key)
        if value is not None and not target.met(value):
            lines.append(f"- {target.label}: {value:.3f}, short of its target ({target.bar_words()}).")
    for factor in CLINICAL_FACTORS:
        found = [(view, _value(trained, f"r2_kernel_ridge_content_{view}_{factor}")) for view in VIEWS]
        found = [(view, value) for view, value in found if value is not None]
        if found:
            words = ", ".join(f"{view} {value:.2f}" for view, value in found)
            lines.append(f"- {factor.replace('_', ' ')} from content, kernel-ridge R² ({words}): ")
            lines[-1] += "read" if min(v for _, v in found) >= 0.8 else "**not reliably read**"
            lines[-1] += " from the content vector."
    spacing = settings.get("preprocessing", {}).get("spacing_mm", ["?"])[0]
    lines.append(f"- The model grid is {spacing:g} mm: structures smaller than a few voxels of it are not resolved.")
    return lines


def training_data_words(settings: dict) -> str:
    dataset = str(settings.get("dataset", "unknown"))
    if dataset.startswith("synthetic"):
        return (
            f"**Simulated.** `{dataset}`: paired T1w/T2w volumes simulated from the MNI ICBM152 2009a "
            "template and its tissue maps (spin-echo signal per tissue, smooth deformations, atrophy, enlarged "
            "ventricles, white-matter lesions, bias fields and Rician noise; in the default ADNI-shaped design "
            "diagnosis and age drive the atrophy, ventricles and lesions). No real patient was seen "
            "in training: on real scans, expect the input check to warn, and read the outputs as a demonstration."
        )
    return f"`{dataset}` (see the run's `discovery.tsv` and `splits.tsv` for the subjects and their split)."


def restoration_words(restoration: dict) -> str:
    """The Restoration section from a bundle's restoration.json (empty: the bundle has none)."""
    if not restoration:
        return "None: this bundle restores no low-resolution view."
    networks = restoration.get("networks", {})
    lines = [
        f"Networks: {', '.join(networks)}, restoring the {next(iter(networks.values()), {}).get('view', '?')} on a "
        f"2 mm grid; trained on {restoration.get('subjects', '?')} subjects of `{restoration.get('trained_on', '?')}` "
        f"for {restoration.get('steps', '?')} steps. Measured by `python benchmarks/restoration.py` on "
        f"{restoration.get('test_subjects', '?')} test subjects against the noise-free references (PSNR, dB):",
        "",
        "| acquisition | B-spline | restored alone | restored, guided by the other view |",
        "|---|---|---|---|",
    ]
    for degradation, methods in restoration.get("measured", {}).items():
        cells = (methods.get(name, {}).get("psnr", float("nan")) for name in ("B-spline", "alone", "guided"))
        lines.append(f"| {degradation} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    check = restoration.get("guide_check", {})
    if check.get("test"):
        found = "; ".join(
            f"{kind}: threshold {check['thresholds'][kind]:.3f}, two people's pairs caught "
            f"{figures['two people caught']:.0%}, one person's refused {figures['one person refused']:.0%}"
            for kind, figures in check["test"].items()
        )
        subjects = f"{check['test_subjects']} test subjects"
        if check.get("test_raw_subjects"):
            subjects += f" and raw scans of {check['test_raw_subjects']} prepared as the analysis prepares them"
        lines += ["", f"Guide check (another person's guide refused), on {subjects}: {found}."]
    lines += ["", "A restored view is an estimate from the acquired one and its guide: read findings from the scans."]
    return "\n".join(lines)


def model_card(settings: dict, metrics: dict, restoration: dict | None = None) -> str:
    """The card's Markdown text from a bundle's settings.json, metrics.json and restoration.json
    (any may be empty)."""
    model, grid = settings.get("model", {}), settings.get("preprocessing", {})
    subjects = metrics.get("subjects", {})
    check = metrics.get("input_check", {})
    warned = check.get("clean_test_pairs_warned")
    sections = {
        "Intended use": (
            "Research on representation learning from paired T1-weighted and T2-weighted brain MRI: "
            "inspecting content (anatomy shared by both views) and style (one view's contrast) "
            "embeddings, reconstructions and cross-view images, in 3D Slicer or headlessly."
        ),
        "Not for": (
            "Diagnosis, treatment decisions, or any clinical use: this is not a medical device. A "
            "cross-view image is a synthesis, not an acquisition; never read a finding from it that "
            "the acquired scans do not show."
        ),
        "Training data": training_data_words(settings),
        "Preparation": (
            f"Training inputs: {settings.get('training_inputs', 'not recorded')}. At analysis, raw scans "
            "(with skull, any pose and resolution) are brain-extracted and aligned to the bundle's "
            "template first, and the outputs are placed back over the inputs."
        ),
        "Model": (
            f"Family `{model.get('family', '?')}`, latent {model.get('latent_dim', '?')}-d "
            f"(content {model.get('content_dim', '?')}), model grid {grid.get('spatial_size', '?')} at "
            f"{grid.get('spacing_mm', '?')} mm, trained {settings.get('trained_steps', '?')} steps "
            f"(run `{settings.get('run', '?')}`)."
        ),
        "Metrics": "\n".join(
            [
                f"Test split: {subjects.get('test', '?')} subjects (probes fitted on {subjects.get('val', '?')}); "
                "measured by `python trainer_cli.py evaluate --run RUN_DIR`, definitions in metrics.json.",
                "",
            ]
            + metrics_rows(metrics)
            + ["", baseline_words(metrics)]
        ).rstrip()
        if metrics
        else "Not evaluated: the bundle has no metrics.json.",
        "Known limitations": "\n".join(limitations(metrics, {**settings, "preprocessing": grid})),
        "Input check": (
            "Not calibrated for this bundle."
            if warned is None
            else f"False alarms: {warned:.1%} of the test subjects' own clean pairs get a warning. Atypicality "
            "thresholds per view: "
            + ", ".join(f"{v} {t:.2f}" for v, t in check.get("atypicality_threshold", {}).items())
            + f"; one-person content cosine threshold {check.get('same_subject_threshold', float('nan')):.4f}."
        ),
        "Restoration": restoration_words(restoration or {}),
    }
    title = f"# Model card: {settings.get('run', 'MultiviewCRL bundle')}\n"
    return title + "".join(f"\n## {name}\n\n{sections[name]}\n" for name in SECTIONS)


def write_model_card(bundle_dir: Path) -> Path:
    """Write ``MODEL_CARD.md`` into a bundle folder from its settings.json, metrics.json and restoration.json."""
    bundle_dir = Path(bundle_dir)
    settings = json.loads((bundle_dir / "settings.json").read_text())
    metrics, restoration = (
        json.loads((bundle_dir / name).read_text()) if (bundle_dir / name).is_file() else {}
        for name in ("metrics.json", RESTORATION_SETTINGS)
    )
    return atomic_write_bytes(bundle_dir / MODEL_CARD, model_card(settings, metrics, restoration).encode())
