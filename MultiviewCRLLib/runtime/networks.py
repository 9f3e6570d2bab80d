"""The two model families' encoders and decoders.

Global family (the technical report's 3D ResNet-style networks):
    Encoder: x (B, 1, X, Y, Z) -> z (B, latent_dim); z[:, :content_dim] is content, the rest style.
    Decoder: z (B, latent_dim) -> x_hat (B, 1, X, Y, Z).
Spatial family:
    SpatialEncoder: x -> dense content map m (B, K, X, Y, Z) (softmax over K channels) and the
    same 512-d z: content from the map (a strided head), style from the image.
    SpatialDecoder: (m, style (B, style_dim)) -> x_hat (B, 1, X, Y, Z), FiLM-modulated by the style,
    which also draws a smooth field (a view's bias field).

Both families share one interface: ``encoder(x, views=v)`` is z; ``encoder(x, with_content=True,
views=v)`` is (z, content), where content is what the decoder takes (the content block of z, or
the map), and ``v`` the index in ``config.VIEWS`` of each image's view (an int for all, or a (B,)
tensor; the global family ignores it); and ``decoder.decode(content, style)`` draws an image.
"""

from __future__ import annotations

import contextlib
import math

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import UNet
from torch import nn
from torch.nn import functional as F

from ..config import VIEWS, ModelConfig, split_latent


def _norm(channels: int, groups: int) -> tuple:
    return ("group", {"num_groups": min(groups, channels)})


class SeparableConv3d(nn.Sequential):
    """A depthwise k x k x k convolution (one filter per input channel) then a pointwise 1x1x1 one:
    (B, Cin, S) -> (B, Cout, S / stride), or (B, Cout, 2S) when ``transposed`` (4x4x4, stride 2).
    Parameters k^3 Cin + Cin Cout instead of k^3 Cin Cout."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, transposed: bool = False):
        if transposed:
            depthwise = nn.ConvTranspose3d(in_channels, in_channels, 4, stride=2, padding=1, groups=in_channels)
        else:
            depthwise = nn.Conv3d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels)
        super().__init__(depthwise, nn.Conv3d(in_channels, out_channels, 1))


def conv_block(
    in_channels: int, out_channels: int, groups: int, separable: bool, stride: int = 1, transposed: bool = False
) -> nn.Module:
    """3x3x3 convolution (4x4x4 stride-2 transposed) + GroupNorm + ReLU: (B, Cin, S) -> (B, Cout, S').

    ``separable`` makes it depthwise-then-pointwise, except on a single input channel (nothing to separate)."""
    norm = _norm(out_channels, groups)
    if not separable or in_channels == 1:
        if transposed:
            return Convolution(
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
            )
        return Convolution(3, in_channels, out_channels, strides=stride, act="relu", norm=norm)
    return nn.Sequential(
        SeparableConv3d(in_channels, out_channels, stride, transposed),
        nn.GroupNorm(norm[1]["num_groups"], out_channels),
        nn.ReLU(),
    )


class SeparableResidualUnit(nn.Module):
    """x + ReLU(GroupNorm(separable conv(x))): MONAI's one-subunit ResidualUnit with a separable
    convolution, (B, C, S) -> (B, C, S)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.conv = conv_block(channels, channels, groups, separable=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def residual_unit(channels: int, groups: int, separable: bool) -> nn.Module:
    """The mid-flow block: (B, C, S) -> (B, C, S)."""
    if separable:
        return SeparableResidualUnit(channels, groups)
    return ResidualUnit(3, channels, channels, subunits=1, act="relu", norm=_norm(channels, groups))


class EncoderStage(nn.Sequential):
    """conv 3x3x3 (+ GroupNorm + ReLU) -> residual unit -> 2x max-pool: (B, Cin, S) -> (B, Cout, S / (2 stride))."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int = 1, separable: bool = False):
        super().__init__(
            conv_block(in_channels, out_channels, groups, separable, stride),
            residual_unit(out_channels, groups, separable),
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
                EncoderStage(cin, cout, config.norm_groups, config.stem_stride if i == 0 else 1, config.separable)
                for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:]))
            )
        )
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.center = nn.BatchNorm1d(channels[-1])
        self.head = nn.Linear(channels[-1], config.latent_dim)
        self.content_dim = config.content_dim

    def forward(self, x: torch.Tensor, with_content: bool = False, views=None):
        """``views`` is accepted for the families' one interface; this encoder does not use it."""
        z = self.head(self.center(self.pool(self.stages(x)).flatten(1)))
        return (z, split_latent(z, self.content_dim)[0]) if with_content else z


class DecoderStage(nn.Sequential):
    """transposed conv 4x4x4 stride 2 (+ GroupNorm + ReLU) -> residual unit: (B, Cin, S) -> (B, Cout, 2S)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, separable: bool = False):
        super().__init__(
            conv_block(in_channels, out_channels, groups, separable, transposed=True),
            residual_unit(out_channels, groups, separable),
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
            *(DecoderStage(a, b, config.norm_groups, config.separable) for a, b in zip(channels[:-1], channels[1:]))
        )
        refine = (channels[-1], *config.refine_channels)
        layers = [conv_block(a, b, config.norm_groups, config.separable) for a, b in zip(refine[:-1], refine[1:])]
        layers.append(Convolution(3, refine[-1], 1, conv_only=True))
        self.refine = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc(z)).view(z.shape[0], self.start_channels, *self.start_shape)
        x = self.refine(self.stages(x))
        return F.interpolate(x, size=self.output_shape, mode="trilinear", align_corners=False)

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, content_dim), (B or 1, style_dim) -> (B, 1, X, Y, Z)."""
        return self(compose_latent(content, style))


class PooledEncoder(nn.Sequential):
    """(B, in_channels, X, Y, Z) -> (B, out_features): strided stages, global pooling, centring, linear."""

    def __init__(
        self,
        channels: tuple[int, ...],
        stem_stride: int,
        groups: int,
        out_features: int,
        in_channels: int = 1,
        separable: bool = False,
    ):
        channels = (in_channels, *channels)
        super().__init__(
            *(
                EncoderStage(cin, cout, groups, stem_stride if i == 0 else 1, separable)
                for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:]))
            ),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
            nn.BatchNorm1d(channels[-1]),  # centring, as in the global encoder
            nn.Linear(channels[-1], out_features),
        )


@contextlib.contextmanager
def running_statistics_kept(module: nn.Module):
    """Within it, the batch norms of ``module`` normalise by the batch as in training but leave their
    running statistics as they are: for a pass over inputs that inference never sees."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum


def view_indices(views, batch: int, device) -> torch.Tensor:
    """The (B,) long tensor of view indices from an int for every image or a (B,) tensor."""
    if views is None:
        raise ValueError("the spatial encoder needs each image's view (its index in VIEWS)")
    return torch.as_tensor(views, device=device).long().expand(batch)


VIEW_STYLE = 4.0  # where each view's part of the style starts, along style dim 0: T1w +, T2w -


class IntensityCode(nn.Module):
    """Where a content map starts: logits (B, K, X, Y, Z) that bin a z-scored brain image by
    intensity. Channel 0 is outside the brain (the preprocessing leaves exact zeros there);
    channel k >= 1 peaks at its view's centre c[view, k] (learnt), with a shared width.

    The centres start in the order the tissues have in each contrast: ascending for the T1w
    (cerebrospinal fluid darkest, white matter brightest), descending for the T2w (the reverse),
    so both views' maps put a tissue in one channel from the first step. Started alike, each map
    coded its own intensities, and the decoder had nothing to translate between the views.
    """

    OUTSIDE_LOGIT = 30.0

    def __init__(self, channels: int):
        super().__init__()
        ascending = torch.linspace(-2.0, 2.0, channels - 1)
        self.centres = nn.Parameter(torch.stack([ascending, ascending.flip(0)]))  # (views, K - 1)
        self.log_width = nn.Parameter(torch.tensor(math.log(4.0 / (channels - 1))))

    def forward(self, x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        outside = x == 0
        centres = self.centres[views][:, :, None, None, None]
        tissue = -(((x - centres) / self.log_width.exp()) ** 2)
        big = torch.full_like(x, self.OUTSIDE_LOGIT)
        return torch.cat([torch.where(outside, big, -big), torch.where(outside, -big, tissue)], dim=1)


class SpatialEncoder(nn.Module):
    """(B, 1, X, Y, Z) -> z (B, latent_dim), and the content map (B, K, X, Y, Z) with ``with_content``.

    The map is a softmax over K channels at every voxel (a soft tissue code): a bottleneck that
    leaves little room for contrast. Its logits are an intensity binning of the image in its
    view's tissue order (``IntensityCode``) plus what two learnt paths add to it (both start at
    zero). The content block of z is a strided head on the map; the
    content InfoNCE trains that head but does not reach back into the map, which the
    reconstruction and dense losses shape (with the InfoNCE's gradient in it, the map stayed
    uniform and the decoded images flat). The style block comes from the image.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        k, features = config.map_channels, config.map_unet_channels
        norm = ("group", {"num_groups": config.norm_groups})
        # Two paths add their logits: full-resolution convolutions on the image give each voxel's
        # tissue code its sharpness (without them the map stayed uniform for hundreds of steps),
        # and a U-Net at half resolution (full-resolution U-Net levels dominate a CPU step) gives
        # the context that tells one contrast's tissue from another's.
        self.local = nn.Sequential(
            Convolution(3, 1, features[0], act=("leakyrelu", {"negative_slope": 0.1}), norm=norm),
            Convolution(3, features[0], features[0], act=("leakyrelu", {"negative_slope": 0.1}), norm=norm),
        )
        # A local intensity names a tissue only given the contrast (bright is white matter on a
        # T1w, CSF on a T2w): the style modulates the local features before they become logits,
        # so that both views can give a tissue one code.
        self.local_contrast = FiLM(config.style_dim, features[0])
        self.local_to_map = nn.Conv3d(features[0], k, kernel_size=1)
        self.intensity_code = IntensityCode(k)
        self.down = Convolution(3, 1, features[0], strides=2, act="leakyrelu", norm=norm)
        strides = (2,) * (len(features) - 1)
        self.unet = UNet(3, features[0], features[0], features, strides, num_res_units=1, norm=norm)
        self.multiple = 2 ** (len(strides) + 1)  # inputs are padded to it, so every level halves exactly
        self.to_map = nn.Conv3d(features[0], k, kernel_size=3, padding=1)
        for learnt in (self.local_to_map, self.to_map):  # the map starts as the intensity code
            nn.init.zeros_(learnt.weight)
            nn.init.zeros_(learnt.bias)
        head_channels = config.encoder_channels[1:]
        self.content_head = PooledEncoder(
            head_channels, 2, config.norm_groups, config.content_dim, in_channels=k, separable=config.separable
        )
        self.style_encoder = PooledEncoder(
            config.encoder_channels,
            config.stem_stride,
            config.norm_groups,
            config.style_dim,
            separable=config.separable,
        )
        # Each view's part of the style (learnt; +-VIEW_STYLE along style dim 0 at the start): a
        # z-scored T1w and T2w have the same global statistics, and the pooled image features alone
        # told them apart too weakly for the decoder to draw the two contrasts differently.
        self.view_style = nn.Parameter(torch.zeros(len(VIEWS), config.style_dim))
        with torch.no_grad():
            self.view_style[:, 0] = torch.tensor([VIEW_STYLE, -VIEW_STYLE])

    def content_map(self, x: torch.Tensor, style: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z), its style (B, style_dim) and views (B,) -> (B, K, X, Y, Z), a softmax over
        the K channels."""
        size = x.shape[2:]
        padding = [p for n in reversed(size) for p in (0, -n % self.multiple)]
        context = F.interpolate(self.unet(self.down(F.pad(x, padding))), scale_factor=2, mode="trilinear")
        local = self.local_to_map(self.local_contrast(self.local(x), style))
        logits = self.to_map(context)[..., : size[0], : size[1], : size[2]] + local + self.intensity_code(x, views)
        return torch.softmax(logits, dim=1)

    def forward(
        self,
        x: torch.Tensor,
        with_content: bool = False,
        views=None,
        second_half_flips: tuple[int, ...] = (),
        map_input: torch.Tensor | None = None,
    ):
        """``views``: each image's view index (an int or (B,)); ``second_half_flips``: axes along
        which the last half of ``x`` was flipped; its maps are flipped back before anything else
        reads them (training's test of equivariance). ``map_input``: (B, 1, X, Y, Z), another
        rendering of ``x`` (training's randomised contrast) that the map is read from instead, with
        its own style for the map's modulation; z's style block stays that of ``x``."""
        views = view_indices(views, len(x), x.device)
        style = self.style_encoder(x) + self.view_style[views]
        if map_input is None:
            content = self.content_map(x, style, views)
        else:
            with running_statistics_kept(self.style_encoder):  # inference only ever sees x
                map_style = self.style_encoder(map_input) + self.view_style[views]
            content = self.content_map(map_input, map_style, views)
        content = flip_second_half(content, second_half_flips)
        z = torch.cat([self.content_head(content.detach()), style], dim=1)
        return (z, content) if with_content else z


class FiLM(nn.Module):
    """Feature-wise modulation by the style: (B, C, ...) * (1 + gamma) + beta, (gamma, beta) = Linear(style)."""

    def __init__(self, style_dim: int, channels: int):
        super().__init__()
        self.affine = nn.Linear(style_dim, 2 * channels)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(style).view(len(style), -1, *([1] * (x.dim() - 2))).chunk(2, dim=1)
        return x * (1 + gamma) + beta


class SpatialDecoder(nn.Module):
    """(content map (B, K, X, Y, Z), style (B or 1, style_dim)) -> (B, 1, X, Y, Z).

    Two paths, summed: each map channel's intensity under the style (a lookup from tissue code to
    intensity, so the image is as sharp as the map), and a correction: the style draws a smooth
    low-resolution field (``field_channels`` x ``field_shape``, upsampled trilinearly) that joins
    the map as extra channels, so a view's bias field can be painted, then 1x1x1 and 3x3x3
    convolutions in turn, each FiLM-modulated by the style.
    """

    def __init__(self, config: ModelConfig, output_shape: tuple[int, int, int]):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.field_shape = tuple(config.field_shape)
        self.field = nn.Linear(config.style_dim, config.field_channels * math.prod(self.field_shape))
        widths = (config.map_channels + config.field_channels, *config.map_decoder_channels)
        self.convs = nn.ModuleList(
            nn.Conv3d(a, b, kernel_size=1 if i % 2 == 0 else 3, padding="same")
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))
        )
        self.films = nn.ModuleList(FiLM(config.style_dim, b) for b in widths[1:])
        self.out = nn.Conv3d(widths[-1], 1, kernel_size=1)
        # Each map channel's intensity under this style: the direct path from tissue code to image.
        # It starts drawing each view from the map's starting code (``IntensityCode``: channel 0
        # outside the brain, zero; the others at their centres, read off the view's part of the
        # style): with equal intensities neither the map nor the lookup got a gradient, and the
        # decoded image stayed flat for hundreds of steps.
        self.intensities = nn.Linear(config.style_dim, config.map_channels)
        with torch.no_grad():
            self.intensities.weight.zero_()
            self.intensities.bias.zero_()
            self.intensities.weight[1:, 0] = torch.linspace(-2.0, 2.0, config.map_channels - 1) / VIEW_STYLE

    def decode(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        style = style.expand(len(content), -1)
        field = self.field(style).view(len(style), -1, *self.field_shape)
        field = F.interpolate(field, size=content.shape[2:], mode="trilinear", align_corners=True)
        x = torch.cat([content, field], dim=1)
        for conv, film in zip(self.convs, self.films):
            x = F.leaky_relu(film(conv(x), style), 0.1)
        lookup = (content * self.intensities(style)[:, :, None, None, None]).sum(1, keepdim=True)
        return lookup + self.out(x)

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return self.decode(content, style)


def build_networks(config: ModelConfig, output_shape: tuple[int, int, int]) -> tuple[nn.Module, nn.Module]:
    """The encoder and decoder of the config's family."""
    if config.family == "spatial":
        return SpatialEncoder(config), SpatialDecoder(config, output_shape)
    return Encoder(config), Decoder(config, output_shape)


def flip_second_half(x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """(2B, C, X, Y, Z) with its last B items flipped along ``axes`` (its own inverse)."""
    if not axes:
        return x
    first, second = x.chunk(2)
    return torch.cat([first, second.flip(list(axes))])


def compose_latent(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """One latent (..., latent_dim) from a content block and a style block, e.g. cross-view synthesis:
    the content of one view with the style of another."""
    return torch.cat([content, style.expand(*content.shape[:-1], style.shape[-1])], dim=-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
