"""Analysis of one subject's T1w/T2w pair with a bundle: embeddings, reconstructions, cross-view
images, error maps, and where the pair's content lies among the training cohort.

Either view may be missing: its style then comes from the cohort's mean style in the bundle.
Inputs are [i, j, k] arrays with RAS affines (from NIfTI files or Slicer nodes); every output
volume is a (X, Y, Z) MetaTensor on the model grid carrying that grid's affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from ..config import VIEWS, other_view
from .bundle import Bundle
from .networks import compose_latent
from .preprocessing import preprocess_array


def error_map(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|prediction - target| inside the brain mask, zero outside it; (X, Y, Z) tensors, any mask dtype."""
    return (prediction - target).abs() * (mask > 0.5)


def cross_view_name(source: str, target: str) -> str:
    """The name of a cross-view image: "T2w→T1w" is the T2w's content decoded with a T1w style."""
    return f"{source}→{target}"


@dataclass
class PairAnalysis:
    inputs: dict[str, MetaTensor] = field(default_factory=dict)  # view -> preprocessed (X, Y, Z)
    masks: dict[str, MetaTensor] = field(default_factory=dict)
    latents: dict[str, torch.Tensor] = field(default_factory=dict)  # view -> (latent_dim,)
    reconstructions: dict[str, MetaTensor] = field(default_factory=dict)  # view -> decode(own latent)
    cross_view: dict[str, MetaTensor] = field(default_factory=dict)  # target view -> from the other view's content
    errors: dict[str, MetaTensor] = field(default_factory=dict)  # name -> |prediction - input| in the mask
    content_cosine: float | None = None
    style_distance: float | None = None
    nearest_cohort: list[tuple[str, float]] = field(default_factory=list)  # (subject, content cosine)


@torch.no_grad()
def analyse_pair(
    bundle: Bundle,
    t1: tuple[np.ndarray, np.ndarray] | None,
    t2: tuple[np.ndarray, np.ndarray] | None,
    device: str | torch.device = "cpu",
    n_nearest: int = 5,
) -> PairAnalysis:
    """Run the shared preprocessing, the encoder and the decoder on one pair (either may be None)."""
    given = {view: data for view, data in zip(VIEWS, (t1, t2)) if data is not None}
    if not given:
        raise ValueError("give at least one of the T1w and T2w volumes")
    model = bundle.model
    out = PairAnalysis()
    for view, (array, affine) in given.items():
        image, mask = preprocess_array(array, affine, bundle.preprocessing)
        out.inputs[view], out.masks[view] = image[0], mask[0]
        out.latents[view] = bundle.encoder(image.as_tensor()[None].to(device))[0].float().cpu()

    def decode(latent: torch.Tensor, like: MetaTensor) -> MetaTensor:
        volume = bundle.decoder(latent[None].to(device))[0, 0].float().cpu()
        return MetaTensor(volume, affine=like.affine.clone())

    grid = next(iter(out.inputs.values()))  # every view lands on the same model grid
    for view in given:
        out.reconstructions[view] = decode(out.latents[view], grid)
    for target in VIEWS:
        source = other_view(target)
        if source not in given:
            continue
        style = model.style(out.latents[target]) if target in given else bundle.style_means[target]
        out.cross_view[target] = decode(compose_latent(model.content(out.latents[source]), style), grid)
    for view in given:
        out.errors[f"{view} reconstruction"] = error_map(out.reconstructions[view], out.inputs[view], out.masks[view])
        if view in out.cross_view:
            name = cross_view_name(other_view(view), view)
            out.errors[name] = error_map(out.cross_view[view], out.inputs[view], out.masks[view])
    if len(given) == 2:
        (content_a, style_a), (content_b, style_b) = (
            (model.content(out.latents[v]), model.style(out.latents[v])) for v in VIEWS
        )
        out.content_cosine = F.cosine_similarity(content_a, content_b, dim=0).item()
        out.style_distance = (style_a - style_b).norm().item()
    if bundle.cohort_content is not None:
        content = torch.stack([model.content(out.latents[v]) for v in given]).mean(0)
        similarity = F.cosine_similarity(bundle.cohort_content, content[None], dim=1)
        order = similarity.argsort(descending=True)[:n_nearest]
        out.nearest_cohort = [(bundle.cohort_subjects[i], similarity[i].item()) for i in order.tolist()]
    return out
