"""Whether a pair given to the model looks like what it was trained on, in plain words.

``input_check.json`` in a bundle holds statistics of the training cohort, no images:

- per view, the training latents as a Gaussian on their leading principal axes; an input's
  atypicality is its distance from that Gaussian in units of the cohort's spread (about 1 for a
  training subject);
- per view, the validation subjects' atypicalities (to state an input's percentile) and the
  threshold past which an input is unlike the training data;
- per view, the range of brain-mask volumes that the validation subjects span;
- the content cosines of the validation subjects' own pairs and of pairs of two different
  validation subjects, and the cosine below which a pair does not look like one person.

The statistics are gathered in training (``MultiviewCRLLib.training.calibration``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import VIEWS, other_view, volume_words

INPUT_CHECK = "input_check.json"


@dataclass
class LatentGaussian:
    """A view's (N, D) training latents as a Gaussian: mean ``center`` (D,), principal ``axes``
    (P, D) with ``variances`` (P,), and the mean squared residual off those axes."""

    center: np.ndarray
    axes: np.ndarray
    variances: np.ndarray
    residual: float

    @classmethod
    def fit(cls, latents: np.ndarray, n_axes: int) -> LatentGaussian:
        center = latents.mean(0)
        deviations = latents - center
        _, singular, vt = np.linalg.svd(deviations, full_matrices=False)
        n_axes = min(n_axes, len(latents) - 1)
        axes, variances = vt[:n_axes], singular[:n_axes] ** 2 / (len(latents) - 1)
        residual = deviations - deviations @ axes.T @ axes
        return cls(center, axes, np.maximum(variances, 1e-12), max(float((residual**2).sum(1).mean()), 1e-12))

    def atypicality(self, latents: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,): the root mean of the whitened squared distances along each principal
        axis and off them; about 1 for the training subjects themselves."""
        deviations = np.atleast_2d(latents) - self.center
        coordinates = deviations @ self.axes.T
        residual = deviations - coordinates @ self.axes
        whitened = (coordinates**2 / self.variances).sum(1) + (residual**2).sum(1) / self.residual
        return np.sqrt(whitened / (len(self.variances) + 1))

    def to_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> LatentGaussian:
        return cls(
            *(np.asarray(values[k], dtype=np.float64) for k in ("center", "axes", "variances")),
            float(values["residual"]),
        )


def percentile_in(sorted_reference: np.ndarray, value: float) -> float:
    """Percentage of the reference at or below ``value``."""
    return 100.0 * np.searchsorted(sorted_reference, value, side="right") / len(sorted_reference)


@dataclass
class CheckReport:
    """What the check found for one pair: ``figures`` in words (always), ``warnings`` (when any)."""

    figures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.warnings


@dataclass
class InputCheck:
    gaussians: dict[str, LatentGaussian]  # view -> its training latents
    atypicality: dict[str, np.ndarray]  # view -> sorted validation atypicalities
    atypicality_threshold: dict[str, float]
    volume_range_ml: dict[str, tuple[float, float]]  # view -> validation brain-mask volumes, with a margin
    same_subject: np.ndarray  # sorted validation content cosines of one subject's two views
    different_subjects: np.ndarray  # sorted, of two different subjects' views
    same_subject_threshold: float

    def to_dict(self) -> dict:
        return {
            "gaussians": {v: g.to_dict() for v, g in self.gaussians.items()},
            "atypicality": {v: a.tolist() for v, a in self.atypicality.items()},
            "atypicality_threshold": self.atypicality_threshold,
            "volume_range_ml": {v: list(r) for v, r in self.volume_range_ml.items()},
            "same_subject": self.same_subject.tolist(),
            "different_subjects": self.different_subjects.tolist(),
            "same_subject_threshold": self.same_subject_threshold,
        }

    @classmethod
    def from_dict(cls, values: dict) -> InputCheck:
        def arrays(key):
            return {v: np.asarray(a, dtype=np.float64) for v, a in values[key].items()}

        check = cls(
            {v: LatentGaussian.from_dict(g) for v, g in values["gaussians"].items()},
            arrays("atypicality"),
            {v: float(t) for v, t in values["atypicality_threshold"].items()},
            {v: (float(r[0]), float(r[1])) for v, r in values["volume_range_ml"].items()},
            np.asarray(values["same_subject"], dtype=np.float64),
            np.asarray(values["different_subjects"], dtype=np.float64),
            float(values["same_subject_threshold"]),
        )
        if set(check.gaussians) != set(VIEWS):
            raise ValueError(f"statistics for views {sorted(check.gaussians)}, expected {list(VIEWS)}")
        return check

    def check(
        self,
        latents: dict[str, np.ndarray],
        volumes_ml: dict[str, float],
        content_cosine: float | None,
        names: dict[str, str] | None = None,
        as_other_view: dict[str, np.ndarray] | None = None,
    ) -> CheckReport:
        """Check the given views' (latent_dim,) latents, brain-mask volumes and, for a pair, the
        cosine of their contents; ``names`` {view: the volume's name} words the warnings;
        ``as_other_view`` {view: the latent of that input encoded as the other view}, for an
        encoder that is told each image's view (else the input's own latent stands for it)."""
        report = CheckReport()
        own, other = {}, {}  # each input's atypicality as the view it was given as, and as the other view
        for view, latent in latents.items():
            own[view] = float(self.gaussians[view].atypicality(latent)[0])
            other_latent = latent if as_other_view is None else as_other_view[view]
            other[view] = float(self.gaussians[other_view(view)].atypicality(other_latent)[0])
        # Given the other way round, every input must be typical of its new view, and (for a pair)
        # the pair as a whole more typical than as given: a view-aware encoder makes an image look
        # somewhat like whichever view it is told, so one clean T2w can score lower as a T1w, while
        # the pair as a whole stays more typical as given.
        plausible = all(other[v] <= self.atypicality_threshold[other_view(v)] for v in latents)
        swapped = plausible and sum(np.log(other[v] / own[v]) for v in latents) < 0
        for view in latents:
            this, other_name = volume_words(view, names), other_view(view)
            percentile = percentile_in(self.atypicality[view], own[view])
            report.figures.append(
                f"{view}: atypicality {own[view]:.2f} (above {percentile:.0f}% of the validation {view}s; "
                f"warning past {self.atypicality_threshold[view]:.2f})"
            )
            if swapped:
                report.warnings.append(
                    f"{this} looks more like a {other_name} (atypicality {other[view]:.2f} as a {other_name}, "
                    f"{own[view]:.2f} as a {view}); check that each volume was given as the right contrast"
                )
            elif own[view] > self.atypicality_threshold[view]:
                report.warnings.append(
                    f"{this} is unlike the model's training data (atypicality {own[view]:.2f}, beyond every "
                    f"validation {view} up to {self.atypicality_threshold[view]:.2f}); the outputs are not meaningful"
                )
            low, high = self.volume_range_ml[view]
            volume = volumes_ml[view]
            report.figures.append(
                f"{view}: brain mask {volume:.0f} ml (training cohort {low:.0f}-{high:.0f} ml with a margin)"
            )
            if not low <= volume <= high:
                cause = (
                    "it may still carry skull and scalp" if volume > high else "the brain may be cut off or masked away"
                )
                report.warnings.append(
                    f"the brain mask of {this} holds {volume:.0f} ml, outside the training cohort's "
                    f"{low:.0f}-{high:.0f} ml: {cause}; the outputs are not meaningful"
                )
        if content_cosine is not None:
            same = percentile_in(self.same_subject, content_cosine)
            different = percentile_in(self.different_subjects, content_cosine)
            report.figures.append(
                f"content agreement {content_cosine:.4f}: above {same:.0f}% of one person's pairs and "
                f"{different:.0f}% of two different people's pairs in validation"
            )
            if content_cosine < self.same_subject_threshold:
                report.warnings.append(
                    f"the {' and '.join(VIEWS)} do not look like one person (content agreement {content_cosine:.4f}, "
                    f"below {self.same_subject_threshold:.4f}, typical of two different people); check that both "
                    "volumes belong to this patient"
                )
        return report


def load_input_check(folder: Path) -> InputCheck | None:
    """The bundle's input-check statistics, or None when it has none."""
    path = Path(folder) / INPUT_CHECK
    if not path.is_file():
        return None
    return InputCheck.from_dict(json.loads(path.read_text()))


def mask_volume_ml(mask, spacing_mm) -> float:
    """Volume of a binary brain mask on the model grid (voxels of ``spacing_mm``), in millilitres."""
    return float((np.asarray(mask) > 0.5).sum() * np.prod(spacing_mm) / 1000.0)
