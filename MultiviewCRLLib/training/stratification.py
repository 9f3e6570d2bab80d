"""Strata of a cohort from its embeddings: affinity propagation on the embeddings' leading
principal components, each stratum's exemplar and factor profile, associations with every label
column, and the strata's stability.

Associations: Kruskal-Wallis across strata for numeric columns, chi-squared on the contingency
table for categorical ones, Benjamini-Hochberg FDR across columns. Stability: the adjusted Rand
index between the strata found on two random halves of the cohort, each half's exemplars
assigning every subject.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from sklearn.cluster import AffinityPropagation
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from statsmodels.stats.multitest import multipletests

from ..config import VIEW_NAMES
from ..runtime.strata import Strata
from .discovery import Pair

MIN_SUBJECTS = 12
FDR_LEVEL = 0.05
MISSING = {"", "n/a", "na", "nan", "none"}
# Affinity propagation's preference: a subject's suitability as an exemplar, as a quantile of the
# pairwise similarities. The median (scikit-learn's default) splits the synthetic cohort into many
# small strata that change between halves; the lowest similarity gives a few stable ones.
PREFERENCE_QUANTILE = 0.0
# Strata are found on this many leading principal components: on the synthetic cohort the
# split-half adjusted Rand index rose from 0.34 (all 256 content dims) to 0.60 (2 components),
# with the same content factors associated (README, "Strata of the cohort").
STRATA_AXES = 2


class StrataNotice(Exception):
    """The cohort cannot be stratified; the message says why (the evaluation reports it)."""


def affinity_strata(embedding: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Affinity propagation on (N, D) embeddings (similarity: negative squared distance).

    Returns (labels (N,), exemplar indices (S,)); raises StrataNotice when it does not converge.
    """
    similarity = -((embedding[:, None] - embedding[None]) ** 2).sum(-1)
    off_diagonal = similarity[~np.eye(len(similarity), dtype=bool)]
    model = AffinityPropagation(
        affinity="precomputed",
        preference=float(np.quantile(off_diagonal, PREFERENCE_QUANTILE)),
        damping=0.9,
        max_iter=2000,
        convergence_iter=50,
        random_state=seed,
    ).fit(similarity)
    exemplars = np.asarray(model.cluster_centers_indices_)
    if exemplars.size == 0 or np.any(model.labels_ < 0):
        raise StrataNotice("affinity propagation did not converge on these embeddings")
    return model.labels_, exemplars


def nearest_exemplar(embedding: np.ndarray, exemplars: np.ndarray) -> np.ndarray:
    """(N,) index of the nearest of (S, D) exemplars for each of (N, D) embeddings."""
    return ((embedding[:, None] - exemplars[None]) ** 2).sum(-1).argmin(1)


def split_half_stability(embedding: np.ndarray, rounds: int = 10, seed: int = 0) -> float:
    """Mean adjusted Rand index between the strata of two random halves, each assigning every subject."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(rounds):
        order = rng.permutation(len(embedding))
        halves = order[: len(order) // 2], order[len(order) // 2 :]
        assignments = []
        for half in halves:
            _, exemplars = affinity_strata(embedding[half], seed)
            assignments.append(nearest_exemplar(embedding, embedding[half][exemplars]))
        scores.append(adjusted_rand_score(*assignments))
    return float(np.mean(scores))


@dataclass
class ColumnTest:
    column: str
    test: str = ""
    statistic: float | None = None
    p: float | None = None
    q: float | None = None
    subjects: int = 0
    notice: str = ""

    def to_dict(self) -> dict:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items()}
        return clean | {"significant": self.q is not None and self.q < FDR_LEVEL}


def _numeric(values: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        return None


def column_test(column: str, values: list[str], labels: np.ndarray) -> ColumnTest:
    """Kruskal-Wallis (numbers) or chi-squared (categories) of one label column across strata,
    on the subjects that have a value; a notice instead of a test where none is possible."""
    present = np.array([v.strip().lower() not in MISSING for v in values])
    result = ColumnTest(column, subjects=int(present.sum()))
    kept = [v.strip() for v, keep in zip(values, present) if keep]
    strata = labels[present]
    if not present.all():
        result.notice = f"{len(values) - result.subjects} missing values; tested on the {result.subjects} with one"
    if len(set(kept)) < 2:
        result.notice = f"column {column!r} has {'no values' if not kept else 'a single value'}; not tested"
        return result
    if len(set(strata.tolist())) < 2:
        result.notice = f"the subjects with a value of {column!r} all lie in one stratum; not tested"
        return result
    numbers = _numeric(kept)
    if numbers is not None:
        groups = [numbers[strata == s] for s in np.unique(strata)]
        result.test = "kruskal-wallis"
        result.statistic, result.p = (float(x) for x in stats.kruskal(*groups))
    else:
        categories = sorted(set(kept))
        table = np.array(
            [[sum(1 for v, s in zip(kept, strata) if v == c and s == k) for c in categories] for k in np.unique(strata)]
        )
        result.test = "chi-squared"
        chi2 = stats.chi2_contingency(table)
        result.statistic, result.p = float(chi2.statistic), float(chi2.pvalue)
    return result


def associations(labels: np.ndarray, pairs: list[Pair]) -> list[ColumnTest]:
    """One test per label column of ``pairs``, with Benjamini-Hochberg q-values across the tested ones."""
    columns = sorted({c for p in pairs for c in p.labels})
    results = [column_test(c, [str(p.labels.get(c, "")) for p in pairs], labels) for c in columns]
    tested = [r for r in results if r.p is not None]
    if tested:
        q = multipletests([r.p for r in tested], alpha=FDR_LEVEL, method="fdr_bh")[1]
        for r, value in zip(tested, q):
            r.q = float(value)
    return results


def profiles(labels: np.ndarray, pairs: list[Pair], columns: list[str]) -> list[dict[str, float]]:
    """Per stratum, the percentile of its median within the cohort for each numeric column."""
    out = []
    for stratum in range(labels.max() + 1):
        profile = {}
        for column in columns:
            values = _numeric([str(p.labels.get(column, "nan")) for p in pairs])
            if values is None:
                continue
            cohort = values[np.isfinite(values)]
            members = values[(labels == stratum) & np.isfinite(values)]
            if members.size:
                profile[column] = float(stats.percentileofscore(cohort, np.median(members), kind="mean"))
        out.append(profile)
    return out


@dataclass
class StrataResult:
    strata: Strata
    labels: np.ndarray  # (N,) stratum of each subject
    exemplar_indices: np.ndarray
    tests: list[ColumnTest]
    stability: float
    coordinates: np.ndarray  # (N, P) on the principal axes
    notices: list[str] = field(default_factory=list)


def stratify(
    embedding: np.ndarray,
    pairs: list[Pair],
    kind: str,
    phrases: dict[str, tuple[str, str]] | None = None,
    seed: int = 0,
) -> StrataResult:
    """Strata of the subjects ``pairs`` from their (N, D) embeddings of ``kind``."""
    if len(pairs) < MIN_SUBJECTS:
        raise StrataNotice(f"a cohort of {len(pairs)} subjects is too small to stratify (at least {MIN_SUBJECTS})")
    pca = PCA(min(STRATA_AXES, *embedding.shape), random_state=seed).fit(embedding)
    coordinates = pca.transform(embedding)
    labels, exemplars = affinity_strata(coordinates, seed)
    tests = associations(labels, pairs)
    significant = [t.column for t in tests if t.q is not None and t.q < FDR_LEVEL and t.test == "kruskal-wallis"]
    strata = Strata(
        kind,
        pca.mean_,
        pca.components_,
        coordinates[exemplars],
        [pairs[i].key for i in exemplars],
        [int((labels == s).sum()) for s in range(len(exemplars))],
        profiles(labels, pairs, significant),
        {c: tuple(v) for c, v in (phrases or {}).items() if c in significant},
    )
    notices = [f"{t.column}: {t.notice}" for t in tests if t.notice]
    stability = float("nan")
    if len(exemplars) < 2:
        notices.append("one stratum only: the cohort shows no groups at this preference")
    elif len(pairs) < 2 * MIN_SUBJECTS:
        notices.append(f"stability not measured: halves of {len(pairs)} subjects are too small to stratify")
    else:
        stability = split_half_stability(coordinates, seed=seed)
    return StrataResult(strata, labels, exemplars, tests, stability, coordinates, notices)


def cohort_latents(bundle, pairs: list[Pair], cache_root, device) -> dict[str, np.ndarray]:
    """{view: (N, latent_dim)} latents of ``pairs``."""
    from .encoding import encode_cohort

    encoded = encode_cohort(bundle.encoder, pairs, bundle.preprocessing, cache_root, device)
    return {view: getattr(encoded, key) for key, view in VIEW_NAMES.items()}


def strata_metrics(result: StrataResult, pairs: list[Pair]) -> dict:
    """The ``strata`` section of metrics.json."""
    return {
        "embedding": result.strata.embedding,
        "subjects": len(pairs),
        "strata": len(result.strata.sizes),
        "sizes": result.strata.sizes,
        "exemplars": result.strata.exemplar_subjects,
        "descriptions": [result.strata.describe(s) for s in range(len(result.strata.sizes))],
        "stability_adjusted_rand": None if not math.isfinite(result.stability) else result.stability,
        "stability_definition": "mean adjusted Rand index between the strata of two random halves of the cohort "
        "(10 rounds), each half's exemplars assigning every subject",
        "associations": [t.to_dict() for t in result.tests],
        "notices": result.notices,
    }


def write_strata_tsv(path, result: StrataResult, pairs: list[Pair]) -> None:
    from ..runtime.storage import atomic_write_tsv

    exemplars = set(result.exemplar_indices.tolist())
    rows = [(p.key, p.split, label + 1, int(i in exemplars)) for i, (p, label) in enumerate(zip(pairs, result.labels))]
    atomic_write_tsv(path, ["subject", "split", "stratum", "exemplar"], rows)


def write_strata_figure(path, result: StrataResult) -> None:
    """The subjects on the strata's two leading axes, coloured by stratum (exemplars ringed), and
    each stratum's profile: the percentile of its median in the cohort for every associated factor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = result.strata.profiles
    columns = sorted({c for profile in profiles for c in profile})
    fig, (scatter, heat) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.3]})
    coords = np.pad(result.coordinates, ((0, 0), (0, max(0, 2 - result.coordinates.shape[1]))))
    scatter.scatter(coords[:, 0], coords[:, 1], c=result.labels, cmap="tab10", s=12, vmin=0, vmax=9)
    exemplars = coords[result.exemplar_indices]
    scatter.scatter(exemplars[:, 0], exemplars[:, 1], facecolors="none", edgecolors="black", s=90, label="exemplar")
    for s, (x, y) in enumerate(exemplars):
        scatter.annotate(str(s + 1), (x, y), fontsize=9, xytext=(5, 5), textcoords="offset points")
    scatter.set_xlabel("principal axis 1")
    scatter.set_ylabel("principal axis 2")
    scatter.set_title(f"{len(profiles)} strata of {len(result.labels)} subjects ({result.strata.embedding} embedding)")
    scatter.legend(fontsize=8)
    if columns:
        table = np.array([[profile.get(c, np.nan) for c in columns] for profile in profiles])
        image = heat.imshow(table, cmap="coolwarm", vmin=0, vmax=100, aspect="auto")
        heat.set_xticks(range(len(columns)), columns, rotation=30, ha="right", fontsize=8)
        heat.set_yticks(range(len(profiles)), [f"stratum {s + 1}" for s in range(len(profiles))], fontsize=8)
        fig.colorbar(image, ax=heat, label="percentile of the stratum's median in the cohort")
    heat.set_title("profiles over the factors that differ between strata (q < 0.05)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def stratify_cohort(bundle, pairs: list[Pair], latents: dict, folders, kind: str = "content", seed: int = 0) -> dict:
    """Strata of a cohort (a run's every split) from its {view: (N, latent_dim)} ``latents``
    under a bundle: the metrics.json section, and strata.tsv, strata.png and the bundle's
    strata.json in each of ``folders``. A cohort that cannot be stratified gets a notice instead."""
    from ..runtime.storage import atomic_write_json
    from ..runtime.strata import STRATA, stratum_embedding
    from .factors import FACTOR_PHRASES

    try:
        result = stratify(stratum_embedding(latents, bundle.content_dim, kind), pairs, kind, FACTOR_PHRASES, seed)
    except StrataNotice as notice:
        return {"embedding": kind, "subjects": len(pairs), "notices": [str(notice)]}
    for folder in folders:
        write_strata_tsv(folder / "strata.tsv", result, pairs)
        write_strata_figure(folder / "strata.png", result)
        atomic_write_json(folder / STRATA, result.strata.to_dict())
    return strata_metrics(result, pairs)
