"""Shared fixtures: real synthetic cohorts written to temporary folders once per test session."""

import os
from pathlib import Path

import pytest
import torch

from MultiviewCRLLib.training.runs import RunRequest, train_run
from MultiviewCRLLib.training.synthetic import generate_cohort

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # The test processes share the machine's cores: torch's threads are split between them, the same
    # in the processes the tests start (a run resumed in one must match a run made in the other).
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def cohort64(tmp_path_factory) -> Path:
    """64 subjects at 2 mm: enough subjects for correlations, coarse enough to be quick."""
    return generate_cohort(tmp_path_factory.mktemp("cohort64") / "bids", n_subjects=64, seed=3, spacing_mm=2.0)


@pytest.fixture(scope="session")
def cohort_1mm(tmp_path_factory) -> Path:
    """Two subjects on the template's 1 mm grid, so preprocessing really resamples to 2 mm."""
    return generate_cohort(tmp_path_factory.mktemp("cohort_1mm") / "bids", n_subjects=2, seed=5, spacing_mm=1.0)


def exit_code_and_stderr(main, argv, capsys) -> tuple[int, str]:
    """A command line's ``main(argv)`` run in this process: its exit code (argparse's errors
    included) and what it wrote to stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse errors
        code = exit_info.code
    return code, capsys.readouterr().err


def volume_path(bids: Path, subject: str, view: str) -> Path:
    return bids / subject / "anat" / f"{subject}_{view}.nii.gz"


@pytest.fixture(scope="session")
def tiny_run_and_request(tmp_path_factory):
    """One real run of the tiny preset (training, bundle, evaluation) shared by the tests that read it."""
    root = tmp_path_factory.mktemp("tiny_run")
    request = RunRequest(preset="tiny", model_id="first", results=root / "results", data_root=root / "data")
    return train_run(request), request


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_run_and_request):
    return tiny_run_and_request[0]
