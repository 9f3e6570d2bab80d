"""Hostile and mistaken input to trainer_cli.py: each case ends with exit code 2 and a message that
names the problem, never a traceback, and nothing is written where it should not be. The README's
table of bad inputs lists these together with the cases tested next to their modules."""

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import exit_code_and_stderr

import trainer_cli
from MultiviewCRLLib.training.trainer import checksum_path


def run_cli(argv, capsys):
    return exit_code_and_stderr(trainer_cli.main, argv, capsys)


@pytest.fixture
def data_root(tiny_run_and_request):
    return str(tiny_run_and_request[1].data_root)


FLAG_CASES = {
    "batch of one": (["--batch-size", "1"], "--batch-size must be at least 2"),
    "zero steps": (["--train-steps", "0"], "--train-steps must be at least 1"),
    "negative learning rate": (["--lr", "-1"], "--lr must be positive"),
    "zero temperature": (["--tau", "0"], "--tau must be positive"),
    "two data sources": (["--bids", "a", "--manifest", "b.csv"], "give one data source"),
    "dataroot without name": (["--dataroot", "/data"], "--dataroot needs --dataset_name"),
    "unknown preset": (["--preset", "huge"], "invalid choice: 'huge'"),
    "text for a number": (["--train-steps", "many"], "invalid int value: 'many'"),
}


@pytest.mark.parametrize("case", FLAG_CASES)
def test_bad_flags(case, capsys):
    argv, message = FLAG_CASES[case]
    code, err = run_cli(argv, capsys)
    assert code == 2 and message in err


def test_missing_sources_and_half_patterns(tmp_path, data_root, capsys):
    results = ["--results", str(tmp_path / "r"), "--data-root", data_root, "--preset", "tiny"]
    cases = [
        (["--bids", str(tmp_path / "nowhere")], "nowhere: BIDS folder not found"),
        (["--manifest", str(tmp_path / "none.csv")], "none.csv"),
        (["--dataroot", str(tmp_path), "--dataset_name", "ADNI"], "ADNI: BIDS folder not found"),
        (["--dataroot", str(tmp_path), "--dataset_name", "x", "--t1-pattern", "*T1*"], "both a T1 and a T2 pattern"),
    ]
    for argv, message in cases:
        code, err = run_cli(argv + results, capsys)
        assert code == 2 and message in err, (argv, err)
    assert not (tmp_path / "r").exists()  # nothing started


def test_manifest_without_columns(tmp_path, capsys):
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("name,T1,T2\na,x.nii.gz,y.nii.gz\n")
    code, err = run_cli(["--manifest", str(manifest), "--results", str(tmp_path / "r")], capsys)
    assert code == 2 and "lacks the column(s)" in err and "pairs.csv" in err


def test_resume_and_evaluate_of_something_else(tiny_run_dir, tmp_path, capsys):
    code, err = run_cli(["--resume", str(tmp_path)], capsys)
    assert code == 2 and "no settings.json" in err
    no_checkpoints = shutil.copytree(tiny_run_dir, tmp_path / "copy")
    shutil.rmtree(no_checkpoints / "checkpoints")
    code, err = run_cli(["--resume", str(no_checkpoints)], capsys)
    assert code == 2 and "no usable checkpoint" in err
    code, err = run_cli(["evaluate", "--run", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "no settings.json" in err


def test_existing_model_id(tiny_run_and_request, data_root, capsys):
    run_dir, request = tiny_run_and_request
    argv = ["--preset", "tiny", "--results", str(request.results), "--model-id", run_dir.name, "--data-root", data_root]
    code, err = run_cli(argv, capsys)
    assert code == 2 and "already exists" in err and "--resume" in err


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_a_pickle_payload_is_refused(tiny_run_dir, tmp_path, capsys):
    copy = shutil.copytree(tiny_run_dir, tmp_path / "copy")
    last = sorted((copy / "checkpoints").glob("*.pt"))[-1]
    payload = Payload()
    payload.marker = tmp_path / "executed"
    last.write_bytes(pickle.dumps({"step": payload}))
    checksum_path(last).write_text(hashlib.sha256(last.read_bytes()).hexdigest())  # even with a valid checksum
    code, err = run_cli(["--resume", str(copy)], capsys)
    assert code == 2 and "refused" in err and last.name in err
    assert not payload.marker.exists()


def test_manifest_subject_names_cannot_write_outside_the_run(tiny_run_and_request, tmp_path, capsys):
    _, request = tiny_run_and_request
    source = next((request.data_root).glob("synthetic-*"))
    rows = ["subject,t1,t2"]
    for i, anat in enumerate(sorted(source.glob("sub-*/anat"))[:12]):
        name = f"../../escape{i}" if i < 6 else f"/tmp/abs{i}"
        rows.append(f"{name},{anat / (anat.parent.name + '_T1w.nii.gz')},{anat / (anat.parent.name + '_T2w.nii.gz')}")
    work = tmp_path / "work"
    work.mkdir()
    (work / "pairs.csv").write_text("\n".join(rows) + "\n")
    before = set(tmp_path.rglob("*"))
    argv = ["--manifest", str(work / "pairs.csv"), "--preset", "tiny", "--batch-size", "2", "--train-steps", "4"]
    argv += ["--results", str(work / "results"), "--data-root", str(work / "data"), "--model-id", "m"]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (work / "results" / "pairs" / "m" / "bundle" / "weights.pt").is_file()
    created = {p for p in set(tmp_path.rglob("*")) - before if not str(p).startswith(str(work))}
    assert created == set(), created
    assert not list(tmp_path.parent.glob("escape*")) and not list(Path("/tmp").glob("abs[0-9]*"))


def test_write_failure_during_training_is_clear_and_keeps_the_checkpoint(tiny_run_and_request, tmp_path):
    """The run's checkpoint folder becomes unwritable mid-run (here: replaced by a file)."""
    import subprocess
    import sys
    import time

    _, request = tiny_run_and_request
    results = tmp_path / "results"
    command = [sys.executable, str(Path(trainer_cli.__file__)), "--preset", "tiny", "--train-steps", "100000"]
    command += ["--results", str(results), "--data-root", str(request.data_root), "--model-id", "full"]
    command += ["--checkpoint-every", "5", "--image-every", "100000"]
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    checkpoints = results / "synthetic" / "full" / "checkpoints"
    deadline = time.time() + 120
    while not list(checkpoints.glob("*.sha256")) and time.time() < deadline:
        time.sleep(0.05)
    kept = checkpoints.with_name("kept")
    checkpoints.rename(kept)
    checkpoints.write_text("not a folder any more")
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-1000:]
    assert "error: could not read or write" in stderr and "Traceback" not in stderr
    saved = sorted(kept.glob("*.pt"))
    assert saved  # every checkpoint written before the failure is complete and verifies
    for path in saved:
        assert checksum_path(path).read_text() == hashlib.sha256(path.read_bytes()).hexdigest()
