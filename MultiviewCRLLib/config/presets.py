"""The named presets: the technical report's (``seed``), its CPU and spatial-family variants, and the
test sizes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .settings import CohortConfig, EvaluationConfig, ModelConfig, PreprocessingConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    model: ModelConfig
    preprocessing: PreprocessingConfig
    train: TrainConfig
    cohort: CohortConfig
    evaluation: EvaluationConfig = EvaluationConfig()


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
            amp=True,  # the precision policy: bfloat16 and channels-last on CPUs with native bf16
            lr=1e-3,
            tau=0.1,
            # Reconstruction leads: at 1e-4 the maps' agreement terms won and the maps went flat.
            scale_recon_loss=1e-3,
            map_agreement_weight=0.1,
            warmup_steps=50,
            augment=True,
            view_augment=True,
            # The map reads a copy of each view with a random contrast, resolution and bias field, so
            # that it codes tissue rather than intensity and carries no view's bias field.
            contrast_randomisation=0.5,
            randomised_map_input=True,
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
        # A handful of test subjects: one probe setting each, not a search.
        EvaluationConfig(kernel_ridge_alphas=(0.1,), kernel_ridge_gammas=(1.0,), ridge_alphas=(1.0,)),
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
    PRESETS["tiny"].evaluation,
)
