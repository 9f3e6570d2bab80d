"""How real scans differ from the cohort's: lower resolution, thick slices, other contrasts.

Array transforms take a (C, X, Y, Z) tensor and return the same shape on the same grid, so a
degraded view still overlays its clean reference voxel for voxel:

- :class:`KSpaceTruncation`: only the central ``1 / factor`` of k-space along each axis is kept
  (the low-resolution acquisition of the super-resolution paper), zero-filled back to the grid;
- :class:`ThickSlices`: slabs ``thickness`` voxels thick every ``spacing`` voxels along one axis
  (a 2D acquisition), interpolated back linearly between slab centres;
- :class:`IntensityCurve`: brain intensities mapped through a piecewise-linear curve, possibly not
  monotonic (a contrast no sequence in the cohort gave).

Their random, dictionary versions draw the parameters per call (per view when given one key),
for the contrast-randomised training of :func:`~.data.view_augmentation`. The first two also give
the acquisition itself, on its own coarser grid with its affine (``acquire``): what a scanner
writes, which the cohort's low-resolution views and the restoration are made from.

MONAI's nearest transforms do other things: ``GibbsNoise`` keeps a sphere of k-space, not the
box a lower-resolution acquisition keeps; ``RandSimulateLowResolution`` resamples every axis
alike; ``RandIntensityRemap`` draws its curve over the image's unique values, which for a
continuous MR image makes it noise rather than a contrast.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from ..runtime.preprocessing import mask_key


class KSpaceTruncation(Transform):
    """(C, X, Y, Z) -> (C, X, Y, Z): the magnitude image of the central ``1 / factor`` of k-space
    along each axis (the rest set to zero), so detail finer than ``factor`` voxels is lost."""

    def __init__(self, factor: float | Sequence[float] = 2.0):
        self.factor = factor

    def __call__(self, img):
        x = convert_to_tensor(img, track_meta=False).float()
        shape = x.shape[1:]
        factors = np.broadcast_to(np.asarray(self.factor, dtype=float), (3,))
        spectrum = torch.fft.fftshift(torch.fft.fftn(x, dim=(1, 2, 3)), dim=(1, 2, 3))
        keep = torch.ones(shape, dtype=torch.bool)
        for axis, (n, factor) in enumerate(zip(shape, factors)):
            half = max(1, int(round(n / factor / 2)))
            inside = (torch.arange(n) - n // 2).abs() < half
            keep &= inside.view([-1 if a == axis else 1 for a in range(3)])
        spectrum = spectrum * keep
        out = torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=(1, 2, 3)), dim=(1, 2, 3)).abs()
        return convert_to_dst_type(out, img)[0]

    def acquire(self, volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y, Z) and its affine -> the acquisition of the central ``1 / factor`` of k-space on its
        own grid of about (X, Y, Z) / factor voxels (the same field of view), and that grid's affine."""
        shape = np.asarray(volume.shape)
        kept = np.maximum(1, np.rint(shape / np.broadcast_to(np.asarray(self.factor, dtype=float), (3,)))).astype(int)
        spectrum = np.fft.fftshift(np.fft.fftn(np.asarray(volume, dtype=np.float64)))
        box = tuple(slice(n // 2 - m // 2, n // 2 - m // 2 + m) for n, m in zip(shape, kept))
        low = np.abs(np.fft.ifftn(np.fft.ifftshift(spectrum[box]))) * (kept.prod() / shape.prod())
        # The m-point inverse transform samples the band-limited image at every n / m voxels from voxel 0.
        return low.astype(np.float32), np.asarray(affine, dtype=float) @ np.diag([*(shape / kept), 1.0])


class ThickSlices(Transform):
    """(C, X, Y, Z) -> (C, X, Y, Z): slabs ``thickness`` voxels thick (each the mean of its voxels)
    every ``spacing`` voxels along ``axis`` (0, 1 or 2), starting at ``offset``; between slab
    centres the image is interpolated linearly, beyond the first and last it is held constant.
    ``spacing`` > ``thickness`` leaves gaps between slabs (partial coverage)."""

    def __init__(self, axis: int, thickness: float, spacing: float | None = None, offset: float = 0.0):
        self.axis, self.thickness, self.offset = axis, thickness, offset
        self.spacing = thickness if spacing is None else spacing

    def slabs(self, x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """(C, X, Y, Z) -> each slab's mean image (C, A, B, slabs), ``axis`` last, and the slab
        centres in voxels along ``axis`` (voxel i covers [i, i + 1))."""
        moved = x.movedim(self.axis + 1, -1)  # (C, A, B, N)
        n = moved.shape[-1]
        # Voxel i covers [i, i + 1); a slab centred at c covers [c - t / 2, c + t / 2).
        centres = np.arange(self.offset + self.thickness / 2, n, self.spacing)
        if len(centres) == 0:
            centres = np.array([n / 2])
        voxel = np.arange(n)
        overlap = np.clip(
            np.minimum(voxel[None] + 1, centres[:, None] + self.thickness / 2)
            - np.maximum(voxel[None], centres[:, None] - self.thickness / 2),
            0,
            None,
        )  # (slabs, N): each voxel's share of each slab
        weights = torch.as_tensor(overlap / overlap.sum(1, keepdims=True).clip(1e-6), dtype=x.dtype)
        return moved @ weights.T, centres

    def acquire(self, volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y, Z) and its affine -> the slabs as a volume (one voxel per slab along ``axis``) and
        its affine: ``spacing`` voxels apart from the first slab's centre."""
        slabs, centres = self.slabs(torch.as_tensor(np.asarray(volume, dtype=np.float32))[None])
        scale = np.ones(4)
        scale[self.axis] = self.spacing
        shift = np.eye(4)
        shift[self.axis, 3] = centres[0] - 0.5  # from voxel-edge to voxel-centre coordinates
        return slabs[0].movedim(-1, self.axis).numpy(), np.asarray(affine, dtype=float) @ shift @ np.diag(scale)

    def __call__(self, img):
        x = convert_to_tensor(img, track_meta=False).float()
        slabs, centres = self.slabs(x)
        n = x.shape[self.axis + 1]
        voxel = np.arange(n)
        # Back onto the voxel centres (i + 0.5): linear between slab centres.
        position = np.interp(voxel + 0.5, centres, np.arange(len(centres)))
        lower = np.floor(position).astype(int)
        upper = np.minimum(lower + 1, len(centres) - 1)
        fraction = torch.as_tensor(position - lower, dtype=x.dtype)
        out = slabs[..., lower] * (1 - fraction) + slabs[..., upper] * fraction
        return convert_to_dst_type(out.movedim(-1, self.axis + 1), img)[0]


THICK_SLICE_MM = 6.0


def thick_slice_acquisition(
    rng: np.random.Generator, spacing_mm: float, thickness_mm: float = THICK_SLICE_MM
) -> ThickSlices:
    """Slabs ``thickness_mm`` thick along a random axis, gaps up to 30 % of a slab, a random offset,
    on a grid of ``spacing_mm`` voxels."""
    thickness = thickness_mm / spacing_mm
    spacing = thickness * rng.uniform(1.0, 1.3)
    return ThickSlices(int(rng.integers(3)), thickness, spacing, rng.uniform(0, spacing))


# A skull-stripped acquisition's brain: its voxels above this share of its maximum (k-space
# truncation's ringing in the air stays below it).
BRAIN_OF_MAXIMUM = 0.05


def field_of_view_cut(
    acquisition: tuple[np.ndarray, np.ndarray], axis: int, lost: int, at_start: bool
) -> tuple[np.ndarray, np.ndarray]:
    """An acquisition (array [i, j, k], RAS affine) whose field of view ends ``lost`` slices early
    along ``axis``, at its start or its end, as clinical slabs often miss the skull base or the
    vertex: the array loses those slices (one is always kept) and the affine moves with it, so the
    acquisition ends where a real field of view ends, not in a ramp to zero."""
    array, affine = acquisition
    n = array.shape[axis]
    lost = min(lost, n - 1)
    kept = np.take(array, np.arange(lost, n) if at_start else np.arange(n - lost), axis=axis)
    shift = np.eye(4)
    shift[axis, 3] = lost if at_start else 0
    return np.ascontiguousarray(kept, dtype=np.float32), np.asarray(affine, dtype=float) @ shift


def random_field_of_view_cut(
    acquisition: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, max_share: float, axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """``field_of_view_cut`` at a random end of ``axis`` (a thick-slice acquisition's slice axis)
    that misses up to ``max_share`` of the extent the skull-stripped acquisition's brain spans
    along it (``BRAIN_OF_MAXIMUM``), besides the slices beyond the brain."""
    array = acquisition[0]
    brain = np.moveaxis(array > BRAIN_OF_MAXIMUM * array.max(), axis, 0)
    filled = np.flatnonzero(brain.reshape(array.shape[axis], -1).any(axis=1))
    at_start = bool(rng.random() < 0.5)
    empty = filled[0] if at_start else array.shape[axis] - 1 - filled[-1]
    lost = int(empty + round(rng.uniform(0, max_share) * (filled[-1] - filled[0] + 1)))
    return field_of_view_cut(acquisition, axis, lost, at_start)


# The cohort's low-resolution views: name -> (BIDS ``acq-`` label, the acquisition drawn from a
# random generator and the cohort's voxel size).
LOWRES_ACQUISITIONS = {
    "k-space x2": ("kspace2", lambda rng, spacing_mm: KSpaceTruncation(2.0)),
    f"thick slices {THICK_SLICE_MM:g} mm": (f"thick{THICK_SLICE_MM:g}mm", thick_slice_acquisition),
}


class IntensityCurve(Transform):
    """(C, X, Y, Z) and its brain mask -> (C, X, Y, Z): voxels inside the mask scaled to [0, 1] by
    their range, mapped through the piecewise-linear curve through ``values`` at evenly spaced
    inputs 0..1; voxels outside become zero."""

    def __init__(self, values: Sequence[float]):
        self.values = torch.as_tensor(np.asarray(values, dtype=np.float32))

    def __call__(self, img, mask):
        x = convert_to_tensor(img, track_meta=False).float()
        inside = convert_to_tensor(mask, track_meta=False) > 0.5
        if not inside.any():
            return img
        low, high = x[inside].min(), x[inside].max()
        unit = ((x - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
        position = unit * (len(self.values) - 1)
        lower = position.floor().long().clamp(max=len(self.values) - 2)
        fraction = position - lower
        mapped = self.values[lower] * (1 - fraction) + self.values[lower + 1] * fraction
        # Mapped values lie in [0, 1]; shifted up so a brain voxel never becomes background.
        out = torch.where(inside, mapped + 1e-3, torch.zeros_like(x))
        return convert_to_dst_type(out, img)[0]


class RandDegradationd(RandomizableTransform, MapTransform):
    """With probability ``prob``, each entry of ``keys`` (1, X, Y, Z) gets one draw of a degradation;
    subclasses say which (``degradation``). One instance per view keeps the views' draws apart.
    ``mask_<key>`` entries, where present, say where the brain is."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def degradation(self) -> Transform:
        raise NotImplementedError

    def apply(self, transform: Transform, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return transform(image)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize(None)
            if self._do_transform:
                d[key] = self.apply(self.degradation(), d[key], d.get(mask_key(key)))
        return d


class RandKSpaceTruncationd(RandDegradationd):
    """k-space truncation by a factor drawn from ``factors`` (the same for every axis)."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, factors: tuple[float, float] = (1.5, 3.0)):
        super().__init__(keys, prob)
        self.factors = factors

    def degradation(self):
        return KSpaceTruncation(self.R.uniform(*self.factors))


class RandThickSlicesd(RandDegradationd):
    """Thick slices along a random axis: thickness drawn from ``thickness`` (voxels), the slab
    spacing that times a factor drawn from ``gap`` (1: contiguous), a random offset."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        thickness: tuple[float, float] = (1.5, 3.0),
        gap: tuple[float, float] = (1.0, 1.5),
    ):
        super().__init__(keys, prob)
        self.thickness, self.gap = thickness, gap

    def degradation(self):
        thickness = self.R.uniform(*self.thickness)
        spacing = thickness * self.R.uniform(*self.gap)
        return ThickSlices(int(self.R.randint(3)), thickness, spacing, self.R.uniform(0, spacing))


class RandIntensityCurved(RandDegradationd):
    """An intensity curve through ``points`` values, each the identity's value moved towards a
    uniform draw by a weight drawn from (0, ``strength``): 1 allows any contrast, SynthSeg-like.
    ``monotone``: the draws are sorted, so the curve keeps the order of the view's tissues (darkest
    stays darkest) and changes only their spacing."""

    def __init__(
        self, keys: KeysCollection, prob: float = 1.0, points: int = 6, strength: float = 1.0, monotone: bool = False
    ):
        super().__init__(keys, prob)
        self.points, self.strength, self.monotone = points, strength, monotone

    def degradation(self):
        identity = np.linspace(0.0, 1.0, self.points)
        weight = self.R.uniform(0, self.strength)
        draws = self.R.uniform(0, 1, self.points)
        return IntensityCurve((1 - weight) * identity + weight * (np.sort(draws) if self.monotone else draws))

    def apply(self, transform, image, mask):
        if mask is None:
            raise KeyError("an intensity curve needs the view's brain mask (mask_<key>) beside it")
        return transform(image, mask)
