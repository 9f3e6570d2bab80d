"""One MONAI preprocessing pipeline with two entries: NIfTI files (trainer) and arrays (Slicer).

    LoadImage -> EnsureChannelFirst -> brain mask (raw > threshold) -> Spacing (2 mm)
    -> Orientation RAS -> ResizeWithPadOrCrop (91, 109, 91) -> mask applied
    -> z-score over the nonzero (brain) voxels -> float32 MetaTensor carrying its affine

Both entries share every transform after loading, so a volume read from disk and the same volume
held in memory give the same model input. The analysis of a pair puts its second view on the
first view's model grid (one resampling, ``ResampleToMatch``), so that both views' outputs and
error maps share one grid whatever each scan's field of view, voxel size and orientation.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    ResampleToMatchd,
    ResizeWithPadOrCropd,
    Spacingd,
)

from ..config import PreprocessingConfig
from .storage import nifti_image


def mask_key(key: Hashable) -> str:
    """Name of the brain-mask entry that belongs to an image entry.

    A prefix, not a suffix: MONAI treats entries named ``<key>_*`` as metadata of ``<key>``.
    """
    return f"mask_{key}"


class BrainMaskd(MapTransform):
    """Add a binary brain mask ``mask_<key>`` = image > threshold, same shape (C, X, Y, Z) and affine."""

    def __init__(self, keys: KeysCollection, threshold: float, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[mask_key(key)] = (d[key] > self.threshold).to(d[key].dtype)
        return d


class ApplyMaskd(MapTransform):
    """Zero every voxel outside ``mask_<key>``; the image keeps its shape (C, X, Y, Z) and affine."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = d[key] * (d[mask_key(key)] > 0.5)
        return d


def with_masks(keys: Sequence[str]) -> list[str]:
    """Image entries ``keys`` followed by their brain-mask entries."""
    return list(keys) + [mask_key(k) for k in keys]


def shared_transforms(keys: Sequence[str], config: PreprocessingConfig) -> list:
    """Every step after loading, for image entries ``keys`` of shape (1, X, Y, Z) with affines."""
    keys = list(keys)
    both = with_masks(keys)
    return [
        BrainMaskd(keys, config.mask_threshold),
        # diagonal=True resamples oblique inputs onto an axis-aligned grid in world space; zeros
        # outside the scan, so a partial-coverage scan is not extended with copies of its edge slices.
        Spacingd(both, pixdim=config.spacing_mm, diagonal=True, mode=interpolation(keys), padding_mode="zeros"),
        Orientationd(both, axcodes=config.axcodes, labels=None),  # labels from the tensor's space (RAS)
        ResizeWithPadOrCropd(both, spatial_size=config.spatial_size),
        *normalisation(keys),
    ]


def interpolation(keys: Sequence[str]) -> list[str]:
    """Resampling modes for image entries ``keys`` followed by their masks."""
    return ["bilinear"] * len(keys) + ["nearest"] * len(keys)


def normalisation(keys: Sequence[str]) -> list:
    """The last steps, on the model grid: mask, z-score inside the brain, float32."""
    return [
        # Masking before the z-score makes its statistics those of the brain voxels: resampling
        # leaves round-off values (~1e-11) outside the brain that would otherwise count as nonzero
        # and make the result depend on how the input was stored.
        ApplyMaskd(keys),
        NormalizeIntensityd(keys, nonzero=True),
        EnsureTyped(with_masks(keys), dtype=torch.float32),
    ]


REFERENCE = "reference"


def on_reference_transforms(keys: Sequence[str], config: PreprocessingConfig) -> Compose:
    """Pipeline for (1, X, Y, Z) MetaTensor entries ``keys`` resampled straight onto the model grid
    of the entry ``reference`` (another view's preprocessed image), zeros outside their coverage."""
    keys = list(keys)
    return Compose(
        [
            BrainMaskd(keys, config.mask_threshold),
            ResampleToMatchd(with_masks(keys), key_dst=REFERENCE, mode=interpolation(keys), padding_mode="zeros"),
            *normalisation(keys),
        ]
    )


def file_transforms(keys: Sequence[str], config: PreprocessingConfig) -> Compose:
    """Pipeline for entries holding NIfTI paths (the trainer's entry)."""
    keys = list(keys)
    loading = [LoadImaged(keys, reader="NibabelReader", image_only=True), EnsureChannelFirstd(keys)]
    return Compose(loading + shared_transforms(keys, config))


def array_transforms(keys: Sequence[str], config: PreprocessingConfig) -> Compose:
    """Pipeline for entries holding (1, X, Y, Z) MetaTensors with RAS affines (the Slicer entry)."""
    return Compose(shared_transforms(keys, config))


def as_meta_tensor(array: np.ndarray, affine: np.ndarray) -> MetaTensor:
    """Wrap an [i, j, k] array (nibabel's order) and its 4x4 RAS affine as a (1, X, Y, Z) MetaTensor."""
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"expected a 4x4 affine, got shape {affine.shape}")
    return MetaTensor(torch.as_tensor(array.astype(np.float32))[None], affine=torch.as_tensor(affine))


def preprocess_file(path, config: PreprocessingConfig | None = None) -> tuple[MetaTensor, MetaTensor]:
    """Preprocess one NIfTI file: (image, brain mask), each (1, *spatial_size) with its affine."""
    out = file_transforms(["image"], config or PreprocessingConfig())({"image": str(path)})
    return out["image"], out[mask_key("image")]


def preprocess_array(
    array: np.ndarray,
    affine: np.ndarray,
    config: PreprocessingConfig | None = None,
    reference: MetaTensor | None = None,
) -> tuple[MetaTensor, MetaTensor]:
    """Preprocess an in-memory [i, j, k] volume with its RAS affine: same output as
    ``preprocess_file``, or, with a ``reference`` (1, X, Y, Z) model-grid image, on exactly that grid."""
    config = config or PreprocessingConfig()
    data = {"image": as_meta_tensor(array, affine)}
    if reference is None:
        out = array_transforms(["image"], config)(data)
    else:
        out = on_reference_transforms(["image"], config)({**data, REFERENCE: reference})
    return out["image"], out[mask_key("image")]


def to_array_affine(volume: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A model-space (1, X, Y, Z) or (X, Y, Z) MetaTensor as an [i, j, k] float32 array and its RAS affine.

    The affine places the model grid where it lies in the input's world space, so the array
    overlays the input without resampling (in nibabel, or in Slicer as IJKToRAS).
    """
    if not isinstance(volume, MetaTensor):
        raise TypeError("expected a MetaTensor that carries its affine")
    array = volume.detach().cpu().numpy().astype(np.float32)
    if array.ndim == 4:
        array = array[0]
    return array, np.asarray(volume.affine, dtype=np.float64)


def to_nifti(volume: torch.Tensor, to_input: np.ndarray | None = None) -> nib.Nifti1Image:
    """A model-space MetaTensor as a NIfTI image on the model grid (RAS affine in qform and sform).

    ``to_input``: for a prepared pair, the 4 x 4 RAS matrix from the template's world to the
    input's (``PairAnalysis.to_input``); the image is then placed over the input, unresampled.
    """
    array, affine = to_array_affine(volume)
    return nifti_image(array, affine if to_input is None else np.asarray(to_input) @ affine)
