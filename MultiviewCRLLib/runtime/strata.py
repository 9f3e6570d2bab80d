"""Strata of the training cohort as a bundle stores them, and where a new pair falls among them.

``strata.json`` holds, per stratum, the exemplar's embedding and a profile (for each label column
that differs between strata, the percentile of the stratum's median within the cohort): no
images. The strata themselves are found in training (``MultiviewCRLLib.training.stratification``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STRATA = "strata.json"
EMBEDDINGS = ("content", "fused")
# A profile percentile this far from the median is worth saying.
NOTABLE_PERCENTILE_DISTANCE = 20


def stratum_embedding(latents: dict[str, np.ndarray], content_dim: int, kind: str) -> np.ndarray:
    """(N, D) embedding that strata are found on, from {view: (N, latent_dim)} latents.

    "content": the content averaged over the views, (N, content_dim), scaled to unit length (the
    content InfoNCE compares cosines). "fused": that content followed by every view's style in
    view order, (N, content_dim + views x style_dim): one vector that decodes either view.
    """
    if kind not in EMBEDDINGS:
        raise ValueError(f"stratum embedding must be one of {EMBEDDINGS}, got {kind!r}")
    views = sorted(latents)
    content = np.mean([latents[v][:, :content_dim] for v in views], axis=0)
    content = content / np.maximum(np.linalg.norm(content, axis=1, keepdims=True), 1e-12)
    if kind == "content":
        return content
    return np.concatenate([content, *(latents[v][:, content_dim:] for v in views)], axis=1)


@dataclass
class Strata:
    """The cohort's strata. An (N, D) embedding of ``embedding`` kind is projected onto its leading
    principal axes, ``(e - center) @ axes.T`` (P, D), where the exemplars (S, P) live; one profile
    per stratum."""

    embedding: str
    center: np.ndarray
    axes: np.ndarray
    exemplars: np.ndarray
    exemplar_subjects: list[str]
    sizes: list[int]
    profiles: list[dict[str, float]]  # stratum -> {column: percentile of its median in the cohort}
    phrases: dict[str, tuple[str, str]]  # column -> (words for higher, words for lower)

    @property
    def cohort_size(self) -> int:
        return int(sum(self.sizes))

    def to_dict(self) -> dict:
        return {
            "embedding": self.embedding,
            "center": self.center.tolist(),
            "axes": self.axes.tolist(),
            "exemplars": self.exemplars.tolist(),
            "exemplar_subjects": self.exemplar_subjects,
            "sizes": self.sizes,
            "profiles": self.profiles,
            "phrases": {k: list(v) for k, v in self.phrases.items()},
        }

    @classmethod
    def from_dict(cls, values: dict) -> Strata:
        return cls(
            values["embedding"],
            *(np.asarray(values[k], dtype=np.float64) for k in ("center", "axes", "exemplars")),
            list(values["exemplar_subjects"]),
            [int(n) for n in values["sizes"]],
            [{k: float(p) for k, p in profile.items()} for profile in values["profiles"]],
            {k: tuple(v) for k, v in values["phrases"].items()},
        )

    def project(self, embedding: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, P) coordinates on the strata's principal axes."""
        return (embedding - self.center) @ self.axes.T

    def nearest(self, embedding: np.ndarray) -> int:
        """The stratum whose exemplar is nearest to one (D,) embedding (affinity propagation's rule)."""
        return int(np.argmin(((self.exemplars - self.project(embedding[None])) ** 2).sum(1)))

    def describe(self, stratum: int, most: int = 3) -> str:
        """Plain words, e.g. "stratum 3 of 7 (12 of 120 subjects): larger ventricles than 85% of
        the cohort"; the profile's strongest departures from the cohort's median first."""
        head = f"stratum {stratum + 1} of {len(self.sizes)} ({self.sizes[stratum]} of {self.cohort_size} subjects)"
        profile = self.profiles[stratum]
        notable = sorted(
            (c for c, p in profile.items() if abs(p - 50) >= NOTABLE_PERCENTILE_DISTANCE),
            key=lambda c: -abs(profile[c] - 50),
        )[:most]
        if not notable:
            return f"{head}: close to the cohort's median in every factor that sets strata apart"
        words = []
        for column in notable:
            higher, lower = self.phrases.get(column, (f"higher {column}", f"lower {column}"))
            percentile = profile[column]
            words.append(
                f"{higher} than {percentile:.0f}% of the cohort"
                if percentile >= 50
                else f"{lower} than {100 - percentile:.0f}% of the cohort"
            )
        return f"{head}: " + "; ".join(words)


def load_strata(folder: Path) -> Strata | None:
    """The bundle's strata, or None when its run was not stratified."""
    path = Path(folder) / STRATA
    if not path.is_file():
        return None
    return Strata.from_dict(json.loads(path.read_text()))
