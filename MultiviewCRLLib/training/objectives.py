"""Each model family's training objective: what one batch costs, term by term.

The trainer owns the loop, the precision, the optimiser and the checkpoints; an objective turns a
batch into its loss terms. Both families share the content InfoNCE (negatives from every rank) and
the BaurLoss; the spatial family adds the dense terms between the two views' content maps.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..config import VIEW_KEYS, ModelConfig, TrainConfig
from ..runtime.networks import flip_second_half
from .distributed import gather_rows
from .losses import BaurLoss, ContentInfoNCE


@dataclass
class LossTerms:
    """One batch's terms. ``z1``, ``z2``: (B_union, latent_dim) latents of each view over every rank;
    ``contrastive``: their content InfoNCE; ``reconstruction``: this rank's BaurLoss (unscaled);
    ``dense``: the spatial family's map terms, already weighted (zero for the global family)."""

    z1: torch.Tensor
    z2: torch.Tensor
    contrastive: torch.Tensor
    reconstruction: torch.Tensor
    dense: torch.Tensor


class GlobalObjective:
    """The technical report's: content InfoNCE + BaurLoss of each view decoded from its own latent.

    x: (2B, 1, X, Y, Z), the T1w batch then the T2w batch.
    """

    def __init__(self, model: ModelConfig, train: TrainConfig):
        self.model_config, self.config = model, train
        self.contrastive = ContentInfoNCE(model.content_dim, train.tau)
        self.reconstruction = BaurLoss()
        # The trainer's PhaseClock when a benchmark times the step: the losses' share of it.
        self.clock = lambda phase: contextlib.nullcontext()

    def contrast(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z1, z2, InfoNCE) with the negatives gathered from every rank."""
        z1, z2 = (gather_rows(half) for half in z.chunk(2))
        return z1, z2, self.contrastive(z1, z2)

    def __call__(self, encoder, decoder, x: torch.Tensor, batch: dict, step: int) -> LossTerms:
        z = encoder(x)
        decoded = decoder(z)
        with self.clock("losses"):
            z1, z2, contrastive = self.contrast(z)
            reconstruction = self.reconstruction(decoded, x)  # this rank's mean; DDP averages the gradients
        return LossTerms(z1, z2, contrastive, reconstruction, torch.zeros((), device=x.device))


class SpatialObjective(GlobalObjective):
    """The spatial family's: content InfoNCE, self- and cross-view reconstruction from the content
    maps, and, after a warm-up, the dense InfoNCE and the L1 disagreement between the two maps.

    ``dense_head``: the trainable :class:`~.losses.DenseInfoNCE` (maps (B, K, X, Y, Z) twice and a
    mask (B, 1, X, Y, Z) -> scalar), wrapped for DistributedDataParallel by the trainer when needed.
    """

    def __init__(self, model: ModelConfig, train: TrainConfig, dense_head):
        super().__init__(model, train)
        self.dense_head = dense_head

    @staticmethod
    def second_view_flips() -> tuple[int, ...]:
        """Random axes along which the second view is flipped before encoding and its map flipped
        back. A map that encoded position rather than anatomy (zero padding makes that possible)
        would then disagree between the views, so the dense loss cannot be met that way."""
        return tuple(axis for axis in (2, 3, 4) if torch.rand(()) < 0.5)

    def ramp(self, step: int) -> float:
        """Weight of the dense terms: 0 through the warm-up, then linear to 1 over as many steps."""
        warmup = self.config.warmup_steps
        return min(1.0, max(0.0, step / warmup - 1)) if warmup else 1.0

    def __call__(self, encoder, decoder, x: torch.Tensor, batch: dict, step: int) -> LossTerms:
        views = torch.arange(len(VIEW_KEYS), device=x.device).repeat_interleave(len(batch["t1"]))
        flips = self.second_view_flips()
        map_input = batch.get("map_input")  # (2B, 1, X, Y, Z): the map's randomised copy of x, if any
        z, content = encoder(
            flip_second_half(x, flips),
            with_content=True,
            views=views,
            second_half_flips=flips,
            map_input=None if map_input is None else flip_second_half(map_input, flips),
        )
        with self.clock("losses"):
            z1, z2, contrastive = self.contrast(z)
        if step < self.config.warmup_steps:
            # The maps start as one tissue code for both views and stay so while the decoder learns
            # to draw each style from it: trained from the first step, before any style drew a T2w,
            # they settled on one channel for every brain voxel.
            content = content.detach()
        maps, style = content.chunk(2), self.model_config.style(z)
        swapped = torch.cat(style.chunk(2)[::-1])
        # Each view's map decoded with its own style and with the other view's must give that view:
        # the cross term, on from the first step, makes the map hold what both views share.
        own, cross = decoder(torch.cat([*maps, *maps]), torch.cat([style, swapped])).chunk(2)
        with self.clock("losses"):
            return self.map_losses(x, batch, step, maps, own, cross, (z1, z2, contrastive))

    def map_losses(self, x, batch, step, maps, own, cross, contrasted) -> LossTerms:
        """The reconstruction of each view from both decodings and the weighted map terms."""
        reconstruction = (self.reconstruction(own, x) + self.reconstruction(cross, torch.cat(x.chunk(2)[::-1]))) / 2
        weight = self.ramp(step)
        if not weight:  # the warm-up: the map terms would be multiplied by zero
            return LossTerms(*contrasted, reconstruction, torch.zeros((), device=x.device))
        mask = batch["mask_t1"].to(x.device) * batch["mask_t2"].to(x.device)
        dense = self.config.dense_weight * self.dense_head(*maps, mask)
        # Summed over voxels and scaled like the reconstruction: per voxel, a disagreement weighs as
        # much as a wrong intensity does.
        disagreement = (maps[0] - maps[1]).abs().flatten(1).sum(1).mean()
        agreement = self.config.scale_recon_loss * self.config.map_agreement_weight * disagreement
        return LossTerms(*contrasted, reconstruction, weight * (dense + agreement))
