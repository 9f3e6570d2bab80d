"""Scan preparation: what a scan needs before the shared preprocessing can take it.

- Intensities: the brain mask's threshold is set in raw scanner units, so a scan stored in
  another range (0-1 floats, negative values) would be masked to nothing or to everything. Such a
  scan is brought to a scanner-like range first; a scan already in one is left exactly as it is.
- Brain extraction and alignment, for bundles that carry their template (the skull-stripped
  brain their training inputs were registered to): the pair is registered to it and brought into
  its space, skull and scalp removed by the template's brain mask; the transforms are kept, so
  that outputs map back onto the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..config import volume_words
from .alignment import (
    AlignmentError,
    brain_correlation,
    brain_mutual_information,
    coarsened,
    from_ras_matrix,
    from_sitk,
    identity_about,
    ras_matrix,
    register,
    resample,
    rigid_part,
    to_sitk,
)
from .control import CancelToken
from .storage import atomic_save_nifti, nifti_image

TEMPLATE_IMAGE, TEMPLATE_MASK = "template.nii.gz", "template_mask.nii.gz"
TEMPLATE_FILES = (TEMPLATE_IMAGE, TEMPLATE_MASK)

# A registration to the template that scales the brain beyond this, or after which the scan
# correlates less than this (either sign: a T2w's contrast is the template's inverted) with the
# template inside its brain, has not aligned a brain.
SCALE_RANGE = (0.75, 1.33)
MIN_TEMPLATE_AGREEMENT = 0.15
# Two aligned contrasts of one synthetic brain share 0.14-0.48 bits inside it (32 bins each), a
# noise volume 0.003; a second view registered to the first that shares less has not aligned.
MIN_SHARED_BITS = 0.05

# A scan is taken as stored in another range when its 99.5th percentile lies below this many
# mask thresholds (or when it has negative values) ...
RANGE_FACTOR = 10
# ... and is then rescaled linearly so that its minimum is 0 and that percentile this many thresholds.
TARGET_FACTOR = 20


def to_scanner_range(array: np.ndarray, mask_threshold: float) -> tuple[np.ndarray, str | None]:
    """An [i, j, k] volume in a scanner-like intensity range, and what was done in words (None
    when it was left as it is)."""
    low, high = float(array.min()), float(np.percentile(array, 99.5))
    if high <= low or (low >= 0 and high >= RANGE_FACTOR * mask_threshold):
        return array, None
    target = TARGET_FACTOR * mask_threshold
    rescaled = ((array - low) * (target / (high - low))).astype(np.float32)
    return rescaled, f"intensities from {low:.3g} to {high:.3g} (99.5th percentile) rescaled to 0 to {target:.0f}"


class BrainMaskError(ValueError):
    """A volume whose brain mask on the model grid cannot be a brain (see :func:`mask_problem`)."""


def mask_problem(mask: np.ndarray) -> str | None:
    """Why a brain mask on the model grid cannot be a brain, or None."""
    share = float((np.asarray(mask) > 0.5).mean())
    if share == 0:
        return "its brain mask is empty: no voxel lies above the mask threshold inside the model's field of view"
    if share > 0.98:
        return (
            f"its brain mask covers {100 * share:.0f}% of the model's field of view: the volume has no background "
            "(not a brain MRI, or a constant or noise volume)"
        )
    return None


@dataclass
class Template:
    """The space a model was trained in: a skull-stripped T1w brain (an [i, j, k] array, its RAS
    affine) and its brain mask on the same grid."""

    image: np.ndarray
    mask: np.ndarray
    affine: np.ndarray


@dataclass
class PreparedPair:
    images: dict[str, tuple[np.ndarray, np.ndarray]]  # view -> brain-extracted (array, affine) on the template grid
    to_input: dict[str, np.ndarray]  # view -> 4 x 4 RAS matrix: template world -> the view's input world
    brain_masks: dict[str, tuple[np.ndarray, np.ndarray]]  # view -> (mask, affine) on the view's input grid


def template_agreement(aligned: sitk.Image, template: Template) -> float:
    """``brain_correlation`` of a scan resampled onto the template grid with the template, inside
    the template's brain."""
    mask = to_sitk(template.mask.astype(np.float32), template.affine)
    return brain_correlation(aligned, to_sitk(template.image, template.affine), mask)


def atlas_brain_mask(scan: sitk.Image, template: Template, template_to_scan: sitk.Transform) -> sitk.Image:
    """The template's brain mask carried onto the scan's grid (a binary uint8 image)."""
    mask = resample(to_sitk(template.mask.astype(np.float32), template.affine), scan, template_to_scan.GetInverse())
    return sitk.Cast(mask > 0.5, sitk.sitkUInt8)


@dataclass(frozen=True)
class RegistrationSchedule:
    """How much registration the preparation runs. By default: the template fit's rotation starts
    refined on the pyramid's coarsest level and only the best on the finer ones, and the second view
    registered to the first at ``second_view_mm`` (the template's 2 mm; the model grid is coarser).
    ``FULL_RESOLUTION`` refines every start fully and registers the second view at its own
    resolution (``benchmarks/analysis_speed.py`` times both)."""

    refine_each_start: bool = False
    second_view_mm: float | None = 2.0


FULL_RESOLUTION = RegistrationSchedule(refine_each_start=True, second_view_mm=None)


def prepare_pair(
    given: dict[str, tuple[np.ndarray, np.ndarray]],
    template: Template,
    names: dict[str, str] | None = None,
    cancel: CancelToken | None = None,
    schedule: RegistrationSchedule = RegistrationSchedule(),
) -> PreparedPair:
    """Brain extraction and alignment of a pair ({view: (array, affine)}, one or both views): the
    first view is registered to the template brain (mutual information, the metric kept to the
    brain and a margin around it; a coarse rotation search, then rigid, similarity and affine fits)
    and gets the template's brain mask through the affine fit; the second is registered rigidly to the first and shares
    its mask (refused, naming it, when the two then share almost no information inside the
    brain). Both are resampled onto the template grid through the rigid part of the fit and
    masked there. A constant volume, a fit that scales the brain implausibly, or after which the scan hardly
    correlates with the template, raises :class:`AlignmentError` naming the volume (``names``:
    {view: its name}). ``cancel``: raises :class:`~.control.Cancelled` once set, within an
    iteration of the registration that runs (by default never). ``schedule``: how much of each
    registration's pyramid runs, at what resolution."""
    cancel = cancel or CancelToken()
    reference = to_sitk(template.image, template.affine)
    margin = sitk.BinaryDilate(sitk.Cast(to_sitk(template.mask, template.affine), sitk.sitkUInt8), [4, 4, 4])
    voxels = np.argwhere(template.mask > 0.5).mean(0)
    template_centre = template.affine[:3, :3] @ voxels + template.affine[:3, 3]
    out = PreparedPair({}, {}, {})
    first, first_to_template = None, None
    for view, (array, affine) in given.items():
        cancel.check()
        if float(array.min()) == float(array.max()):  # ITK's pyramid fails on it with a raw error
            raise AlignmentError(
                f"{volume_words(view, names)}: every voxel is {float(array.min()):.4g}, so there is nothing to align; "
                "check that it is a brain MRI"
            )
        scan = to_sitk(array, affine)
        if first is None:
            rigid = register(
                reference, scan, fixed_mask=margin, cancel=cancel, refine_each_start=schedule.refine_each_start
            )
            similar = register(reference, scan, "similarity", margin, initial=rigid, cancel=cancel)
            agreement = template_agreement(resample(scan, reference, similar), template)
            if not SCALE_RANGE[0] <= similar.GetScale() <= SCALE_RANGE[1] or agreement < MIN_TEMPLATE_AGREEMENT:
                raise AlignmentError(
                    f"{volume_words(view, names)}: registration to the template diverged (brain scaled by "
                    f"{similar.GetScale():.2f}, correlation with the template {agreement:.2f}); check that it is a "
                    "brain MRI, or turn preparation off for a scan that is already skull-stripped and aligned"
                )
            affine_fit = register(reference, scan, "affine", margin, initial=similar, cancel=cancel)
            mask = atlas_brain_mask(scan, template, affine_fit)
            # Into the template's space by the rigid part only: the brain keeps its own size,
            # which the model reads as content.
            transform = from_ras_matrix(rigid_part(similar, template_centre))
            first, first_view, first_mask, first_to_template = scan, view, mask, transform
        else:
            # The second view is the fixed image: a slab of few slices then lies wholly inside the
            # first view, so every sample of the metric counts.
            fixed, moving = scan, first
            if schedule.second_view_mm is not None:
                fixed, moving = (coarsened(image, [schedule.second_view_mm] * 3) for image in (scan, first))
            rigid = register(fixed, moving, initial=identity_about(fixed), cancel=cancel)
            transform = from_ras_matrix(np.linalg.inv(ras_matrix(rigid)) @ ras_matrix(first_to_template))
            mask = resample(first_mask, scan, rigid, nearest=True)
            shared = brain_mutual_information(scan, resample(first, scan, rigid), mask)
            if shared < MIN_SHARED_BITS:
                raise AlignmentError(
                    f"{volume_words(view, names)}: registration to {volume_words(first_view, names)} diverged "
                    f"(mutual information with it inside the brain {shared:.3f} bits, below {MIN_SHARED_BITS}); "
                    "check that both are brain MRI of the same subject"
                )
        on_template = resample(scan, reference, transform)
        template_mask = resample(sitk.Cast(mask, sitk.sitkFloat32), reference, transform, nearest=True)
        image, grid = from_sitk(on_template * template_mask)
        out.images[view] = (image, grid)
        out.to_input[view] = ras_matrix(transform)
        out.brain_masks[view] = from_sitk(mask)
    return out


def save_template(folder: Path, template: Template) -> None:
    """Write a bundle's template (its brain and brain mask) into ``folder``."""
    for name, array in (
        (TEMPLATE_IMAGE, template.image.astype(np.float32)),
        (TEMPLATE_MASK, template.mask.astype(np.uint8)),
    ):
        atomic_save_nifti(nifti_image(array, template.affine), Path(folder) / name)


def load_template(folder: Path) -> Template | None:
    """A bundle's template, or None when it has none (its inputs are then taken as prepared)."""
    folder = Path(folder)
    if not (folder / TEMPLATE_IMAGE).is_file():
        return None
    image, mask = (nib.load(folder / name) for name in (TEMPLATE_IMAGE, TEMPLATE_MASK))
    if image.shape != mask.shape or not np.allclose(image.affine, mask.affine):
        raise ValueError(f"{TEMPLATE_IMAGE} and {TEMPLATE_MASK} are not on one grid")
    return Template(np.asarray(image.dataobj, dtype=np.float32), np.asarray(mask.dataobj) > 0, image.affine)
