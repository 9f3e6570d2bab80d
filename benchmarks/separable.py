"""Depthwise-separable against standard convolutions: parameters of one mid-flow block (a residual
unit) per width, of each preset's networks, and seconds per training step at the demo sizes, as
ratios of standard to separable measured in the same process.

    python benchmarks/separable.py [--steps 5] [--presets demo spatial-demo]

Quality at the demo size (retrieval, R², PSNR) comes from two trained runs, e.g.
``python trainer_cli.py --model-id standard`` and ``python trainer_cli.py --separable --model-id
separable``, compared with ``python benchmarks/compare_runs.py RUN_A RUN_B``.
"""

import tempfile
from dataclasses import replace
from pathlib import Path

from training_step import seconds_per_step, step_parser

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.device import select_device
from MultiviewCRLLib.runtime.networks import build_networks, count_parameters, residual_unit
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.synthetic import generate_cohort


def main() -> None:
    args = step_parser(__doc__.splitlines()[0]).parse_args()
    print("mid-flow block (residual unit, 3x3x3, GroupNorm 16) parameters, standard / separable:")
    for width in (64, 128, 256, 512):
        standard, separable = (count_parameters(residual_unit(width, 16, s)) for s in (False, True))
        print(f"  {width:>4} channels: {standard:>9,} / {separable:>7,} = {standard / separable:.1f}x")
    print("networks (encoder + decoder) parameters, standard / separable:")
    for name in ("seed", *args.presets):
        preset = PRESETS[name]
        standard, separable = (
            sum(count_parameters(m) for m in build_networks(replace(preset.model, separable=s), preset.preprocessing.spatial_size))
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
                seconds_per_step(name, pairs, Path(tmp) / f"{name}-{s}", device, args.steps, None, s) for s in (False, True)
            )
            print(f"  {name:>14}: {standard:.3f} / {separable:.3f} s; separable step time / standard = {separable / standard:.2f}")


if __name__ == "__main__":
    main()
