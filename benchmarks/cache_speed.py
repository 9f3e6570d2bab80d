"""Preprocessing throughput, uncached vs cached, on the synthetic cohort (1 mm input, report grid).

    python benchmarks/cache_speed.py [--subjects 8]

Prints volumes/s for the uncached pipeline, for the first pass that fills the persistent cache,
for a cached pass, and the cached/uncached ratio (target: at least 10).
"""

import argparse
import tempfile
import time
from pathlib import Path

from MultiviewCRLLib.config import PreprocessingConfig
from MultiviewCRLLib.training.data import paired_dataset
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.synthetic import generate_cohort


def volumes_per_second(dataset) -> float:
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset[index]
    return 2 * len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    args = parser.parse_args()
    config = PreprocessingConfig()
    with tempfile.TemporaryDirectory() as tmp:
        bids = generate_cohort(Path(tmp) / "bids", n_subjects=args.subjects, seed=0, spacing_mm=1.0)
        pairs = discover_bids(bids).kept
        uncached = volumes_per_second(paired_dataset(pairs, config))
        filling = volumes_per_second(paired_dataset(pairs, config, cache_root=Path(tmp) / "cache"))
        cached = volumes_per_second(paired_dataset(pairs, config, cache_root=Path(tmp) / "cache"))
    print(f"{2 * args.subjects} volumes at 1 mm -> {config.spatial_size} at {config.spacing_mm[0]:g} mm")
    print(f"uncached:      {uncached:8.2f} volumes/s")
    print(f"filling cache: {filling:8.2f} volumes/s")
    print(f"cached:        {cached:8.2f} volumes/s")
    print(f"cached / uncached: {cached / uncached:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
