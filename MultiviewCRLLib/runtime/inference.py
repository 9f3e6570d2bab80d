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

from ..config import VIEWS, other_view, volume_words
from .bundle import Bundle
from .control import CancelToken
from .input_check import CheckReport, mask_volume_ml
from .precision import inference_precision
from .preparation import BrainMaskError, mask_problem, prepare_pair, to_scanner_range
from .preprocessing import preprocess_array
from .strata import stratum_embedding


def error_map(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|prediction - target| inside the brain mask, zero outside it; (X, Y, Z) tensors, any mask dtype."""
    return (prediction - target).abs() * (mask > 0.5)


def cross_view_name(source: str, target: str) -> str:
    """The name of a cross-view image: "T2w→T1w" is the T2w's content decoded with a T1w style."""
    return f"{source}→{target}"


def synthesis_styles(bundle: Bundle, latents: dict[str, torch.Tensor], target: str) -> torch.Tensor:
    """The style a cross-view image of ``target`` is drawn with: the target's own (B, style_dim)
    when it was given, else the training cohort's mean style of that view (1, style_dim)."""
    if target in latents:
        return bundle.model.style(latents[target])
    return bundle.style_means[target].to(next(iter(latents.values())).device)[None]


def encode_views(bundle: Bundle, images: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Latents {view: (B, latent_dim)} and contents {view: what the decoder takes: (B, content_dim)
    in the global family, the content map (B, K, X, Y, Z) in the spatial one} of (B, 1, X, Y, Z)
    images, in float32, computed under the inference precision policy."""
    with inference_precision(bundle.encoder):
        encoded = {view: bundle.encoder(x, with_content=True, views=VIEWS.index(view)) for view, x in images.items()}
    return {v: z.float() for v, (z, _) in encoded.items()}, {v: c.float() for v, (_, c) in encoded.items()}


def decode_views(bundle: Bundle, latents: dict, contents: dict) -> dict[str, torch.Tensor]:
    """Every decoding of the given views, (B, 1, X, Y, Z) each: "<view> reconstruction" from its own
    content and style, and the cross-view image "<source>→<target>" from the source's content with
    the target's style (the cohort's mean style when the target is missing); float32, computed under
    the inference precision policy."""
    decoder, model = bundle.decoder, bundle.model
    with inference_precision(decoder):
        out = {f"{v} reconstruction": decoder.decode(contents[v], model.style(latents[v])) for v in latents}
        for target in VIEWS:
            source = other_view(target)
            if source in latents:
                style = synthesis_styles(bundle, latents, target)
                out[cross_view_name(source, target)] = decoder.decode(contents[source], style)
    return {name: image.float() for name, image in out.items()}


@dataclass
class PairAnalysis:
    inputs: dict[str, MetaTensor] = field(default_factory=dict)  # view -> preprocessed (X, Y, Z)
    masks: dict[str, MetaTensor] = field(default_factory=dict)
    latents: dict[str, torch.Tensor] = field(default_factory=dict)  # view -> (latent_dim,)
    content_maps: dict[str, MetaTensor] = field(default_factory=dict)  # spatial family: view -> (K, X, Y, Z)
    reconstructions: dict[str, MetaTensor] = field(default_factory=dict)  # view -> decode(own latent)
    cross_view: dict[str, MetaTensor] = field(default_factory=dict)  # target view -> from the other view's content
    errors: dict[str, MetaTensor] = field(default_factory=dict)  # name -> |prediction - input| in the mask
    content_cosine: float | None = None
    style_distance: float | None = None
    nearest_cohort: list[tuple[str, float]] = field(default_factory=list)  # (subject, cosine about the cohort mean)
    stratum: str | None = None  # the cohort stratum the pair falls in, in words
    check: CheckReport | None = None  # whether the inputs look like the training data
    notes: list[str] = field(default_factory=list)  # what preparation did to the inputs, in words
    to_input: np.ndarray | None = None  # prepared: 4 x 4 RAS matrix from the outputs' world to the first input's
    guide_mismatch: str | None = None  # the guide check's warning, when it refused the guide of a restoration
    brain_masks: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict
    )  # prepared: view -> on its input grid


def ready_for_preprocessing(
    bundle: Bundle,
    given: dict[str, tuple[np.ndarray, np.ndarray]],
    names: dict[str, str] | None,
    prepare: bool,
    out: PairAnalysis,
    cancel: CancelToken,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The given views {view: (array, affine)} as the preprocessing takes them: in a scanner-like
    intensity range and, with ``prepare``, brain-extracted and aligned on the template's grid.
    What was done goes into ``out``: its notes and, when prepared, the transform back to the first
    input and the brain masks on the inputs' grids."""
    ready = {}
    for view, (array, affine) in given.items():
        array, rescaled = to_scanner_range(np.asarray(array, dtype=np.float32), bundle.preprocessing.mask_threshold)
        ready[view] = (array, affine)
        if rescaled:
            out.notes.append(f"{volume_words(view, names)}: {rescaled}")
    # Each view's voxel edges as acquired (mm, columns), in the world of the arrays handed on.
    axes = {view: np.asarray(affine, dtype=float)[:3, :3] for view, (_, affine) in given.items()}
    if prepare:
        prepared, axes = prepared_with_axes(bundle, ready, names, cancel)
        out.to_input = prepared.to_input[next(iter(prepared.images))]
        out.brain_masks = prepared.brain_masks
        out.notes.append(
            "skull and scalp removed with the template's brain mask and the pair aligned to the template; "
            "the outputs sit in the template's space, placed over the inputs by a transform"
        )
        ready = prepared.images
    return restored_if_coarse(bundle, ready, axes, names, out, cancel, prepared=prepare)


def prepared_with_axes(bundle: Bundle, ready: dict, names, cancel: CancelToken | None = None) -> tuple:
    """``prepare_pair`` of ``ready`` ({view: (array, affine)}, in a scanner-like range) onto the
    bundle's template, and each view's voxel edges as acquired (3 x 3, mm, columns) turned into the
    template's world, where the prepared arrays lie."""
    prepared = prepare_pair(ready, bundle.template, names, cancel)
    axes = {}
    for view, to_input in prepared.to_input.items():
        acquired = np.asarray(ready[view][1], dtype=float)[:3, :3]
        turned = np.linalg.inv(to_input)[:3, :3] @ acquired
        axes[view] = turned / np.linalg.norm(turned, axis=0) * np.linalg.norm(acquired, axis=0)
    return prepared, axes


def restored_if_coarse(
    bundle: Bundle, ready: dict, axes: dict, names, out: PairAnalysis, cancel, prepared: bool = False
) -> dict:
    """``ready`` with the view the bundle's restoration networks restore replaced by its restoration
    (guided by the other view when given) when its voxels (``axes`` {view: 3 x 3 voxel edges in mm,
    as acquired}) are much coarser than the restoration grid; said in ``out``'s notes. A view finer
    than the model grid but much coarser than the restoration grid is restored too: a thick slab
    loses anatomy across its slices that the model grid would keep. A guide that the guide check
    finds to be another person's is not used: the view is restored alone, and ``out`` carries
    the warning for the input check. ``prepared``: the pair was prepared from raw scans and is held
    to the check's thresholds for prepared pairs. Where the bundle has no threshold for the pair's
    kind (as given or prepared), the notes say that the check did not run."""
    from .restoration import RESTORATION_GRID, GuideMismatch, is_coarse, restore_scan, uncovered_words

    networks = list(bundle.restoration.values())
    view = networks[0].config.view if networks else None
    spacing = None if view not in ready else np.linalg.norm(axes[view], axis=0)
    if spacing is None or not is_coarse(spacing):
        return ready
    cancel.check()
    guide_view = other_view(view)
    called = {"lowres": volume_words(view, names), "guide": volume_words(guide_view, names)}
    how = f"guided by {called['guide']}" if guide_view in ready else "alone"
    try:
        restored = restore_scan(
            bundle, ready[view], ready.get(guide_view), called, acquired_axes=axes[view], prepared=prepared
        )
    except GuideMismatch as mismatch:
        restored, out.guide_mismatch, how = mismatch.alone, str(mismatch), f"alone: {mismatch}"
    acquired = " x ".join(f"{s:.1f}" for s in spacing)
    grid_mm = max(RESTORATION_GRID.spacing_mm)
    out.notes.append(
        f"{called['lowres']} ({acquired} mm voxels) is much coarser than the {grid_mm:g} mm restoration grid: "
        f"it was restored on it ({how}) before the analysis"
    )
    uncovered = uncovered_words(restored.record, called, guided=guide_view in ready and out.guide_mismatch is None)
    if uncovered:
        out.notes.append(uncovered)
    check = restored.record.get("guide_check") if out.guide_mismatch is None else None
    if isinstance(check, dict) and isinstance(check["threshold"], str):  # "not calibrated in this bundle"
        out.notes.append(
            f"the guide check (whether {called['guide']} is the same person's) did not run: this bundle's check is "
            f"not calibrated for {check['acquisition']}"
        )
    return {**ready, view: (restored.image[0].numpy(), restored.image.affine.numpy())}


@torch.no_grad()
def analyse_pair(
    bundle: Bundle,
    t1: tuple[np.ndarray, np.ndarray] | None,
    t2: tuple[np.ndarray, np.ndarray] | None,
    device: str | torch.device = "cpu",
    n_nearest: int = 5,
    names: dict[str, str] | None = None,
    prepare: bool | None = None,
    cancel: CancelToken | None = None,
) -> PairAnalysis:
    """Run the scan preparation, the shared preprocessing, the encoder and the decoder on one pair
    (either may be None); ``names`` {view: the volume's name} words the messages; ``prepare``: brain
    extraction and alignment to the bundle's template (default: when the bundle has one; off for
    inputs already skull-stripped and in the template's space); ``cancel``: raises ``Cancelled``
    once set, between the stages and inside the preparation's registrations (by default never)."""
    cancel = cancel or CancelToken()
    given = {view: data for view, data in zip(VIEWS, (t1, t2)) if data is not None}
    if not given:
        raise ValueError("give at least one of the T1w and T2w volumes")
    prepare = bundle.template is not None if prepare is None else prepare
    if prepare and bundle.template is None:
        raise ValueError("this model bundle carries no template to prepare raw scans against; give prepared inputs")
    model = bundle.model
    out = PairAnalysis()
    given = ready_for_preprocessing(bundle, given, names, prepare, out, cancel)
    images, grid = {}, None
    for view, (array, affine) in given.items():
        cancel.check()
        called = volume_words(view, names)
        # The first view sets the model grid; the other is resampled onto it, so that every
        # output, and every error map, lies on one grid that overlays both inputs.
        image, mask = preprocess_array(array, affine, bundle.preprocessing, reference=grid)
        problem = mask_problem(mask)
        if problem:
            raise BrainMaskError(f"{called}: {problem}")
        grid = image if grid is None else grid
        out.inputs[view], out.masks[view] = image[0], mask[0]
        images[view] = image.as_tensor()[None].to(device)
    grid = grid[0]

    def on_grid(volume: torch.Tensor) -> MetaTensor:
        return MetaTensor(volume.float().cpu(), affine=grid.affine.clone())

    cancel.check()
    latents, contents = encode_views(bundle, images)
    out.latents = {view: z[0].float().cpu() for view, z in latents.items()}
    if model.family == "spatial":
        out.content_maps = {view: on_grid(c[0]) for view, c in contents.items()}
    cancel.check()
    decoded = {name: on_grid(x[0, 0]) for name, x in decode_views(bundle, latents, contents).items()}
    for view in given:
        out.reconstructions[view] = decoded[f"{view} reconstruction"]
        out.errors[f"{view} reconstruction"] = error_map(out.reconstructions[view], out.inputs[view], out.masks[view])
    for target in VIEWS:
        name = cross_view_name(other_view(target), target)
        if name in decoded:
            out.cross_view[target] = decoded[name]
            if target in given:
                out.errors[name] = error_map(decoded[name], out.inputs[target], out.masks[target])
    if len(given) == 2:
        (content_a, style_a), (content_b, style_b) = (
            (model.content(out.latents[v]), model.style(out.latents[v])) for v in VIEWS
        )
        out.content_cosine = F.cosine_similarity(content_a, content_b, dim=0).item()
        out.style_distance = (style_a - style_b).norm().item()
    if bundle.cohort_content is not None:
        content = torch.stack([model.content(out.latents[v]) for v in given]).mean(0)
        # About the cohort's mean: every brain shares most of its content direction, so raw cosines
        # all read 1.00 and cannot tell the nearest subjects from the rest.
        mean = bundle.cohort_content.mean(0)
        similarity = F.cosine_similarity(bundle.cohort_content - mean, (content - mean)[None], dim=1)
        order = similarity.argsort(descending=True)[:n_nearest]
        out.nearest_cohort = [(bundle.cohort_subjects[i], similarity[i].item()) for i in order.tolist()]
    if bundle.strata is not None:
        out.stratum = describe_stratum(bundle, out.latents)
    if bundle.input_check is not None:
        cancel.check()  # the check encodes each view once more
        volumes = {view: mask_volume_ml(out.masks[view], bundle.preprocessing.spacing_mm) for view in given}
        latents = {view: z.double().numpy() for view, z in out.latents.items()}
        as_other = as_other_view_latents(bundle, images)
        as_other_view = None if as_other is None else {view: z[0] for view, z in as_other.items()}
        out.check = bundle.input_check.check(latents, volumes, out.content_cosine, names, as_other_view)
        if out.guide_mismatch:
            out.check.warnings.insert(0, out.guide_mismatch)
    return out


def as_other_view_latents(bundle: Bundle, images: dict[str, torch.Tensor]) -> dict[str, np.ndarray] | None:
    """{view: (B, latent_dim)} latents of each view's (B, 1, X, Y, Z) images encoded as the other
    view, for the input check's wrong-contrast test; None for an encoder that is not told the view
    (the global family: its own latents stand for them)."""
    if bundle.model.family != "spatial":
        return None
    with inference_precision(bundle.encoder):
        return {
            view: bundle.encoder(x, views=VIEWS.index(other_view(view))).double().cpu().numpy()
            for view, x in images.items()
        }


def describe_stratum(bundle: Bundle, latents: dict[str, torch.Tensor]) -> str:
    """The stratum of the cohort nearest to a pair's {view: (latent_dim,)} latents, in words. A
    missing view counts with the given view's content and the cohort's mean style of its own."""
    model = bundle.model
    given = next(iter(latents.values()))
    full = {
        view: latents[view] if view in latents else torch.cat([model.content(given), bundle.style_means[view]])
        for view in VIEWS
    }
    embedding = stratum_embedding(
        {v: z.double().numpy()[None] for v, z in full.items()}, model.content_dim, bundle.strata.embedding
    )
    return bundle.strata.describe(bundle.strata.nearest(embedding[0]))


def describe_analysis(analysis: PairAnalysis) -> str:
    """An analysis in plain lines for the panel's status line: the input check's warnings first,
    then the pair's figures."""
    lines = []
    if analysis.check is not None:
        lines += [f"Warning: {text}." for text in analysis.check.warnings]
    lines += [f"Note: {text}." for text in analysis.notes]
    if analysis.content_cosine is not None:
        lines.append(
            f"Content cosine T1w/T2w: {analysis.content_cosine:.4f}; style distance: {analysis.style_distance:.2f}"
        )
    if analysis.nearest_cohort:
        nearest = ", ".join(f"{name} ({similarity:.2f})" for name, similarity in analysis.nearest_cohort[:3])
        lines.append(f"Nearest training subjects by content (cosine about the cohort mean): {nearest}")
    if analysis.stratum:
        lines.append(f"Cohort stratum: {analysis.stratum}")
    if analysis.check is not None:
        lines.append(
            "Input check: " + ("no warnings" if analysis.check.passed else f"{len(analysis.check.warnings)} warning(s)")
        )
        lines += [f"  {figure}" for figure in analysis.check.figures]
    return "\n".join(lines) or "Done."
