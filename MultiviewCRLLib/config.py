"""Configuration and constants shared by the trainer, the evaluator and the Slicer module: presets,
the view names, the content/style split of a latent and the keys of the evaluation's metrics.

Imports only the standard library, so both parts of the library (and the Slicer module) can use it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

VIEWS = ("T1w", "T2w")  # BIDS suffixes: the names users see
VIEW_KEYS = ("t1", "t2")  # the same views as dataset entries, in the same order
VIEW_NAMES = dict(zip(VIEW_KEYS, VIEWS))
_OTHER = {**dict(zip(VIEWS, reversed(VIEWS))), **dict(zip(VIEW_KEYS, reversed(VIEW_KEYS)))}
LATENT_BLOCKS = ("content", "style", "full")


def split_latent(z, content_dim: int):
    """(content, style) blocks of latents (..., latent_dim), numpy or torch: content is always
    dims ``[0, content_dim)``, style the rest."""
    return z[..., :content_dim], z[..., content_dim:]


def volume_words(view: str, names: dict[str, str] | None = None) -> str:
    """How messages name a given volume: "the T2w 'MRBrainT2'" when its name is known, else "the T2w"."""
    return f"the {view} '{names[view]}'" if names and view in names else f"the {view}"


def other_view(view: str) -> str:
    """The other view, named the same way: "T1w" <-> "T2w", "t1" <-> "t2"."""
    return _OTHER[view]


# --- metric keys of metrics.json: the evaluation writes them, the report, tests and README read them
def retrieval_key(top: int, source: str, target: str) -> str:
    """Cross-view retrieval of ``target`` views from ``source`` views (view names), top-k."""
    return f"retrieval_top{top}_{source}_to_{target}"


def image_key(measure: str, kind: str, view_key: str) -> str:
    """``measure`` psnr/ssim of ``kind`` recon/cross/cross_meanstyle decodings of view ``view_key`` (t1/t2)."""
    return f"{measure}_{kind}_{view_key}"


def r2_key(probe: str, block: str, target: str) -> str:
    """Mean R² of a ``probe`` (linear/kernel_ridge) from a latent ``block`` to the ``target`` factors
    (content, style, own_style)."""
    return f"r2_{probe}_{block}_to_{target}"


def view_accuracy_key(block: str) -> str:
    return f"view_accuracy_{block}"


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
    is resized to the input's shape. Spatial family: ``map_unet_channels`` are the channels of
    the content U-Net's levels (MONAI UNet, run at half the model grid's resolution), ``map_decoder_channels`` the widths of the
    style-modulated decoder on the map, ``field_channels`` x ``field_shape`` the smooth field that
    the style draws (a view's bias field).

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
    amp_dtype: str = "float16"  # or "bfloat16"
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
    log_every: int = 100
    image_every: int = 5_000
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CohortConfig:
    """The embedded synthetic cohort a preset trains on when no data are given."""

    subjects: int = 64
    spacing_mm: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    preprocessing: PreprocessingConfig
    train: TrainConfig
    cohort: CohortConfig


# The CPU demo presets' model grid: 4 mm, half the report's resolution.
DEMO_GRID = PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), spatial_size=(48, 56, 48))

PRESETS = {
    # The technical report: 2 mm, (91, 109, 91), encoder ~15.5M and decoder ~27.8M parameters.
    "seed": Preset(ModelConfig(), PreprocessingConfig(), TrainConfig(), CohortConfig()),
    # The same pipeline sized for two CPU cores: a 4 mm grid, a strided stem, narrow early stages.
    "demo": Preset(
        ModelConfig(
            encoder_channels=(16, 32, 64, 128, 256),
            stem_stride=2,
            # Full-resolution convolutions dominate a CPU step: few channels there, no refinement.
            decoder_channels=(256, 128, 64, 32, 8),
            decoder_start_shape=(3, 4, 3),
            refine_channels=(),
            norm_groups=8,
        ),
        DEMO_GRID,
        # Changed from the report for a CPU budget (README, "Training"): lr 10x so that few
        # steps learn; tau 0.1 so that InfoNCE keeps separating close subjects once batches are
        # easy; lambda 10x to keep the report's gradient balance against a 1/tau-larger InfoNCE;
        # 8 subjects per batch for 15 negatives; a shared rigid augmentation against overfitting.
        TrainConfig(
            steps=200,
            batch_size=8,
            amp=False,
            lr=1e-4,
            tau=0.1,
            scale_recon_loss=1e-4,
            augment=True,
            log_every=10,
            image_every=100,
            checkpoint_every=100,
        ),
        # 600 subjects: the 0.8/0.1/0.1 split leaves 60 for validation probes and 60 for test.
        CohortConfig(subjects=600, spacing_mm=2.0),
    ),
    # The spatial family on the demo's CPU budget: content map on the 4 mm model grid.
    "spatial-demo": Preset(
        ModelConfig(
            family="spatial",
            encoder_channels=(8, 16, 32, 64),
            stem_stride=2,
            norm_groups=8,
            map_unet_channels=(16, 32, 64),
            map_decoder_channels=(16, 8),
            field_shape=(3, 4, 3),
        ),
        DEMO_GRID,
        TrainConfig(
            steps=300,
            batch_size=4,
            amp=False,
            lr=1e-3,
            tau=0.1,
            # Reconstruction leads: at 1e-4 the maps' agreement terms won and the maps went flat.
            scale_recon_loss=1e-3,
            map_agreement_weight=0.1,
            warmup_steps=50,
            augment=True,
            view_augment=True,
            log_every=10,
            image_every=100,
            checkpoint_every=100,
        ),
        CohortConfig(subjects=600, spacing_mm=2.0),
    ),
    # The spatial family on the report's grid and schedule, for GPUs.
    "spatial-seed": Preset(
        ModelConfig(family="spatial", encoder_channels=(16, 32, 64, 128, 256), stem_stride=2),
        PreprocessingConfig(),
        TrainConfig(view_augment=True),
        CohortConfig(),
    ),
    # For tests: seconds.
    "tiny": Preset(
        ModelConfig(
            latent_dim=32,
            content_dim=16,
            encoder_channels=(4, 8, 16),
            decoder_channels=(16, 8, 4),
            decoder_start_shape=(6, 7, 6),
            refine_channels=(4,),
            norm_groups=4,
        ),
        PreprocessingConfig(spacing_mm=(8.0, 8.0, 8.0), spatial_size=(24, 28, 24)),
        TrainConfig(steps=30, amp=False, lr=1e-3, log_every=5, image_every=10, checkpoint_every=10),
        CohortConfig(subjects=48, spacing_mm=4.0),
    ),
}
# The spatial family at the tiny preset's size, for tests.
PRESETS["tiny-spatial"] = Preset(
    replace(
        PRESETS["tiny"].model,
        family="spatial",
        map_channels=4,
        map_unet_channels=(4, 8),
        map_decoder_channels=(8,),
        field_channels=2,
        field_shape=(2, 2, 2),
    ),
    PRESETS["tiny"].preprocessing,
    replace(PRESETS["tiny"].train, view_augment=True, dense_locations=32),
    PRESETS["tiny"].cohort,
)
