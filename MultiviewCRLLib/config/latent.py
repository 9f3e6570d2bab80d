"""The content/style split of a latent: content is always dims ``[0, content_dim)``, style the rest."""

from __future__ import annotations

LATENT_BLOCKS = ("content", "style", "full")


def split_latent(z, content_dim: int):
    """(content, style) blocks of latents (..., latent_dim), numpy or torch: content is always
    dims ``[0, content_dim)``, style the rest."""
    return z[..., :content_dim], z[..., content_dim:]
