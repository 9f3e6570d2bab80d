"""Training the restoration networks of ``runtime/restoration.py`` on a cohort with noise-free
high-resolution references (the synthetic cohort writes them).

Each training subject's restored view is acquired at low resolution (``LOWRES_ACQUISITIONS``, from its
noisy image on the cohort's grid), resampled onto the guide view's preprocessed grid and restored
there. Two losses, after the unpaired contrastive super-resolution paper:

- supervised, L1 + SSIM against the noise-free reference, for the subjects whose high-resolution
  volume is available (``hr_fraction`` of them);
- contrastive, for every subject: features of a restored patch against real high-resolution
  patches of *other* subjects (the cohort shares one template space): the positive is the patch
  at the same place, the negatives are the batch's other real patches and every interpolated
  input patch. The feature network learns from real patches only (one real patch as the anchor of
  another subject's at the same place), so what it rewards is real high-resolution anatomy, and
  an interpolated patch is what it pushes away.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.losses import SSIMLoss
from monai.networks.blocks import Convolution
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ..config import PreprocessingConfig
from ..runtime.precision import precision_policy
from ..runtime.preprocessing import preprocess_file
from ..runtime.restoration import (
    RESTORATION_GRID,
    RestorationConfig,
    RestorationNetwork,
    guide_channels,
    onto_grid,
    standardised,
    with_data,
)
from .degradation import LOWRES_ACQUISITIONS, ThickSlices, random_field_of_view_cut, thick_slice_acquisition
from .discovery import Pair
from .synthetic import noise_free_reference

# Training slabs that miss up to this share of the brain's extent at one end: a clinical slab placed
# over the cerebrum often misses the skull base, as the raw scans' T2w does (3-15 % of the brain).
FIELD_OF_VIEW_CUT_SHARE = 0.3


@dataclass
class RestorationCase:
    """One subject's view acquired by one degradation, on the guide's preprocessed grid; tensors
    (1, X, Y, Z) unless said: ``lowres`` (linear interpolation) and ``bspline`` of the acquisition,
    ``reference`` the noise-free high-resolution view, ``guide`` (1 + K, X, Y, Z) the guide
    channels, ``mask`` the brain, ``covered`` the brain where the acquisition has data (``with_data``),
    ``grid`` the guide's preprocessed image (its affine says where the grid is); ``acquisition`` the
    acquired array and its affine. The views and the reference are z-scored over ``covered``, as
    ``restore_scan`` does."""

    subject: str
    degradation: str
    lowres: torch.Tensor
    bspline: torch.Tensor
    reference: torch.Tensor
    guide: torch.Tensor
    mask: torch.Tensor
    covered: torch.Tensor
    grid: MetaTensor
    acquisition: tuple[np.ndarray, np.ndarray]


def restoration_cases(
    pairs: list[Pair],
    bundle,
    config: RestorationConfig,
    seed: int = 0,
    grid: PreprocessingConfig | None = None,
    cut_share: float = 0.0,
) -> list[RestorationCase]:
    """Every degradation of each pair's ``config.view``, guided by its other view (``bundle``'s map).
    ``cut_share`` > 0 (training cases): half of the thick-slice acquisitions, drawn at random, miss
    up to that share of the brain's extent at one end of their slice axis
    (``random_field_of_view_cut``), so that a guided network learns to fill what a slab did not
    cover from the guide instead of keeping it dark. A 3D acquisition covers the head, so k-space
    views stay whole."""
    from ..config import VIEW_NAMES, VIEWS

    grid = grid or RESTORATION_GRID
    view_key = {name: key for key, name in VIEW_NAMES.items()}
    guide_view = next(v for v in VIEWS if v != config.view)
    cases = []
    for index, pair in enumerate(pairs):
        rng = np.random.default_rng([seed, index])
        restored_path = getattr(pair, view_key[config.view])
        guide_image, guide_mask = preprocess_file(getattr(pair, view_key[guide_view]), grid)
        reference, reference_mask = preprocess_file(noise_free_reference(restored_path), grid)
        mask = (guide_mask * reference_mask).as_tensor()
        guide = guide_channels(bundle, guide_image.as_tensor(), mask, grid.spacing_mm[0], guide_view)
        image = nib.load(restored_path)
        volume, affine = np.asarray(image.dataobj, dtype=np.float32), image.affine
        for name, (_, degradation) in LOWRES_ACQUISITIONS.items():
            acquire = degradation(rng, float(image.header.get_zooms()[0]))
            acquisition = acquire.acquire(volume, affine)
            if cut_share > 0 and isinstance(acquire, ThickSlices) and rng.random() < 0.5:
                acquisition = random_field_of_view_cut(acquisition, rng, cut_share, acquire.axis)
            linear = onto_grid(*acquisition, guide_image, "linear")
            covered = with_data(linear) * mask
            lowres, bspline, target = (
                standardised(resampled, mask, covered)
                for resampled in (linear, onto_grid(*acquisition, guide_image, "B-spline"), reference.as_tensor())
            )
            cases.append(
                RestorationCase(pair.key, name, lowres, bspline, target, guide, mask, covered, guide_image, acquisition)
            )
    return cases


class PatchFeatures(nn.Sequential):
    """(B, 1, P, P, P) -> (B, features) unit vectors: three strided convolutions, pooled, projected."""

    def __init__(self, features: int = 64, channels: tuple[int, ...] = (16, 32, 64)):
        widths = (1, *channels)
        super().__init__(
            *(
                Convolution(3, a, b, strides=2, act="leakyrelu", norm="instance")
                for a, b in zip(widths[:-1], widths[1:])
            ),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.Linear(channels[-1], features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(x).float(), dim=1)


def patch_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of anchors (B, D) against their positives (B, D) (row i's is row i) and the other
    rows of ``positive`` plus every row of ``negatives`` (N, D); all unit vectors."""
    logits = anchor @ torch.cat([positive, negatives]).T / tau
    return F.cross_entropy(logits, torch.arange(len(anchor), device=anchor.device))


@dataclass(frozen=True)
class RestorationTraining:
    """``hr_fraction`` of the training subjects have their high-resolution volume (supervision, and
    the pool of real patches); ``contrastive_weight`` 0 turns the contrastive loss off; ``lr`` decays
    to zero over the ``steps`` on a cosine; ``flip`` mirrors patches at random (``PatchSampler``)."""

    steps: int = 1500
    batch_size: int = 4
    patch: int = 32
    lr: float = 1e-3
    hr_fraction: float = 1.0
    # Small: the contrastive positives are other subjects' patches, whose anatomy it pulls towards.
    contrastive_weight: float = 0.01
    ssim_weight: float = 0.1
    tau: float = 0.1
    flip: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Patch:
    """Where a patch lies in its case (``corner``, voxels) and the axes it is mirrored along."""

    corner: tuple[int, int, int]
    flipped: tuple[int, ...]


class PatchSampler:
    """Random patches (``size``^3) of the training cases, centred on a brain voxel and, with
    ``flip``, mirrored along each axis with probability 1/2 (the restoration is local, and mirrored
    anatomy is anatomy: it doubles what 100 subjects show the network per axis)."""

    def __init__(self, cases: list[RestorationCase], size: int, rng: np.random.Generator, flip: bool = True):
        self.cases, self.size, self.rng, self.flip = cases, size, rng, flip
        self.inside = [torch.nonzero(c.mask[0] > 0.5) for c in cases]

    def patch(self, case: int) -> Patch:
        voxels = self.inside[case]
        centre = voxels[self.rng.integers(len(voxels))].numpy()
        shape = np.asarray(self.cases[case].mask.shape[1:])
        corner = tuple(np.clip(centre - self.size // 2, 0, shape - self.size).astype(int))
        flipped = tuple(int(a) for a in np.flatnonzero(self.rng.random(3) < 0.5)) if self.flip else ()
        return Patch(corner, flipped)

    def crop(self, volume: torch.Tensor, patch: Patch) -> torch.Tensor:
        """(C, X, Y, Z) -> (C, size, size, size)."""
        x, y, z = patch.corner
        cropped = volume[:, x : x + self.size, y : y + self.size, z : z + self.size]
        return cropped.flip([1 + a for a in patch.flipped]) if patch.flipped else cropped


def train_restoration(
    cases: list[RestorationCase],
    config: RestorationConfig,
    training: RestorationTraining,
    device: torch.device,
    log: Callable[[int, dict], None] | None = None,
) -> tuple[RestorationNetwork, list[dict]]:
    """A restoration network trained on ``cases``; returns it and each step's losses."""
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    policy = precision_policy(device)
    network = RestorationNetwork(config).to(device, memory_format=policy.memory_format)
    features = PatchFeatures().to(device)
    optimiser = torch.optim.Adam([*network.parameters(), *features.parameters()], lr=training.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, training.steps)
    ssim = SSIMLoss(spatial_dims=3, data_range=4.0, win_size=5)  # 11-voxel windows tripled the step
    subjects = sorted({c.subject for c in cases})
    with_hr = set(subjects[: max(2, math.ceil(training.hr_fraction * len(subjects)))])
    pool = [i for i, c in enumerate(cases) if c.subject in with_hr]
    sampler = PatchSampler(cases, training.patch, rng, training.flip)
    history = []
    for step in range(training.steps):
        # Half of each batch from the subjects with a high-resolution volume, so that every step
        # is supervised; the rest from any subject.
        half = training.batch_size // 2
        picked = np.concatenate([rng.choice(pool, half), rng.integers(len(cases), size=training.batch_size - half)])
        patches = [sampler.patch(i) for i in picked]
        x = torch.stack([_channels(cases[i], config, sampler, p) for i, p in zip(picked, patches)])
        target = torch.stack([sampler.crop(cases[i].reference, p) for i, p in zip(picked, patches)]).to(device)
        # Alone, a network has nothing to restore a view's missing part from: it is scored where the view has data.
        scored = [cases[i].mask if config.guided else cases[i].covered for i in picked]
        inside = torch.stack([sampler.crop(region, p) for region, p in zip(scored, patches)]).to(device)
        supervised = torch.tensor([cases[i].subject in with_hr for i in picked], device=device)
        with policy.autocast():
            restored = network(policy.place(x)).float() * inside
        terms = {}
        if supervised.any():
            kept = supervised.nonzero()[:, 0]
            terms["l1"] = (restored[kept] - target[kept]).abs().mean() / inside[kept].mean().clamp_min(1e-6)
            terms["ssim"] = training.ssim_weight * ssim(restored[kept], target[kept])
        if training.contrastive_weight:
            real = [_real_patches(sampler, pool, picked, patches, rng) for _ in range(2)]
            interpolated = x[:, :1].to(device)
            frozen = {k: v.detach() for k, v in features.named_parameters()}
            positives, anchors = (features(r.to(device)) for r in real)
            negatives = features(interpolated)
            # The feature network learns from real patches; the restoration from its frozen copy.
            terms["features"] = patch_nce(anchors, positives, negatives, training.tau)
            restored_features = functional_call(features, frozen, (restored,))
            terms["contrastive"] = training.contrastive_weight * patch_nce(
                restored_features, positives.detach(), negatives.detach(), training.tau
            )
        loss = sum(terms.values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 2.0)
        optimiser.step()
        schedule.step()
        history.append({name: value.item() for name, value in terms.items()})
        if log is not None:
            log(step, history[-1])
    return network.eval(), history


def _real_patches(sampler: PatchSampler, pool: list[int], picked, patches, rng) -> torch.Tensor:
    """(B, 1, P, P, P): each picked case's patch in the reference of a pool case of another subject."""
    cases = sampler.cases
    return torch.stack([sampler.crop(cases[_other(pool, cases, i, rng)].reference, p) for i, p in zip(picked, patches)])


def _channels(case: RestorationCase, config: RestorationConfig, sampler: PatchSampler, patch: Patch) -> torch.Tensor:
    """(in_channels, P, P, P): the network's input at ``patch``, cropped before it is joined (joining
    whole volumes took a quarter of each step)."""
    lowres = sampler.crop(case.lowres, patch)
    return torch.cat([lowres, sampler.crop(case.guide, patch)]) if config.guided else lowres


def _other(pool: list[int], cases: list[RestorationCase], index: int, rng: np.random.Generator) -> int:
    """A pool case of another subject than case ``index``'s."""
    while True:
        other = pool[rng.integers(len(pool))]
        if cases[other].subject != cases[index].subject:
            return other


# The cohort's degradations and clinical 3 mm slices, thinner than the cohort's thick ones.
GUIDE_CHECK_ACQUISITIONS = (
    *(make for _, make in LOWRES_ACQUISITIONS.values()),
    lambda rng, spacing_mm: thick_slice_acquisition(rng, spacing_mm, thickness_mm=3.0),
)


def guide_disagreements(pairs: list[Pair], bundle, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """{acquisition kind: {"one person" | "two people": (N,)}}: each pair's T2w acquired by every
    ``GUIDE_CHECK_ACQUISITIONS`` degradation and restored with its own T1w and with the next
    pair's, and the guide disagreement of each (``restore_scan``'s record)."""
    from ..runtime.restoration import restore_scan
    from .discovery import read_volume

    uncalibrated = copy.copy(bundle)
    uncalibrated.guide_check = {}
    guides = [read_volume(pair.t1) for pair in pairs]
    found: dict[str, dict[str, list[float]]] = {}
    for index, pair in enumerate(pairs):
        rng = np.random.default_rng([seed, index])
        volume, affine = read_volume(pair.t2)
        spacing_mm = float(np.linalg.norm(np.asarray(affine)[:3, 0]))
        for degradation in GUIDE_CHECK_ACQUISITIONS:
            lowres = degradation(rng, spacing_mm).acquire(volume, affine)
            for who, guide in (("one person", guides[index]), ("two people", guides[(index + 1) % len(pairs)])):
                check = restore_scan(uncalibrated, lowres, guide).record["guide_check"]
                found.setdefault(check["acquisition"], {}).setdefault(who, []).append(check["disagreement"])
    return {kind: {who: np.asarray(v) for who, v in values.items()} for kind, values in found.items()}


def prepared_guide_disagreements(raw_pairs: list[Pair], bundle) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """``guide_disagreements`` of raw pairs (with skull, in any pose; ``raw_scans``) prepared as the
    analysis prepares them: each pair's T2w with its own T1w and with the next pair's, as acquired.
    Also how many of two people's pairs the preparation itself refused (they never reach the check)."""
    from ..runtime.inference import prepared_with_axes
    from ..runtime.preparation import AlignmentError, to_scanner_range
    from ..runtime.restoration import restore_scan
    from .discovery import read_volume

    if len(raw_pairs) < 2:
        raise ValueError(f"the guide check needs raw scans of two people at least, not {len(raw_pairs)}")
    uncalibrated = copy.copy(bundle)
    uncalibrated.guide_check = {}

    def scan(path) -> tuple[np.ndarray, np.ndarray]:
        array, affine = read_volume(path)
        return to_scanner_range(np.asarray(array, dtype=np.float32), bundle.preprocessing.mask_threshold)[0], affine

    found: dict[str, dict[str, list[float]]] = {}
    refused = 0
    for index, pair in enumerate(raw_pairs):
        for who, t1 in (("one person", pair.t1), ("two people", raw_pairs[(index + 1) % len(raw_pairs)].t1)):
            try:
                prepared, axes = prepared_with_axes(bundle, {"T1w": scan(t1), "T2w": scan(pair.t2)}, None)
            except AlignmentError:
                if who == "one person":
                    raise
                refused += 1
                continue
            images = prepared.images
            check = restore_scan(uncalibrated, images["T2w"], images["T1w"], acquired_axes=axes["T2w"], prepared=True)
            record = check.record["guide_check"]
            found.setdefault(record["acquisition"], {}).setdefault(who, []).append(record["disagreement"])
    return {kind: {who: np.asarray(v) for who, v in values.items()} for kind, values in found.items()}, refused


def all_guide_disagreements(pairs: list[Pair], bundle, seed: int, raw_pairs: list[Pair] = ()) -> tuple[dict, dict]:
    """``guide_disagreements`` of ``pairs`` with, when given, ``prepared_guide_disagreements`` of
    ``raw_pairs``, and how many subjects each counted (and pairs the preparation refused)."""
    found = guide_disagreements(pairs, bundle, seed)
    counts = {"subjects": len(pairs)}
    if raw_pairs:
        prepared, refused = prepared_guide_disagreements(list(raw_pairs), bundle)
        found.update(prepared)
        counts.update(raw_subjects=len(raw_pairs), two_people_refused_by_preparation=refused)
    return found, counts


def guide_check_figures(found: dict, thresholds: dict[str, float]) -> dict:
    """Per acquisition kind of ``guide_disagreements`` that has a threshold: the spread of each and,
    at ``thresholds``, the shares of one person's pairs refused and of two people's caught."""
    figures = {}
    for kind, values in found.items():
        if kind not in thresholds or {"one person", "two people"} - set(values):
            continue
        same, different = values["one person"], values["two people"]
        figures[kind] = {
            "one person (min, median, max)": [round(float(v), 4) for v in np.quantile(same, [0, 0.5, 1])],
            "two people (min, median, max)": [round(float(v), 4) for v in np.quantile(different, [0, 0.5, 1])],
            "one person refused": float(np.mean(same > thresholds[kind])),
            "two people caught": float(np.mean(different > thresholds[kind])),
        }
    return figures


def guide_check_calibration(pairs: list[Pair], bundle, seed: int = 0, raw_pairs: list[Pair] = ()) -> dict:
    """The guide check's thresholds from ``pairs`` (validation subjects), per acquisition kind
    halfway between one person's 99th percentile of ``guide_disagreements`` and two people's 1st,
    with ``guide_check_figures`` beside them; with ``raw_pairs`` (raw scans of validation
    subjects), also the thresholds of prepared pairs (``prepared_guide_disagreements``)."""
    found, calibration = all_guide_disagreements(pairs, bundle, seed, raw_pairs)
    # A kind needs both: two people's pairs of a kind may all have been refused by the preparation.
    thresholds = {
        kind: round(float((np.quantile(v["one person"], 0.99) + np.quantile(v["two people"], 0.01)) / 2), 4)
        for kind, v in found.items()
        if {"one person", "two people"} <= set(v)
    }
    return {**calibration, "thresholds": thresholds, "validation": guide_check_figures(found, thresholds)}
