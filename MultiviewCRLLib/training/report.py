"""report.png: test subjects' images and decodings, probe R² against the untrained baseline, curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import image_key, r2_key, retrieval_key, view_accuracy_key
from ..runtime.inference import error_map

COLUMNS = [
    ("T1w", "image", "t1"),
    ("T2w", "image", "t2"),
    ("T1w reconstruction", "decoded", "recon_t1"),
    ("T2w reconstruction", "decoded", "recon_t2"),
    ("T2w→T1w", "decoded", "cross_t1"),
    ("T1w→T2w", "decoded", "cross_t2"),
    ("|T1w − T2w→T1w|", "error", "t1"),
    ("|T2w − T1w→T2w|", "error", "t2"),
]
BARS = [
    (f"{block} → {target.replace('_', ' ')}", r2_key("kernel_ridge", block, target))
    for block, target in (
        ("content", "content"),
        ("content", "style"),
        ("style", "own_style"),
        ("style", "content"),
        ("full", "content"),
    )
]


HEADLINE = [
    ("retrieval top-1, T1w→T2w", retrieval_key(1, "T1w", "T2w")),
    ("retrieval top-1, T2w→T1w", retrieval_key(1, "T2w", "T1w")),
    ("kernel-ridge R², content → content factors", r2_key("kernel_ridge", "content", "content")),
    ("kernel-ridge R², content → style factors", r2_key("kernel_ridge", "content", "style")),
    ("kernel-ridge R², style → own style factors", r2_key("kernel_ridge", "style", "own_style")),
    ("view accuracy from content (chance 0.5)", view_accuracy_key("content")),
    ("PSNR self-reconstruction T1w / T2w (dB)", (image_key("psnr", "recon", "t1"), image_key("psnr", "recon", "t2"))),
    ("PSNR cross-view T1w / T2w (dB)", (image_key("psnr", "cross", "t1"), image_key("psnr", "cross", "t2"))),
    (
        "PSNR cross-view vs noise-free T1w / T2w (dB)",
        (image_key("psnr", "cross_reference", "t1"), image_key("psnr", "cross_reference", "t2")),
    ),
    ("content map Dice GM, T1w / T2w", ("map_dice_GM_t1", "map_dice_GM_t2")),
    ("3-class mixture Dice GM, T1w / T2w", ("mixture_dice_GM_t1", "mixture_dice_GM_t2")),
    ("Alzheimer's vs normal AUROC, content T1w / T2w", ("diagnosis_auroc_t1", "diagnosis_auroc_t2")),
    ("Alzheimer's vs normal AUROC, true factors", "diagnosis_auroc_ceiling"),
]


def headline_value(metrics: dict, group: str, keys) -> str:
    """One headline figure of a metrics.json group as text: "0.953", or "18.2 / 17.5" for a pair of keys."""
    found = [metrics.get(group, {}).get(key, {}).get("value") for key in ([keys] if isinstance(keys, str) else keys)]
    return " / ".join("—" if v is None else f"{v:.3f}" for v in found)


def comparison_table(columns: dict[str, tuple[dict, str]], rows=HEADLINE) -> str:
    """Plain-text rows of headline figures, one column per {title: (metrics, group)}."""
    width = max(len(label) for label, _ in rows)
    lines = [f"{'figure (test split)':<{width}}" + "".join(f"  {title:>15}" for title in columns)]
    for label, keys in rows:
        lines.append(f"{label:<{width}}" + "".join(f"  {headline_value(m, g, keys):>15}" for m, g in columns.values()))
    return "\n".join(lines)


def headline_table(metrics: dict) -> str:
    """The evaluation's headline figures beside the untrained encoder's, as plain-text rows."""
    return comparison_table({"trained": (metrics, "trained"), "untrained": (metrics, "untrained_baseline")})


def strata_summary(metrics: dict) -> str:
    """The cohort's strata in plain lines: count, stability, each stratum in words, the label
    columns associated with them, and any notice."""
    strata = metrics.get("strata", {})
    lines = [f"strata of the cohort ({strata.get('embedding', '?')} embedding, {strata.get('subjects', 0)} subjects):"]
    if "strata" in strata:
        ari = strata["stability_adjusted_rand"]
        lines.append(f"  {strata['strata']} strata; split-half adjusted Rand {'—' if ari is None else f'{ari:.2f}'}")
        lines += [f"  {text}" for text in strata["descriptions"]]
        associated = [f"{a['column']} (q={a['q']:.2g})" for a in strata["associations"] if a["significant"]]
        lines.append(f"  associated (q < 0.05): {', '.join(associated) or 'none'}")
    lines += [f"  notice: {notice}" for notice in strata.get("notices", [])]
    return "\n".join(lines)


def input_check_summary(metrics: dict) -> str:
    """The input check's thresholds and how often a clean test pair is warned about, in plain lines."""
    check = metrics.get("input_check")
    if not check:
        return "input check: not calibrated"
    thresholds = ", ".join(f"{v} {t:.2f}" for v, t in check["atypicality_threshold"].items())
    volumes = ", ".join(f"{v} {lo:.0f}-{hi:.0f} ml" for v, (lo, hi) in check["volume_range_ml"].items())
    return "\n".join(
        [
            "input check (thresholds from the validation subjects):",
            f"  atypicality past {thresholds}; brain mask outside {volumes}; "
            f"content agreement below {check['same_subject_threshold']:.4f}",
            f"  clean test pairs warned about: {100 * check['clean_test_pairs_warned']:.1f}%",
        ]
    )


def _axial(volume) -> np.ndarray:
    array = np.asarray(volume, dtype=np.float32)
    return array[:, :, array.shape[2] // 2].T


def write_report(metrics: dict, material: dict, training_rows: list[dict], out_png: Path, n_subjects: int = 3) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n_subjects, len(material["images"]))
    maps = material.get("maps")  # spatial family: each subject's content maps
    columns = COLUMNS + ([("content map T1w", "map", "t1"), ("content map T2w", "map", "t2")] if maps else [])
    fig = plt.figure(figsize=(2 * len(columns), 2.2 * n + 3.6))
    grid = fig.add_gridspec(n + 1, len(columns), height_ratios=[1] * n + [1.5])
    for row in range(n):
        images, decoded = material["images"][row], material["decoded"][row]
        for col, (title, kind, key) in enumerate(columns):
            ax = fig.add_subplot(grid[row, col])
            if kind == "map":
                codes = (maps[row][key].argmax(0) + 1) * (images[f"mask_{key}"] > 0.5)
                ax.imshow(_axial(codes), cmap="tab10", origin="lower", vmin=0, vmax=10, interpolation="nearest")
            elif kind == "image":
                ax.imshow(_axial(images[key]), cmap="gray", origin="lower", vmin=-2.5, vmax=2.5)
            elif kind == "decoded":
                ax.imshow(
                    _axial(decoded[key] * images[f"mask_{key[-2:]}"]), cmap="gray", origin="lower", vmin=-2.5, vmax=2.5
                )
            else:
                error = error_map(decoded[f"cross_{key}"], images[key], images[f"mask_{key}"])
                ax.imshow(_axial(error), cmap="magma", origin="lower", vmin=0, vmax=2.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(material["subjects"][row], fontsize=8)
    bars = fig.add_subplot(grid[n, : len(columns) // 2])
    labels = [label for label, _ in BARS]
    x = np.arange(len(labels))
    for offset, (name, color) in zip((-0.2, 0.2), (("trained", "tab:blue"), ("untrained_baseline", "tab:gray"))):
        values = [metrics.get(name, {}).get(key, {}).get("value") or 0.0 for _, key in BARS]
        bars.bar(x + offset, values, width=0.4, color=color, label=name.replace("_", " "))
    bars.set_xticks(x, labels, fontsize=8, rotation=15)
    bars.set_ylabel("kernel-ridge R² (test)")
    bars.set_ylim(min(-0.2, bars.get_ylim()[0]), 1.0)
    bars.axhline(0, color="black", lw=0.5)
    bars.legend(fontsize=8)
    curves = fig.add_subplot(grid[n, len(columns) // 2 :])
    if training_rows:
        steps = [r["step"] for r in training_rows]
        curves.plot(steps, [r["contrastive"] for r in training_rows], label="contrastive")
        curves.plot(steps, [r["top1_retrieval"] for r in training_rows], label="batch top-1 retrieval")
        twin = curves.twinx()
        twin.plot(steps, [r["reconstruction"] for r in training_rows], color="tab:orange", label="reconstruction")
        twin.set_ylabel("reconstruction", color="tab:orange")
        curves.set_xlabel("step")
        curves.legend(fontsize=8, loc="upper center")
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return Path(out_png)
