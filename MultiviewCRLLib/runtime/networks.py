"""3D ResNet-style encoder and decoder.

Encoder: x (B, 1, X, Y, Z) -> z (B, latent_dim); z[:, :content_dim] is content, the rest style.
Decoder: z (B, latent_dim) -> x_hat (B, 1, X, Y, Z).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn
from torch.nn import functional as F

from ..config import ModelConfig


def _norm(channels: int, groups: int) -> tuple:
    return ("group", {"num_groups": min(groups, channels)})


class EncoderStage(nn.Sequential):
    """conv 3x3x3 (+ GroupNorm + ReLU) -> residual unit -> 2x max-pool: (B, Cin, S) -> (B, Cout, S / (2 stride))."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int = 1):
        norm = _norm(out_channels, groups)
        super().__init__(
            Convolution(3, in_channels, out_channels, strides=stride, act="relu", norm=norm),
            ResidualUnit(3, out_channels, out_channels, subunits=1, act="relu", norm=norm),
            nn.MaxPool3d(2, ceil_mode=True),
        )


class Encoder(nn.Module):
    """(B, 1, X, Y, Z) -> (B, latent_dim). Ends in a linear layer, so the latent can be negative.

    The pooled features of different brains share a large common component (cosine >= 0.99
    between subjects at initialisation), which let the first optimiser steps collapse every
    embedding onto one direction and stalled the contrastive loss at chance. A BatchNorm over the
    pooled features removes that component before the linear head (a distributed trainer makes its
    statistics span every rank).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        channels = (1, *config.encoder_channels)
        self.stages = nn.Sequential(
            *(
                EncoderStage(cin, cout, config.norm_groups, config.stem_stride if i == 0 else 1)
                for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:]))
            )
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.center = nn.BatchNorm1d(channels[-1])
        self.head = nn.Linear(channels[-1], config.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.center(self.pool(self.stages(x)).flatten(1)))


class DecoderStage(nn.Sequential):
    """transposed conv 4x4x4 stride 2 (+ GroupNorm + ReLU) -> residual unit: (B, Cin, S) -> (B, Cout, 2S)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        norm = _norm(out_channels, groups)
        super().__init__(
            Convolution(
                3,
                in_channels,
                out_channels,
                strides=2,
                kernel_size=4,
                padding=1,
                output_padding=0,
                is_transposed=True,
                act="relu",
                norm=norm,
            ),
            ResidualUnit(3, out_channels, out_channels, subunits=1, act="relu", norm=norm),
        )


class Decoder(nn.Module):
    """(B, latent_dim) -> (B, 1, *output_shape). No final activation: targets are z-scored."""

    def __init__(self, config: ModelConfig, output_shape: tuple[int, int, int]):
        super().__init__()
        self.start_channels = config.decoder_channels[0]
        self.start_shape = tuple(config.decoder_start_shape)
        self.output_shape = tuple(output_shape)
        start_voxels = self.start_channels * self.start_shape[0] * self.start_shape[1] * self.start_shape[2]
        self.fc = nn.Linear(config.latent_dim, start_voxels)
        channels = config.decoder_channels
        self.stages = nn.Sequential(
            *(DecoderStage(a, b, config.norm_groups) for a, b in zip(channels[:-1], channels[1:]))
        )
        refine = (channels[-1], *config.refine_channels)
        layers = [
            Convolution(3, a, b, act="relu", norm=_norm(b, config.norm_groups)) for a, b in zip(refine[:-1], refine[1:])
        ]
        layers.append(Convolution(3, refine[-1], 1, conv_only=True))
        self.refine = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(z.shape[0], self.start_channels, *self.start_shape)
        x = self.refine(self.stages(x))
        return F.interpolate(x, size=self.output_shape, mode="trilinear", align_corners=False)


def compose_latent(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """One latent (..., latent_dim) from a content block and a style block, e.g. cross-view synthesis:
    the content of one view with the style of another."""
    return torch.cat([content, style.expand(*content.shape[:-1], style.shape[-1])], dim=-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
