"""How often the input check warns (or the analysis refuses), per kind of input, on a bundle's
held-out test subjects.

    python benchmarks/input_check.py [--bundle Resources/Models/demo] [--cohort data/synthetic-adni-n600-s0-2mm]

Cases, each on every test subject (the cohort's test split with the run's seed):

- clean: the subject's own T1w and T2w (the share warned about should be small);
- different subjects: the subject's T1w with the next test subject's T2w;
- swapped contrasts: the T2w given as the T1w and the T1w as the T2w;
- not brain MRI, given as the T2w beside the subject's own T1w: noise; a box of constant value
  plus noise; CT-like intensities (air -1000, a skull shell of 1000, brain 20-40 HU);
- with ``--raw DIR`` (raw-looking scans of test subjects, ``python -m
  MultiviewCRLLib.training.raw_scans ... --split test``): both views with skull and scalp, in
  their own pose and grids, analysed without preparation.
"""

import argparse
import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.training.data import assign_splits
from MultiviewCRLLib.training.discovery import discover


def noise(reference: np.ndarray, rng) -> np.ndarray:
    return np.abs(rng.normal(0, reference[reference > 0].std(), reference.shape)).astype(np.float32)


def box(reference: np.ndarray, rng) -> np.ndarray:
    out = rng.normal(0, 20, reference.shape).astype(np.float32)
    centre, half = np.array(reference.shape) // 2, np.array(reference.shape) // 3
    out[tuple(slice(c - h, c + h) for c, h in zip(centre, half))] += 500
    return out


def ct_like(reference: np.ndarray, rng) -> np.ndarray:
    brain = reference > 0
    skull = ndimage.binary_dilation(brain, iterations=3) & ~brain
    out = np.full(reference.shape, -1000.0, dtype=np.float32)
    out[brain] = rng.uniform(20, 40, brain.sum())
    out[skull] = 1000 + rng.normal(0, 50, skull.sum())
    return out


NOT_BRAIN = {"noise": noise, "box of constant value plus noise": box, "CT-like intensities": ct_like}


def cases(t1, t2, next_t2, rng) -> dict:
    """{case: (T1w slot, T2w slot)} of (array, affine) volumes for one subject."""
    out = {
        "clean": (t1, t2),
        "different subjects": (t1, next_t2),
        "swapped contrasts": (t2, t1),
    }
    for name, make in NOT_BRAIN.items():
        out[f"not brain MRI: {name}"] = (t1, (make(t2[0], rng), t2[1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("Resources/Models/demo"))
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic-adni-n600-s0-2mm"))
    parser.add_argument("--seed", type=int, default=0, help="the seed of the run that split the cohort")
    parser.add_argument("--raw", type=Path, help="raw-looking scans of test subjects (skull and scalp kept)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    if bundle.input_check is None:
        parser.error(f"{args.bundle} has no input check; add it with trainer_cli.py calibrate")
    pairs = discover(args.cohort).kept
    splits = assign_splits(pairs, args.seed)
    test = [p for p in pairs if splits[p.subject] == "test"]

    def volume(path):
        image = nib.load(path)
        return np.asarray(image.dataobj, dtype=np.float32), image.affine

    rng = np.random.default_rng(args.seed)
    inputs = (
        (case, t1, t2)
        for index, pair in enumerate(test)
        for case, (t1, t2) in cases(
            volume(pair.t1), volume(pair.t2), volume(test[(index + 1) % len(test)].t2), rng
        ).items()
    )
    if args.raw:
        raw = (("skull and scalp kept, no preparation", volume(p.t1), volume(p.t2)) for p in discover(args.raw).kept)
        inputs = itertools.chain(inputs, raw)
    warned, examples = {}, {}
    for case, t1, t2 in inputs:
        try:
            messages = analyse_pair(bundle, t1, t2, prepare=False).check.warnings
        except ValueError as refusal:  # refused outright, with a message: also a flag
            messages = [f"refused: {refusal}"]
        warned.setdefault(case, []).append(bool(messages))
        if messages:
            examples.setdefault(case, messages[0])
    print(f"input check of {args.bundle} on the test subjects of {args.cohort}\n")
    print("| input | warned about or refused | target |\n|---|---|---|")
    for case, flags in warned.items():
        target = "≤ 5%" if case == "clean" else "≥ 95%"
        print(f"| {case} | {100 * np.mean(flags):.0f}% ({sum(flags)} of {len(flags)}) | {target} |")
    print("\nfirst warning per case:")
    for case, text in examples.items():
        print(f"- {case}: {text}")


if __name__ == "__main__":
    main()
