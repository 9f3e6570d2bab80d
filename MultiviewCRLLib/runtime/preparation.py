"""Scan preparation: what a scan needs before the shared preprocessing can take it.

So far, intensities: the brain mask's threshold is set in raw scanner units, so a scan stored in
another range (0-1 floats, negative values) would be masked to nothing or to everything. Such a
scan is brought to a scanner-like range first; a scan already in one is left exactly as it is.
"""

from __future__ import annotations

import numpy as np

# A scan is taken as stored in another range when its 99.5th percentile lies below this many
# mask thresholds (or when it has negative values) ...
RANGE_FACTOR = 10
# ... and is then rescaled linearly so that its minimum is 0 and that percentile this many thresholds.
TARGET_FACTOR = 20


def to_scanner_range(array: np.ndarray, mask_threshold: float) -> tuple[np.ndarray, str | None]:
    """An [i, j, k] volume in a scanner-like intensity range, and what was done in words (None
    when it was left as it is)."""
    low, high = float(array.min()), float(np.percentile(array, 99.5))
    if high <= low or (low >= 0 and high >= RANGE_FACTOR * mask_threshold):
        return array, None
    target = TARGET_FACTOR * mask_threshold
    rescaled = ((array - low) * (target / (high - low))).astype(np.float32)
    return rescaled, f"intensities from {low:.3g} to {high:.3g} (99.5th percentile) rescaled to 0 to {target:.0f}"


def mask_problem(mask: np.ndarray) -> str | None:
    """Why a brain mask on the model grid cannot be a brain, or None."""
    share = float((np.asarray(mask) > 0.5).mean())
    if share == 0:
        return "its brain mask is empty: no voxel lies above the mask threshold inside the model's field of view"
    if share > 0.98:
        return (
            f"its brain mask covers {100 * share:.0f}% of the model's field of view: the volume has no background "
            "(not a brain MRI, or a constant or noise volume)"
        )
    return None
