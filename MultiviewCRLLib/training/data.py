"""Subject-level splits and cached paired datasets for training and evaluation."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from monai.data import Dataset, PersistentDataset
from monai.transforms import (
    Compose,
    CopyItemsd,
    DeleteItemsd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityd,
)
from monai.utils import convert_to_tensor
from torch.utils.data import default_collate

from ..config import VIEW_KEYS, PreprocessingConfig
from ..runtime.preprocessing import file_transforms, mask_key, normalisation
from ..runtime.storage import atomic_write_tsv
from .degradation import RandIntensityCurved, RandKSpaceTruncationd, RandThickSlicesd
from .discovery import Pair

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def split_subjects(subjects: list[str], seed: int, fractions: dict[str, float] = DEFAULT_FRACTIONS) -> dict[str, str]:
    """Subject -> train/val/test: a seeded permutation cut at the cumulative fractions."""
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    total = sum(fractions[s] for s in SPLIT_NAMES)
    bounds = np.rint(np.cumsum([fractions[s] / total for s in SPLIT_NAMES]) * len(order)).astype(int)
    starts = [0, *bounds[:-1]]
    return {subject: name for name, a, b in zip(SPLIT_NAMES, starts, bounds) for subject in order[a:b]}


def assign_splits(
    pairs: list[Pair], seed: int, fractions: dict[str, float] = DEFAULT_FRACTIONS, stratify: str | None = None
) -> dict[str, str]:
    """Subject -> split. A split given by the data wins; the rest are split by subject, seeded.

    With ``stratify``, the subjects of each value of that label are split separately, so every
    split sees the label's values in about the same proportions. Sessions of one subject always
    share a split.
    """
    given = {p.subject: p.split for p in pairs if p.split}
    unknown = sorted(set(given.values()) - set(SPLIT_NAMES))
    if unknown:
        raise ValueError(f"unknown split names {unknown}; use {', '.join(SPLIT_NAMES)}")
    strata: dict[str, dict[str, None]] = defaultdict(dict)  # ordered sets of subjects
    for p in pairs:
        if p.subject not in given:
            strata[p.labels.get(stratify, "") if stratify else ""][p.subject] = None
    splits = dict(given)
    for index, (_, subjects) in enumerate(sorted(strata.items())):
        splits.update(split_subjects(list(subjects), seed + index, fractions))
    return splits


def write_splits(splits: dict[str, str], path: Path) -> Path:
    return atomic_write_tsv(path, ["subject", "split"], sorted(splits.items()))


def read_splits(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {row["subject"]: row["split"] for row in csv.DictReader(f, delimiter="\t")}


def augmentation() -> Compose:
    """Training augmentation: one random rigid transform shared by both views of a subject, and
    independent small intensity jitter per view. Tensors are (1, X, Y, Z).

    No random scaling: head size is anatomy (the cohort's ``brain_scale``), so content must keep it.
    """
    both = list(VIEW_KEYS) + [mask_key(k) for k in VIEW_KEYS]
    transforms = [
        RandAffined(
            both,
            prob=0.8,
            rotate_range=(0.1, 0.1, 0.1),
            translate_range=(2, 2, 2),
            mode=["bilinear", "bilinear", "nearest", "nearest"],
            padding_mode="zeros",
        )
    ]
    for key in VIEW_KEYS:  # one transform per view: the draws are independent
        transforms += [
            RandScaleIntensityd(key, factors=0.05, prob=0.5),
            RandShiftIntensityd(key, offsets=0.05, prob=0.5),
        ]
    return Compose(transforms)


# Each view's copy that only the content map reads, when training randomises the map's input alone.
MAP_INPUT_KEYS = tuple(f"map_{key}" for key in VIEW_KEYS)
# The largest log of the copy's own log-linear bias field at the grid's ends: as strong as the cohort's
# fields (a log gradient up to 0.3 per 80 mm, about 0.35 over half the grid). The target keeps the view's
# field, so a map that carried the field of what it reads would reconstruct worse.
MAP_INPUT_FIELD = 0.35


def randomised_contrast(key: str, randomise: float, monotone: bool = False) -> list:
    """With probability ``randomise``: a random intensity curve (any contrast, as SynthSeg draws
    tissue intensities, but without labels, so it works on real cohorts too; ``monotone``: in the
    view's tissue order), then k-space truncation or thick slices along a random axis (each with
    half the probability): the resolutions and slice thicknesses of clinical scans. (1, X, Y, Z)."""
    return [
        RandIntensityCurved(key, prob=randomise, monotone=monotone),
        RandKSpaceTruncationd(key, prob=randomise / 2),
        RandThickSlicesd(key, prob=randomise / 2),
    ]


def view_augmentation(randomise: float = 0.0, map_input: bool = False) -> Compose:
    """Independent contrast augmentation per view: a bias field, a gamma and noise drawn for each
    view on its own, then the brain mask and z-score again. A subject's two views then differ in
    contrast in ways no anatomy explains, so content cannot carry a view's contrast. (1, X, Y, Z).

    With ``randomise`` > 0, first, per view, its random contrasts and resolutions
    (``randomised_contrast``). With ``map_input`` they go instead to a copy of each augmented view
    (``MAP_INPUT_KEYS``, masked and z-scored too, curves kept monotone): the content map reads the
    copy, while the style and the reconstruction's target stay the realistic view, so the map has
    to give one tissue code whatever the contrast, resolution and bias field it is read from (each
    copy gets a log-linear field of its own, ``MAP_INPUT_FIELD``, before its randomisation).
    """
    transforms = []
    for key in VIEW_KEYS:  # one instance per view: the draws are independent
        if randomise and not map_input:
            transforms += randomised_contrast(key, randomise)
        transforms += [
            ScaleIntensityd(key, minv=0.0, maxv=1.0),  # positive intensities for a multiplicative field
            RandBiasFieldd(key, coeff_range=(0.1, 0.3), prob=0.8),
            RandAdjustContrastd(key, gamma=(0.7, 1.5), prob=0.5),
            RandGaussianNoised(key, std=0.02, prob=0.5),
        ]
    transforms += normalisation(VIEW_KEYS)
    if randomise and map_input:
        copied = [*VIEW_KEYS, *(mask_key(k) for k in VIEW_KEYS)]
        transforms.append(CopyItemsd(copied, names=[*MAP_INPUT_KEYS, *(mask_key(k) for k in MAP_INPUT_KEYS)]))
        for key in MAP_INPUT_KEYS:
            transforms += [
                ScaleIntensityd(key, minv=0.0, maxv=1.0),
                RandBiasFieldd(key, degree=1, coeff_range=(-MAP_INPUT_FIELD, MAP_INPUT_FIELD), prob=1.0),
                *randomised_contrast(key, randomise, monotone=True),
            ]
        transforms += normalisation(MAP_INPUT_KEYS)
        transforms.append(DeleteItemsd([mask_key(k) for k in MAP_INPUT_KEYS]))  # the views' masks are theirs
    return Compose(transforms)


def plain_collate(items: list[dict]) -> dict:
    """Collate dataset items as plain tensors: a persistent cache returns plain tensors on a hit
    and MetaTensors on a miss, and the two cannot be stacked together."""
    return default_collate([convert_to_tensor(item, convert_numeric=False, track_meta=False) for item in items])


def _stamped_item(pair: Pair) -> dict:
    """A dataset item whose cache key changes when either file changes (size and mtime)."""
    item = pair.as_item()
    for key in VIEW_KEYS:
        stat = Path(item[key]).stat()
        item[f"stamp_{key}"] = f"{stat.st_size}-{stat.st_mtime_ns}"
    return item


def paired_dataset(
    pairs: list[Pair],
    config: PreprocessingConfig,
    cache_root: Path | None = None,
    augment: bool = False,
    seed: int = 0,
    view_augment: bool = False,
    randomise: float = 0.0,
    map_input: bool = False,
) -> Dataset:
    """A MONAI dataset of {"subject", "t1", "t2", "mask_t1", "mask_t2"} (and ``MAP_INPUT_KEYS`` with
    ``map_input``); volumes (1, *spatial_size).

    With ``cache_root`` the deterministic preprocessing is paid once: results persist under
    ``cache_root/<config fingerprint>``, so a changed preprocessing config never reuses them.
    Augmentation (``augment``: shared rigid; ``view_augment``: contrast per view; ``randomise``:
    the probability of its random contrasts and resolutions, which turns it on; ``map_input``: they
    go to the content map's own copy of each view), when on, runs after the cache.
    """
    transforms = list(file_transforms(VIEW_KEYS, config).transforms)
    if augment:
        transforms += list(augmentation().transforms)
    if view_augment or randomise:
        transforms += list(view_augmentation(randomise, map_input).transforms)
    pipeline = Compose(transforms)
    # Seeded after composing: a new Compose reseeds its transforms from MONAI's global seed.
    pipeline.set_random_state(seed=seed)
    items = [_stamped_item(p) for p in pairs]
    if cache_root is None:
        return Dataset(items, pipeline)
    cache_dir = Path(cache_root) / config.fingerprint()
    cache_dir.mkdir(parents=True, exist_ok=True)
    return PersistentDataset(items, pipeline, cache_dir=cache_dir)
