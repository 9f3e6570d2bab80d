"""Seconds per training step of each model family at its demo size, as a ratio to the global demo
model measured in the same process; on a GPU also volumes per second in float32, bf16 and fp16
AMP (the trainer runs channels-last on a GPU), as a ratio to float32.

    python benchmarks/training_step.py [--steps 5] [--presets demo spatial-demo] [--device auto]

Batches are real preprocessed synthetic subjects (a small cohort written to a temporary folder);
the trainer's own step runs them, losses and optimiser included.
"""

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.device import select_device
from MultiviewCRLLib.training.data import paired_dataset, plain_collate
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.synthetic import generate_cohort
from MultiviewCRLLib.training.trainer import Trainer


def seconds_per_step(
    preset_name: str, pairs, run_dir: Path, device, steps: int, amp_dtype: str | None, separable: bool = False
) -> float:
    preset = PRESETS[preset_name]
    train = replace(preset.train, amp=amp_dtype is not None, amp_dtype=amp_dtype or "float16")
    model = replace(preset.model, separable=separable)
    trainer = Trainer(run_dir, model, preset.preprocessing, train, pairs, pairs[0], device=str(device))
    dataset = paired_dataset(pairs, preset.preprocessing)
    batch = plain_collate([dataset[i] for i in range(train.batch_size)])
    trainer.train_step(batch)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def step_parser(description: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that time training steps of presets."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--presets", nargs="+", default=["demo", "spatial-demo"])
    parser.add_argument("--device", default="auto")
    return parser


def main() -> None:
    args = step_parser(__doc__.splitlines()[0]).parse_args()
    device = select_device(args.device)
    precisions = [None, "bfloat16", "float16"] if device.type == "cuda" else [None]
    with tempfile.TemporaryDirectory() as tmp:
        largest = max(PRESETS[p].train.batch_size for p in args.presets)
        bids = generate_cohort(Path(tmp) / "bids", n_subjects=largest, seed=0, spacing_mm=2.0)
        pairs = discover_bids(bids).kept
        times = {
            (preset, amp): seconds_per_step(preset, pairs, Path(tmp) / f"{preset}-{amp}", device, args.steps, amp)
            for preset in args.presets
            for amp in precisions
        }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}")
    baseline = times[(args.presets[0], None)]
    for (preset, amp), seconds in times.items():
        volumes = 2 * PRESETS[preset].train.batch_size / seconds
        fp32 = times[(preset, None)]
        print(
            f"{preset:>14} {amp or 'float32':>9}: {seconds:.3f} s/step, {volumes:.1f} volumes/s; "
            f"step time / {args.presets[0]} float32 = {seconds / baseline:.2f}; throughput / float32 = {fp32 / seconds:.2f}"
        )


if __name__ == "__main__":
    main()
