"""The tiny preset trains for real: losses fall, logs/images/checkpoints appear on schedule, the
bundle round-trips, a run is never overwritten, and the report's command parses."""

import csv
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import pytest
import torch

import trainer_cli
from MultiviewCRLLib.config import PRESETS, VIEW_KEYS
from MultiviewCRLLib.runtime.bundle import BundleError, load_bundle
from MultiviewCRLLib.runtime.networks import Encoder
from MultiviewCRLLib.runtime.preprocessing import file_transforms
from MultiviewCRLLib.training.data import read_splits
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.runs import RunError, RunRequest, train_run
from MultiviewCRLLib.training.trainer import Trainer, TrainingStopped, latest_checkpoint

STEPS = 30
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tiny_run_and_request):
    return tiny_run_and_request


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def test_both_losses_go_down(tiny_run):
    run_dir, _ = tiny_run
    rows = read_csv(run_dir / "Training.csv")
    # Starts near chance, log(2B - 1) at B = 4 (the first rows average five steps of a fresh encoder).
    assert rows[0]["contrastive"] < 1.946 + 0.25
    assert rows[-1]["contrastive"] < rows[0]["contrastive"] - 0.2
    assert rows[-1]["top1_retrieval"] > 1 / 7
    assert rows[-1]["reconstruction"] < 0.8 * rows[0]["reconstruction"]


def test_outputs_appear_on_schedule(tiny_run):
    run_dir, _ = tiny_run
    train = PRESETS["tiny"].train
    rows = read_csv(run_dir / "Training.csv")
    assert [int(r["step"]) for r in rows] == list(range(train.log_every, STEPS + 1, train.log_every))
    assert set(rows[0]) == {
        "step",
        "total",
        "contrastive",
        "reconstruction",
        "dense",
        "top1_retrieval",
        "lr",
        "seconds",
    }
    snapshots = list(range(train.image_every, STEPS + 1, train.image_every))
    for key in VIEW_KEYS:
        assert (run_dir / "images" / f"{key}_input.nii.gz").is_file()
        for step in snapshots:
            decoded = nib.load(run_dir / "images" / f"step_{step:06d}_{key}_decoded.nii.gz")
            assert decoded.shape == PRESETS["tiny"].preprocessing.spatial_size
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert checkpoints == [f"step_{s:06d}.pt" for s in range(train.checkpoint_every, STEPS + 1, train.checkpoint_every)]
    state = torch.load(run_dir / "checkpoints" / f"step_{STEPS:06d}.pt", weights_only=True)
    assert state["step"] == STEPS and {"encoder", "decoder", "optimizer", "scaler", "rng"} <= set(state)
    for name in ("settings.json", "splits.tsv", "discovery.tsv", "training_curves.png"):
        assert (run_dir / name).is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    settings = json.loads((run_dir / "settings.json").read_text())
    assert settings["preset"] == "tiny" and settings["train"]["steps"] == STEPS


def test_splits_are_subject_disjoint_and_saved(tiny_run):
    run_dir, _ = tiny_run
    splits = read_splits(run_dir / "splits.tsv")
    assert len(splits) == PRESETS["tiny"].cohort.subjects
    assert set(splits.values()) == {"train", "val", "test"}


def test_bundle_round_trip_reproduces_the_embeddings(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    bundle = load_bundle(run_dir / "bundle")
    preset = PRESETS["tiny"]
    assert set(bundle.style_means) == {"T1w", "T2w"}
    assert bundle.style_means["T1w"].shape == (preset.model.style_dim,)
    assert bundle.settings["content_dims"] == [0, preset.model.content_dim]
    state = torch.load(run_dir / "checkpoints" / f"step_{STEPS:06d}.pt", weights_only=True)
    trained = Encoder(preset.model)
    trained.load_state_dict(state["encoder"])
    trained.eval()
    settings = json.loads((run_dir / "settings.json").read_text())
    pair = discover_bids(Path(settings["data"]["source"])).kept[0]
    x = file_transforms(["t1"], preset.preprocessing)({"t1": str(pair.t1)})["t1"].as_tensor()[None]
    with torch.no_grad():
        assert torch.allclose(bundle.encoder(x), trained(x), atol=1e-6)
        # The style means separate the views: T1w and T2w contrasts differ.
        assert not torch.allclose(bundle.style_means["T1w"], bundle.style_means["T2w"])
    half = tmp_path / "half"
    assert trainer_cli.main(["export", "--run", str(run_dir), "--out", str(half)]) == 0
    assert {p.name for p in half.iterdir()} == {
        "weights.pt",
        "settings.json",
        "cohort.pt",
        "metrics.json",
        "report.png",
        "strata.json",
        "strata.tsv",
        "strata.png",
        "input_check.json",
        "template.nii.gz",
        "template_mask.nii.gz",
        "MODEL_CARD.md",
    }
    assert json.loads((half / "settings.json").read_text())["weights_dtype"] == "float16"
    assert (half / "weights.pt").stat().st_size < 0.6 * (run_dir / "bundle" / "weights.pt").stat().st_size
    with torch.no_grad():
        assert torch.allclose(load_bundle(half).encoder(x), trained(x), atol=1e-2)


def test_export_never_replaces_a_folder(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    taken = tmp_path / "taken"
    taken.mkdir()
    assert trainer_cli.main(["export", "--run", str(run_dir), "--out", str(taken)]) == 2
    assert f"export to {taken}: it already exists" in capsys.readouterr().err
    assert not any(taken.iterdir()) and [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_outputs_are_readable_by_others_under_umask_022(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    previous = os.umask(0o022)
    try:
        assert trainer_cli.main(["export", "--run", str(run_dir), "--out", str(tmp_path / "shared")]) == 0
    finally:
        os.umask(previous)
    written = [tmp_path / "shared", *(tmp_path / "shared").iterdir()]
    written += [p for p in run_dir.rglob("*") if p.name.endswith((".csv", ".json", ".tsv", ".pt", ".nii.gz"))]
    for path in written:
        assert path.stat().st_mode & 0o044 == 0o044, f"{path} is not readable by group and others"


def test_bundle_refusals(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    with pytest.raises(BundleError, match="folder not found"):
        load_bundle(tmp_path / "none")
    missing = shutil.copytree(run_dir / "bundle", tmp_path / "missing")
    (missing / "weights.pt").unlink()
    with pytest.raises(BundleError, match="missing weights.pt"):
        load_bundle(missing)
    mismatched = shutil.copytree(run_dir / "bundle", tmp_path / "mismatched")
    settings = json.loads((mismatched / "settings.json").read_text())
    settings["model"]["encoder_channels"] = [8, 8, 16]
    (mismatched / "settings.json").write_text(json.dumps(settings))
    with pytest.raises(BundleError, match=r"mismatched: encoder weights do not match settings.json"):
        load_bundle(mismatched)
    broken = shutil.copytree(run_dir / "bundle", tmp_path / "broken")
    (broken / "settings.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"broken: settings.json is invalid"):
        load_bundle(broken)


class Payload:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    hostile = shutil.copytree(run_dir / "bundle", tmp_path / "hostile")
    payload = Payload()
    payload.marker = tmp_path / "executed"
    with open(hostile / "weights.pt", "wb") as f:
        pickle.dump({"encoder": payload, "decoder": {}}, f)
    with pytest.raises(BundleError, match="weights.pt refused"):
        load_bundle(hostile)
    assert not payload.marker.exists()


def test_existing_run_is_never_overwritten(tiny_run):
    run_dir, request = tiny_run
    before = (run_dir / "Training.csv").read_bytes()
    with pytest.raises(RunError, match="already exists"):
        train_run(request)
    assert (run_dir / "Training.csv").read_bytes() == before


def assert_same_training_log(rows, reference):
    """Every logged figure equal to 1e-6 (wall-clock seconds excepted)."""
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    for row, ref in zip(rows, reference):
        for key in ("total", "contrastive", "reconstruction", "top1_retrieval", "lr"):
            assert row[key] == pytest.approx(ref[key], abs=1e-6), (row["step"], key)


def test_resume_is_exact(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    last = copy / "checkpoints" / f"step_{STEPS:06d}.pt"
    last.unlink()  # as if killed between the checkpoints at steps 20 and 30
    reference = read_csv(run_dir / "Training.csv")
    assert trainer_cli.main(["--resume", str(copy), "--no-evaluation"]) == 0
    assert_same_training_log(read_csv(copy / "Training.csv"), reference)
    assert last.is_file()


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tiny_run, tmp_path, capsys):
    run_dir, _ = tiny_run
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    last = copy / "checkpoints" / f"step_{STEPS:06d}.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash of the disk
    assert latest_checkpoint(copy).name == "step_000020.pt"
    assert f"checkpoint {last} is corrupt" in capsys.readouterr().out
    assert trainer_cli.main(["--resume", str(copy), "--no-evaluation"]) == 0
    assert_same_training_log(read_csv(copy / "Training.csv"), read_csv(run_dir / "Training.csv"))


def test_sigterm_writes_a_checkpoint_and_resume_matches(tiny_run, tmp_path):
    run_dir, request = tiny_run
    results = tmp_path / "results"
    command = [sys.executable, str(ROOT / "trainer_cli.py"), "--preset", "tiny", "--results", str(results)]
    command += ["--data-root", str(request.data_root), "--model-id", "stopped", "--checkpoint-every", "1000"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    csv_path = results / "synthetic" / "stopped" / "Training.csv"
    deadline = time.time() + 120
    while not csv_path.is_file() and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM at step" in stderr and "--resume" in stderr
    stopped = results / "synthetic" / "stopped"
    checkpoint = latest_checkpoint(stopped)
    assert checkpoint is not None and 5 <= int(checkpoint.stem.split("_")[1]) < STEPS
    assert trainer_cli.main(["--resume", str(stopped), "--data-root", str(request.data_root), "--no-evaluation"]) == 0
    assert_same_training_log(read_csv(csv_path), read_csv(run_dir / "Training.csv"))


def test_persistent_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_run, tmp_path):
    _, request = tiny_run
    exploding = RunRequest(
        preset="tiny",
        model_id="nan",
        results=tmp_path / "results",
        data_root=request.data_root,
        train_overrides={"lr": 1e30, "checkpoint_every": 1},
    )
    with pytest.raises(TrainingStopped, match=r"not finite for 5 consecutive steps \(the last at step \d+\)") as stop:
        train_run(exploding)
    assert stop.value.exit_code == 3
    kept = latest_checkpoint(tmp_path / "results" / "synthetic" / "nan")
    state = torch.load(kept, weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["encoder"].values() if v.is_floating_point())


def test_unwritable_results_folder_is_refused_before_training(tiny_run, tmp_path, capsys):
    _, request = tiny_run
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    code = trainer_cli.main(["--preset", "tiny", "--results", str(blocker), "--data-root", str(request.data_root)])
    assert code == 2
    assert "cannot write the run folder" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert trainer_cli.main(["--resume", str(tmp_path)]) == 2
    assert "no settings.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        trainer_cli.main(["--batch-size", "1"])
    assert exit_info.value.code == 2
    assert "--batch-size must be at least 2" in capsys.readouterr().err
    empty = tmp_path / "empty_bids"
    empty.mkdir()
    assert trainer_cli.main(["--bids", str(empty), "--results", str(tmp_path / "r")]) == 2
    assert "no usable subjects" in capsys.readouterr().err


def test_report_command_parses_with_the_report_values():
    argv = "--dataroot /data --dataset_name ADNI --train-steps 100001 --batch-size 4 --use-amp"
    argv += " --scale-recon-loss 1e-5 --lr 1e-5 --tau 1.0 --model-id report --preset seed"
    parser = trainer_cli.build_parser()
    request = trainer_cli.request_from_args(parser.parse_args(argv.split()), parser)
    assert request.source == Path("/data/ADNI") and request.dataset == "ADNI" and request.model_id == "report"
    assert request.train_overrides == {
        "steps": 100001,
        "batch_size": 4,
        "amp": True,
        "scale_recon_loss": 1e-5,
        "lr": 1e-5,
        "tau": 1.0,
    }
    seed = PRESETS["seed"].train
    assert (seed.batch_size, seed.lr, seed.tau, seed.scale_recon_loss, seed.amp, seed.clip_grad_norm) == (
        4,
        1e-5,
        1.0,
        1e-5,
        True,
        2.0,
    )
    help_text = parser.format_help()
    for flag in ("--dataroot", "--dataset_name", "--train-steps", "--resume", "--preset", "--num-workers"):
        assert flag in help_text


def test_a_randomised_map_input_is_refused_for_the_global_family(tmp_path):
    preset = PRESETS["tiny"]
    train = replace(preset.train, contrast_randomisation=0.5, randomised_map_input=True)
    with pytest.raises(ValueError, match="randomised_map_input needs the spatial family"):
        Trainer(tmp_path / "run", preset.model, preset.preprocessing, train, [], None)
