"""Full analysis of one T1w/T2w pair (preprocess both, encode both, decode reconstructions and
cross-view images), as the Slicer module runs it, for the demo and the seed model sizes of both
model families, and of a raw-looking 1 mm pair (skull, pose, a thick tilted T2w slab) with scan
preparation (brain extraction and alignment) before it; that preparation alone under its
registration schedule and under ``FULL_RESOLUTION`` (every rotation start refined fully, the
second view registered at its own resolution), as a ratio.

    python benchmarks/analysis_speed.py [--repeats 3]

Weights are freshly initialised: the time does not depend on training. Prints the median wall
time of each size, its ratio to the target (demo sizes 3 s, seed sizes 15 s, a prepared raw pair
10 s), each preset's ratio to the global demo model and the prepared raw pair's ratio to the
unprepared analysis, measured in the same process, the peak resident memory of the process
(target 3 GB), and that of a fresh process that analyses only the prepared raw pair (target 2 GB).
"""

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from MultiviewCRLLib.config import PRESETS, VIEWS
from MultiviewCRLLib.runtime.bundle import load_bundle, save_bundle
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.runtime.networks import build_networks
from MultiviewCRLLib.runtime.preparation import FULL_RESOLUTION, RegistrationSchedule, prepare_pair
from MultiviewCRLLib.training.atlas import mni_brain_template
from MultiviewCRLLib.training.raw_scans import write_raw_cohort
from MultiviewCRLLib.training.synthetic import generate_cohort

TARGET_S = {"demo": 3.0, "seed": 15.0, "spatial-demo": 3.0, "spatial-seed": 15.0}
BUNDLED_FAMILY = "spatial-demo"  # the preset of the bundled demo model, which the prepared raw pair is analysed with
PREPARED_TARGET_S = 10.0
PREPARED_TARGET_GB = 2.0


def bundle_for(preset: str, folder: Path, template=None):
    p = PRESETS[preset]
    means = {v: torch.zeros(p.model.style_dim) for v in VIEWS}
    networks = build_networks(p.model, p.preprocessing.spatial_size)
    save_bundle(folder, *networks, p.model, p.preprocessing, means, template=template)
    return load_bundle(folder)


def median_seconds(analyse, repeats: int) -> float:
    analyse()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        analyse()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def read_pair(anat: Path, subject: str) -> list:
    images = (nib.load(anat / f"{subject}_{view}.nii.gz") for view in VIEWS)
    return [(np.asarray(img.dataobj, dtype=np.float32), img.affine) for img in images]


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def prepared_pair_peak_gb(bundle_folder: Path, anat: Path, subject: str) -> float:
    """In this (fresh) process: load the bundle, analyse the raw pair with preparation, and
    return the process's peak resident memory in GB (Linux's VmHWM, which starts afresh in a new
    program, where ``ru_maxrss`` keeps the parent's)."""
    torch.set_num_threads(2)
    analyse_pair(load_bundle(bundle_folder), *read_pair(anat, subject), prepare=True)
    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024**2
    return peak_gb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        bids = generate_cohort(Path(tmp) / "bids", n_subjects=1, seed=0, spacing_mm=1.0, workers=1)
        pair = read_pair(bids / "sub-0001" / "anat", "sub-0001")
        medians = {}
        for preset in TARGET_S:
            bundle = bundle_for(preset, Path(tmp) / preset)
            medians[preset] = median_seconds(lambda bundle=bundle: analyse_pair(bundle, *pair), args.repeats)
        raw = write_raw_cohort(bids, Path(tmp) / "raw", n_subjects=1)
        raw_pair = read_pair(raw / "sub-0001" / "anat", "sub-0001")
        bundle = bundle_for(BUNDLED_FAMILY, Path(tmp) / "bundled-with-template", mni_brain_template())
        prepared = median_seconds(lambda: analyse_pair(bundle, *raw_pair, prepare=True), args.repeats)
        given = dict(zip(VIEWS, raw_pair))
        schedules = {"schedule": RegistrationSchedule(), "full resolution": FULL_RESOLUTION}
        preparation = {
            name: median_seconds(lambda s=s: prepare_pair(given, bundle.template, schedule=s), args.repeats)
            for name, s in schedules.items()
        }
        # A process of its own, so that the figure is the prepared pair's, not the presets' above.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            prepared_gb = pool.apply(
                prepared_pair_peak_gb, (Path(tmp) / "bundled-with-template", raw / "sub-0001" / "anat", "sub-0001")
            )
    print(f"threads: {torch.get_num_threads()}; input: two 1 mm volumes of {pair[0][0].shape}")
    for preset, seconds in medians.items():
        print(
            f"{preset}: {seconds:.2f} s per pair "
            f"(target {TARGET_S[preset]:.0f} s, ratio {seconds / TARGET_S[preset]:.2f})"
        )
    for preset in TARGET_S:
        print(f"{preset} / demo: {medians[preset] / medians['demo']:.2f}x")
    shapes = " and ".join(str(v[0].shape) for v in raw_pair)
    print(
        f"raw-looking pair ({shapes}), prepared, {BUNDLED_FAMILY} model: {prepared:.2f} s per pair (target "
        f"{PREPARED_TARGET_S:.0f} s, ratio {prepared / PREPARED_TARGET_S:.2f}); "
        f"/ unprepared {BUNDLED_FAMILY} analysis: "
        f"{prepared / medians[BUNDLED_FAMILY]:.1f}x"
    )
    print(
        f"preparation alone: {preparation['schedule']:.2f} s, full-resolution registrations "
        f"{preparation['full resolution']:.2f} s ({preparation['full resolution'] / preparation['schedule']:.2f}x)"
    )
    print(f"peak resident memory: {peak_gb():.2f} GB (target 3 GB, ratio {peak_gb() / 3:.2f})")
    print(
        f"peak resident memory of a process analysing only the prepared raw pair: {prepared_gb:.2f} GB "
        f"(target {PREPARED_TARGET_GB:.0f} GB, ratio {prepared_gb / PREPARED_TARGET_GB:.2f})"
    )


if __name__ == "__main__":
    main()
