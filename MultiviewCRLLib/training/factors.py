"""The synthetic cohort's factor schema: every design variable's range, the factor names that
participants.tsv holds, how participants.json documents them, and the words for a stratum.

Content factors (anatomy) are shared by both views; style factors (sequence, bias field, noise,
gain) belong to one view. Two designs draw them:

- ``adni``: an ADNI-shaped cohort. Each subject has a diagnosis (cognitively normal, MCI or
  Alzheimer's disease, in ADNI-1's baseline proportions) and an age; group and age drive the
  atrophy, the ventricles and the lesion load as they do in ADNI, while head size, shape modes,
  lesion sites and every style factor stay independent of group (sites in a well-run study).
- ``independent``: every factor an independent uniform draw, for disentanglement probes.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, qmc, truncnorm

from ..config import VIEWS

# Factor ranges: (low, high) of a uniform draw. Documented in participants.json too.
CONTENT_RANGES = {
    "brain_scale": (0.92, 1.08),  # isotropic scale about the brain centre
    "ventricle_enlargement": (0.0, 0.45),  # radial expansion around the lateral ventricles
    "cortical_atrophy": (0.0, 0.5),  # share of the grey matter next to fluid that becomes CSF
    "medial_temporal_atrophy": (0.0, 0.8),  # the same about both hippocampi
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
DESIGNS = ("adni", "independent")
# ADNI-1 at baseline: 229 cognitively normal, 398 MCI, 192 Alzheimer's disease.
DIAGNOSES = {"CN": 229 / 819, "MCI": 398 / 819, "AD": 192 / 819}
AGE_MEAN, AGE_SD, AGE_RANGE = 75.0, 6.8, (55.0, 90.0)  # years; the groups are age-matched, as in ADNI
# The ADNI design's driven factors: value = base + per_year * (age - 55) + the diagnosis's shift
# + a normal spread, clipped to the factor's range. Lesion load rises with age (small-vessel
# disease) and only a little with diagnosis; atrophy and the ventricles with both.
DRIVEN_FACTORS = {
    "ventricle_enlargement": {"base": 0.03, "per_year": 0.005, "spread": 0.04, "CN": 0.0, "MCI": 0.06, "AD": 0.14},
    "cortical_atrophy": {"base": 0.02, "per_year": 0.004, "spread": 0.04, "CN": 0.0, "MCI": 0.07, "AD": 0.18},
    "medial_temporal_atrophy": {
        "base": 0.05,
        "per_year": 0.006,
        "spread": 0.06,
        "CN": 0.0,
        "MCI": 0.15,
        "AD": 0.35,
    },
    "lesion_load": {"base": 0.0, "per_year": 0.02, "spread": 0.15, "CN": 0.0, "MCI": 0.03, "AD": 0.05},
}
DEFORM_AMPLITUDE_MM = 6.0
LESION_VOLUME_ML = (0.5, 20.0)
BIAS_LENGTH_MM = 80.0


def factor_names() -> tuple[list[str], dict[str, list[str]]]:
    """Content factor names and, per view, the style factor names (with the view prefix)."""
    content = ["brain_scale", "ventricle_enlargement", "cortical_atrophy", "medial_temporal_atrophy"]
    content += ["deform_1", "deform_2", "deform_3", "lesion_load"]
    content += ["lesion_x", "lesion_y", "lesion_z"]
    style_keys = ["tr_ms", "te_ms", "bias_x", "bias_y", "bias_z", "noise_level", "gain"]
    style = {view: [f"{view.lower()}_{key}" for key in style_keys] for view in VIEWS}
    return content, style


# Words for a stratum whose median factor lies above or below the cohort's (the Slicer panel's).
FACTOR_PHRASES = {
    "brain_scale": ("larger brains", "smaller brains"),
    "ventricle_enlargement": ("larger ventricles", "smaller ventricles"),
    "cortical_atrophy": ("more cortical atrophy", "less cortical atrophy"),
    "medial_temporal_atrophy": ("more medial temporal atrophy", "less medial temporal atrophy"),
    "age": ("older", "younger"),
    "lesion_load": ("more lesion load", "less lesion load"),
    **{f"deform_{k}": (f"more of shape mode {k}", f"less of shape mode {k}") for k in (1, 2, 3)},
    "lesion_x": ("lesions further right", "lesions further left"),
    "lesion_y": ("lesions further anterior", "lesions further posterior"),
    "lesion_z": ("lesions higher", "lesions lower"),
}


def design_ranges() -> dict[str, tuple[float, float]]:
    """Every design variable's (low, high): the content factors, then each view's style factors."""
    ranges = dict(CONTENT_RANGES)
    for view in VIEWS:
        ranges.update({f"{view.lower()}_{k}": v for k, v in {**STYLE_RANGES[view], **COMMON_STYLE_RANGES}.items()})
    return ranges


def draw_design(n_subjects: int, seed: int, design: str = "adni") -> list[dict[str, float | str]]:
    """Draw every subject's design variables in [low, high] as a Latin hypercube, then, in the
    ``adni`` design, a diagnosis and an age per subject and the factors they drive (``DRIVEN_FACTORS``).

    The hypercube makes each factor uniform on its range and independent of every other; the
    discrepancy-optimised hypercube keeps chance correlations small even for a few dozen subjects
    (max |r| about 0.15 at 64 subjects, where i.i.d. draws give about 0.4). In the ``adni`` design
    a driven factor's own hypercube column becomes its normal spread, so the draw stays seeded.
    """
    if design not in DESIGNS:
        raise ValueError(f"a cohort design is one of {', '.join(DESIGNS)}, not {design!r}")
    ranges = design_ranges()
    unit = qmc.LatinHypercube(d=len(ranges) + 1, optimization="random-cd", seed=seed).random(n_subjects)
    lows = np.array([r[0] for r in ranges.values()])
    highs = np.array([r[1] for r in ranges.values()])
    values = lows + unit[:, :-1] * (highs - lows)
    rows = [dict(zip(ranges, row.tolist())) for row in values]
    if design == "independent":
        return rows
    rng = np.random.default_rng([seed, 7])
    counts = np.floor(np.array(list(DIAGNOSES.values())) * n_subjects).astype(int)
    counts[np.argsort(-(np.array(list(DIAGNOSES.values())) * n_subjects - counts))[: n_subjects - counts.sum()]] += 1
    diagnoses = rng.permutation(np.repeat(list(DIAGNOSES), counts))
    low, high = ((a - AGE_MEAN) / AGE_SD for a in AGE_RANGE)
    ages = truncnorm.ppf(unit[:, -1], low, high, loc=AGE_MEAN, scale=AGE_SD)
    names = list(ranges)
    for row, unit_row, diagnosis, age in zip(rows, unit, diagnoses, ages):
        row.update(diagnosis=str(diagnosis), age=round(float(age), 1))
        for name, effect in DRIVEN_FACTORS.items():
            spread = effect["spread"] * norm.ppf(np.clip(unit_row[names.index(name)], 1e-4, 1 - 1e-4))
            value = effect["base"] + effect["per_year"] * (age - AGE_RANGE[0]) + effect[diagnosis] + spread
            row[name] = float(np.clip(value, *CONTENT_RANGES[name]))
    return rows


# What the generator measures on each subject's tissue fractions (millilitres): the truth that
# volumes read off a content map are scored against. Ventricles: the CSF of the lateral ventricles'
# box in template space, so it moves with the subject's warp.
VOLUME_NAMES = ("gm_ml", "wm_ml", "csf_ml", "ventricle_ml", "lesion_ml")
CLINICAL_NAMES = ("diagnosis", "age")


def participants_sidecar(design: str = "adni") -> dict:
    content, style = factor_names()
    doc = {"participant_id": {"Description": "subject label"}}
    doc["split"] = {"Description": "subject-level split (train/val/test), seeded"}
    if design == "adni":
        doc["diagnosis"] = {
            "Description": "clinical group, drawn in ADNI-1's baseline proportions",
            "Levels": {"CN": "cognitively normal", "MCI": "mild cognitive impairment", "AD": "Alzheimer's disease"},
            "Proportions": {k: round(v, 3) for k, v in DIAGNOSES.items()},
        }
        doc["age"] = {
            "Description": f"age in years: normal, mean {AGE_MEAN:g}, SD {AGE_SD:g}, truncated to the range",
            "Range": list(AGE_RANGE),
            "Units": "year",
        }
    for name in content:
        doc[name] = {"Description": "content factor (shared by both views)"}
        if name in CONTENT_RANGES:
            doc[name]["Range"] = list(CONTENT_RANGES[name])
        if design == "adni" and name in DRIVEN_FACTORS:
            e = DRIVEN_FACTORS[name]
            doc[name]["Description"] += (
                f"; driven by age and diagnosis: {e['base']:g} + {e['per_year']:g} per year over "
                f"{AGE_RANGE[0]:g} + (CN {e['CN']:g}, MCI {e['MCI']:g}, AD {e['AD']:g}) + normal spread "
                f"SD {e['spread']:g}, clipped to the range"
            )
        elif design == "adni":
            doc[name]["Description"] += "; independent of age and diagnosis"
    for name in ("lesion_x", "lesion_y", "lesion_z"):
        doc[name]["Description"] += "; centre of the lesion cluster, template RAS mm"
    for name, tissue in zip(VOLUME_NAMES, ("grey-matter", "white-matter", "CSF", "lateral-ventricle CSF", "lesion")):
        doc[name] = {"Description": f"{tissue} volume from the tissue fractions", "Units": "ml"}
    for view in VIEWS:
        for name in style[view]:
            key = name[len(view) + 1 :]
            doc[name] = {"Description": f"style factor of the {view} view; independent of every content factor"}
            rng = {**STYLE_RANGES[view], **COMMON_STYLE_RANGES}.get(key)
            doc[name]["Range"] = list(rng)
            if key.startswith("bias_"):
                doc[name]["Description"] += f"; gradient of the log bias field per {BIAS_LENGTH_MM:g} mm"
    return doc
