"""Registration of two contrasts through their content maps (the spatial family's), in the manner
of CoMIR: a subject's T1w and T2w maps are trained to be one image, so a monomodal metric (mean
squares) aligns them, and the transform found is applied to the moving scan itself. The baseline
registers the scans' intensities by Mattes mutual information, with the same optimiser, pyramid
and starts (``alignment.register``).

Transforms map points of the fixed scan's world to the moving scan's (ITK's convention), so a
transform file written from one resamples the moving scan onto the fixed one in ITK and Slicer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..config import VIEWS
from .alignment import (
    MUTUAL_INFORMATION,
    AlignmentError,
    brain_correlation,
    from_sitk,
    ras_matrix,
    register,
    resample,
    to_sitk,
)
from .bundle import Bundle, BundleError
from .control import CancelToken
from .inference import encode_views
from .preprocessing import preprocess_array
from .storage import atomic_save_nifti, nifti_image, staged_folder

ALIGNED, TRANSFORM, SUMMARY = "aligned.nii.gz", "transform.tfm", "registration.json"

CONTENT_MAPS, MAP_METRIC = "content maps", "mean squares"
METHODS = {CONTENT_MAPS: MAP_METRIC, MUTUAL_INFORMATION: MUTUAL_INFORMATION}
KINDS = ("affine", "rigid")  # rigid then affine from it, or the rigid fit alone
# Two aligned maps of one subject correlate far above this inside the fixed brain; a
# registration that ends below it has diverged, and its transform is not applied.
MIN_MAP_CORRELATION = 0.3


@dataclass
class Registration:
    method: str  # a key of METHODS
    transform: sitk.Transform  # fixed world points -> moving world points
    # 1 - |correlation| of the two registration images inside the fixed brain, once aligned (two
    # contrasts' intensities may correlate negatively)
    residual: float
    seconds: float

    @property
    def matrix(self) -> np.ndarray:
        """The transform as a 4 x 4 RAS matrix."""
        return ras_matrix(self.transform)


def map_projection(bundle: Bundle) -> torch.Tensor:
    """The (K,) weights that turn a content map into one scalar image: each channel's intensity
    under the cohort's mean T1w style (the decoder's lookup), so both maps are drawn in one
    contrast. (Their first principal axis served worse: a channel one view's maps use and the
    other's hardly do could dominate it.)"""
    style = bundle.style_means["T1w"][None].to(next(bundle.decoder.parameters()).device)
    return bundle.decoder.intensities(style)[0].float().cpu()


def require_content_maps(bundle: Bundle) -> None:
    if bundle.model.family != "spatial":
        raise BundleError(
            f"this model bundle is of the {bundle.model.family} family and has no content maps; registration "
            "through content maps needs a spatial-family bundle"
        )


@torch.no_grad()
def registration_images(
    bundle: Bundle, fixed: tuple[np.ndarray, np.ndarray], moving: tuple[np.ndarray, np.ndarray], method: str
) -> tuple[sitk.Image, sitk.Image, sitk.Image]:
    """The fixed (T1w) and moving (T2w) images a ``method`` registers and the fixed brain mask:
    for mutual information the scans themselves at their own resolution, the brain mask by the
    preprocessing's threshold; through content maps, the two maps (each on its scan's own model
    grid) drawn by ``map_projection``, positive inside the brain and zero outside (the initial
    alignment of centres of mass weighs voxels by their values)."""
    if method == MUTUAL_INFORMATION:
        mask = sitk.Cast(
            to_sitk((fixed[0] > bundle.preprocessing.mask_threshold).astype(np.float32), fixed[1]), sitk.sitkUInt8
        )
        return to_sitk(*fixed), to_sitk(*moving), mask
    prepared = [preprocess_array(array, affine, bundle.preprocessing) for array, affine in (fixed, moving)]
    affines = [image.affine.numpy() for image, _ in prepared]
    masks = [mask[0] for _, mask in prepared]
    device = next(bundle.encoder.parameters()).device
    _, maps = encode_views(
        bundle, {view: image.as_tensor()[None].to(device) for view, (image, _) in zip(VIEWS, prepared)}
    )
    axis = map_projection(bundle)
    images = [torch.einsum("k...,k->...", maps[view][0].float().cpu(), axis) for view in VIEWS]
    floor = min(image[mask > 0.5].min() for image, mask in zip(images, masks))
    images = [torch.where(mask > 0.5, image - floor + 1.0, 0.0).numpy() for image, mask in zip(images, masks)]
    fixed_mask = sitk.Cast(to_sitk(masks[0].numpy(), affines[0]), sitk.sitkUInt8)
    return to_sitk(images[0], affines[0]), to_sitk(images[1], affines[1]), fixed_mask


def register_views(
    bundle: Bundle,
    fixed: tuple[np.ndarray, np.ndarray],
    moving: tuple[np.ndarray, np.ndarray],
    method: str = CONTENT_MAPS,
    names: tuple[str, str] = ("the fixed scan", "the moving scan"),
    kind: str = "affine",
    cancel: CancelToken | None = None,
) -> Registration:
    """Register ``moving``, a T2w, to ``fixed``, a T1w of the same subject (each an [i, j, k]
    array and its RAS affine): rigid, then (``kind`` "affine") affine from it, over a pyramid.
    ``method``: through the bundle's content maps (mean squares) or by mutual information on the
    intensities. ``kind`` "rigid" stops after the rigid fit: one brain scanned twice moves
    rigidly, and the maps' disagreements can pass for scale and shear.

    Raises BundleError for a bundle without content maps and AlignmentError, naming the volumes and
    the residual, when the content maps do not agree once aligned (the registration diverged);
    ``cancel``: raises :class:`~.control.Cancelled` once set, within an iteration of the optimiser
    (by default never).
    """
    cancel = cancel or CancelToken()
    if kind not in KINDS:
        raise ValueError(f"a registration is one of {', '.join(KINDS)}, not {kind!r}")
    if method == CONTENT_MAPS:
        require_content_maps(bundle)
    start = time.perf_counter()
    fixed_image, moving_image, mask = registration_images(bundle, fixed, moving, method)
    cancel.check()
    metric = METHODS[method]
    try:  # the metric samples the whole field of view: kept to the brain, mutual information lost its outline
        transform = register(fixed_image, moving_image, "rigid", metric=metric, cancel=cancel)
        if kind == "affine":
            transform = register(fixed_image, moving_image, "affine", initial=transform, metric=metric, cancel=cancel)
    except RuntimeError as err:  # ITK stops when the images no longer overlap
        raise AlignmentError(
            f"registration of {names[1]} to {names[0]} by {method} failed: {str(err).splitlines()[-1].strip()}; "
            "no transform was applied"
        ) from err
    residual = 1.0 - brain_correlation(fixed_image, resample(moving_image, fixed_image, transform), mask)
    if method == CONTENT_MAPS and 1.0 - residual < MIN_MAP_CORRELATION:
        raise AlignmentError(
            f"registration of {names[1]} to {names[0]} through content maps diverged: the aligned maps correlate "
            f"{1.0 - residual:.2f} (residual {residual:.2f}; "
            f"two scans of one subject give over {MIN_MAP_CORRELATION}); "
            "no transform was applied. Check that both are brain MRI of the same subject."
        )
    return Registration(method, transform, residual, time.perf_counter() - start)


def apply_registration(
    registration: Registration, fixed: tuple[np.ndarray, np.ndarray], moving: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The moving scan resampled onto the fixed scan's own grid (its input resolution) through the
    registration: an [i, j, k] array and its RAS affine; zeros outside the moving scan's coverage."""
    aligned = resample(to_sitk(*moving), to_sitk(*fixed), registration.transform)
    return from_sitk(aligned)


def write_registration(
    registration: Registration,
    fixed: tuple[np.ndarray, np.ndarray],
    moving: tuple[np.ndarray, np.ndarray],
    out_dir: Path,
) -> Path:
    """A new folder ``out_dir`` (an existing one is refused, never replaced) with the moving scan
    aligned on the fixed scan's grid (``aligned.nii.gz``), the transform as an ITK transform file
    that Slicer also reads (``transform.tfm``) and ``registration.json`` (method, residual,
    seconds and the 4 x 4 RAS matrix from fixed to moving points)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise ValueError(f"{out_dir} exists; registrations are written to a new folder, never over an old one")
    with staged_folder(out_dir) as staging:
        atomic_save_nifti(nifti_image(*apply_registration(registration, fixed, moving)), staging / ALIGNED)
        sitk.WriteTransform(registration.transform, str(staging / TRANSFORM))
        summary = {
            "method": registration.method,
            "residual": registration.residual,
            "seconds": registration.seconds,
            "fixed_to_moving_ras": registration.matrix.tolist(),
        }
        (staging / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir
