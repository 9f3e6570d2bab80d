"""Cancel cancels: a cancelled analysis or alignment stops within a step, inside SimpleITK's
registrations too, raises Cancelled and leaves the scene as it was (real MRML, slicer-core)."""

import threading
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from MultiviewCRLLib.runtime import alignment
from MultiviewCRLLib.runtime.control import Cancelled, CancelToken
from MultiviewCRLLib.slicer_nodes import BackgroundRunner, align_nodes, analyse_nodes, read_volume_node

ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL = ROOT / "Resources" / "Models" / "demo"
# Uncancelled, the shipped raw-looking pair takes about 15 s (most of it preparation's registrations).
PROMPT_SECONDS = 3.0
# The coarse rotation search evaluates 125 rotations; past them an iterative fit is running.
SEARCH_ITERATIONS = 125


@pytest.fixture
def scene():
    slicer.mrmlScene = slicer.vtkMRMLScene()
    return slicer.mrmlScene


@pytest.fixture
def raw_pair(scene):
    return tuple(
        read_volume_node(ROOT / "Resources" / "TestData" / f"synthetic_{v}.nii.gz", scene) for v in ("T1w", "T2w")
    )


def test_an_analysis_cancelled_as_it_starts_returns_at_once_and_adds_nothing(scene, raw_pair):
    def cancel_at_first_poll():
        runner.cancel()

    runner = BackgroundRunner(cancel_at_first_poll, poll_seconds=0.01)
    before = scene.GetNumberOfNodes()
    start = time.perf_counter()
    with pytest.raises(Cancelled, match="nothing was added to the scene"):
        analyse_nodes(DEMO_MODEL, *raw_pair, "cpu", scene, runner)
    assert time.perf_counter() - start < PROMPT_SECONDS
    assert scene.GetNumberOfNodes() == before


@pytest.fixture
def iterations(monkeypatch):
    """Timestamps of every SimpleITK registration iteration, seen by the same command mechanism
    that stops a cancelled registration."""
    seen = []
    stop_on_cancel = alignment.stop_on_cancel

    def counted(method, cancel):
        method.AddCommand(sitk.sitkIterationEvent, lambda: seen.append(time.perf_counter()))
        stop_on_cancel(method, cancel)

    monkeypatch.setattr(alignment, "stop_on_cancel", counted)
    return seen


@pytest.mark.parametrize("action", ["analyse", "align"])
def test_a_cancel_inside_a_registration_stops_it_within_an_iteration(scene, raw_pair, iterations, action):
    """Cancelled from the event loop while an iterative fit runs on the worker thread: each pyramid
    level left runs one iteration at most, the call raises Cancelled from inside the fit (not an
    AlignmentError), and neither result nodes nor a transform reach the scene."""
    cancelled_at = []

    def poll():
        if len(iterations) > SEARCH_ITERATIONS and not cancelled_at:
            cancelled_at.append((time.perf_counter(), len(iterations)))
            runner.cancel()

    runner = BackgroundRunner(poll, poll_seconds=0.01)
    before = scene.GetNumberOfNodes()
    run = analyse_nodes if action == "analyse" else align_nodes
    with pytest.raises(Cancelled) as raised:
        run(DEMO_MODEL, *raw_pair, "cpu", scene, runner)
    returned = time.perf_counter()
    assert cancelled_at, "the registration ended before it could be cancelled"
    at, seen = cancelled_at[0]
    assert returned - at < PROMPT_SECONDS
    assert len(iterations) - seen <= len(alignment.SHRINK_FACTORS) + 1
    cause = raised.value.__cause__
    assert isinstance(cause, Cancelled)
    assert "fit" in [frame.name for frame in traceback.extract_tb(cause.__traceback__)]
    assert scene.GetNumberOfNodes() == before
    assert raw_pair[1].GetTransformNodeID() is None


class CancelledAfter(CancelToken):
    """Cancelled from the ``n``-th time it is asked (a registration asks once per iteration)."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.asked = n, 0

    @property
    def cancelled(self) -> bool:
        self.asked += 1
        return self.asked >= self.n


@pytest.fixture(scope="module")
def turned_pair():
    """A smooth random volume and a copy of it turned and shifted, as SimpleITK images."""
    rng = np.random.default_rng(0)
    fixed = sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=(40, 40, 40)).astype(np.float32)), 2.0
    )
    fixed = fixed * 100.0 + 500.0
    turn = sitk.Euler3DTransform((20.0, 20.0, 20.0), 0.15, 0.05, 0.0, (2.0, 1.0, 0.0))
    return fixed, sitk.Resample(fixed, turn, sitk.sitkLinear, 500.0)


def test_a_cancelled_registration_stops_at_each_pyramid_level_and_raises_cancelled(turned_pair):
    fixed, moving = turned_pair
    start = alignment.identity_about(fixed)
    full = CancelledAfter(10**9)
    alignment.register(fixed, moving, initial=start, cancel=full)
    assert full.asked > 50  # uncancelled, the fit iterates at every level
    cancel = CancelledAfter(5)
    with pytest.raises(Cancelled):
        alignment.register(fixed, moving, initial=start, cancel=cancel)
    # The level running stops at once; each level after runs one iteration; then one check.
    assert cancel.asked - cancel.n <= len(alignment.SHRINK_FACTORS)


def test_a_token_is_never_cancelled_until_told_and_stays_cancelled():
    token = CancelToken()
    token.check()
    done = threading.Thread(target=token.cancel)
    done.start()
    done.join()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.check()
