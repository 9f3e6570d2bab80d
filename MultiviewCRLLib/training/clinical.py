"""What clinicians read, measured on cohorts whose truth is known (the synthetic cohort's):

- the spatial family's content map as a tissue segmentation: its channels named after tissues on
  the validation subjects, then Dice per tissue on the test subjects against the generator's
  labels, each view, and the agreement of the two views' label maps; beside it a three-class
  Gaussian mixture on each view's brain intensities (what FAST or Atropos do);
- ventricle and lesion volumes read off the map, as R² against the generator's volumes;
- lesions in the cross-view images: their contrast to the white matter around them over the
  noise-free target's;
- Alzheimer's disease against cognitively normal from content: a logistic probe's AUROC.

Labels are taken to the model grid as the images are (each label's fraction resampled, then the
largest kept), so every figure is on the bundle's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import compute_dice
from monai.transforms import (
    AsDiscrete,
    Compose,
    EnsureChannelFirst,
    LoadImage,
    Orientation,
    ResizeWithPadOrCrop,
    Spacing,
)
from scipy import ndimage
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import r2_score, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..config import VIEW_KEYS, VIEW_NAMES, PreprocessingConfig, metric
from .atlas import VENTRICLE_BOX_MM
from .discovery import Pair
from .encoding import Encoded
from .synthetic import DSEG_LABELS, tissue_labels

TISSUES = {name: index for index, name in DSEG_LABELS.items() if name != "background"}  # CSF, GM, WM, lesion
# A three-class mixture's components in order of mean intensity, per view's contrast.
MIXTURE_ORDER = {"t1": ("CSF", "GM", "WM"), "t2": ("WM", "GM", "CSF")}
LESION_SUBJECT_ML = 1.0  # subjects with at least this lesion volume count as "with lesions"
NEAR_LESION_VOXELS = 2  # white matter within this many model-grid voxels is a lesion's surround


def labels_on_grid(path: Path, config: PreprocessingConfig) -> torch.Tensor:
    """A label volume (DSEG_LABELS) on the model grid: an (X, Y, Z) long MetaTensor with the grid's
    affine. Each label's fraction is
    resampled like an image, then the largest wins, so partial volume decides as it does in the image."""
    pipeline = Compose(
        [
            LoadImage(reader="NibabelReader", image_only=True),
            EnsureChannelFirst(),
            AsDiscrete(to_onehot=len(DSEG_LABELS)),
            Spacing(pixdim=config.spacing_mm, diagonal=True, mode="bilinear", padding_mode="zeros"),
            Orientation(axcodes=config.axcodes, labels=None),
            ResizeWithPadOrCrop(spatial_size=config.spatial_size),
        ]
    )
    fractions = pipeline(str(path))
    values = fractions.as_tensor()
    values[0] += 1e-6  # empty corners are background
    return MetaTensor(values.argmax(0), affine=fractions.affine)


def cohort_labels(pairs: list[Pair], config: PreprocessingConfig) -> list[torch.Tensor] | None:
    """Every pair's tissue labels on the model grid, or None when the cohort has none."""
    paths = [tissue_labels(Path(p.t1)) for p in pairs]
    if not paths or any(path is None for path in paths):
        return None
    return [labels_on_grid(path, config) for path in paths]


def channel_tissues(maps: list[torch.Tensor], labels: list[torch.Tensor], masks: list[torch.Tensor]) -> np.ndarray:
    """The tissue index each map channel names: the label most often under the voxels where that
    channel is the largest, inside the brain, over the given (validation) subjects. (K,) ints."""
    channels = maps[0].shape[0]
    counts = np.zeros((channels, len(DSEG_LABELS)))
    for content_map, label, mask in zip(maps, labels, masks):
        inside = mask > 0.5
        np.add.at(counts, (content_map.argmax(0)[inside].numpy(), label[inside].numpy()), 1)
    counts[:, 0] = 0  # inside the brain mask, a channel names a tissue
    named = counts.argmax(1)
    named[counts.sum(1) == 0] = 0
    return named


def map_segmentation(content_map: torch.Tensor, named: np.ndarray, mask: torch.Tensor) -> torch.Tensor:
    """(K, X, Y, Z) map -> (X, Y, Z) labels: each voxel's largest channel's tissue, 0 outside the brain."""
    return torch.as_tensor(named)[content_map.argmax(0)] * (mask > 0.5)


def tissue_fractions(content_map: torch.Tensor, named: np.ndarray, tissue: int) -> torch.Tensor:
    """The map's soft share of one tissue at each voxel: the sum of the channels named after it."""
    return content_map[torch.as_tensor(named == tissue)].sum(0)


def dice_per_tissue(prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """MONAI's Dice of each tissue between two (X, Y, Z) label volumes (NaN where both lack it)."""
    onehot = AsDiscrete(to_onehot=len(DSEG_LABELS))
    scores = compute_dice(onehot(prediction[None])[None], onehot(truth[None])[None], include_background=False)
    return dict(zip(TISSUES, scores[0].tolist()))


def mixture_segmentation(image: torch.Tensor, mask: torch.Tensor, key: str, seed: int = 0) -> torch.Tensor:
    """A three-class Gaussian mixture on one image's brain intensities, its classes named by mean
    intensity in the view's tissue order: (X, Y, Z) labels, 0 outside the brain."""
    inside = mask > 0.5
    values = image[inside].numpy().reshape(-1, 1)
    mixture = GaussianMixture(3, random_state=seed).fit(values)
    rank = np.argsort(np.argsort(mixture.means_[:, 0]))
    names = np.array([TISSUES[MIXTURE_ORDER[key][r]] for r in rank])
    out = torch.zeros_like(image, dtype=torch.long)
    out[inside] = torch.as_tensor(names[mixture.predict(values)])
    return out


def mean_dice(rows: list[dict[str, float]]) -> dict[str, float]:
    return {tissue: float(np.nanmean([row[tissue] for row in rows])) for tissue in TISSUES}


def ventricle_box(shape, affine: np.ndarray) -> torch.Tensor:
    """The lateral ventricles' box (VENTRICLE_BOX_MM, world mm of the model grid): (X, Y, Z) bool."""
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    mm = ijk @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    inside = np.ones(len(mm), dtype=bool)
    for d, (low, high) in enumerate(VENTRICLE_BOX_MM):
        inside &= (mm[:, d] > low) & (mm[:, d] < high)
    return torch.as_tensor(inside.reshape(shape))


def voxel_ml(affine) -> float:
    """The volume of one voxel of a grid with this 4 x 4 affine, in ml."""
    return float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1e3


def calibrated_r2(estimate_val, truth_val, estimate_test, truth_test) -> float:
    """R² on test of a straight line from an estimate to the truth, fitted on validation."""
    line = LinearRegression().fit(np.reshape(estimate_val, (-1, 1)), truth_val)
    return float(r2_score(truth_test, line.predict(np.reshape(estimate_test, (-1, 1)))))


def lesion_contrast(image: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean of the lesion voxels minus that of the white matter around them (an image's units)."""
    lesion = (labels == TISSUES["lesion"]).numpy()
    around = ndimage.binary_dilation(lesion, iterations=NEAR_LESION_VOXELS) & (labels == TISSUES["WM"]).numpy()
    if lesion.sum() == 0 or around.sum() == 0:
        return float("nan")
    return float(image[torch.as_tensor(lesion)].mean() - image[torch.as_tensor(around)].mean())


def diagnosis_auroc(features_val, groups_val, features_test, groups_test) -> float | None:
    """AUROC on test of a logistic probe fitted on validation, Alzheimer's (1) against cognitively
    normal (0); MCI subjects are left out. None without both groups in both splits."""
    keep_val, keep_test = (np.isin(g, ("CN", "AD")) for g in (groups_val, groups_test))
    y_val, y_test = (np.asarray(g)[k] == "AD" for g, k in ((groups_val, keep_val), (groups_test, keep_test)))
    if len(set(y_val)) < 2 or len(set(y_test)) < 2:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    probe.fit(np.asarray(features_val)[keep_val], y_val)
    return float(roc_auc_score(y_test, probe.predict_proba(np.asarray(features_test)[keep_test])[:, 1]))


@dataclass
class TissueSplit:
    """One split's material: preprocessed volumes ({t1, t2, mask_t1, mask_t2}: (X, Y, Z)) and content
    maps ({t1, t2}: (K, X, Y, Z)) per subject, the tissue labels (X, Y, Z) and the pairs."""

    images: list[dict]
    maps: list[dict]
    labels: list[torch.Tensor]
    pairs: list[Pair]

    def volume_truth(self, name: str) -> np.ndarray | None:
        """The generator's volume ``name`` (ml) per subject; None for a cohort without that column
        (one written before the cohort recorded volumes)."""
        if not all(name in p.labels for p in self.pairs):
            return None
        return np.array([float(p.labels[name]) for p in self.pairs])


def segmentation_metrics(val: TissueSplit, test: TissueSplit, affine: np.ndarray, seed: int = 0) -> dict:
    """Dice of the map's and the mixture's segmentations per tissue and view, the two views'
    agreement, and ventricle and lesion volumes from the map (R² against the generator's)."""
    out = {}
    segmentations = {}
    box = ventricle_box(test.labels[0].shape, affine)
    ml = voxel_ml(affine)
    lesion_voxels = np.array([(label == TISSUES["lesion"]).sum().item() for label in test.labels])
    loaded = lesion_voxels > np.median(lesion_voxels)
    for key in VIEW_KEYS:
        view = VIEW_NAMES[key]
        val_masks, test_masks = ([v[f"mask_{key}"] for v in split.images] for split in (val, test))
        named = channel_tissues([m[key] for m in val.maps], val.labels, val_masks)
        segmentations[key] = [map_segmentation(m[key], named, mask) for m, mask in zip(test.maps, test_masks)]
        rows = [dice_per_tissue(s, t) for s, t in zip(segmentations[key], test.labels)]
        mixture = [
            dice_per_tissue(mixture_segmentation(v[key], v[f"mask_{key}"], key, seed), t)
            for v, t in zip(test.images, test.labels)
        ]
        for tissue, value in mean_dice(rows).items():
            out[f"map_dice_{tissue}_{key}"] = metric(value, f"Dice of {tissue} from the {view} content map")
        out[f"map_dice_lesion_loaded_{key}"] = metric(
            mean_dice([r for r, high in zip(rows, loaded) if high])["lesion"],
            f"Dice of lesions from the {view} content map, subjects above the median lesion load",
        )
        for tissue, value in mean_dice(mixture).items():
            if tissue != "lesion":
                out[f"mixture_dice_{tissue}_{key}"] = metric(
                    value, f"Dice of {tissue} from a 3-class Gaussian mixture on the {view}'s brain intensities"
                )
        for name, tissue, region in (("ventricle_ml", "CSF", box), ("lesion_ml", "lesion", None)):
            if test.volume_truth(name) is None or val.volume_truth(name) is None:
                continue
            estimates = []
            for split in (val, test):
                fractions = [tissue_fractions(m[key], named, TISSUES[tissue]) for m in split.maps]
                estimates.append([ml * float((f if region is None else f[region]).sum()) for f in fractions])
            out[f"map_{name[:-3]}_volume_r2_{key}"] = metric(
                calibrated_r2(estimates[0], val.volume_truth(name), estimates[1], test.volume_truth(name)),
                f"R² of the {name[:-3]} volume read off the {view} content map (a line fitted on validation)",
            )
    agreement = [dice_per_tissue(a, b) for a, b in zip(*(segmentations[k] for k in VIEW_KEYS))]
    out["map_label_agreement_dice"] = metric(
        float(np.nanmean([np.nanmean([r[t] for t in ("CSF", "GM", "WM")]) for r in agreement])),
        "Dice between the two views' map segmentations, mean over CSF, GM and WM",
    )
    return out


def cross_view_lesion_metrics(decoded: list[dict], references: list[dict], test: TissueSplit) -> dict:
    """Per target view, the lesion-to-white-matter contrast of each cross-view image over the
    noise-free target's, for test subjects with lesions."""
    out = {}
    ml = voxel_ml(test.labels[0].affine)
    with_lesions = [ml * float((labels == TISSUES["lesion"]).sum()) >= LESION_SUBJECT_ML for labels in test.labels]
    for key in VIEW_KEYS:
        ratios = [
            lesion_contrast(d[f"cross_{key}"], labels) / lesion_contrast(r[key], labels)
            for d, r, labels, keep in zip(decoded, references, test.labels, with_lesions)
            if keep
        ]
        out[f"cross_lesion_contrast_kept_{key}"] = metric(
            float(np.nanmean(ratios)) if ratios else None,
            f"lesion-to-WM contrast of the cross-view {VIEW_NAMES[key]} over the noise-free reference's "
            f"(subjects with ≥ {LESION_SUBJECT_ML:g} ml of lesion on the model grid)",
        )
    return out


def diagnosis_metrics(val: Encoded, test: Encoded, content_dim: int, factor_names: list[str] | None) -> dict:
    """Alzheimer's against cognitively normal from each view's content, and, as the ceiling, from the
    true content factors (``factor_names``, when known); empty without a diagnosis column."""
    if not test.pairs or "diagnosis" not in test.pairs[0].labels:
        return {}
    groups = [[p.labels["diagnosis"] for p in split.pairs] for split in (val, test)]
    out = {}
    for key in VIEW_KEYS:
        auroc = diagnosis_auroc(
            getattr(val, key)[:, :content_dim], groups[0], getattr(test, key)[:, :content_dim], groups[1]
        )
        out[f"diagnosis_auroc_{key}"] = metric(
            auroc, f"AUROC, Alzheimer's against cognitively normal, logistic probe on the {VIEW_NAMES[key]} content"
        )
    if factor_names:
        truth = [np.array([[float(p.labels[n]) for n in factor_names] for p in s.pairs]) for s in (val, test)]
        out["diagnosis_auroc_ceiling"] = metric(
            diagnosis_auroc(truth[0], groups[0], truth[1], groups[1]),
            "AUROC, Alzheimer's against cognitively normal, the same probe on the true content factors (ceiling)",
        )
    return out
