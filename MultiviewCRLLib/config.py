"""Configuration shared by the trainer, the evaluator and the Slicer module."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields


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


@dataclass(frozen=True)
class ModelConfig:
    """Encoder/decoder sizes. Content is always dims ``[0, content_dim)`` of the latent, style the rest.

    ``encoder_channels``: one entry per stage (conv + residual unit + 2x max-pool); the first
    stage's convolution has stride ``stem_stride``. ``decoder_channels``: the linear layer's
    channels followed by one entry per transposed convolution (4x4x4, stride 2), starting from
    ``decoder_start_shape``; the result is resized to the input's shape.
    """

    latent_dim: int = 512
    content_dim: int = 256
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    stem_stride: int = 1
    decoder_channels: tuple[int, ...] = (512, 368, 224, 128, 64, 32, 16)
    decoder_start_shape: tuple[int, int, int] = (2, 2, 2)
    refine_channels: tuple[int, ...] = (16, 8)
    norm_groups: int = 16

    def __post_init__(self):
        if not 0 < self.content_dim < self.latent_dim:
            raise ValueError(f"content_dim must lie in (0, latent_dim), got {self.content_dim} of {self.latent_dim}")

    @property
    def style_dim(self) -> int:
        return self.latent_dim - self.content_dim

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
        PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), spatial_size=(48, 56, 48)),
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
