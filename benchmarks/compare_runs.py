"""The headline figures of finished runs side by side, with their training seconds per step.

python benchmarks/compare_runs.py RUN_DIR [RUN_DIR ...]
"""

import argparse
import json
from pathlib import Path

from MultiviewCRLLib.training.report import HEADLINE, comparison_table
from MultiviewCRLLib.training.trainer import read_training_csv


def seconds_per_step(run_dir: Path) -> float:
    """Wall-clock seconds per step between the first and last Training.csv rows."""
    rows = read_training_csv(run_dir / "Training.csv")
    return (rows[-1]["seconds"] - rows[0]["seconds"]) / (rows[-1]["step"] - rows[0]["step"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    metrics = {run.name: json.loads((run / "metrics.json").read_text()) for run in args.runs}
    rows = [*HEADLINE, ("reconstruction MSE from the fused embedding T1w / T2w", ("fused_mse_t1", "fused_mse_t2"))]
    print(comparison_table({name: (m, "trained") for name, m in metrics.items()}, rows))
    print("seconds per training step: " + ", ".join(f"{run.name} {seconds_per_step(run):.2f}" for run in args.runs))


if __name__ == "__main__":
    main()
