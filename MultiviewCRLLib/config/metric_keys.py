"""Keys and entries of metrics.json: the evaluation writes them; the report, the tests and the docs read them."""

from __future__ import annotations

import math


def metric(value: float, definition: str, split: str = "test") -> dict:
    """One metrics.json entry: the value (None when not finite), what it measures, and on which split."""
    return {
        "value": None if value is None or not math.isfinite(value) else float(value),
        "definition": definition,
        "split": split,
    }


def retrieval_key(top: int, source: str, target: str) -> str:
    """Cross-view retrieval of ``target`` views from ``source`` views (view names), top-k."""
    return f"retrieval_top{top}_{source}_to_{target}"


def image_key(measure: str, kind: str, view_key: str) -> str:
    """``measure`` psnr/ssim of ``kind`` recon/cross/cross_meanstyle decodings of view ``view_key`` (t1/t2)."""
    return f"{measure}_{kind}_{view_key}"


def r2_key(probe: str, block: str, target: str) -> str:
    """Mean R² of a ``probe`` (linear/kernel_ridge) from a latent ``block`` to the ``target`` factors
    (content, style, own_style)."""
    return f"r2_{probe}_{block}_to_{target}"


def view_accuracy_key(block: str) -> str:
    return f"view_accuracy_{block}"
