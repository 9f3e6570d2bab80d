"""A training run from start to bundle: data discovery, splits, run folder, training, bundle.

``trainer_cli.py`` parses flags into a :class:`RunRequest` and calls :func:`train_run`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import PRESETS, VIEW_NAMES, VIEWS, CohortConfig, EvaluationConfig, ModelConfig, PreprocessingConfig
from ..runtime.storage import atomic_write_json, probe_writable
from . import distributed
from .atlas import mni_brain_template
from .data import SPLIT_NAMES, assign_splits, read_splits, write_splits
from .discovery import DiscoveryReport, discover
from .encoding import encode_cohort
from .model_card import write_model_card
from .prepared_cohort import GIVEN_INPUTS, PREPARED_INPUTS, prepare_cohort
from .report import headline_table, input_check_summary, strata_summary
from .synthetic import generate_cohort
from .trainer import Trainer, latest_checkpoint, write_bundle

MIN_EVALUATION_SUBJECTS = 4
DEFAULT_DATA_ROOT = Path("data")


class RunError(RuntimeError):
    """A run that cannot start: an existing run folder, no data, a bad resume folder."""


@dataclass
class RunRequest:
    preset: str = "spatial-demo"
    source: Path | None = None  # BIDS folder, manifest file or folder-per-subject root; None: synthetic
    dataset: str | None = None
    t1_pattern: str | None = None
    t2_pattern: str | None = None
    views: tuple[str, str] = VIEWS
    train_overrides: dict = field(default_factory=dict)
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields, e.g. {"separable": True}
    model_id: str | None = None
    results: Path = Path("results")
    data_root: Path | None = None  # synthetic cohort and preprocessing cache; None: ./data, or a resumed run's
    cache_root: Path | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    strict: bool = False
    stratify: str | None = None
    synthetic_subjects: int | None = None
    prepare: bool = False  # raw scans: prepared (brain extraction, alignment to the template) before training
    evaluate: bool = True  # evaluate the bundle once trained (needs MIN_EVALUATION_SUBJECTS per held-out split)


def synthetic_cohort(data_root: Path, cohort: CohortConfig) -> Path:
    """The embedded cohort for a preset, built once and reused (it is written atomically)."""
    name = f"synthetic-{cohort.design}-n{cohort.subjects}-s{cohort.seed}-{cohort.spacing_mm:g}mm"
    folder = Path(data_root) / name
    if not (folder / "participants.tsv").is_file():
        print(f"building the synthetic cohort ({cohort.subjects} subjects at {cohort.spacing_mm:g} mm) in {folder}")
        generate_cohort(
            folder, cohort.subjects, cohort.seed, cohort.spacing_mm, show_progress=True, design=cohort.design
        )
    return folder


def new_run_dir(results: Path, dataset: str, model_id: str | None, preset: str) -> Path:
    """``results/{dataset}/{model_id}``, created; an existing run is never reused."""
    parent = Path(results) / dataset
    if model_id is None:
        model_id = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while (parent / model_id).exists():
            model_id = f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}-{suffix}"
            suffix += 1
    run_dir = parent / model_id
    if run_dir.exists():
        raise RunError(f"{run_dir} already exists; choose another --model-id, or continue it with --resume {run_dir}")
    try:
        run_dir.mkdir(parents=True)
        probe_writable(run_dir)
    except OSError as err:
        raise RunError(f"cannot write the run folder {run_dir}: {err.strerror or err}") from err
    return run_dir


def discover_data(request: RunRequest) -> tuple[DiscoveryReport, str, dict]:
    """The discovery report, the dataset name and a description of the source for settings.json."""
    if request.source is None:
        cohort = PRESETS[request.preset].cohort
        if request.synthetic_subjects:
            cohort = replace(cohort, subjects=request.synthetic_subjects)
        source = synthetic_cohort(data_root_of(request), cohort)
        dataset = request.dataset or "synthetic"
    else:
        source = Path(request.source)
        dataset = request.dataset or source.stem
    report = discover(source, request.views, request.t1_pattern, request.t2_pattern)
    mask_threshold = PRESETS[request.preset].preprocessing.mask_threshold
    report = prepared_if_asked(report, request.prepare, data_root_of(request), mask_threshold)
    described = {"source": str(Path(source).resolve()), "views": list(request.views), "prepared": request.prepare}
    described.update(t1_pattern=request.t1_pattern, t2_pattern=request.t2_pattern)
    described["inputs"] = PREPARED_INPUTS if request.prepare else GIVEN_INPUTS
    return report, dataset, described


def prepared_if_asked(
    report: DiscoveryReport, prepare: bool, data_root: Path, mask_threshold: float
) -> DiscoveryReport:
    """The report of the pairs prepared against the MNI152 brain (``prepare``), or ``report``."""
    return prepare_cohort(report, data_root, mni_brain_template(), mask_threshold) if prepare else report


def resumed_request(request: RunRequest, run_dir: Path) -> tuple[RunRequest, Path, Path]:
    """The request that continues the run in ``run_dir`` (its own settings, with ``request``'s data
    root and training overrides), and the newest good checkpoint to start from."""
    settings_path = run_dir / "settings.json"
    if not settings_path.is_file():
        raise RunError(f"--resume {run_dir}: no settings.json there; is it a run folder?")
    settings = json.loads(settings_path.read_text())
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise RunError(f"--resume {run_dir}: no usable checkpoint to resume from")
    try:
        probe_writable(run_dir)
    except OSError as err:
        raise RunError(f"--resume {run_dir}: cannot write there ({err.strerror or err})") from err
    data = settings["data"]
    request = replace(
        request,
        preset=settings["preset"],
        source=Path(data["source"]),
        views=tuple(data["views"]),
        t1_pattern=data["t1_pattern"],
        t2_pattern=data["t2_pattern"],
        prepare=data.get("prepared", False),
        seed=settings["seed"],
        # The cache the run filled, unless another is asked for.
        data_root=request.data_root or Path(settings.get("data_root", DEFAULT_DATA_ROOT)),
        train_overrides={**settings["train"], **request.train_overrides},
        model_overrides=settings["model"],
    )
    return request, run_dir, checkpoint


def train_run(request: RunRequest, resume: Path | None = None) -> Path:
    """Train (or resume) a run and write its bundle; returns the run folder."""
    if resume is not None:
        request, run_dir, checkpoint = resumed_request(request, Path(resume))
    preset = PRESETS[request.preset]
    if request.model_overrides:
        model = ModelConfig.from_dict({**preset.model.to_dict(), **request.model_overrides})
        preset = replace(preset, model=model)
    train_config = replace(preset.train, **request.train_overrides) if request.train_overrides else preset.train
    distributed.init_from_env()
    if not distributed.is_main():
        distributed.barrier()  # rank 0 builds the synthetic cohort (once) before anyone reads it
    report, dataset, described = discover_data(request)
    if distributed.is_main():
        distributed.barrier()
        print(report.summary())
    report.require_usable(request.strict)
    if resume is None:
        checkpoint = None
        run_dir = splits = None
        if distributed.is_main():
            run_dir = new_run_dir(request.results, dataset, request.model_id, request.preset)
            splits = assign_splits(report.kept, request.seed, stratify=request.stratify)
            write_splits(splits, run_dir / "splits.tsv")
        run_dir, splits = distributed.broadcast((run_dir, splits))
    else:
        splits = read_splits(run_dir / "splits.tsv")
    if not distributed.is_main():
        return train_worker(request, preset, train_config, run_dir, report, splits, checkpoint)
    report.write_tsv(run_dir / "discovery.tsv")
    settings = {
        "preset": request.preset,
        "model_id": run_dir.name,
        "dataset": dataset,
        "seed": request.seed,
        "model": preset.model.to_dict(),
        "preprocessing": preset.preprocessing.to_dict(),
        "train": asdict(train_config),
        "data": described,
        "data_root": str(data_root_of(request).resolve()),
    }
    atomic_write_json(run_dir / "settings.json", settings)
    by_split = split_pairs(report, splits)
    print("subjects per split: " + ", ".join(f"{k} {len(v)}" for k, v in by_split.items()))
    cache_root = cache_root_of(request)
    trainer = make_trainer(request, preset, train_config, run_dir, by_split)
    trained = trainer.run(resume_from=checkpoint)
    # The training subjects encoded once, for the bundle's cohort statistics and the strata.
    train_encoded = encode_cohort(trained.encoder, by_split["train"], preset.preprocessing, cache_root, trainer.device)
    bundle = write_bundle(
        run_dir / "bundle",
        trained,
        preset.model,
        preset.preprocessing,
        train_encoded,
        extra={
            "trained_steps": trained.step,
            "run": run_dir.name,
            "dataset": dataset,
            "training_inputs": described["inputs"],
        },
    )
    enough = min(len(by_split["val"]), len(by_split["test"])) >= MIN_EVALUATION_SUBJECTS
    metrics = None
    if request.evaluate and enough:
        train_latents = {view: getattr(train_encoded, key) for key, view in VIEW_NAMES.items()}
        metrics = evaluate_run(run_dir, cache_root, trainer.device, by_split, train_latents=train_latents)
    elif request.evaluate:
        print(f"notice: evaluation skipped; it needs {MIN_EVALUATION_SUBJECTS} validation and test subjects each")
    print_run_summary(run_dir, bundle, metrics)
    distributed.barrier()
    return run_dir


def print_run_summary(run_dir: Path, bundle: Path, metrics: dict | None) -> None:
    """Where a finished run wrote what and, when it was evaluated, its headline figures."""
    print(f"run folder: {run_dir}")
    print(f"  training log: {run_dir / 'Training.csv'} (curves: {run_dir / 'training_curves.png'})")
    print(f"  decoded images: {run_dir / 'images'}  checkpoints: {run_dir / 'checkpoints'}")
    print(f"  TensorBoard: tensorboard --logdir {run_dir / 'tensorboard'}")
    print(f"  model bundle: {bundle}")
    if metrics is not None:
        print(f"  evaluation: {run_dir / 'metrics.json'} and {run_dir / 'report.png'} (copied into the bundle)")
        print(f"\n{headline_table(metrics)}\n\n{strata_summary(metrics)}\n\n{input_check_summary(metrics)}\n")
        print(f"picture of inputs, reconstructions and cross-view images: {run_dir / 'report.png'}")
        print(f"strata of the cohort: {run_dir / 'strata.png'}")


def split_pairs(report: DiscoveryReport, splits: dict[str, str]) -> dict[str, list]:
    return {name: [p for p in report.kept if splits.get(p.subject) == name] for name in SPLIT_NAMES}


def cache_root_of(request: RunRequest) -> Path:
    return request.cache_root or data_root_of(request) / "cache"


def data_root_of(request: RunRequest) -> Path:
    return Path(request.data_root or DEFAULT_DATA_ROOT)


def make_trainer(request: RunRequest, preset, train_config, run_dir: Path, by_split: dict) -> Trainer:
    return Trainer(
        run_dir,
        preset.model,
        preset.preprocessing,
        train_config,
        by_split["train"],
        (by_split["val"] or by_split["train"])[0],
        seed=request.seed,
        device=request.device,
        num_workers=request.num_workers,
        cache_root=cache_root_of(request),
    )


def train_worker(request, preset, train_config, run_dir, report, splits, checkpoint) -> Path:
    """A rank other than 0: trains its share of each batch and writes nothing."""
    trainer = make_trainer(request, preset, train_config, run_dir, split_pairs(report, splits))
    trainer.run(resume_from=checkpoint)
    distributed.barrier()  # wait for rank 0's bundle and evaluation
    return run_dir


def run_pairs(run_dir: Path) -> tuple[dict, dict[str, list]]:
    """A run's settings and its kept pairs per split, rediscovered from the saved source."""
    run_dir = Path(run_dir)
    if not (run_dir / "settings.json").is_file():
        raise RunError(f"{run_dir}: no settings.json there; is it a run folder?")
    settings = json.loads((run_dir / "settings.json").read_text())
    data = settings["data"]
    report = discover(Path(data["source"]), tuple(data["views"]), data["t1_pattern"], data["t2_pattern"])
    mask_threshold = PreprocessingConfig.from_dict(settings["preprocessing"]).mask_threshold
    report = prepared_if_asked(report, data.get("prepared", False), Path(settings["data_root"]), mask_threshold)
    return settings, split_pairs(report, read_splits(run_dir / "splits.tsv"))


def evaluate_run(
    run_dir: Path,
    cache_root: Path | None = None,
    device="cpu",
    by_split: dict | None = None,
    strata_embedding: str = "content",
    train_latents: dict[str, np.ndarray] | None = None,
) -> dict:
    """metrics.json, report.png, the cohort's strata (strata.tsv, strata.png, strata.json) and
    the input check's statistics (input_check.json) for a finished run, in the run folder and in
    its bundle.

    ``by_split`` spares a second discovery pass (which reads every volume) right after training, and
    ``train_latents`` ({view: (N, latent_dim)} of the training split, by the bundle's encoder) a
    second encoding of the training subjects.
    """
    from ..runtime.bundle import load_bundle
    from .calibration import calibrate_cohort_check, encoded_views
    from .evaluation import evaluate
    from .report import write_report
    from .stratification import cohort_latents, stratify_cohort
    from .trainer import read_training_csv

    run_dir = Path(run_dir)
    if by_split is None:
        settings, by_split = run_pairs(run_dir)
    else:
        settings = json.loads((run_dir / "settings.json").read_text())
    if min(len(by_split["val"]), len(by_split["test"])) < MIN_EVALUATION_SUBJECTS:
        raise RunError(
            f"{run_dir}: evaluation needs at least {MIN_EVALUATION_SUBJECTS} validation and test subjects each"
        )
    bundle = load_bundle(run_dir / "bundle", device)
    cache_root = cache_root or Path(settings.get("data_root", DEFAULT_DATA_ROOT)) / "cache"
    preset = PRESETS.get(settings["preset"])
    probes = preset.evaluation if preset else EvaluationConfig()
    metrics, material = evaluate(
        bundle, by_split["val"], by_split["test"], cache_root, device, settings["seed"], probes
    )
    folders = (run_dir, run_dir / "bundle")
    # Each split encoded once: the held-out ones with their brain-mask volumes, for the input check.
    held_out = {split: encoded_views(bundle, by_split[split], cache_root, device) for split in ("val", "test")}
    if train_latents is None:
        train_latents = cohort_latents(bundle, by_split["train"], cache_root, device)
    latents = {"train": train_latents}
    latents.update({split: encoded[0] for split, encoded in held_out.items()})
    everyone = [p for split in SPLIT_NAMES for p in by_split[split]]
    stacked = {view: np.concatenate([latents[split][view] for split in SPLIT_NAMES]) for view in VIEWS}
    metrics["strata"] = stratify_cohort(bundle, everyone, stacked, folders, strata_embedding, settings["seed"])
    metrics["input_check"] = calibrate_cohort_check(
        latents["train"], held_out["val"], held_out["test"], bundle.content_dim, folders
    )
    rows = read_training_csv(run_dir / "Training.csv")
    for folder in folders:
        atomic_write_json(folder / "metrics.json", metrics)
        write_report(metrics, material, rows, folder / "report.png")
    write_model_card(run_dir / "bundle")
    return metrics


def stratify_bundle(bundle_dir: Path, cohort: Path, cache_root: Path, device="cpu", kind="content", seed=0) -> dict:
    """Add the strata of ``cohort`` (BIDS folder or manifest) to an existing bundle; strata it
    already has are never replaced. Returns the bundle's metrics with the new ``strata`` section."""
    from ..runtime.bundle import load_bundle
    from ..runtime.strata import STRATA
    from .stratification import cohort_latents, stratify_cohort

    bundle_dir = Path(bundle_dir)
    if (bundle_dir / STRATA).exists():
        raise RunError(f"{bundle_dir / STRATA} exists; remove it first to stratify again")
    bundle = load_bundle(bundle_dir, device)
    pairs = discover(Path(cohort)).kept
    metrics_path = bundle_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    latents = cohort_latents(bundle, pairs, cache_root, device)
    metrics["strata"] = stratify_cohort(bundle, pairs, latents, (bundle_dir,), kind, seed)
    atomic_write_json(metrics_path, metrics)
    write_model_card(bundle_dir)
    return metrics


def calibrate_bundle(bundle_dir: Path, cohort: Path, cache_root: Path, device="cpu", seed=0) -> dict:
    """Add the input check's statistics to an existing bundle from the cohort it was trained on
    (BIDS folder or manifest), split again with the run's ``seed``; statistics it already has are
    never replaced. Returns the bundle's metrics with the new ``input_check`` section."""
    from ..runtime.bundle import load_bundle
    from ..runtime.input_check import INPUT_CHECK
    from .calibration import calibrate_cohort_check, encoded_views
    from .stratification import cohort_latents

    bundle_dir = Path(bundle_dir)
    if (bundle_dir / INPUT_CHECK).exists():
        raise RunError(f"{bundle_dir / INPUT_CHECK} exists; remove it first to calibrate again")
    bundle = load_bundle(bundle_dir, device)
    report = discover(Path(cohort))
    by_split = split_pairs(report, assign_splits(report.kept, seed))
    if bundle.cohort_subjects is None or sorted(bundle.cohort_subjects) != sorted(p.key for p in by_split["train"]):
        raise RunError(
            f"{bundle_dir}: its training subjects are not the train split of {cohort} with seed {seed}; "
            "calibrate with the cohort and seed the bundle was trained on"
        )
    metrics_path = bundle_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["input_check"] = calibrate_cohort_check(
        cohort_latents(bundle, by_split["train"], cache_root, device),
        *(encoded_views(bundle, by_split[split], cache_root, device) for split in ("val", "test")),
        bundle.content_dim,
        (bundle_dir,),
    )
    atomic_write_json(metrics_path, metrics)
    write_model_card(bundle_dir)
    return metrics
