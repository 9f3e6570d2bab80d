"""Evaluation on the test split: identifiability probes, retrieval, reconstruction, cross-view
synthesis, DCI, and the same probes on an untrained encoder as a baseline.

Protocol (the identifiability literature's): encode validation and test subjects; split each
latent into content ``h[:, :content_dim]`` and style ``h[:, content_dim:]``; fit a StandardScaler
and every probe on validation, score on test.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch
from monai.metrics import PSNRMetric
from monai.metrics.regression import compute_ssim_and_cs
from tqdm import tqdm

from ..config import (
    LATENT_BLOCKS,
    VIEW_KEYS,
    VIEW_NAMES,
    EvaluationConfig,
    image_key,
    metric,
    other_view,
    r2_key,
    retrieval_key,
    split_latent,
    view_accuracy_key,
)
from ..runtime.bundle import Bundle
from ..runtime.inference import cross_view_name, decode_views, encode_views
from ..runtime.precision import inference_precision, precision_policy
from .clinical import (
    TissueSplit,
    cohort_labels,
    cross_view_lesion_metrics,
    diagnosis_metrics,
    segmentation_metrics,
)
from .discovery import Pair
from .encoding import Encoded, encode_cohort

# z-scoring the intensities removes a global gain, so it cannot be recovered from any image.
STYLE_FACTORS_REMOVED_BY_PREPROCESSING = ("gain",)


# --- probes ------------------------------------------------------------------------------------
def probe_r2(
    x_val: np.ndarray, y_val: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, probes=EvaluationConfig()
) -> dict[str, float]:
    """R² on test of a linear, a ridge and a kernel-ridge probe of one target (``probe_r2_columns``)."""
    return probe_r2_columns(x_val, y_val[:, None], x_test, y_test[:, None], probes)[0]


def probe_r2_columns(
    x_val: np.ndarray, y_val: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, probes=EvaluationConfig()
) -> list[dict[str, float]]:
    """For each column of ``y`` (subjects, targets): R² on test of a linear, a ridge (strength by
    cross-validation, per target) and a kernel-ridge (RBF, grid-searched with 3-fold CV per target)
    probe fitted on validation, with ``probes``' settings. Plain least squares interpolates
    hundreds of dims on tens of subjects; the ridge is the linear probe to trust. Every probe treats
    each target on its own; the targets are fitted together where a probe allows (one solve).

    The RBF's gamma is relative to the median pairwise distance of the validation features (the
    median heuristic), so the same grid suits 8 dims and 512: on hundreds of standardised dims the
    grid's absolute gammas would mostly give a near-identity kernel.
    """
    from scipy.spatial.distance import pdist
    from sklearn.kernel_ridge import KernelRidge
    from sklearn.linear_model import LinearRegression, RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_val)
    a, b = scaler.transform(x_val), scaler.transform(x_test)
    target = StandardScaler().fit(y_val)
    ya, yb = target.transform(y_val), target.transform(y_test)
    linear = LinearRegression().fit(a, ya).predict(b)
    ridge = RidgeCV(alphas=np.asarray(probes.ridge_alphas), alpha_per_target=True).fit(a, ya).predict(b)
    width = float(np.median(pdist(a))) or 1.0
    grid = probes.kernel_ridge_grid
    if len(grid["alpha"]) * len(grid["gamma"]) == 1:
        model = KernelRidge(kernel="rbf", alpha=grid["alpha"][0], gamma=grid["gamma"][0])
        kernel = model.fit(a / width, ya).predict(b / width)
    else:
        folds = max(2, min(3, len(a) // 2))  # R² needs at least two samples per held-out fold
        columns = [GridSearchCV(KernelRidge(kernel="rbf"), grid, cv=folds).fit(a / width, y) for y in ya.T]
        kernel = np.stack([search.predict(b / width) for search in columns], axis=1)
    scores = {
        name: r2_score(yb, predicted, multioutput="raw_values")
        for name, predicted in (("linear", linear), ("ridge", ridge), ("kernel_ridge", kernel))
    }
    return [{name: float(values[j]) for name, values in scores.items()} for j in range(y_val.shape[1])]


def view_accuracy(val: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """LogisticRegression accuracy on test at telling the T1w block from the T2w block (chance 0.5)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_val, y_val = np.concatenate(val), np.repeat([0, 1], [len(val[0]), len(val[1])])
    x_test, y_test = np.concatenate(test), np.repeat([0, 1], [len(test[0]), len(test[1])])
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_val, y_val)
    return float(model.score(x_test, y_test))


def dci(x_val: np.ndarray, factors_val: np.ndarray, x_test: np.ndarray, factors_test: np.ndarray) -> dict[str, float]:
    """DCI (Eastwood & Williams) with gradient-boosted-tree importances; informativeness is test R²."""
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.metrics import r2_score

    importances, informativeness = [], []
    for j in range(factors_val.shape[1]):
        model = GradientBoostingRegressor(n_estimators=50, max_depth=2, random_state=0).fit(x_val, factors_val[:, j])
        importances.append(model.feature_importances_)
        informativeness.append(r2_score(factors_test[:, j], model.predict(x_test)))
    r = np.abs(np.array(importances).T)  # (codes, factors)

    def entropy_score(p: np.ndarray, base: int) -> np.ndarray:
        p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
        return 1.0 - (-(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(base))

    code_weight = r.sum(axis=1) / max(r.sum(), 1e-12)
    disentanglement = float((entropy_score(r, r.shape[1]) * code_weight).sum()) if r.shape[1] > 1 else 1.0
    completeness = float(entropy_score(r.T, r.shape[0]).mean())
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness_r2": float(np.mean(informativeness)),
    }


# --- retrieval -------------------------------------------------------------------------------
def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return a @ b.T


def retrieval_at_k(queries: np.ndarray, keys: np.ndarray, k: int) -> float:
    """Fraction of queries whose own subject (same row) is among the k most similar keys."""
    ranks = np.argsort(-cosine(queries, keys), axis=1)[:, :k]
    return float(np.mean([i in row for i, row in enumerate(ranks)]))


# --- images --------------------------------------------------------------------------------------
def masked_unit_range(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images scaled to [0, 1] by the target's range inside the mask, zero outside it."""
    inside = target[mask]
    low, high = inside.min(), inside.max()
    scale = (high - low).clamp_min(1e-6)
    return ((pred - low) / scale).clamp(0, 1) * mask, ((target - low) / scale) * mask


def psnr_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """PSNR and SSIM inside the brain mask on [0, 1] intensities. Tensors (X, Y, Z); mask boolean."""
    p, t = masked_unit_range(pred, target, mask)
    psnr = PSNRMetric(max_val=1.0)(p[mask][None, None], t[mask][None, None]).item()
    window = 7
    ssim_map, _ = compute_ssim_and_cs(p[None, None], t[None, None], 3, [window] * 3, [1.5] * 3, data_range=1.0)
    cut = window // 2
    inner = mask[cut:-cut, cut:-cut, cut:-cut]
    return psnr, ssim_map[0, 0][inner].mean().item()


IMAGE_KINDS = {
    "recon": "self-reconstruction decode(content and style of {v}) vs {v}",
    "cross": "cross-view synthesis decode(content of the other view + style of {v}) vs {v}",
    "cross_meanstyle": "missing-view synthesis decode(content of the other view + cohort mean style of {v}) vs {v}",
    "cross_ownstyle": "control: decode(content of the other view + that view's own style) vs {v} (style must matter)",
    "cross_othercontent": "control: decode(content of another test subject's other view + style of {v}) vs {v} "
    "(content must matter)",
}


def reference_volumes(pairs: list[Pair], preprocessing) -> list[dict] | None:
    """The noise-free references of each pair's views, preprocessed like the inputs; None when the
    cohort has none (only the synthetic cohort writes them)."""
    from ..runtime.preprocessing import preprocess_file
    from .synthetic import noise_free_reference

    paths = [{key: noise_free_reference(getattr(p, key)) for key in VIEW_KEYS} for p in pairs]
    if not paths or any(path is None for pair in paths for path in pair.values()):
        return None
    return [
        {key: preprocess_file(path, preprocessing)[0][0].as_tensor() for key, path in pair.items()} for pair in paths
    ]


def encoded_chunks(bundle: Bundle, images: list[dict], device, size: int = 8) -> list:
    """[(chunk of ``images``, (latents, contents) of its views as from ``encode_views``)], chunk by
    chunk: the images encoded once for every measure that decodes them."""
    chunks = []
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        x = {VIEW_NAMES[k]: torch.stack([v[k] for v in chunk])[:, None].to(device) for k in VIEW_KEYS}
        chunks.append((chunk, encode_views(bundle, x)))
    return chunks


def chunk_images(chunks: list) -> list[dict]:
    return [item for chunk, _ in chunks for item in chunk]


@torch.no_grad()
def image_quality(bundle: Bundle, chunks: list, references: list[dict] | None = None):
    """PSNR and SSIM of every decoding kind (IMAGE_KINDS) of both views of the images in ``chunks``
    (from ``encoded_chunks``) against the input and, when given, against its noise-free reference
    (noise cannot be predicted).

    Returns the metrics and, per subject, the decoded volumes for the report.
    """
    model, decoder = bundle.model, bundle.decoder
    decoded = {f"{kind}_{key}": [] for kind in IMAGE_KINDS for key in VIEW_KEYS}
    images = chunk_images(chunks)
    for _chunk, (latents, contents) in chunks:
        both = decode_views(bundle, latents, contents)
        for key in VIEW_KEYS:
            target, source = VIEW_NAMES[key], VIEW_NAMES[other_view(key)]
            alone = decode_views(bundle, {source: latents[source]}, {source: contents[source]})
            style = model.style(latents[target])
            with inference_precision(decoder):
                other_content = decoder.decode(contents[source].roll(1, dims=0), style)
            outputs = {
                "recon": both[f"{target} reconstruction"],
                "cross": both[cross_view_name(source, target)],
                "cross_meanstyle": alone[cross_view_name(source, target)],
                "cross_ownstyle": both[f"{source} reconstruction"],
                "cross_othercontent": other_content,
            }
            for kind, volume in outputs.items():
                decoded[f"{kind}_{key}"].append(volume[:, 0].float().cpu())
    decoded = {name: torch.cat(parts) for name, parts in decoded.items()}
    targets = {"": images} | ({"_reference": references} if references is not None else {})
    metrics = {}
    for name, volumes in decoded.items():
        kind, key = name.rsplit("_", 1)
        text = IMAGE_KINDS[kind].format(v=VIEW_NAMES[key])
        for suffix, truth in targets.items():
            scores = [psnr_ssim(volumes[i], truth[i][key], images[i][f"mask_{key}"] > 0.5) for i in range(len(images))]
            against = " (against the noise-free reference)" if suffix else ""
            for measure, unit, values in (
                ("psnr", " (dB)", [s[0] for s in scores]),
                ("ssim", "", [s[1] for s in scores]),
            ):
                metrics[image_key(measure, kind + suffix, key)] = metric(
                    np.mean(values), f"{measure.upper()}{unit} inside the brain mask, [0,1] range: {text}{against}"
                )
    for key in VIEW_KEYS:
        gap = metrics[image_key("psnr", "recon", key)]["value"] - metrics[image_key("psnr", "cross", key)]["value"]
        metrics[f"psnr_gap_cross_{key}"] = metric(
            gap, f"self-reconstruction PSNR minus cross-view PSNR for {VIEW_NAMES[key]} (dB)"
        )
    per_subject = [{name: decoded[name][i] for name in decoded} for i in range(len(images))]
    return metrics, per_subject


def contrast_to_noise(image: torch.Tensor, bright: torch.Tensor, dark: torch.Tensor) -> float:
    """|mean(bright) - mean(dark)| / pooled standard deviation of two voxel classes of an image."""
    a, b = image[bright].double(), image[dark].double()
    return ((a.mean() - b.mean()).abs() / ((a.var() + b.var()) / 2).sqrt().clamp_min(1e-12)).item()


@torch.no_grad()
def fused_reconstruction(bundle: Bundle, chunks: list) -> dict:
    """Each view decoded from the subject's fused embedding: the content averaged over both views
    (the map in the spatial family) with that view's style. Its size against the two volumes'
    voxels, the MSE inside the brain, and the CNR retention: the decoded image's contrast-to-noise
    ratio between the input's brighter and darker halves of brain voxels, over the input's."""
    model = bundle.model
    errors, retention = {k: [] for k in VIEW_KEYS}, {k: [] for k in VIEW_KEYS}
    images = chunk_images(chunks)
    for chunk, (latents, contents) in chunks:
        fused_content = torch.stack([contents[v] for v in VIEW_NAMES.values()]).mean(0)
        for key, view in VIEW_NAMES.items():
            with inference_precision(bundle.decoder):
                decoded = bundle.decoder.decode(fused_content, model.style(latents[view]))[:, 0].float().cpu()
            for volume, item in zip(decoded, chunk):
                inside, target = item[f"mask_{key}"] > 0.5, item[key]
                errors[key].append((volume - target)[inside].pow(2).mean().item())
                bright = inside & (target > target[inside].median())
                dark = inside & ~bright
                retention[key].append(contrast_to_noise(volume, bright, dark) / contrast_to_noise(target, bright, dark))
        content_values = fused_content[0].numel()
    values = content_values + len(VIEW_KEYS) * model.style_dim
    voxels = len(VIEW_KEYS) * math.prod(images[0]["t1"].shape)
    out = {
        "fused_embedding_values": metric(values, "numbers a subject's fused embedding holds (content + both styles)"),
        "fused_compression_ratio": metric(voxels / values, "voxels of both preprocessed views per fused value"),
    }
    for key, view in VIEW_NAMES.items():
        out[f"fused_mse_{key}"] = metric(
            np.mean(errors[key]), f"MSE inside the brain of {view} decoded from the fused embedding"
        )
        out[f"fused_cnr_retention_{key}"] = metric(
            np.mean(retention[key]), f"CNR of {view} decoded from the fused embedding over the input's (1 = kept)"
        )
    return out


@torch.no_grad()
def content_maps(chunks: list) -> list[dict]:
    """Spatial family: each subject's content maps {key: (K, X, Y, Z)} of both views, from
    ``encoded_chunks``."""
    maps = []
    for chunk, (_, contents) in chunks:
        maps += [{k: contents[VIEW_NAMES[k]][i].float().cpu() for k in VIEW_KEYS} for i in range(len(chunk))]
    return maps


def map_summary(content_map: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per channel, the mean and standard deviation of a (K, X, Y, Z) map inside the brain: (2K,)."""
    inside = content_map[:, mask > 0.5]
    return torch.cat([inside.mean(1), inside.std(1)]).numpy()


def content_map_metrics(val: tuple[list, list], test: tuple[list, list]) -> dict:
    """Agreement of a subject's two content maps and whether a map gives its view away.

    ``val``, ``test``: (images, maps) as from ``encode_cohort(..., with_images=True)`` and ``content_maps``.
    """
    images, maps = test
    correlations = []
    for volumes, pair in zip(images, maps):
        inside = (volumes["mask_t1"] > 0.5) & (volumes["mask_t2"] > 0.5)
        a, b = (pair[k][:, inside].flatten().numpy() for k in VIEW_KEYS)
        correlations.append(np.corrcoef(a, b)[0, 1])

    def summaries(split: tuple[list, list]) -> tuple[np.ndarray, np.ndarray]:
        return tuple(
            np.stack([map_summary(pair[k], volumes[f"mask_{k}"]) for volumes, pair in zip(*split)]) for k in VIEW_KEYS
        )

    return {
        "content_map_correlation": metric(
            float(np.mean(correlations)),
            "voxelwise Pearson correlation between a subject's T1w and T2w content maps inside the brain "
            "(target ≥ 0.9)",
        ),
        view_accuracy_key("content_map"): metric(
            view_accuracy(summaries(val), summaries(test)),
            "LogisticRegression accuracy telling T1w from T2w by the content map's per-channel mean and spread "
            "inside the brain (chance 0.5)",
        ),
    }


# --- the whole evaluation ------------------------------------------------------------------------
def factor_groups(pairs: list[Pair]) -> dict[str, list[str]] | None:
    """Known generating factors in the labels (the synthetic cohort's), grouped; None for real cohorts."""
    from .factors import factor_names

    content, style = factor_names()
    if not pairs or not all(name in pairs[0].labels for name in content):
        return None
    return {"content": content, "style_T1w": style["T1w"], "style_T2w": style["T2w"]}


def factor_matrix(pairs: list[Pair], names: list[str]) -> np.ndarray:
    return np.array([[float(p.labels[n]) for n in names] for p in pairs])


def retrieval_and_view_metrics(val: Encoded, test: Encoded, content_dim: int) -> dict:
    """Cross-view retrieval by content (top-1 and top-5, both ways) and the view probe on each block."""
    out: dict = {}
    for view in VIEW_KEYS:
        q, k = (split_latent(getattr(test, v), content_dim)[0] for v in (view, other_view(view)))
        other = VIEW_NAMES[other_view(view)]
        for top in (1, 5):
            out[retrieval_key(top, VIEW_NAMES[view], other)] = metric(
                retrieval_at_k(q, k, top),
                f"content cosine retrieval of the subject's {other} among test subjects, "
                f"top-{top} (chance {top}/{len(q)})",
            )
    for block, cols in latent_blocks(content_dim).items():
        out[view_accuracy_key(block)] = metric(
            view_accuracy((val.t1[:, cols], val.t2[:, cols]), (test.t1[:, cols], test.t2[:, cols])),
            f"LogisticRegression accuracy telling T1w from T2w on the {block} block (chance 0.5)",
        )
    return out


def latent_blocks(content_dim: int) -> dict[str, slice]:
    return dict(zip(LATENT_BLOCKS, (slice(0, content_dim), slice(content_dim, None), slice(None))))


def factor_probes(val: Encoded, test: Encoded, content_dim: int, groups: dict, probes, seed: int, label: str):
    """({(block, view key, factor): {probe: R²}}, metrics of the permuted-factor control per view)."""
    rng = np.random.default_rng(seed)
    per_factor, controls = {}, {}
    for (block, cols), view in tqdm(
        list(product(latent_blocks(content_dim).items(), VIEW_KEYS)), desc=f"probes, {label}", unit="block", leave=False
    ):
        x_val, x_test = getattr(val, view)[:, cols], getattr(test, view)[:, cols]
        for names in groups.values():
            y_val, y_test = factor_matrix(val.pairs, names), factor_matrix(test.pairs, names)
            for name, r2 in zip(names, probe_r2_columns(x_val, y_val, x_test, y_test, probes)):
                per_factor[(block, view, name)] = r2
        if block == "content":
            names = groups["content"]
            y_val = factor_matrix(val.pairs, names)
            shuffled = factor_matrix(test.pairs, names)[rng.permutation(len(test.pairs))]
            control = [r2["kernel_ridge"] for r2 in probe_r2_columns(x_val, y_val, x_test, shuffled, probes)]
            controls[f"control_permuted_content_r2_{VIEW_NAMES[view]}"] = metric(
                float(np.mean(control)),
                "kernel-ridge R² of content -> content factors shuffled across test subjects (must collapse)",
            )
    return per_factor, controls


def mean_r2_metrics(per_factor: dict, groups: dict, content_dim: int) -> dict:
    """Each probe's mean R² from each block to the content factors, the view's own style factors
    (those preprocessing leaves recoverable) and all style factors."""
    counted_style = {
        view: [
            n
            for n in groups[f"style_{VIEW_NAMES[view]}"]
            if n.split("_", 1)[1] not in STYLE_FACTORS_REMOVED_BY_PREPROCESSING
        ]
        for view in VIEW_KEYS
    }
    every_style = [(v, n) for v in VIEW_KEYS for g in ("style_T1w", "style_T2w") for n in groups[g]]
    out: dict = {}
    for block in latent_blocks(content_dim):
        for kind in ("linear", "ridge", "kernel_ridge"):
            content_scores = [per_factor[(block, v, n)][kind] for v in VIEW_KEYS for n in groups["content"]]
            out[r2_key(kind, block, "content")] = metric(
                float(np.mean(content_scores)),
                f"mean {kind} R² of the content factors from the {block} block (both views)",
            )
            own = [per_factor[(block, v, n)][kind] for v in VIEW_KEYS for n in counted_style[v]]
            out[r2_key(kind, block, "own_style")] = metric(
                float(np.mean(own)),
                f"mean {kind} R² of the view's own style factors (gain excluded) from the {block} block",
            )
            out[r2_key(kind, block, "style")] = metric(
                float(np.mean([per_factor[(block, v, n)][kind] for v, n in every_style])),
                f"mean {kind} R² of all style factors (both views) from the {block} block",
            )
    out["style_factors_counted"] = {VIEW_NAMES[v]: names for v, names in counted_style.items()}
    return out


def representation_metrics(
    val: Encoded, test: Encoded, content_dim: int, seed: int = 0, label: str = "", probes=EvaluationConfig()
) -> dict:
    """Probes, view accuracy, retrieval and DCI for one encoder's latents (``label`` names the progress bar)."""
    out = retrieval_and_view_metrics(val, test, content_dim)
    groups = factor_groups(test.pairs)
    out.update(diagnosis_metrics(val, test, content_dim, groups and groups["content"]))
    if groups is None:
        return out | real_cohort_metrics(test, content_dim)
    per_factor, controls = factor_probes(val, test, content_dim, groups, probes, seed, label)
    out.update(controls)
    for (block, view, name), r2 in per_factor.items():
        for kind, value in r2.items():
            out[f"r2_{kind}_{block}_{VIEW_NAMES[view]}_{name}"] = metric(
                value, f"{kind} probe R² of {name} from the {block} block of the {VIEW_NAMES[view]} latent"
            )
    out.update(mean_r2_metrics(per_factor, groups, content_dim))
    all_factors = groups["content"] + groups["style_T1w"]
    d = dci(val.t1, factor_matrix(val.pairs, all_factors), test.t1, factor_matrix(test.pairs, all_factors))
    for key, value in d.items():
        out[f"dci_{key}"] = metric(
            value, f"DCI {key} of the T1w latent w.r.t. content and T1w style factors (gradient-boosted trees)"
        )
    return out


def real_cohort_metrics(test: Encoded, content_dim: int) -> dict:
    """Without generating factors: cross-view content agreement and style -> subject retrieval."""
    (content_t1, style_t1), (content_t2, style_t2) = (split_latent(z, content_dim) for z in (test.t1, test.t2))
    sim = cosine(content_t1, content_t2)
    off_diagonal = sim[~np.eye(len(sim), dtype=bool)]
    return {
        "content_cosine_same_subject": metric(
            float(np.mean(np.diag(sim))), "mean content cosine between a subject's T1w and T2w"
        ),
        "content_cosine_other_subjects": metric(
            float(np.mean(off_diagonal)), "mean content cosine between different subjects' T1w and T2w"
        ),
        "style_subject_retrieval_top1": metric(
            retrieval_at_k(style_t1, style_t2, 1),
            f"style cosine retrieval of the subject's T2w from its T1w (target: chance 1/{len(sim)})",
        ),
    }


def evaluate(
    bundle: Bundle,
    val_pairs: list[Pair],
    test_pairs: list[Pair],
    cache_root,
    device="cpu",
    seed: int = 0,
    probes=EvaluationConfig(),
):
    """Every metric for the bundle and for an untrained encoder of the same architecture, the probes
    with ``probes``' settings.

    Returns (metrics, report material).
    """
    from ..runtime.networks import build_networks

    prep = bundle.preprocessing
    bundle.encoder.to(device)
    bundle.decoder.to(device).eval()
    val, val_images = encode_cohort(bundle.encoder, val_pairs, prep, cache_root, device, with_images=True)
    test, images = encode_cohort(bundle.encoder, test_pairs, prep, cache_root, device, with_images=True)
    metrics = {"trained": representation_metrics(val, test, bundle.content_dim, seed, "trained", probes)}
    test_chunks = encoded_chunks(bundle, images, device)
    if bundle.model.family == "spatial":
        maps = (content_maps(encoded_chunks(bundle, val_images, device)), content_maps(test_chunks))
        metrics["trained"].update(content_map_metrics((val_images, maps[0]), (images, maps[1])))
    references = reference_volumes(test_pairs, prep)
    image_metrics, decoded = image_quality(bundle, test_chunks, references)
    metrics["trained"].update(image_metrics)
    test_labels = cohort_labels(test_pairs, prep)
    if test_labels is not None:
        spatial = bundle.model.family == "spatial"
        test_tissues = TissueSplit(images, maps[1] if spatial else [], test_labels, test_pairs)
        if references is not None:
            metrics["trained"].update(cross_view_lesion_metrics(decoded, references, test_tissues))
        if spatial:  # only maps are named after tissues, on the validation subjects' labels
            val_tissues = TissueSplit(val_images, maps[0], cohort_labels(val_pairs, prep), val_pairs)
            metrics["trained"].update(segmentation_metrics(val_tissues, test_tissues, test_labels[0].affine, seed))
    metrics["trained"].update(fused_reconstruction(bundle, test_chunks))
    torch.manual_seed(seed)
    untrained = build_networks(bundle.model, prep.spatial_size)[0]  # in eval mode, as initialised
    untrained.to(device, memory_format=precision_policy(torch.device(device)).memory_format)
    metrics["untrained_baseline"] = representation_metrics(
        encode_cohort(untrained, val_pairs, prep, cache_root, device),
        encode_cohort(untrained, test_pairs, prep, cache_root, device),
        bundle.content_dim,
        seed,
        "untrained",
        probes,
    )
    metrics["subjects"] = {"val": len(val_pairs), "test": len(test_pairs)}
    material = {"images": images, "decoded": decoded, "subjects": [p.key for p in test_pairs]}
    if bundle.model.family == "spatial":
        material["maps"] = maps[1]
    return metrics, material
