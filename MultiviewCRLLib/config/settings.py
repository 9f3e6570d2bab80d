"""The settings a run and a bundle record: preprocessing, model, training and the synthetic cohort.

Imports only the standard library, so both parts of the library (and the Slicer module) can use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from .latent import split_latent


def _from_dict(cls, values: dict, kind: str):
    """A config dataclass from its JSON form (lists back to tuples); unknown keys are refused."""
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {kind} settings: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclass(frozen=True)
class PreprocessingConfig:
    """The technical report's preprocessing: brain mask, 2 mm RAS grid of (91, 109, 91), z-score.

    ``mask_threshold`` applies to raw scanner intensities, before any resampling.
    """

    mask_threshold: float = 50.0
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    spatial_size: tuple[int, int, int] = (91, 109, 91)
    axcodes: str = "RAS"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessingConfig:
        return _from_dict(cls, values, "preprocessing")

    def fingerprint(self) -> str:
        """A short hash of every setting: caches keyed on it are never reused after a change."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


FAMILIES = ("global", "spatial")


@dataclass(frozen=True)
class ModelConfig:
    """Encoder/decoder sizes. Content is always dims ``[0, content_dim)`` of the latent, style the rest.

    ``family``: "global" (the report's: the decoder sees only the 512-d latent) or "spatial" (the
    encoder also gives a dense content map of ``map_channels`` softmax channels on the model grid,
    and the decoder draws the image from that map, modulated by the style vector).

    ``encoder_channels``: one entry per stage (conv + residual unit + 2x max-pool); the first
    stage's convolution has stride ``stem_stride``; in the spatial family these stages encode the
    style. ``decoder_channels``: global family, the linear layer's channels followed by one entry
    per transposed convolution (4x4x4, stride 2), starting from ``decoder_start_shape``; the result
    is resized to the input's shape. Spatial family: ``map_unet_channels`` are the channels of the
    content U-Net's levels (MONAI UNet, run at half the model grid's resolution),
    ``map_decoder_channels`` the widths of the style-modulated decoder on the map,
    ``field_channels`` x ``field_shape`` the smooth field that the style draws (a view's bias
    field).

    ``separable``: the encoder and decoder stages' convolutions and residual units become
    depthwise-then-pointwise (both families; the spatial family's content U-Net stays standard).
    """

    family: str = "global"
    latent_dim: int = 512
    content_dim: int = 256
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    stem_stride: int = 1
    decoder_channels: tuple[int, ...] = (512, 368, 224, 128, 64, 32, 16)
    decoder_start_shape: tuple[int, int, int] = (2, 2, 2)
    refine_channels: tuple[int, ...] = (16, 8)
    norm_groups: int = 16
    map_channels: int = 8
    map_unet_channels: tuple[int, ...] = (16, 32, 64, 128)
    map_decoder_channels: tuple[int, ...] = (32, 16)
    field_channels: int = 4
    field_shape: tuple[int, int, int] = (4, 4, 4)
    separable: bool = False

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"model family must be one of {FAMILIES}, got {self.family!r}")
        if not 0 < self.content_dim < self.latent_dim:
            raise ValueError(f"content_dim must lie in (0, latent_dim), got {self.content_dim} of {self.latent_dim}")

    @property
    def style_dim(self) -> int:
        return self.latent_dim - self.content_dim

    def content(self, z):
        """The content block of latents (..., latent_dim), numpy or torch: (..., content_dim)."""
        return split_latent(z, self.content_dim)[0]

    def style(self, z):
        """The style block of latents (..., latent_dim): (..., style_dim)."""
        return split_latent(z, self.content_dim)[1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        return _from_dict(cls, values, "model")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and logging. Defaults are the technical report's."""

    steps: int = 100_001
    batch_size: int = 4
    lr: float = 1e-5
    tau: float = 1.0
    scale_recon_loss: float = 1e-5
    clip_grad_norm: float = 2.0
    amp: bool = True
    amp_dtype: str | None = None  # "float16", "bfloat16" or "float32"; None: the device's own (runtime.precision)
    augment: bool = False
    # Spatial family: weight and temperature of the dense contrastive loss between the two views'
    # content maps, the locations it samples per subject, and the weight of their L1 disagreement
    # (summed over voxels and scaled by scale_recon_loss, like the reconstruction).
    dense_weight: float = 1.0
    dense_tau: float = 0.1
    dense_locations: int = 256
    map_agreement_weight: float = 1.0
    # Spatial family: for these first steps the content maps stay as they start (one tissue code
    # for both views) while the decoder learns to draw each style from them; over as many steps
    # after, the dense loss and the two maps' agreement term grow linearly from 0 to their weights
    # (uniform maps agree perfectly; asked to agree from the start, they stayed uniform).
    warmup_steps: int = 0
    # Independent intensity augmentation per view (bias field, gamma, noise), so that content
    # cannot carry a view's contrast.
    view_augment: bool = False
    # The probability, per view and sample, of a random contrast and of a clinical resolution
    # (training.data.view_augmentation, which it turns on), so that the content map cannot encode a
    # view's intensities and the model meets real scans' contrasts and slice thicknesses.
    contrast_randomisation: float = 0.0
    # Spatial family: the random contrasts and resolutions go only to a copy of each view that the
    # content map reads; the style and the reconstruction targets keep the realistic view, so the
    # map must give one tissue code whatever it is read from, and the style need not learn curves.
    randomised_map_input: bool = False
    log_every: int = 100
    image_every: int = 5_000
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3

    def __post_init__(self):
        if self.randomised_map_input and not self.contrast_randomisation:
            raise ValueError("randomised_map_input randomises the map's input: it needs contrast_randomisation > 0")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CohortConfig:
    """The embedded synthetic cohort a preset trains on when no data are given."""

    subjects: int = 64
    spacing_mm: float = 1.0
    seed: int = 0
    design: str = "adni"  # "adni" (diagnosis and age drive the anatomy) or "independent" (factors.DESIGNS)


@dataclass(frozen=True)
class EvaluationConfig:
    """The probes' hyper-parameters. The kernel ridge's grid is searched by cross-validation on the
    validation subjects (its gamma relative to the features' median distance); a grid of one point
    is fitted as it is. The ridge's strengths are chosen by leave-one-out."""

    kernel_ridge_alphas: tuple[float, ...] = (1.0, 0.1, 0.01, 0.001)
    kernel_ridge_gammas: tuple[float, ...] = (0.01, 0.21544346900318834, 4.6415888336127775, 100.0)
    ridge_alphas: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-6, 9))

    @property
    def kernel_ridge_grid(self) -> dict[str, list[float]]:
        return {"alpha": list(self.kernel_ridge_alphas), "gamma": list(self.kernel_ridge_gammas)}
