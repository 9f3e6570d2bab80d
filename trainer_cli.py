#!/usr/bin/env python
"""Headless trainer for MultiviewCRL.

With no arguments it runs the main job: builds the embedded synthetic cohort once, trains the
CPU-sized ``spatial-demo`` preset (the bundled model's family), writes a model bundle and evaluates
it. ``trainer_cli.py evaluate --run RUN_DIR`` evaluates a finished run again; ``trainer_cli.py
export --run RUN_DIR --out FOLDER`` copies its bundle (float16) for the Slicer module, with its
model card (``trainer_cli.py card --bundle B`` writes one for any bundle); ``trainer_cli.py stratify
--bundle B --cohort DIR`` adds a cohort's strata to a bundle that has none, and ``trainer_cli.py
calibrate --bundle B --cohort DIR`` its input check; ``trainer_cli.py register --fixed F --moving M
--bundle B --out DIR`` registers two contrasts of one subject through a spatial bundle's content
maps; ``trainer_cli.py restore --lowres F [--guide G] --bundle B --out DIR`` restores a
low-resolution or thick-slice view on a 2 mm grid, guided by the other view when given.
The technical report's command works as written, e.g.::

    python trainer_cli.py --dataroot /data --dataset_name ADNI --t1-pattern '*T1w*.nii.gz' \\
        --t2-pattern '*T2w*.nii.gz' --train-steps 100001 --batch-size 4 --use-amp \\
        --scale-recon-loss 1e-5 --lr 1e-5 --tau 1.0 --model-id adni-seed --preset seed
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from MultiviewCRLLib.config import PRESETS, VIEWS
from MultiviewCRLLib.runtime.strata import EMBEDDINGS


def add_run_arguments(run) -> None:
    """Where a run goes and how it runs: results, names, resume, seed, device, workers, evaluation."""
    run.add_argument(
        "--model-id", help="run name under results/{dataset}/ (default: preset and time); never overwritten"
    )
    run.add_argument("--results", type=Path, default=Path("results"), help="results root")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    run.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and batch order")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--num-workers", type=int, default=0, help="data-loading worker processes")
    run.add_argument(
        "--no-evaluation",
        dest="evaluate",
        action="store_false",
        help="write the bundle but skip its evaluation (run it later with: trainer_cli.py evaluate --run RUN_DIR)",
    )


def build_parser() -> argparse.ArgumentParser:
    seed = PRESETS["seed"].train
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py",
        description="Train MultiviewCRL: content-only InfoNCE on the first content dims plus a scaled L1+L2 "
        "reconstruction loss. With no arguments: the spatial-demo preset on the embedded synthetic cohort.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data (default: the embedded synthetic cohort of the preset)")
    data.add_argument("--dataroot", type=Path, help="root folder of datasets; the data are in DATAROOT/DATASET_NAME")
    data.add_argument(
        "--dataset_name",
        "--dataset-name",
        dest="dataset_name",
        help="dataset folder under --dataroot; also names results/{dataset}/",
    )
    data.add_argument("--bids", type=Path, help="a BIDS folder (sub-*/[ses-*/]anat/*_T1w.nii.gz, *_T2w.nii.gz)")
    data.add_argument("--manifest", type=Path, help="a CSV/TSV with columns subject,t1,t2 (+ split, labels)")
    data.add_argument("--t1-pattern", help="glob of the T1 file inside each subject folder (folder layouts)")
    data.add_argument("--t2-pattern", help="glob of the T2 file inside each subject folder (folder layouts)")
    data.add_argument(
        "--views", nargs=2, default=list(VIEWS), metavar=("VIEW1", "VIEW2"), help="BIDS suffixes of the two views"
    )
    data.add_argument(
        "--prepare",
        action="store_true",
        help="raw scans (skull, any position): prepare every pair once before training, as the Slicer module "
        "does (brain extraction, alignment to the template); cached under DATA_ROOT/prepared",
    )
    data.add_argument("--strict", action="store_true", help="abort when any subject is rejected by discovery")
    data.add_argument("--stratify", help="label column to stratify the subject-level split by")
    data.add_argument("--synthetic-subjects", type=int, help="size of the synthetic cohort (default: the preset's)")
    data.add_argument(
        "--data-root",
        type=Path,
        help="where the synthetic cohort and the preprocessing cache live [data; a resumed run's own]",
    )

    train = parser.add_argument_group("training (default: the preset's value; the report's in brackets)")
    train.add_argument(
        "--preset", choices=sorted(PRESETS), default="spatial-demo", help="model/preprocessing/training sizes"
    )
    train.add_argument("--train-steps", type=int, help=f"optimisation steps [{seed.steps}]")
    train.add_argument("--batch-size", type=int, help=f"subjects per batch; 2B volumes per step [{seed.batch_size}]")
    train.add_argument("--lr", type=float, help=f"Adam learning rate [{seed.lr:g}]")
    train.add_argument("--tau", type=float, help=f"InfoNCE temperature [{seed.tau:g}]")
    train.add_argument(
        "--scale-recon-loss", type=float, help=f"weight of the reconstruction loss [{seed.scale_recon_loss:g}]"
    )
    train.add_argument(
        "--use-amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision: float16 with a GradScaler on CUDA, bfloat16 on CPUs with native bf16 [on]",
    )
    train.add_argument(
        "--amp-dtype", choices=["float16", "bfloat16"], help="the mixed precision asked for [the device's own]"
    )
    train.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random rigid (shared by both views) + intensity augmentation [off]",
    )
    train.add_argument(
        "--contrast-randomisation",
        type=float,
        metavar="P",
        help="the probability, per view and sample, of a random intensity curve and of k-space truncation or "
        "thick slices, on top of the per-view contrast augmentation [0]",
    )
    train.add_argument(
        "--randomised-map-input",
        action=argparse.BooleanOptionalAction,
        help="spatial family: the random contrasts and resolutions go only to a copy of each view that the "
        "content map reads; the style and the reconstruction targets keep the realistic view [off]",
    )
    train.add_argument(
        "--separable",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="depthwise-separable convolutions in the encoder and decoder stages [off]",
    )
    train.add_argument("--log-every", type=int, help="steps between Training.csv rows")
    train.add_argument("--image-every", type=int, help="steps between decoded NIfTI snapshots")
    train.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")

    add_run_arguments(parser.add_argument_group("run"))
    return parser


TRAIN_FLAGS = {
    "train_steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "tau": "tau",
    "scale_recon_loss": "scale_recon_loss",
    "use_amp": "amp",
    "amp_dtype": "amp_dtype",
    "augment": "augment",
    "contrast_randomisation": "contrast_randomisation",
    "randomised_map_input": "randomised_map_input",
    "log_every": "log_every",
    "image_every": "image_every",
    "checkpoint_every": "checkpoint_every",
}


def request_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser):
    from MultiviewCRLLib.training.runs import RunRequest

    sources = [s for s in (args.bids, args.manifest, args.dataroot) if s is not None]
    if len(sources) > 1:
        parser.error("give one data source: --bids, --manifest or --dataroot/--dataset_name")
    source = sources[0] if sources else None
    if args.dataroot is not None:
        if not args.dataset_name:
            parser.error("--dataroot needs --dataset_name")
        source = args.dataroot / args.dataset_name
    overrides = {field: getattr(args, flag) for flag, field in TRAIN_FLAGS.items() if getattr(args, flag) is not None}
    for flag in ("train_steps", "batch_size", "log_every", "image_every", "checkpoint_every", "synthetic_subjects"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.batch_size is not None and args.batch_size < 2:
        parser.error("--batch-size must be at least 2: the contrastive loss needs negatives")
    for flag in ("lr", "tau"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            parser.error(f"--{flag} must be positive, got {value}")
    return RunRequest(
        preset=args.preset,
        source=source,
        dataset=args.dataset_name,
        t1_pattern=args.t1_pattern,
        t2_pattern=args.t2_pattern,
        views=tuple(args.views),
        train_overrides=overrides,
        model_overrides={} if args.separable is None else {"separable": args.separable},
        model_id=args.model_id,
        results=args.results,
        data_root=args.data_root,
        seed=args.seed,
        device=args.device,
        num_workers=args.num_workers,
        strict=args.strict,
        stratify=args.stratify,
        synthetic_subjects=args.synthetic_subjects,
        prepare=args.prepare,
        evaluate=args.evaluate,
    )


def build_evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py evaluate",
        description="Evaluate a finished run on its test split: probes, retrieval, reconstruction, cross-view "
        "synthesis, DCI and an untrained-encoder baseline; strata of the whole cohort (affinity propagation) and "
        "their associations with every label column. Writes metrics.json, report.png, strata.tsv, strata.png and "
        "strata.json into the run folder and its bundle.",
    )
    parser.add_argument("--run", type=Path, required=True, help="the run folder (results/{dataset}/{model_id})")
    parser.add_argument(
        "--data-root", type=Path, help="where the preprocessing cache lives (default: the one the run was trained with)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    strata_embedding_argument(parser)
    return parser


def strata_embedding_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--strata-embedding",
        choices=EMBEDDINGS,
        default="content",
        help="what strata are found on: the content averaged over the views, or the fused embedding "
        "(that content plus both views' styles)",
    )


def bundle_cohort_parser(command: str, description: str, cohort_help: str, seed_help: str) -> argparse.ArgumentParser:
    """A subcommand that adds what a cohort gives to an existing bundle."""
    parser = argparse.ArgumentParser(prog=f"trainer_cli.py {command}", description=description)
    parser.add_argument("--bundle", type=Path, required=True, help="the model bundle folder")
    parser.add_argument("--cohort", type=Path, required=True, help=cohort_help)
    parser.add_argument("--data-root", type=Path, default=Path("data"), help="where the preprocessing cache lives")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    return parser


def build_stratify_parser() -> argparse.ArgumentParser:
    parser = bundle_cohort_parser(
        "stratify",
        "Find the strata of a cohort under an existing bundle (e.g. one exported before strata existed) and add "
        "them to it: strata.json (what the Slicer panel names), strata.tsv, strata.png, and the 'strata' section "
        "of its metrics.json.",
        "a BIDS folder or a manifest CSV/TSV",
        "seed of affinity propagation and of the stability halves",
    )
    strata_embedding_argument(parser)
    return parser


def build_calibrate_parser() -> argparse.ArgumentParser:
    return bundle_cohort_parser(
        "calibrate",
        "Add the input check (whether a pair looks like the training data) to an existing bundle from the cohort "
        "and seed it was trained on: input_check.json and the 'input_check' section of its metrics.json.",
        "the BIDS folder or manifest it was trained on",
        "the seed of the run that split the cohort",
    )


def build_export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py export",
        description="Copy a run's bundle (with its metrics.json and report.png) into a new folder, e.g. "
        "Resources/Models/<name> for the Slicer module. Weights are stored as float16 unless --float32.",
    )
    parser.add_argument("--run", type=Path, required=True, help="the run folder (results/{dataset}/{model_id})")
    parser.add_argument("--out", type=Path, required=True, help="the new bundle folder (must not exist)")
    parser.add_argument("--float32", action="store_true", help="keep float32 weights (twice the size)")
    return parser


def build_card_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py card",
        description="Write a bundle's model card (MODEL_CARD.md) from its settings.json and metrics.json.",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle folder")
    return parser


def build_register_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py register",
        description="Register a moving scan (e.g. a T2w) to a fixed scan of the same subject in another contrast "
        "(e.g. its T1w): rigid, then affine (or rigid only), through a spatial-family bundle's content maps "
        "(mean squares), or by Mattes mutual information. "
        "Writes OUT/aligned.nii.gz (the moving scan on the fixed scan's grid), "
        "OUT/transform.tfm (ITK; Slicer reads it) and OUT/registration.json.",
    )
    parser.add_argument("--fixed", type=Path, required=True, help="the fixed scan (NIfTI)")
    parser.add_argument("--moving", type=Path, required=True, help="the moving scan (NIfTI)")
    parser.add_argument("--bundle", type=Path, required=True, help="a spatial-family model bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the results")
    parser.add_argument(
        "--method", choices=["content-maps", "mutual-information"], default="content-maps", help="what is compared"
    )
    parser.add_argument(
        "--transform",
        choices=["affine", "rigid"],
        default="affine",
        help="affine: rigid, then affine from it; rigid: stop after the rigid fit (two scans of one session)",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def register_command(args: argparse.Namespace) -> str:
    from MultiviewCRLLib.runtime.bundle import load_bundle
    from MultiviewCRLLib.runtime.device import select_device
    from MultiviewCRLLib.runtime.registration import register_views, write_registration
    from MultiviewCRLLib.training.discovery import read_volume

    scans = [read_volume(path) for path in (args.fixed, args.moving)]
    bundle = load_bundle(args.bundle, select_device(args.device))
    names = (f"the fixed scan {args.fixed}", f"the moving scan {args.moving}")
    registration = register_views(
        bundle, *scans, method=args.method.replace("-", " "), names=names, kind=args.transform
    )
    write_registration(registration, *scans, args.out)
    return f"residual {registration.residual:.3f} in {registration.seconds:.1f} s; wrote {args.out}"


def build_restore_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trainer_cli.py restore",
        description="Restore a low-resolution or thick-slice view (skull-stripped, as the cohort's) on a 2 mm grid, "
        "guided by the other view of the same session when given. Writes OUT/restored.nii.gz (in the inputs' "
        "world space, so it overlays them) and OUT/restoration.json.",
    )
    parser.add_argument("--lowres", type=Path, required=True, help="the low-resolution view (NIfTI)")
    parser.add_argument("--guide", type=Path, help="the other view of the same session, at high resolution (NIfTI)")
    parser.add_argument("--bundle", type=Path, required=True, help="a model bundle with restoration networks")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for the results")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return parser


def restore_command(args: argparse.Namespace) -> str:
    import nibabel as nib

    from MultiviewCRLLib.runtime.bundle import load_bundle
    from MultiviewCRLLib.runtime.device import select_device
    from MultiviewCRLLib.runtime.restoration import restore_scan, uncovered_words
    from MultiviewCRLLib.runtime.storage import atomic_write_json, nifti_image, staged_folder
    from MultiviewCRLLib.training.discovery import read_volume

    if args.out.exists():
        raise ValueError(f"{args.out} exists; choose a new folder for the results")
    device = select_device(args.device)
    bundle = load_bundle(args.bundle, device)
    guide = read_volume(args.guide) if args.guide else None
    names = {"lowres": f"the low-resolution view {args.lowres}", "guide": f"the guide {args.guide}"}
    restored = restore_scan(bundle, read_volume(args.lowres), guide, names)
    record = {"lowres": str(args.lowres), "guide": str(args.guide) if args.guide else None, **restored.record}
    with staged_folder(args.out) as staging:
        nib.save(nifti_image(restored.image[0].numpy(), restored.image.affine.numpy()), staging / "restored.nii.gz")
        atomic_write_json(staging / "restoration.json", record)
    uncovered = uncovered_words(restored.record, names)
    said = f"; {uncovered}" if uncovered else ""
    return f"restored {args.lowres} ({record['network']}) in {record['seconds']:.1f} s; wrote {args.out}{said}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from MultiviewCRLLib.runtime.bundle import BundleError, export_bundle
    from MultiviewCRLLib.runtime.device import DeviceError, select_device
    from MultiviewCRLLib.runtime.restoration import RestorationError
    from MultiviewCRLLib.training.discovery import DiscoveryError
    from MultiviewCRLLib.training.model_card import write_model_card
    from MultiviewCRLLib.training.report import headline_table, input_check_summary, strata_summary
    from MultiviewCRLLib.training.runs import RunError, calibrate_bundle, evaluate_run, stratify_bundle, train_run
    from MultiviewCRLLib.training.trainer import TrainingStopped

    try:
        if argv[:1] == ["evaluate"]:
            args = build_evaluate_parser().parse_args(argv[1:])
            cache_root = args.data_root / "cache" if args.data_root else None
            metrics = evaluate_run(
                args.run, cache_root, select_device(args.device), strata_embedding=args.strata_embedding
            )
            print(f"{headline_table(metrics)}\n\n{strata_summary(metrics)}\n\n{input_check_summary(metrics)}\n")
            print(f"wrote {args.run / 'metrics.json'}, {args.run / 'report.png'} and {args.run / 'strata.png'}")
        elif argv[:1] == ["stratify"]:
            args = build_stratify_parser().parse_args(argv[1:])
            metrics = stratify_bundle(
                args.bundle,
                args.cohort,
                args.data_root / "cache",
                select_device(args.device),
                args.strata_embedding,
                args.seed,
            )
            print(f"{strata_summary(metrics)}\n\nwrote the strata into {args.bundle}")
        elif argv[:1] == ["calibrate"]:
            args = build_calibrate_parser().parse_args(argv[1:])
            metrics = calibrate_bundle(
                args.bundle, args.cohort, args.data_root / "cache", select_device(args.device), args.seed
            )
            print(f"{input_check_summary(metrics)}\n\nwrote the input check into {args.bundle}")
        elif argv[:1] == ["register"]:
            print(register_command(build_register_parser().parse_args(argv[1:])))
        elif argv[:1] == ["restore"]:
            print(restore_command(build_restore_parser().parse_args(argv[1:])))
        elif argv[:1] == ["export"]:
            args = build_export_parser().parse_args(argv[1:])
            exported = export_bundle(args.run / "bundle", args.out, half=not args.float32)
            print(f"wrote {exported} with its model card {write_model_card(exported)}")
        elif argv[:1] == ["card"]:
            args = build_card_parser().parse_args(argv[1:])
            print(f"wrote {write_model_card(args.bundle)}")
        else:
            parser = build_parser()
            args = parser.parse_args(argv)
            train_run(request_from_args(args, parser), resume=args.resume)
    except TrainingStopped as stop:
        print(f"\n{stop}", file=sys.stderr)
        return stop.exit_code
    except DeviceError as err:
        print(f"error: {err}; choose another with --device (auto, cpu, cuda or cuda:N)", file=sys.stderr)
        return 2
    except (RunError, DiscoveryError, BundleError, RestorationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: could not read or write {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
