"""The synthetic cohort's factor schema: every design variable's range, the factor names that
participants.tsv holds, how participants.json documents them, and the words for a stratum.

Content factors (anatomy) are shared by both views; style factors (sequence, bias field, noise,
gain) belong to one view.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import qmc

from ..config import VIEWS

# Factor ranges: (low, high) of a uniform draw. Documented in participants.json too.
CONTENT_RANGES = {
    "brain_scale": (0.92, 1.08),  # isotropic scale about the brain centre
    "ventricle_enlargement": (0.0, 0.45),  # radial expansion around the lateral ventricles
    "deform_1": (-1.0, 1.0),  # smooth bending modes, amplitude DEFORM_AMPLITUDE_MM each
    "deform_2": (-1.0, 1.0),
    "deform_3": (-1.0, 1.0),
    "lesion_load": (0.0, 1.0),  # total lesion volume LESION_VOLUME_ML[0] .. [1]
    # Position of the lesion cluster: quantiles of the deep white matter along x, y and z.
    "lesion_site_x": (0.0, 1.0),
    "lesion_site_y": (0.0, 1.0),
    "lesion_site_z": (0.0, 1.0),
}
STYLE_RANGES = {
    "T1w": {
        "tr_ms": (400.0, 700.0),
        "te_ms": (8.0, 20.0),
    },
    "T2w": {
        "tr_ms": (3000.0, 6000.0),
        "te_ms": (80.0, 120.0),
    },
}
COMMON_STYLE_RANGES = {
    # Gradient of the log bias field per BIAS_LENGTH_MM along x, y, z: its norm is the strength,
    # its direction the direction of the field.
    "bias_x": (-0.3, 0.3),
    "bias_y": (-0.3, 0.3),
    "bias_z": (-0.3, 0.3),
    "noise_level": (0.005, 0.04),  # Rician sigma relative to REFERENCE_INTENSITY
    "gain": (0.8, 1.25),  # global scanner gain
}
DEFORM_AMPLITUDE_MM = 6.0
LESION_VOLUME_ML = (0.5, 20.0)
BIAS_LENGTH_MM = 80.0


def factor_names() -> tuple[list[str], dict[str, list[str]]]:
    """Content factor names and, per view, the style factor names (with the view prefix)."""
    content = ["brain_scale", "ventricle_enlargement", "deform_1", "deform_2", "deform_3", "lesion_load"]
    content += ["lesion_x", "lesion_y", "lesion_z"]
    style_keys = ["tr_ms", "te_ms", "bias_x", "bias_y", "bias_z", "noise_level", "gain"]
    style = {view: [f"{view.lower()}_{key}" for key in style_keys] for view in VIEWS}
    return content, style


# Words for a stratum whose median factor lies above or below the cohort's (the Slicer panel's).
FACTOR_PHRASES = {
    "brain_scale": ("larger brains", "smaller brains"),
    "ventricle_enlargement": ("larger ventricles", "smaller ventricles"),
    "lesion_load": ("more lesion load", "less lesion load"),
    **{f"deform_{k}": (f"more of shape mode {k}", f"less of shape mode {k}") for k in (1, 2, 3)},
    "lesion_x": ("lesions further right", "lesions further left"),
    "lesion_y": ("lesions further anterior", "lesions further posterior"),
    "lesion_z": ("lesions higher", "lesions lower"),
}


def draw_design(n_subjects: int, seed: int) -> list[dict[str, float]]:
    """Draw every subject's design variables in [low, high] as a Latin hypercube.

    Each factor is uniform on its range and drawn independently of every other factor; the
    discrepancy-optimised hypercube keeps chance correlations between factors small even for a few
    dozen subjects (max |r| about 0.15 at 64 subjects, where i.i.d. draws give about 0.4).
    """
    ranges = dict(CONTENT_RANGES)
    for view in VIEWS:
        ranges.update({f"{view.lower()}_{k}": v for k, v in {**STYLE_RANGES[view], **COMMON_STYLE_RANGES}.items()})
    unit = qmc.LatinHypercube(d=len(ranges), optimization="random-cd", seed=seed).random(n_subjects)
    lows = np.array([r[0] for r in ranges.values()])
    highs = np.array([r[1] for r in ranges.values()])
    values = lows + unit * (highs - lows)
    return [dict(zip(ranges, row.tolist())) for row in values]


def participants_sidecar() -> dict:
    content, style = factor_names()
    doc = {"participant_id": {"Description": "subject label"}}
    doc["split"] = {"Description": "subject-level split (train/val/test), seeded"}
    for name in content:
        doc[name] = {"Description": "content factor (shared by both views)"}
        if name in CONTENT_RANGES:
            doc[name]["Range"] = list(CONTENT_RANGES[name])
    for name in ("lesion_x", "lesion_y", "lesion_z"):
        doc[name]["Description"] += "; centre of the lesion cluster, template RAS mm"
    for view in VIEWS:
        for name in style[view]:
            key = name[len(view) + 1 :]
            doc[name] = {"Description": f"style factor of the {view} view"}
            rng = {**STYLE_RANGES[view], **COMMON_STYLE_RANGES}.get(key)
            doc[name]["Range"] = list(rng)
            if key.startswith("bias_"):
                doc[name]["Description"] += f"; gradient of the log bias field per {BIAS_LENGTH_MM:g} mm"
    return doc
