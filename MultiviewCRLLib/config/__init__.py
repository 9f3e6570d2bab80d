"""Configuration and constants shared by the trainer, the evaluator and the Slicer module, one concern
a module: the views and their wording, the latent split, the metric keys, the settings classes and the
preset table.

Imports only the standard library, so both parts of the library (and the Slicer module) can use it.
"""

from .latent import LATENT_BLOCKS, split_latent
from .metric_keys import image_key, metric, r2_key, retrieval_key, view_accuracy_key
from .presets import DEMO_GRID, PRESETS, Preset
from .settings import FAMILIES, CohortConfig, EvaluationConfig, ModelConfig, PreprocessingConfig, TrainConfig
from .views import VIEW_KEYS, VIEW_NAMES, VIEWS, other_view, volume_words

__all__ = [
    "DEMO_GRID",
    "FAMILIES",
    "LATENT_BLOCKS",
    "PRESETS",
    "VIEWS",
    "VIEW_KEYS",
    "VIEW_NAMES",
    "CohortConfig",
    "EvaluationConfig",
    "ModelConfig",
    "PreprocessingConfig",
    "Preset",
    "TrainConfig",
    "image_key",
    "metric",
    "other_view",
    "r2_key",
    "retrieval_key",
    "split_latent",
    "view_accuracy_key",
    "volume_words",
]
