"""Known misalignments of a scan, to measure registration against: a rigid or affine move of a
given magnitude, the moved scan, and the error of a found transform over the brain's voxels."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..runtime.alignment import from_ras_matrix, from_sitk, resample, to_sitk

PAD_VOXELS = 16  # room around the moved brain, so no part of it leaves the scan's field of view


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    return sitk.VersorTransform(tuple(axis / np.linalg.norm(axis)), np.radians(degrees)).GetMatrix()


def misalignment(rng: np.random.Generator, magnitude: float, kind: str, centre: np.ndarray) -> np.ndarray:
    """A 4 x 4 RAS matrix: a rotation of ``magnitude`` degrees about ``centre`` and a shift of
    ``magnitude`` mm, with affine scales and shears growing with it for ``kind`` "affine"."""
    linear = np.array(rotation(rng.normal(size=3), magnitude)).reshape(3, 3)
    if kind == "affine":
        strength = magnitude / 30
        shear = np.eye(3) + np.triu(rng.uniform(-0.05, 0.05, (3, 3)) * strength, 1)
        linear = linear @ np.diag(1 + rng.uniform(-0.1, 0.1, 3) * strength) @ shear
    shift = rng.normal(size=3)
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = centre - linear @ centre + magnitude * shift / np.linalg.norm(shift)
    return matrix


def padded(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = np.pad(array, PAD_VOXELS)
    shifted = affine.copy()
    shifted[:3, 3] -= affine[:3, :3] @ np.full(3, PAD_VOXELS)
    return out, shifted


def moved(scan: tuple[np.ndarray, np.ndarray], truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scan as seen after the misalignment: moved(truth p) = scan(p), on a padded grid."""
    grid = to_sitk(*padded(*scan))
    return from_sitk(resample(grid, grid, from_ras_matrix(np.linalg.inv(truth))))


def error_mm(found: np.ndarray, truth: np.ndarray, points: np.ndarray) -> float:
    a, b = (points @ m[:3, :3].T + m[:3, 3] for m in (found, truth))
    return float(np.linalg.norm(a - b, axis=1).mean())


def brain_points(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The (N, 3) world (RAS mm) positions of a mask's voxels."""
    return np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
