"""Alignment of scans with SimpleITK (which 3D Slicer ships): [i, j, k] arrays with RAS affines as
SimpleITK images, rigid and affine registration over a multi-resolution pyramid (Mattes mutual
information between contrasts; mean squares or correlation within one), and transforms as 4 x 4 RAS
matrices.

A registration of ``moving`` to ``fixed`` returns the transform that maps points of the fixed
image's world to the moving image's (ITK's convention): resampling the moving image with it onto
the fixed grid aligns it with the fixed image.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .control import CancelToken

# SimpleITK's world is LPS; NIfTI's and Slicer's is RAS.
LPS = np.diag([-1.0, -1.0, 1.0])
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
HISTOGRAM_BINS = 32
SAMPLING = 0.15
# ITK jitters each regular sample within its voxel; a fixed seed makes every run take the same sample.
SAMPLING_SEED = 1
# The coarse rotation search: every combination of -30, -15, 0, 15 and 30 degrees about each axis.
SEARCH_STEPS, SEARCH_STEP_DEGREES = 2, 15.0
# Gradient descent runs from this many of the search's best rotations; the best end is kept.
STARTS = 3
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (4.0, 2.0, 1.0)
ITERATIONS = 150


class AlignmentError(ValueError):
    """A registration that did not converge to a plausible transform."""


def to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """An [i, j, k] array with its 4 x 4 RAS affine as a float32 SimpleITK image."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((LPS @ affine[:3, :3] / spacing).reshape(-1).tolist())
    image.SetOrigin((LPS @ affine[:3, 3]).tolist())
    return image


def from_sitk(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A SimpleITK image as an [i, j, k] array and its 4 x 4 RAS affine."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS @ np.array(image.GetOrigin())
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine


def ras_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4 x 4 RAS matrix of a linear SimpleITK transform (points of one world to another's)."""
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    center, translation = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    lps = np.eye(4)
    lps[:3, :3] = matrix
    lps[:3, 3] = center + translation - matrix @ center
    return FLIP @ lps @ FLIP


def from_ras_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """A 4 x 4 RAS matrix as a SimpleITK affine transform."""
    lps = FLIP @ np.asarray(matrix, dtype=np.float64) @ FLIP
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(lps[:3, :3].reshape(-1).tolist())
    transform.SetTranslation(lps[:3, 3].tolist())
    return transform


TRANSFORM_TYPES = {
    "rigid": sitk.Euler3DTransform,
    "similarity": sitk.Similarity3DTransform,
    "affine": lambda: sitk.AffineTransform(3),
}
MUTUAL_INFORMATION = "mutual information"
METRICS = {
    MUTUAL_INFORMATION: lambda method: method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS),
    "mean squares": lambda method: method.SetMetricAsMeanSquares(),
    "correlation": lambda method: method.SetMetricAsCorrelation(),
}


def registration_method(
    fixed_mask: sitk.Image | None, metric: str = MUTUAL_INFORMATION, levels: slice = slice(None)
) -> sitk.ImageRegistrationMethod:
    """``metric`` (a key of METRICS) on a regular sample of the fixed image (the same sample every
    run), over the ``levels`` of a multi-resolution pyramid, by regular step gradient descent."""
    method = sitk.ImageRegistrationMethod()
    METRICS[metric](method)
    method.SetMetricSamplingStrategy(method.REGULAR)
    method.SetMetricSamplingPercentage(SAMPLING, SAMPLING_SEED)
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=ITERATIONS, gradientMagnitudeTolerance=1e-8
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS[levels]))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM[levels]))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def stop_on_cancel(method: sitk.ImageRegistrationMethod, cancel: CancelToken) -> None:
    """Make ``method`` stop at its next iteration once ``cancel`` is set; the caller checks the
    token after ``Execute``. StopRegistration ends only the pyramid level that runs, so it is asked
    at every iteration after; an exception raised in the command would reach ``Execute``'s caller
    only as SimpleITK's generic RuntimeError (after a traceback on stderr)."""

    def stop():
        if cancel.cancelled:
            method.StopRegistration()

    method.AddCommand(sitk.sitkIterationEvent, stop)


def rotation_starts(
    fixed: sitk.Image,
    moving: sitk.Image,
    fixed_mask: sitk.Image | None,
    count: int,
    metric: str = MUTUAL_INFORMATION,
    cancel: CancelToken | None = None,
) -> list:
    """The ``count`` best rigid starts among a grid of rotations about the fixed image's centre of
    mass (``SEARCH_STEPS`` steps of ``SEARCH_STEP_DEGREES`` either way about each axis), the
    centres of mass lined up, judged by the metric at the pyramid's coarsest level: gradient
    descent alone stops short of a head turned by 20 degrees or more. ``cancel``: raises
    :class:`~.control.Cancelled` once set (by default never)."""
    cancel = cancel or CancelToken()
    start = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = registration_method(fixed_mask, metric)
    method.SetShrinkFactorsPerLevel(SHRINK_FACTORS[:1])
    method.SetSmoothingSigmasPerLevel(SMOOTHING_MM[:1])
    method.SetOptimizerAsExhaustive([SEARCH_STEPS] * 3 + [0] * 3, np.radians(SEARCH_STEP_DEGREES))
    method.SetOptimizerScales([1.0] * 6)
    method.SetInitialTransform(start, inPlace=False)
    visited = []
    method.AddCommand(
        sitk.sitkIterationEvent, lambda: visited.append((method.GetMetricValue(), method.GetOptimizerPosition()))
    )
    stop_on_cancel(method, cancel)
    method.Execute(fixed, moving)
    cancel.check()
    starts = []
    for _, position in sorted(visited)[:count]:
        transform = sitk.Euler3DTransform(start)
        transform.SetParameters(position)
        starts.append(transform)
    return starts


def fit(
    fixed: sitk.Image,
    moving: sitk.Image,
    kind: str,
    fixed_mask: sitk.Image | None,
    initial: sitk.Transform,
    metric: str = MUTUAL_INFORMATION,
    cancel: CancelToken | None = None,
    levels: slice = slice(None),
) -> tuple[sitk.Transform, float]:
    """One registration from ``initial`` over the pyramid's ``levels``: the transform and the
    metric where it ended; raises :class:`~.control.Cancelled` once ``cancel`` is set (by default
    never)."""
    cancel = cancel or CancelToken()
    transform = TRANSFORM_TYPES[kind]()
    transform.SetCenter(initial.GetCenter())
    transform.SetMatrix(initial.GetMatrix())
    transform.SetTranslation(initial.GetTranslation())
    method = registration_method(fixed_mask, metric, levels)
    method.SetInitialTransform(transform, inPlace=True)
    stop_on_cancel(method, cancel)
    method.Execute(fixed, moving)
    cancel.check()
    return transform, method.GetMetricValue()


def coarsened(image: sitk.Image, spacing_mm) -> sitk.Image:
    """``image`` averaged over bins of whole voxels up to ``spacing_mm`` (3,) per axis (SimpleITK's
    bin shrink keeps its physical extent): the metric samples the moving image only at the fixed
    image's resolution, and each pyramid level smooths the whole moving image, so detail finer than
    that only costs time (a 1 mm head against a 2 mm template: four times as long)."""
    factors = [max(1, int(target // own)) for own, target in zip(image.GetSpacing(), spacing_mm)]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def register(
    fixed: sitk.Image,
    moving: sitk.Image,
    kind: str = "rigid",
    fixed_mask: sitk.Image | None = None,
    initial: sitk.Transform | None = None,
    metric: str = MUTUAL_INFORMATION,
    cancel: CancelToken | None = None,
    refine_each_start: bool = False,
) -> sitk.Transform:
    """Registration by ``metric`` (Mattes mutual information by default) with a transform of
    ``kind`` (rigid, similarity: rigid and one scale, or affine), started from ``initial`` or else
    from each of the ``STARTS`` best of a coarse rotation search: each start is fitted on the
    pyramid's coarsest level, and only the best continues on the finer ones (which cost most; the
    starts lie tens of degrees apart, which the coarsest level tells apart), unless
    ``refine_each_start``, where every start runs the whole pyramid and the best end is kept. The
    transform maps fixed points to moving points. The moving image is first ``coarsened`` to the
    fixed image's resolution. ``cancel``: raises :class:`~.control.Cancelled` once set, within an
    iteration of the optimiser (by default never)."""
    moving = coarsened(moving, fixed.GetSpacing())
    if initial is not None:
        return fit(fixed, moving, kind, fixed_mask, initial, metric, cancel)[0]
    starts = rotation_starts(fixed, moving, fixed_mask, STARTS, metric, cancel)
    levels = slice(None) if refine_each_start else slice(0, 1)
    fits = [fit(fixed, moving, kind, fixed_mask, start, metric, cancel, levels) for start in starts]
    best = min(fits, key=lambda found: found[1])[0]
    if refine_each_start:
        return best
    return fit(fixed, moving, kind, fixed_mask, best, metric, cancel, slice(1, None))[0]


def identity_about(image: sitk.Image) -> sitk.Euler3DTransform:
    """The identity, centred on ``image``'s centre: the start for two scans of one session, which
    the scanner already places in one world."""
    transform = sitk.Euler3DTransform()
    centre = np.array(image.GetSize()) / 2.0
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint(centre.tolist()))
    return transform


def rigid_part(transform: sitk.Transform, centre_ras: np.ndarray) -> np.ndarray:
    """The 4 x 4 RAS rigid matrix nearest to an affine ``transform``: its rotation (polar
    decomposition, no scaling or shear), mapping ``centre_ras`` where the affine maps it."""
    matrix = ras_matrix(transform)
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    rotation = u @ vt
    rigid = np.eye(4)
    rigid[:3, :3] = rotation
    rigid[:3, 3] = matrix[:3, :3] @ centre_ras + matrix[:3, 3] - rotation @ centre_ras
    return rigid


def brain_values(image: sitk.Image, reference: sitk.Image, mask: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The values of two images on one grid inside ``mask``, each as (N,)."""
    inside = sitk.GetArrayFromImage(mask) > 0.5
    return tuple(sitk.GetArrayFromImage(i)[inside] for i in (image, reference))


def brain_correlation(image: sitk.Image, reference: sitk.Image, mask: sitk.Image) -> float:
    """|Pearson correlation| of two images on one grid inside ``mask`` (either sign: a T2w's
    contrast is a T1w's inverted); 0 when either is constant there."""
    values, reference_values = brain_values(image, reference, mask)
    if values.size < 2 or values.std() == 0 or reference_values.std() == 0:
        return 0.0
    return float(abs(np.corrcoef(values, reference_values)[0, 1]))


def brain_mutual_information(image: sitk.Image, reference: sitk.Image, mask: sitk.Image) -> float:
    """Mutual information (bits; ``HISTOGRAM_BINS`` per image) of two images on one grid inside
    ``mask``: two contrasts of one brain share it whichever way their intensities map, where
    their correlation can be near 0."""
    values, reference_values = brain_values(image, reference, mask)
    if values.size < 2:
        return 0.0
    joint = np.histogram2d(values, reference_values, HISTOGRAM_BINS)[0] / values.size
    independent = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    shared = joint > 0
    return float((joint[shared] * np.log2(joint[shared] / independent[shared])).sum())


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform, nearest: bool = False) -> sitk.Image:
    """``image`` on the grid of ``reference``, through ``transform`` (reference points to image
    points); zeros outside the image."""
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(image, reference, transform, interpolator, 0.0, sitk.sitkFloat32)
