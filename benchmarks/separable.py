"""Depthwise-separable against standard convolutions: parameters of one mid-flow block (a residual
unit) per width, of each preset's networks, and seconds per training step at the demo sizes, as
ratios of standard to separable measured in the same process.

    python benchmarks/separable.py [--steps 5] [--presets demo spatial-demo]

Quality at the demo size (retrieval, R², PSNR) comes from two trained runs, e.g.
``python trainer_cli.py --model-id standard`` and ``python trainer_cli.py --separable --model-id
separable``, compared with ``python benchmarks/compare_runs.py RUN_A RUN_B``.
"""

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.device import select_device
from MultiviewCRLLib.runtime.networks import build_networks, count_parameters, residual_unit
from MultiviewCRLLib.training.data import paired_dataset, plain_collate
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.synthetic import generate_cohort
from MultiviewCRLLib.training.trainer import Trainer


def seconds_per_step(preset_name: str, pairs, run_dir: Path, device, steps: int, separable: bool) -> float:
    """The trainer's whole step (float32) on one real batch, averaged after a warm-up step."""
    preset = PRESETS[preset_name]
    model = replace(preset.model, separable=separable)
    trainer = Trainer(run_dir, model, preset.preprocessing, preset.train, pairs, pairs[0], device=str(device))
    dataset = paired_dataset(pairs, preset.preprocessing)
    batch = plain_collate([dataset[i] for i in range(preset.train.batch_size)])
    trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["demo", "spatial-demo"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print("mid-flow block (residual unit, 3x3x3, GroupNorm 16) parameters, standard / separable:")
    for width in (64, 128, 256, 512):
        standard, separable = (count_parameters(residual_unit(width, 16, s)) for s in (False, True))
        print(f"  {width:>4} channels: {standard:>9,} / {separable:>7,} = {standard / separable:.1f}x")
    print("networks (encoder + decoder) parameters, standard / separable:")
    for name in ("seed", *args.presets):
        preset = PRESETS[name]
        standard, separable = (
            sum(
                count_parameters(m)
                for m in build_networks(replace(preset.model, separable=s), preset.preprocessing.spatial_size)
            )
            for s in (False, True)
        )
        print(f"  {name:>14}: {standard:>11,} / {separable:>10,} = {standard / separable:.1f}x")
    device = select_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        largest = max(PRESETS[p].train.batch_size for p in args.presets)
        pairs = discover_bids(generate_cohort(Path(tmp) / "bids", n_subjects=largest, seed=0, spacing_mm=2.0)).kept
        print(f"seconds per training step on {device}, standard / separable:")
        for name in args.presets:
            standard, separable = (
                seconds_per_step(name, pairs, Path(tmp) / f"{name}-{s}", device, args.steps, s) for s in (False, True)
            )
            print(
                f"  {name:>14}: {standard:.3f} / {separable:.3f} s; "
                f"separable step time / standard = {separable / standard:.2f}"
            )


if __name__ == "__main__":
    main()
