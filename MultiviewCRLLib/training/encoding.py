"""A cohort's latents: both views of each pair encoded on the model grid, with their volumes when asked.

The bundle's cohort statistics, the evaluation, the strata and the input check's calibration all
start from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import VIEW_KEYS
from ..runtime.precision import inference_precision
from .data import paired_dataset, plain_collate
from .discovery import Pair


@dataclass
class Encoded:
    """Latents of both views, (N, latent_dim) each, for the subjects in ``pairs`` (same order)."""

    pairs: list[Pair]
    t1: np.ndarray
    t2: np.ndarray


def encode_cohort(encoder, pairs: list[Pair], preprocessing, cache_root, device, with_images: bool = False):
    """Latents (and, optionally, the preprocessed volumes and masks) of both views of each pair,
    encoded under the inference precision policy."""
    encoder.eval()
    dataset = paired_dataset(pairs, preprocessing, cache_root)
    latents = {key: [] for key in VIEW_KEYS}
    images = []
    for start in range(0, len(dataset), 8):
        batch = plain_collate([dataset[i] for i in range(start, min(start + 8, len(dataset)))])
        with inference_precision(encoder):
            for key in VIEW_KEYS:
                latents[key].append(encoder(batch[key].to(device), views=VIEW_KEYS.index(key)).float().cpu())
        if with_images:
            images += [{k: batch[k][i, 0] for k in ("t1", "t2", "mask_t1", "mask_t2")} for i in range(len(batch["t1"]))]
    out = Encoded(pairs, *(torch.cat(latents[k]).numpy() for k in VIEW_KEYS))
    return (out, images) if with_images else out
