"""DistributedDataParallel on the CPU (gloo, 2 processes, tiny preset): the first step's loss equals
a one-process run on the union batch, and the ranks hold identical weights after several steps."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.training.data import paired_dataset, plain_collate
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.trainer import StepBatches, Trainer

WORLD = 2
BATCH = 2  # per rank: the union batch holds 4 subjects
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_trainer(run_dir, pairs, batch_size):
    preset = PRESETS["tiny"]
    train = preset.train.__class__(**{**preset.train.to_dict(), "batch_size": batch_size, "steps": STEPS})
    return Trainer(run_dir, preset.model, preset.preprocessing, train, pairs, pairs[0], seed=0, device="cpu")


def batches(trainer, pairs, rank, world):
    """The batches of the first STEPS steps for this rank, from the trainer's own sampler."""
    dataset = paired_dataset(pairs, trainer.preprocessing)
    sampler = StepBatches(len(dataset), trainer.config.batch_size, trainer.seed, 0, STEPS, rank, world)
    return [plain_collate([dataset[i] for i in indices]) for indices in sampler]


def worker(rank, port, pairs, run_dir, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    trainer = make_trainer(run_dir, pairs, BATCH)
    losses = [trainer.train_step(batch)["total"] for batch in batches(trainer, pairs, rank, WORLD)]
    weights = torch.cat([p.detach().flatten() for p in trainer.parameters]).numpy().copy()  # sent by value
    queue.put((rank, losses, weights))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def pairs(cohort64):
    return discover_bids(cohort64).kept[:16]


def test_two_ranks_match_one_process_on_the_union_batch(pairs, tmp_path):
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = mp.start_processes(
        worker, args=(free_port(), pairs, tmp_path / "ddp", queue), nprocs=WORLD, join=False, start_method="spawn"
    )
    results = sorted((queue.get() for _ in range(WORLD)), key=lambda r: r[0])  # read before joining: pipes are small
    while not processes.join():
        pass
    (_, losses0, weights0), (_, losses1, weights1) = results

    assert (weights0 == weights1).all()  # identical weights on every rank after STEPS steps
    assert losses0 == pytest.approx(losses1, abs=1e-6)

    single = make_trainer(tmp_path / "single", pairs, BATCH * WORLD)
    first = single.train_step(batches(single, pairs, 0, 1)[0])["total"]
    assert losses0[0] == pytest.approx(first, abs=1e-5)


def test_torchrun_launch_writes_one_run_from_rank_zero(tiny_run_and_request, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    _, request = tiny_run_and_request
    root = Path(__file__).resolve().parents[2]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
    ]
    command += [str(root / "trainer_cli.py"), "--preset", "tiny", "--batch-size", "2", "--train-steps", "4"]
    command += ["--no-evaluation"]  # rank 0's evaluation is the one-process code tested elsewhere
    command += ["--results", str(tmp_path / "results"), "--data-root", str(request.data_root), "--model-id", "ddp"]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # torchrun's own scratch folders stay in the test's folder
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [p.name for p in (tmp_path / "results" / "synthetic").iterdir()] == ["ddp"]
    run_dir = tmp_path / "results" / "synthetic" / "ddp"
    assert all((run_dir / name).is_file() for name in ("bundle/weights.pt", "settings.json", "Training.csv"))
    assert result.stdout.count("run folder:") == 1  # only rank 0 reports and writes
