"""Time the synthetic cohort generator: 64 subjects at 1 mm against the 5-minute budget.

    python benchmarks/synthetic_speed.py [--subjects 64] [--spacing 1]

Prints the wall time, seconds per subject, the ratio to the budget, and the parallel speed-up
over a one-process baseline run on a few subjects in the same process.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from MultiviewCRLLib.training.synthetic import generate_cohort

BUDGET_S = 300.0


def timed(out: Path, subjects: int, spacing: float, workers: int | None) -> float:
    start = time.perf_counter()
    generate_cohort(out, n_subjects=subjects, seed=0, spacing_mm=spacing, workers=workers)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=64)
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--baseline-subjects", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = timed(Path(tmp) / "baseline", args.baseline_subjects, args.spacing, workers=1)
        full = timed(Path(tmp) / "cohort", args.subjects, args.spacing, workers=None)
    per_subject_serial = base / args.baseline_subjects
    print(f"cores: {os.cpu_count()}")
    print(f"{args.subjects} subjects at {args.spacing:g} mm: {full:.1f} s ({full / args.subjects:.2f} s per subject)")
    print(f"ratio to the {BUDGET_S:.0f} s budget: {full / BUDGET_S:.2f}")
    print(
        f"one-process baseline: {per_subject_serial:.2f} s per subject; "
        f"parallel speed-up {per_subject_serial * args.subjects / full:.2f}x"
    )


if __name__ == "__main__":
    main()
