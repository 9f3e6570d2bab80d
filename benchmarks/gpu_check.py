"""Mixed precision on the device at hand: each preset trained for N steps from the same seed on the
same batches in float32, float16 with a GradScaler, and bfloat16 (channels-last on CUDA), with the
throughput of each as a ratio to float32, its peak memory and its loss after N steps.

    python benchmarks/gpu_check.py [--presets seed spatial-seed] [--steps 20] [--device cuda]

On a CPU with ``--presets tiny-spatial --steps 2`` it is the check the test suite runs; with
``--presets tiny-spatial --steps 30 --device cpu`` its last column is the parity of bfloat16 and
float32 training that the README quotes.
"""

import argparse
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.device import select_device
from MultiviewCRLLib.runtime.precision import precision_policy
from MultiviewCRLLib.training.data import paired_dataset, plain_collate
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.synthetic import generate_cohort
from MultiviewCRLLib.training.trainer import StepBatches, Trainer

PRECISIONS = ("float32", "float16", "bfloat16")


def peak_memory_gb(device: torch.device) -> float:
    """CUDA: the largest allocation since the last reset; CPU: the process's peak resident size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train_steps(preset_name: str, batches: list[dict], pairs, run_dir: Path, device, dtype: str) -> dict:
    """Seconds per step after the first, peak memory, and the last step's total loss."""
    preset = PRESETS[preset_name]
    train = replace(preset.train, amp=True, amp_dtype=dtype, steps=len(batches))
    trainer = Trainer(run_dir, preset.model, preset.preprocessing, train, pairs, pairs[0], seed=0, device=str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.train_step(batches[0])  # the first step pays for allocation and kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for batch in batches[1:]:
        metrics = trainer.train_step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / max(1, len(batches) - 1)
    return {"seconds": seconds, "memory": peak_memory_gb(device), "loss": metrics["total"], "policy": trainer.precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["seed", "spatial-seed"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is not timed")
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.steps} steps each; the device's own policy: {precision_policy(device).name}")
    with tempfile.TemporaryDirectory() as tmp:
        subjects = 2 * max(PRESETS[p].train.batch_size for p in args.presets)
        pairs = discover_bids(generate_cohort(Path(tmp) / "bids", n_subjects=subjects, seed=0, spacing_mm=2.0)).kept
        for preset_name in args.presets:
            preset = PRESETS[preset_name]
            dataset = paired_dataset(pairs, preset.preprocessing)
            items = [dataset[i] for i in range(len(dataset))]
            order = StepBatches(len(items), preset.train.batch_size, 0, 0, args.steps)
            batches = [plain_collate([items[i] for i in indices]) for indices in order]
            results = {
                dtype: train_steps(preset_name, batches, pairs, Path(tmp) / f"{preset_name}-{dtype}", device, dtype)
                for dtype in PRECISIONS
            }
            fp32 = results["float32"]
            for dtype, result in results.items():
                volumes = 2 * preset.train.batch_size / result["seconds"]
                layout = "channels-last" if result["policy"].channels_last else "contiguous"
                print(
                    f"{preset_name:>13} {dtype:>9} ({layout:>13}): {volumes:7.2f} volumes/s, "
                    f"{fp32['seconds'] / result['seconds']:5.2f}x float32; peak memory {result['memory']:6.2f} GB; "
                    f"loss after {args.steps} steps {result['loss']:.4f} "
                    f"({result['loss'] / fp32['loss'] - 1:+.1%} vs float32)"
                )


if __name__ == "__main__":
    main()
