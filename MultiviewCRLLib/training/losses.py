"""Content-only InfoNCE and the L1 + L2 reconstruction loss ("BaurLoss")."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import split_latent


def content_logits(z1: torch.Tensor, z2: torch.Tensor, content_dim: int, tau: float) -> torch.Tensor:
    """Cosine similarities / tau among all 2B content embeddings, self-pairs set to -inf: (2B, 2B).

    Rows 0..B-1 are view 1, rows B..2B-1 view 2; the positive of row i is row (i + B) mod 2B.
    """
    content = F.normalize(torch.cat([split_latent(z, content_dim)[0] for z in (z1, z2)]).float(), dim=1)
    logits = content @ content.T / tau
    return logits.masked_fill(torch.eye(len(logits), dtype=torch.bool, device=logits.device), float("-inf"))


def positive_index(batch_size: int, device=None) -> torch.Tensor:
    """Index of each of the 2B rows' positive: the other view of the same subject."""
    return torch.arange(2 * batch_size, device=device).roll(batch_size)


class ContentInfoNCE(nn.Module):
    """Symmetric NT-Xent on the content dims only: every one of the 2B embeddings is an anchor, its
    positive the other view of its subject, its negatives the other 2B - 2 embeddings.

    z1, z2: (B, latent_dim) -> scalar mean cross-entropy over the 2B rows. Style dims get no gradient.
    """

    def __init__(self, content_dim: int, tau: float = 1.0):
        super().__init__()
        self.content_dim = content_dim
        self.tau = tau

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        logits = content_logits(z1, z2, self.content_dim, self.tau)
        return F.cross_entropy(logits, positive_index(len(z1), logits.device))


def retrieval_top1(z1: torch.Tensor, z2: torch.Tensor, content_dim: int) -> float:
    """Fraction of the 2B embeddings whose nearest content neighbour is their other view (chance 1/(2B-1))."""
    with torch.no_grad():
        logits = content_logits(z1, z2, content_dim, 1.0)
        return (logits.argmax(1) == positive_index(len(z1), logits.device)).float().mean().item()


class BaurLoss(nn.Module):
    """Per sample: L1 norm plus (unsquared) L2 norm of x - x_hat over all voxels, each with the
    PairwiseDistance epsilon 1e-6; mean over the batch. Always computed in float32.

    x, x_hat: (B, ...) -> scalar.
    """

    def __init__(self, eps: float = 1e-6):
        super().__init__()
        self.l1 = nn.PairwiseDistance(p=1.0, eps=eps)
        self.l2 = nn.PairwiseDistance(p=2.0, eps=eps)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            a, b = x_hat.float().flatten(1), x.float().flatten(1)
            return (self.l1(a, b) + self.l2(a, b)).mean()


def box_means_at(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """The mean over a ``size``-voxel cube about each of the ``index`` (B, N) voxels (flat indices
    into X * Y * Z) of ``x`` (B, C, X, Y, Z), zeros beyond the edges: (B, C, N).

    Read from the volume's summed-area table (eight corners a cube), in float32: a dense pooled
    copy of the map is never made, for the few hundred voxels a loss samples.
    """
    _, channels, *shape = x.shape
    table = F.pad(x.float(), (1, 0, 1, 0, 1, 0))
    for axis in (2, 3, 4):
        table = table.cumsum(axis)
    table = table.flatten(2)
    coordinates = (index // (shape[1] * shape[2]), index // shape[2] % shape[1], index % shape[2])
    half = size // 2
    bounds = [((c - half).clamp(0, n), (c + half + 1).clamp(0, n)) for c, n in zip(coordinates, shape)]
    total = 0.0
    for corner in range(8):
        picked = [bounds[axis][corner >> axis & 1] for axis in range(3)]
        sign = (-1) ** (3 - sum(corner >> axis & 1 for axis in range(3)))
        flat = (picked[0] * (shape[1] + 1) + picked[1]) * (shape[2] + 1) + picked[2]
        total = total + sign * torch.gather(table, 2, flat[:, None].expand(-1, channels, -1))
    return total / size**3


class DenseInfoNCE(nn.Module):
    """Dense contrastive loss between two views' content maps (in the style of CoMIR and PatchNCE).

    At ``locations`` voxels per subject, drawn inside the brain mask and shared by both views, a
    feature is read from each map: the map and its 3- and 7-voxel local means (so a location is
    told apart by its neighbourhood), projected by a small MLP and normalised. For every location
    of view 1 the positive is the same location in view 2; the negatives are the other sampled
    locations of every subject in the batch. Symmetric cross-entropy of cosine / tau.

    map1, map2: (B, K, X, Y, Z); mask: (B, 1, X, Y, Z) -> scalar.
    """

    def __init__(self, channels: int, locations: int = 256, tau: float = 0.1, features: int = 32):
        super().__init__()
        self.locations, self.tau = locations, tau
        self.project = nn.Sequential(nn.Linear(3 * channels, features), nn.ReLU(), nn.Linear(features, features))

    def features(self, content_map: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(B * N, features) unit vectors at the ``index`` (B, N) voxels of a map (B, K, X, Y, Z)."""
        at = index[:, None].expand(-1, content_map.shape[1], -1)
        voxels = torch.gather(content_map.flatten(2), 2, at).float()
        picked = torch.cat([voxels] + [box_means_at(content_map, index, k) for k in (3, 7)], dim=1)  # (B, 3K, N)
        return F.normalize(self.project(picked.transpose(1, 2).reshape(-1, picked.shape[1])).float(), dim=1)

    def forward(self, map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.flatten(1).float() + 1e-6  # uniform inside the brain; anywhere if a mask is empty
        index = torch.multinomial(weights, self.locations, replacement=True)  # (B, N)
        a, b = self.features(map1, index), self.features(map2, index)
        logits = a @ b.T / self.tau
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
