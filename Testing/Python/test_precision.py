"""The precision policy and the mixed-precision paths of the trainer, run on the CPU: a bfloat16
autocast step, a float16 step whose injected overflow the GradScaler skips while lowering its
scale, and a float16 run whose checkpoint carries the scaler and resumes to the same log."""

import csv
import re
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch

from MultiviewCRLLib.config import PRESETS
from MultiviewCRLLib.runtime.bundle import Bundle
from MultiviewCRLLib.runtime.inference import decode_views, encode_views
from MultiviewCRLLib.runtime.networks import build_networks
from MultiviewCRLLib.runtime.precision import precision_policy
from MultiviewCRLLib.training.data import paired_dataset, plain_collate
from MultiviewCRLLib.training.discovery import discover_bids
from MultiviewCRLLib.training.runs import RunRequest, train_run
from MultiviewCRLLib.training.trainer import Trainer, latest_checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pairs(cohort64):
    return discover_bids(cohort64).kept[:8]


def trainer_for(preset_name: str, pairs, tmp_path, amp_dtype: str) -> Trainer:
    preset = PRESETS[preset_name]
    train = preset.train.__class__(**{**preset.train.to_dict(), "amp": True, "amp_dtype": amp_dtype})
    return Trainer(tmp_path / amp_dtype, preset.model, preset.preprocessing, train, pairs, pairs[0], device="cpu")


def first_batch_of(pairs, preprocessing, size: int) -> dict:
    dataset = paired_dataset(pairs, preprocessing)
    return plain_collate([dataset[i] for i in range(size)])


def first_batch(trainer: Trainer, pairs) -> dict:
    return first_batch_of(pairs, trainer.preprocessing, trainer.config.batch_size)


def weights(trainer: Trainer) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in trainer.parameters])


def test_the_policy_per_device_and_request():
    assert precision_policy("cpu", mixed=False).dtype is None
    assert precision_policy("cpu", dtype="float32").dtype is None
    assert precision_policy("cpu", dtype="float16").scaled
    bf16 = precision_policy("cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16 and not bf16.scaled
    assert precision_policy("cuda:0").dtype == torch.float16 and precision_policy("cuda:0").channels_last
    with pytest.raises(ValueError, match="a precision is one of float32, bfloat16, float16"):
        precision_policy("cpu", dtype="int8")


@pytest.mark.parametrize("preset", ["tiny", "tiny-spatial"])
def test_inference_under_the_policy_returns_float32_close_to_a_float32_pass(preset, pairs):
    model, preprocessing = PRESETS[preset].model, PRESETS[preset].preprocessing
    torch.manual_seed(0)
    encoder, decoder = (m.eval() for m in build_networks(model, preprocessing.spatial_size))
    batch = first_batch_of(pairs, preprocessing, 2)
    images = {"T1w": batch["t1"], "T2w": batch["t2"]}
    bundle = Bundle(encoder, decoder, model, preprocessing, style_means={}, settings={})
    latents, contents = encode_views(bundle, images)
    decoded = decode_views(bundle, latents, contents)
    with torch.no_grad():
        exact = encoder(images["T1w"], with_content=True, views=0)
        exact_image = decoder.decode(exact[1], model.style(exact[0]))
    assert latents["T1w"].dtype == contents["T1w"].dtype == decoded["T1w reconstruction"].dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(latents["T1w"], exact[0], dim=1)
    assert cosine.min() > 0.999
    error = (decoded["T1w reconstruction"] - exact_image).abs().mean() / exact_image.abs().mean()
    assert error < 0.02


@pytest.mark.parametrize("preset", ["tiny", "tiny-spatial"])
def test_a_bfloat16_step_runs_the_networks_in_bfloat16_and_trains_float32_weights(preset, pairs, tmp_path):
    trainer = trainer_for(preset, pairs, tmp_path, "bfloat16")
    seen = []
    first_conv = next(m for m in trainer.encoder.modules() if isinstance(m, torch.nn.Conv3d))
    first_conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    before = weights(trainer)
    metrics = trainer.train_step(first_batch(trainer, pairs))
    assert seen == [torch.bfloat16]
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    after = weights(trainer)
    assert after.dtype == torch.float32 and not torch.equal(before, after)
    assert not trainer.scaler.is_enabled()  # bfloat16 needs no scaler


def test_a_float16_overflow_is_skipped_and_the_scale_drops(pairs, tmp_path):
    trainer = trainer_for("tiny", pairs, tmp_path, "float16")
    assert trainer.scaler.is_enabled()
    batch = first_batch(trainer, pairs)
    scale, before = trainer.scaler.get_scale(), weights(trainer)
    overflow = trainer.parameters[0].register_hook(lambda grad: grad * float("inf"))
    trainer.train_step(batch)
    overflow.remove()
    assert torch.equal(weights(trainer), before)  # the optimiser step was skipped
    assert trainer.scaler.get_scale() == scale / 2
    # Without the injection the scaler keeps halving until the float16 gradients fit, then steps.
    for _ in range(20):
        trainer.train_step(batch)
        if not torch.equal(weights(trainer), before):
            break
    assert not torch.equal(weights(trainer), before)
    assert trainer.scaler.get_scale() < scale


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_a_float16_checkpoint_carries_the_scaler_and_resumes_to_the_same_log(tiny_run_and_request, tmp_path):
    _, request = tiny_run_and_request
    amp = {"amp": True, "amp_dtype": "float16", "steps": 4, "log_every": 1, "checkpoint_every": 2}
    run = RunRequest(
        preset="tiny",
        model_id="fp16",
        results=tmp_path / "results",
        data_root=request.data_root,
        train_overrides=amp,
        evaluate=False,
    )
    run_dir = train_run(run)
    last = latest_checkpoint(run_dir)
    state = torch.load(last, weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] >= 0
    copy = shutil.copytree(run_dir, tmp_path / "copy")
    (copy / "checkpoints" / last.name).unlink()  # killed between the checkpoints at steps 2 and 4
    train_run(RunRequest(data_root=request.data_root, evaluate=False), resume=copy)
    assert read_rows(copy / "Training.csv") == read_rows(run_dir / "Training.csv")


def test_the_gpu_check_runs_on_the_cpu_at_the_tiny_sizes(monkeypatch, capsys):
    """benchmarks/gpu_check.py, run as its command line (in this process), at the tiny shapes: a
    line per preset and precision, with bfloat16 training within 5% of float32's loss."""
    script = ROOT / "benchmarks" / "gpu_check.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--presets", "tiny-spatial", "--steps", "2", "--device", "cpu"])
    runpy.run_path(str(script), run_name="__main__")
    rows = re.findall(
        r"^\s*(tiny(?:-spatial)?)\s+(\w+) .*?([\d.]+) volumes/s.*\(([+-][\d.]+)% vs float32\)$",
        capsys.readouterr().out,
        re.M,
    )
    assert [(preset, dtype) for preset, dtype, _, _ in rows] == [
        ("tiny-spatial", dtype) for dtype in ("float32", "float16", "bfloat16")
    ]
    for _, dtype, volumes, gap in rows:
        assert float(volumes) > 0
        if dtype == "bfloat16":  # float16's scaler skips its first overflowing steps, so it lags
            assert abs(float(gap)) < 5.0
