"""Training: content-only InfoNCE + lambda * BaurLoss, Adam, gradient clipping, AMP on CUDA.

Everything a run writes lives under its run folder::

    settings.json  discovery.tsv  splits.tsv  Training.csv  training_curves.png
    images/{t1,t2}_input.nii.gz  images/step_XXXXXX_{t1,t2}_decoded.nii.gz  checkpoints/step_XXXXXX.pt
    tensorboard/   bundle/ (weights.pt + settings.json)
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import pickle
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.utils import convert_to_tensor
from torch import nn
from torch.utils.data import Sampler
from tqdm import tqdm

from ..config import VIEW_KEYS, VIEW_NAMES, ModelConfig, PreprocessingConfig, TrainConfig
from ..runtime.bundle import save_bundle
from ..runtime.device import select_device
from ..runtime.networks import build_networks
from ..runtime.precision import inference_precision, precision_policy
from ..runtime.preprocessing import file_transforms, to_nifti
from ..runtime.storage import atomic_save_nifti, atomic_torch_save, atomic_write_bytes
from .atlas import mni_brain_template
from .data import MAP_INPUT_KEYS, paired_dataset, plain_collate
from .discovery import Pair
from .distributed import cross_rank_batchnorm, rank, world_size
from .encoding import Encoded
from .losses import DenseInfoNCE, retrieval_top1
from .objectives import GlobalObjective, SpatialObjective

CSV_COLUMNS = ("step", "total", "contrastive", "reconstruction", "dense", "top1_retrieval", "lr", "seconds")
METRIC_KEYS = ("total", "contrastive", "reconstruction", "dense", "top1_retrieval")
CHECKPOINT_PATTERN = re.compile(r"step_(\d+)\.pt$")
MAX_NONFINITE_STEPS = 5


class TrainingStopped(RuntimeError):
    """Training ended early: a signal (after a checkpoint was written) or a persistently non-finite loss."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StepBatches(Sampler):
    """Batch indices as a pure function of the step: a seeded permutation of the subjects per
    epoch, so a resumed run sees exactly the batches an uninterrupted run would. With several
    ranks, each step's union batch of ``batch_size * world`` subjects is cut into one slice per
    rank, so the union equals a one-process run's batch. Incomplete batches are dropped."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start_step: int, stop_step: int, rank=0, world=1):
        if n_items < batch_size * world:
            raise ValueError(f"{n_items} training subjects cannot fill a batch of {batch_size} x {world} ranks")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.start_step, self.stop_step, self.rank, self.world = start_step, stop_step, rank, world

    def batch(self, step: int) -> list[int]:
        union = self.batch_size * self.world
        per_epoch = self.n_items // union
        order = np.random.default_rng([self.seed, step // per_epoch]).permutation(self.n_items)
        offset = (step % per_epoch) * union + self.rank * self.batch_size
        return order[offset : offset + self.batch_size].tolist()

    def __iter__(self):
        return (self.batch(step) for step in range(self.start_step, self.stop_step))

    def __len__(self) -> int:
        return self.stop_step - self.start_step


@dataclass
class TrainedModel:
    encoder: nn.Module
    decoder: nn.Module
    step: int


def checksum_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + ".sha256")


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose SHA-256 matches its sidecar; corrupt ones are reported and skipped."""
    found = sorted(
        (
            (int(m.group(1)), p)
            for p in (Path(run_dir) / "checkpoints").glob("step_*.pt")
            if (m := CHECKPOINT_PATTERN.search(p.name))
        ),
        reverse=True,
    )
    for _, path in found:
        sidecar = checksum_path(path)
        if sidecar.is_file() and sidecar.read_text().strip() == hashlib.sha256(path.read_bytes()).hexdigest():
            return path
        print(f"warning: checkpoint {path} is corrupt or unverified (checksum mismatch); trying the previous one")
    return None


def read_training_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def write_training_csv(path: Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (int(row[k]) if k == "step" else f"{row[k]:.6g}") for k in CSV_COLUMNS})
    atomic_write_bytes(path, buffer.getvalue().encode())


def plot_curves(rows: list[dict[str, float]], out_png: Path, batch_size: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(steps, [r["contrastive"] for r in rows], label="contrastive (content InfoNCE)")
    axes[0].axhline(np.log(2 * batch_size - 1), color="gray", ls="--", label="chance log(2B-1)")
    if any(r["dense"] for r in rows):  # the spatial family's dense loss and map agreement
        axes[0].plot(steps, [r["dense"] for r in rows], color="tab:purple", label="dense (content maps)")
    axes[1].plot(steps, [r["reconstruction"] for r in rows], color="tab:orange", label="reconstruction (BaurLoss)")
    axes[2].plot(steps, [r["top1_retrieval"] for r in rows], color="tab:green", label="batch top-1 retrieval")
    axes[2].axhline(1 / (2 * batch_size - 1), color="gray", ls="--", label="chance 1/(2B-1)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return Path(out_png)


@torch.no_grad()
def write_decoded_images(folder: Path, encoder, decoder, model: ModelConfig, images: dict, step: int) -> None:
    """The fixed subject's inputs and their decodings at ``step``, on the model grid (they overlay in RAS).

    ``images``: {"t1", "t2"}: MetaTensors (1, X, Y, Z) with their affines."""
    device = next(encoder.parameters()).device
    encoder.eval()
    decoder.eval()
    for key in VIEW_KEYS:
        x = convert_to_tensor(images[key], track_meta=False)[None].to(device)
        with inference_precision(encoder):
            z, content = encoder(x, with_content=True, views=VIEW_KEYS.index(key))
            decoded = decoder.decode(content, model.style(z))[0].float().cpu()
        if not (folder / f"{key}_input.nii.gz").exists():
            atomic_save_nifti(to_nifti(images[key]), folder / f"{key}_input.nii.gz")
        decoded_image = images[key].clone().copy_(decoded)  # keeps the input's affine
        atomic_save_nifti(to_nifti(decoded_image), folder / f"step_{step:06d}_{key}_decoded.nii.gz")
    encoder.train()
    decoder.train()


class PhaseClock:
    """Seconds spent in each phase of the training step, summed over steps (the step benchmark reads
    them); a disabled clock measures nothing. CUDA work is waited for at each phase's edges."""

    def __init__(self, device: torch.device, enabled: bool = True):
        self.device, self.enabled = torch.device(device), enabled
        self.seconds: dict[str, float] = {}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        if not self.enabled:
            yield
            return
        self.synchronize()
        start = time.perf_counter()
        yield
        self.synchronize()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


@contextlib.contextmanager
def signals_request_stop(request_stop):
    """While inside, SIGTERM and SIGINT call ``request_stop(signum)`` instead of stopping the process
    (only the main thread can take signals; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda signum, frame: request_stop(signum)) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Trainer:
    """One training run in ``run_dir`` on ``train_pairs``; ``image_pair`` is decoded for the logs."""

    def __init__(
        self,
        run_dir: Path,
        model: ModelConfig,
        preprocessing: PreprocessingConfig,
        train: TrainConfig,
        train_pairs: list[Pair],
        image_pair: Pair,
        seed: int = 0,
        device: str = "auto",
        num_workers: int = 0,
        cache_root: Path | None = None,
        clock: PhaseClock | None = None,
    ):
        if train.randomised_map_input and model.family != "spatial":
            raise ValueError(
                "randomised_map_input needs the spatial family: only its content map reads an input of its own"
            )
        self.run_dir = Path(run_dir)
        self.model_config, self.preprocessing, self.config = model, preprocessing, train
        self.train_pairs, self.image_pair, self.seed = train_pairs, image_pair, seed
        self.device = select_device(device)
        self.num_workers, self.cache_root = num_workers, cache_root
        self.precision = precision_policy(self.device, train.amp, train.amp_dtype)
        self.clock = clock or PhaseClock(self.device, enabled=False)
        self.world = world_size()
        self.rank = rank()
        self.is_writer = self.rank == 0  # only rank 0 writes logs, images, checkpoints and bundles
        torch.manual_seed(seed)  # every rank starts from the same weights
        encoder, decoder = build_networks(model, preprocessing.spatial_size)
        self.encoder = encoder.to(self.device, memory_format=self.precision.memory_format)
        self.decoder = decoder.to(self.device, memory_format=self.precision.memory_format)
        # Spatial family: the dense loss's projection head trains with the networks (not bundled).
        self.dense = nn.ModuleDict()
        if model.family == "spatial":
            self.dense["head"] = DenseInfoNCE(model.map_channels, train.dense_locations, train.dense_tau)
        self.dense.to(self.device)
        dense_head = self.dense["head"] if "head" in self.dense else None
        self.parameters = [p for m in (self.encoder, self.decoder, self.dense) for p in m.parameters()]
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            cross_rank_batchnorm(self.encoder)  # batch statistics over the union batch
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.encoder = DistributedDataParallel(self.encoder, device_ids=ids)
            self.decoder = DistributedDataParallel(self.decoder, device_ids=ids)
            if dense_head is not None:
                dense_head = DistributedDataParallel(dense_head, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.parameters, lr=train.lr)
        # A GradScaler is only needed for float16; disabled it is a pass-through.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaled)
        if dense_head is None:
            self.objective = GlobalObjective(model, train)
        else:
            self.objective = SpatialObjective(model, train, dense_head)
        self.objective.clock = self.clock
        self.step = 0
        self.window: list[dict[str, float]] = []
        self.nonfinite_steps = 0
        self.stop_signal: int | None = None
        if self.is_writer:
            for sub in ("checkpoints", "images"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)

    def modules(self) -> tuple[nn.Module, nn.Module, nn.ModuleDict]:
        """The plain encoder, decoder and dense-loss head, without their DistributedDataParallel wrappers."""
        return tuple(getattr(m, "module", m) for m in (self.encoder, self.decoder, self.dense))

    def all_ranks_max(self, value: float) -> float:
        """The largest value over the ranks (the value itself in a one-process run)."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.item()

    def all_ranks_mean(self, value: torch.Tensor) -> float:
        if self.world == 1:
            return value.item()
        t = value.detach().reshape(1).clone()
        torch.distributed.all_reduce(t)
        return t.item() / self.world

    # --- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        state = {
            "step": self.step,
            "encoder": self.modules()[0].state_dict(),
            "decoder": self.modules()[1].state_dict(),
            "dense": self.modules()[2].state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            # Steps since the last Training.csv row, so a resumed run averages the same steps.
            "window": torch.tensor([[m[k] for k in METRIC_KEYS] for m in self.window], dtype=torch.float64),
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        path = atomic_torch_save(self.run_dir / "checkpoints" / f"step_{self.step:06d}.pt", state)
        atomic_write_bytes(checksum_path(path), hashlib.sha256(path.read_bytes()).hexdigest().encode())
        kept = sorted(self.run_dir.glob("checkpoints/step_*.pt"))
        for old in kept[: -self.config.keep_checkpoints]:
            old.unlink()
            checksum_path(old).unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise ValueError(
                f"checkpoint {path} refused: not a plain-tensor checkpoint ({type(err).__name__})"
            ) from err
        encoder, decoder, dense = self.modules()
        encoder.load_state_dict(state["encoder"])
        decoder.load_state_dict(state["decoder"])
        dense.load_state_dict(state["dense"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step = int(state["step"])
        self.window = [dict(zip(METRIC_KEYS, row.tolist())) for row in state["window"]]

    def request_stop(self, signum: int) -> None:
        """Finish the current step, write a checkpoint and stop (SIGTERM, SIGINT)."""
        self.stop_signal = signum

    def write_images(self, images: dict) -> None:
        encoder, decoder, _ = self.modules()
        write_decoded_images(self.run_dir / "images", encoder, decoder, self.model_config, images, self.step)

    # --- the loop ------------------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict[str, float]:
        x = self.precision.place(torch.cat([batch["t1"], batch["t2"]]))  # (2B, 1, X, Y, Z)
        if MAP_INPUT_KEYS[0] in batch:  # the content map's own, randomised, copy of each view
            batch = {**batch, "map_input": self.precision.place(torch.cat([batch[k] for k in MAP_INPUT_KEYS]))}
        # A step with a non-finite loss is skipped whole, BatchNorm running statistics included.
        buffers = {name: b.clone() for name, b in self.modules()[0].named_buffers()}
        with self.clock("forward"), self.precision.autocast():
            terms = self.objective(self.encoder, self.decoder, x, batch, self.step)
        contrastive, reconstruction, dense = terms.contrastive, terms.reconstruction, terms.dense
        total = contrastive + self.config.scale_recon_loss * reconstruction + dense
        self.optimizer.zero_grad(set_to_none=True)
        finite = not self.all_ranks_max(float(not torch.isfinite(total)))
        if finite or self.scaler.is_enabled():
            # Under fp16 the GradScaler skips a step whose gradients overflow and lowers its scale.
            with self.clock("backward"):
                self.scaler.scale(total).backward()
            with self.clock("optimiser"):
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.parameters, self.config.clip_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
        self.nonfinite_steps = 0 if finite else self.nonfinite_steps + 1
        if not finite:
            for name, value in self.modules()[0].named_buffers():
                value.copy_(buffers[name])
        union_reconstruction, union_dense = self.all_ranks_mean(reconstruction), self.all_ranks_mean(dense)
        return {
            "total": contrastive.item() + self.config.scale_recon_loss * union_reconstruction + union_dense,
            "contrastive": contrastive.item(),
            "reconstruction": union_reconstruction,
            "dense": union_dense,
            "top1_retrieval": retrieval_top1(terms.z1, terms.z2, self.model_config.content_dim),
        }

    def run(self, resume_from: Path | None = None) -> TrainedModel:
        cfg = self.config
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            print(f"resumed from {resume_from} at step {self.step}")
        csv_path = self.run_dir / "Training.csv"
        rows = [r for r in read_training_csv(csv_path) if r["step"] <= self.step]
        writer = None
        if self.is_writer:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(self.run_dir / "tensorboard", purge_step=self.step + 1 if self.step else None)
        dataset = paired_dataset(
            self.train_pairs,
            self.preprocessing,
            self.cache_root,
            cfg.augment,
            self.seed,
            cfg.view_augment,
            cfg.contrast_randomisation,
            cfg.randomised_map_input,
        )
        sampler = StepBatches(len(dataset), cfg.batch_size, self.seed, self.step, cfg.steps, self.rank, self.world)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers, collate_fn=plain_collate)
        images = file_transforms(VIEW_KEYS, self.preprocessing)(self.image_pair.as_item())
        start = time.perf_counter()
        bar = tqdm(
            loader, total=cfg.steps, initial=self.step, desc="training", dynamic_ncols=True, disable=not self.is_writer
        )
        try:
            self._loop(bar, rows, csv_path, writer, images, start)
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if rows and self.is_writer:
            plot_curves(rows, self.run_dir / "training_curves.png", cfg.batch_size * self.world)
        return TrainedModel(*self.modules()[:2], self.step)

    def _loop(self, bar, rows: list, csv_path: Path, writer, images: dict, start: float) -> None:
        cfg = self.config
        with signals_request_stop(self.request_stop):
            for batch in bar:
                metrics = self.train_step(batch)
                self.step += 1
                self.window.append(metrics)
                bar.set_postfix(
                    total=f"{metrics['total']:.3f}",
                    nce=f"{metrics['contrastive']:.3f}",
                    recon=f"{metrics['reconstruction']:.0f}",
                    dense=f"{metrics['dense']:.3f}",
                    top1=f"{metrics['top1_retrieval']:.2f}",
                )
                if self.nonfinite_steps >= MAX_NONFINITE_STEPS:
                    kept = latest_checkpoint(self.run_dir)
                    raise TrainingStopped(
                        f"the loss was not finite for {self.nonfinite_steps} consecutive steps (the last at step "
                        f"{self.step}); stopped without saving, the last good checkpoint is {kept}",
                        exit_code=3,
                    )
                stop = int(self.all_ranks_max(self.stop_signal or 0))  # every rank stops at the same step
                self.stop_signal = self.stop_signal or stop or None
                if not self.is_writer:
                    if self.stop_signal:
                        raise TrainingStopped(
                            f"rank {self.rank} stopped with rank 0 at step {self.step}", 128 + self.stop_signal
                        )
                    continue
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = {"step": self.step, **{k: float(np.mean([m[k] for m in self.window])) for k in METRIC_KEYS}}
                    row.update(lr=self.optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - start)
                    rows.append(row)
                    self.window = []
                    write_training_csv(csv_path, rows)
                    for key in METRIC_KEYS:
                        writer.add_scalar(f"train/{key}", row[key], self.step)
                if self.step % cfg.image_every == 0 or self.step == cfg.steps:
                    self.write_images(images)
                scheduled = self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps or self.stop_signal
                if scheduled and not self.nonfinite_steps:  # a checkpoint is always a good one
                    self.save_checkpoint()
                if self.stop_signal:
                    name = signal.Signals(self.stop_signal).name
                    raise TrainingStopped(
                        f"stopped by {name} at step {self.step}; latest checkpoint {latest_checkpoint(self.run_dir)}. "
                        f"Continue with: python trainer_cli.py --resume {self.run_dir}",
                        exit_code=128 + self.stop_signal,
                    )


def write_bundle(
    folder: Path,
    trained: TrainedModel,
    model: ModelConfig,
    preprocessing: PreprocessingConfig,
    encoded: Encoded,
    extra: dict | None = None,
) -> Path:
    """A bundle whose cohort style means and content embeddings come from the training subjects'
    latents ``encoded`` (by ``trained.encoder``), with the MNI152 brain its inputs are registered to
    (the synthetic cohort's space)."""
    latents = {key: torch.from_numpy(getattr(encoded, key)) for key in VIEW_KEYS}
    style_means = {VIEW_NAMES[key]: model.style(z).mean(0) for key, z in latents.items()}
    content = sum(model.content(z) for z in latents.values()) / len(latents)
    cohort = ([p.key for p in encoded.pairs], content)
    return save_bundle(
        folder,
        trained.encoder,
        trained.decoder,
        model,
        preprocessing,
        style_means,
        extra,
        cohort=cohort,
        template=mni_brain_template(),
    )
