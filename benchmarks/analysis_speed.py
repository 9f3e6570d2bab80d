"""Full analysis of one T1w/T2w pair (preprocess both, encode both, decode reconstructions and
cross-view images), as the Slicer module runs it, for the demo and the seed model sizes of both
model families.

    python benchmarks/analysis_speed.py [--repeats 3]

Weights are freshly initialised: the time does not depend on training. Prints the median wall
time of each size, its ratio to the target (demo sizes 3 s, seed sizes 15 s), each preset's ratio
to the global demo model measured in the same process, and the peak resident memory of the
process (target 3 GB).
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from MultiviewCRLLib.runtime.bundle import load_bundle, save_bundle
from MultiviewCRLLib.config import PRESETS, VIEWS
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.runtime.networks import build_networks
from MultiviewCRLLib.training.synthetic import generate_cohort

TARGET_S = {"demo": 3.0, "seed": 15.0, "spatial-demo": 3.0, "spatial-seed": 15.0}


def bundle_for(preset: str, folder: Path):
    p = PRESETS[preset]
    means = {v: torch.zeros(p.model.style_dim) for v in VIEWS}
    save_bundle(folder, *build_networks(p.model, p.preprocessing.spatial_size), p.model, p.preprocessing, means)
    return load_bundle(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bids = generate_cohort(Path(tmp) / "bids", n_subjects=1, seed=0, spacing_mm=1.0, workers=1)
        anat = bids / "sub-0001" / "anat"
        pair = []
        for view in VIEWS:
            img = nib.load(anat / f"sub-0001_{view}.nii.gz")
            pair.append((np.asarray(img.dataobj, dtype=np.float32), img.affine))
        medians = {}
        for preset in TARGET_S:
            bundle = bundle_for(preset, Path(tmp) / preset)
            analyse_pair(bundle, *pair)  # warm-up
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                analyse_pair(bundle, *pair)
                times.append(time.perf_counter() - start)
            medians[preset] = float(np.median(times))
    print(f"threads: {torch.get_num_threads()}; input: two 1 mm volumes of {pair[0][0].shape}")
    for preset, seconds in medians.items():
        print(
            f"{preset}: {seconds:.2f} s per pair (target {TARGET_S[preset]:.0f} s, ratio {seconds / TARGET_S[preset]:.2f})"
        )
    for preset in TARGET_S:
        print(f"{preset} / demo: {medians[preset] / medians['demo']:.2f}x")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak resident memory: {peak_gb:.2f} GB (target 3 GB, ratio {peak_gb / 3:.2f})")


if __name__ == "__main__":
    main()
