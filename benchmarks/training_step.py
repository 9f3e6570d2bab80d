"""Where a training step's time goes, and what the precision policy gains, for each preset, in one process.

    python benchmarks/training_step.py [--presets spatial-demo demo spatial-seed seed] [--steps 3]

For each preset, on real preprocessed synthetic subjects (a small cohort written to a temporary
folder, cached as the trainer caches it):

- the trainer's whole step split into data (a batch from the warm preprocessing cache), augmentation
  (the preset's random transforms on that batch), forward, losses, backward and optimiser, in float32
  with contiguous tensors (the baseline) and under the policy this machine's device gets;
- the step under the policy as a ratio to the baseline (above 1: faster).

With ``--layouts`` it also times bfloat16 with contiguous tensors, the comparison that
``runtime.precision.CPU_CHANNELS_LAST`` follows. With ``--inference`` it times a batch encoded and
decoded without gradients in float32, in bfloat16 with contiguous tensors and under the policy:
inference (``runtime.precision.inference_precision``) takes the training's layout by it.
"""

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.device import select_device
from MultiviewCRLLib.runtime.networks import build_networks
from MultiviewCRLLib.runtime.precision import Precision, precision_policy
from MultiviewCRLLib.training.data import paired_dataset, plain_collate
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.synthetic import generate_cohort
from MultiviewCRLLib.training.trainer import PhaseClock, Trainer

PHASES = ("data", "augmentation", "forward", "losses", "backward", "optimiser")


def data_seconds(preset, pairs, cache_root: Path, batches: int) -> tuple[float, float]:
    """(seconds per batch from the warm cache, seconds per batch of augmentation on top)."""
    train = preset.train
    plain = paired_dataset(pairs, preset.preprocessing, cache_root)
    augmented = paired_dataset(pairs, preset.preprocessing, cache_root, train.augment, 0, train.view_augment)
    plain_collate([plain[i] for i in range(train.batch_size)])  # fills the cache
    timings = []
    for dataset in (plain, augmented):
        start = time.perf_counter()
        for _ in range(batches):
            plain_collate([dataset[i] for i in range(train.batch_size)])
        timings.append((time.perf_counter() - start) / batches)
    return timings[0], max(0.0, timings[1] - timings[0])


def step_phases(preset, pairs, run_dir: Path, device, steps: int, policy: Precision) -> dict[str, float]:
    """Seconds per step of forward (networks only), losses, backward and optimiser under ``policy``."""
    train = replace(preset.train, amp=policy.dtype is not None, amp_dtype=policy.name)
    clock = PhaseClock(device)
    trainer = Trainer(
        run_dir, preset.model, preset.preprocessing, train, pairs, pairs[0], device=str(device), clock=clock
    )
    trainer.precision = policy
    trainer.encoder.to(memory_format=policy.memory_format)
    trainer.decoder.to(memory_format=policy.memory_format)
    dataset = paired_dataset(pairs, preset.preprocessing)
    batch = plain_collate([dataset[i] for i in range(train.batch_size)])
    trainer.step = 2 * train.warmup_steps  # past the warm-up: every loss term on, the maps trained
    trainer.train_step(batch)  # warm-up
    clock.seconds.clear()
    for _ in range(steps):
        trainer.train_step(batch)
    seconds = {phase: value / steps for phase, value in clock.seconds.items()}
    seconds["forward"] -= seconds.get("losses", 0.0)  # the losses run inside the forward phase
    return seconds


def inference_seconds(preset, pairs, policy: Precision, steps: int) -> float:
    """Seconds to encode and decode one batch of both views without gradients under ``policy``."""
    encoder, decoder = (m.eval() for m in build_networks(preset.model, preset.preprocessing.spatial_size))
    for module in (encoder, decoder):
        module.to(policy.device, memory_format=policy.memory_format)
    dataset = paired_dataset(pairs, preset.preprocessing)
    batch = plain_collate([dataset[i] for i in range(preset.train.batch_size)])
    x = policy.place(torch.cat([batch["t1"], batch["t2"]]))
    views = torch.arange(2).repeat_interleave(len(batch["t1"]))

    def one_pass():
        z, content = encoder(x, with_content=True, views=views)
        decoder.decode(content, preset.model.style(z))

    with torch.no_grad(), policy.autocast():
        one_pass()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            one_pass()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["spatial-demo", "demo", "spatial-seed", "seed"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--layouts", action="store_true", help="also bfloat16 with contiguous tensors")
    parser.add_argument("--inference", action="store_true", help="also a pass without gradients, per layout")
    args = parser.parse_args()
    device = select_device(args.device)
    fast = precision_policy(device)
    policies = {"float32": Precision(device), f"policy ({fast.name}, {fast.memory_format})": fast}
    if args.layouts and fast.dtype is not None:
        policies["bfloat16, contiguous"] = Precision(device, torch.bfloat16)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; seconds per step")
    print(f"{'preset':>13} {'precision':>38} " + " ".join(f"{p:>12}" for p in PHASES) + f" {'step':>8} {'vs fp32':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        largest = max(PRESETS[p].train.batch_size for p in args.presets)
        bids = generate_cohort(Path(tmp) / "bids", n_subjects=largest, seed=0, spacing_mm=2.0)
        pairs = discover_bids(bids).kept
        for preset_name in args.presets:
            preset = PRESETS[preset_name]
            data, augmentation = data_seconds(preset, pairs, Path(tmp) / "cache", args.steps)
            baseline = None
            for label, policy in policies.items():
                seconds = {"data": data, "augmentation": augmentation}
                seconds |= step_phases(preset, pairs, Path(tmp) / f"{preset_name}-{label}", device, args.steps, policy)
                total = sum(seconds.values())
                baseline = baseline or total
                row = " ".join(f"{seconds.get(p, 0.0):>12.3f}" for p in PHASES)
                print(f"{preset_name:>13} {label:>38} {row} {total:>8.2f} {baseline / total:>7.2f}x")
            if args.inference:
                passes = {"float32": Precision(device), "bfloat16, contiguous": Precision(device, torch.bfloat16)}
                passes["policy"] = fast
                seconds = {label: inference_seconds(preset, pairs, p, args.steps) for label, p in passes.items()}
                print(
                    f"{preset_name:>13} inference, seconds per batch: "
                    + ", ".join(
                        f"{label} {value:.2f} ({seconds['float32'] / value:.2f}x)" for label, value in seconds.items()
                    )
                )


if __name__ == "__main__":
    main()
