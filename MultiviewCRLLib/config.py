"""Configuration shared by the trainer, the evaluator and the Slicer module."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class PreprocessingConfig:
    """The technical report's preprocessing: brain mask, 2 mm RAS grid of (91, 109, 91), z-score.

    ``mask_threshold`` applies to raw scanner intensities, before any resampling.
    """

    mask_threshold: float = 50.0
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    spatial_size: tuple[int, int, int] = (91, 109, 91)
    axcodes: str = "RAS"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PreprocessingConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing settings: {sorted(unknown)}")
        values = dict(values)
        for key in ("spacing_mm", "spatial_size"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def fingerprint(self) -> str:
        """A short hash of every setting: caches keyed on it are never reused after a change."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
