"""Gathering the input check's statistics from a run's cohort (``MultiviewCRLLib.runtime.input_check``).

The latents' Gaussians come from the training subjects; every threshold comes from the
validation subjects, and the test subjects measure how often a clean pair is warned about.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import VIEW_NAMES, VIEWS
from ..runtime.input_check import INPUT_CHECK, InputCheck, LatentGaussian, mask_volume_ml
from .discovery import Pair

# Principal axes of a view's training latents that the atypicality whitens along.
ATYPICALITY_AXES = 16
# Warning thresholds sit this far beyond the validation subjects' extremes (atypicality and
# brain volume), so that a clean input is warned about only when it is rarer than every one of them.
MARGIN = 0.1
# A pair is warned about when its content agreement lies below this share of the validation
# subjects' own pairs and above no more than this share of two different subjects' pairs: the
# lower of the two quantiles, so that a pair is called two people only when it is atypical of one
# person and typical of two. (A well-trained model packs one person's pairs near 1, and a real
# pair's preparation alone moved it below all of them.)
SAME_SUBJECT_FALSE_ALARMS = 0.02
# Quantiles of the different-subject cosines kept in the bundle (to state a pair's percentile).
REFERENCE_QUANTILES = np.linspace(0.0, 1.0, 201)


def content_cosines(a: np.ndarray, b: np.ndarray, content_dim: int) -> np.ndarray:
    """(N, N) cosines between the contents of (N, latent_dim) latents ``a`` (rows) and ``b``."""
    a, b = (x[:, :content_dim] / np.linalg.norm(x[:, :content_dim], axis=1, keepdims=True) for x in (a, b))
    return a @ b.T


@torch.no_grad()
def encoded_views(bundle, pairs: list[Pair], cache_root, device) -> tuple[dict, dict, dict | None]:
    """{view: (N, latent_dim)} latents, {view: (N,)} brain-mask volumes (ml) of ``pairs`` and,
    for an encoder told the view, {view: (N, latent_dim)} latents of each image encoded as the
    other view (as the analysis asks for them; else None)."""
    from ..runtime.inference import as_other_view_latents
    from .encoding import encode_cohort

    encoded, images = encode_cohort(bundle.encoder, pairs, bundle.preprocessing, cache_root, device, with_images=True)
    spacing = bundle.preprocessing.spacing_mm
    latents = {view: getattr(encoded, key) for key, view in VIEW_NAMES.items()}
    volumes = {
        view: np.array([mask_volume_ml(i[f"mask_{key}"], spacing) for i in images]) for key, view in VIEW_NAMES.items()
    }
    chunks = [
        as_other_view_latents(
            bundle,
            {
                view: torch.stack([i[key] for i in images[start : start + 8]])[:, None].to(device)
                for key, view in VIEW_NAMES.items()
            },
        )
        for start in range(0, len(images), 8)
    ]
    as_other = None if chunks[0] is None else {view: np.concatenate([c[view] for c in chunks]) for view in VIEWS}
    return latents, volumes, as_other


def calibrate(train_latents: dict, val_latents: dict, val_volumes: dict, content_dim: int) -> InputCheck:
    """The input check of a cohort: Gaussians of the {view: (N, latent_dim)} training latents,
    thresholds from the validation latents and {view: (M,)} brain-mask volumes in ml."""
    gaussians = {v: LatentGaussian.fit(train_latents[v].astype(np.float64), ATYPICALITY_AXES) for v in VIEWS}
    atypicality = {v: np.sort(gaussians[v].atypicality(val_latents[v].astype(np.float64))) for v in VIEWS}
    cosines = content_cosines(*(val_latents[v].astype(np.float64) for v in VIEWS), content_dim)
    same = np.sort(np.diag(cosines))
    different_all = cosines[~np.eye(len(cosines), dtype=bool)]
    different = np.quantile(different_all, REFERENCE_QUANTILES)
    one_person = min(
        np.quantile(same, SAME_SUBJECT_FALSE_ALARMS), np.quantile(different_all, 1 - SAME_SUBJECT_FALSE_ALARMS)
    )
    return InputCheck(
        gaussians,
        atypicality,
        {v: float(a[-1] * (1 + MARGIN)) for v, a in atypicality.items()},
        {v: (float(val_volumes[v].min() * (1 - MARGIN)), float(val_volumes[v].max() * (1 + MARGIN))) for v in VIEWS},
        same,
        different,
        float(one_person),
    )


def warned_share(check: InputCheck, latents: dict, volumes: dict, as_other: dict | None, content_dim: int) -> float:
    """The share of subjects whose own pairs (``latents`` {view: (N, latent_dim)}, ``volumes``
    {view: (N,)}, ``as_other`` as from ``encoded_views``) get a warning."""
    cosines = np.diag(content_cosines(*(latents[v] for v in VIEWS), content_dim))
    warned = [
        not check.check(
            {v: latents[v][i] for v in VIEWS},
            {v: volumes[v][i] for v in VIEWS},
            cosines[i],
            as_other_view=None if as_other is None else {v: as_other[v][i] for v in VIEWS},
        ).passed
        for i in range(len(cosines))
    ]
    return float(np.mean(warned))


def calibrate_cohort_check(train_latents: dict, val: tuple, test: tuple, content_dim: int, folders) -> dict:
    """Write the bundle's input_check.json into each of ``folders`` from a run's splits (training
    latents; validation and test (latents, volumes, as_other) from ``encoded_views``); return the
    ``input_check`` section of metrics.json (thresholds and the clean test pairs warned about)."""
    from ..runtime.storage import atomic_write_json

    check = calibrate(train_latents, val[0], val[1], content_dim)
    for folder in folders:
        atomic_write_json(folder / INPUT_CHECK, check.to_dict())
    return {
        "atypicality_threshold": check.atypicality_threshold,
        "volume_range_ml": {v: list(r) for v, r in check.volume_range_ml.items()},
        "same_subject_threshold": check.same_subject_threshold,
        "clean_test_pairs_warned": warned_share(check, *test, content_dim),
        "definition": "Gaussians of the training latents per view; thresholds from the validation subjects; "
        "clean_test_pairs_warned: share of the test subjects' own pairs with any warning",
    }
