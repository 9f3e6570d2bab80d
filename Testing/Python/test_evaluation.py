"""Evaluation: probes find a planted signal and nothing in noise, retrieval behaves at its
extremes, image metrics are PSNR/SSIM inside the mask, and a run's metrics.json is complete."""

import json

import numpy as np
import pytest
import torch

from MultiviewCRLLib.config import image_key, r2_key, retrieval_key, view_accuracy_key
from MultiviewCRLLib.training.evaluation import (
    dci,
    probe_r2,
    probe_r2_columns,
    psnr_ssim,
    retrieval_at_k,
    view_accuracy,
)


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 8))
    signal = np.sin(x[:, 0]) + 0.5 * x[:, 1] ** 2  # nonlinear in two of eight dims
    return x, signal, rng.normal(size=160)


def test_probes_recover_a_planted_signal_and_not_noise(planted):
    x, signal, noise = planted
    recovered = probe_r2(x[:80], signal[:80], x[80:], signal[80:])
    assert recovered["kernel_ridge"] > 0.9
    linear = probe_r2(x[:80], x[:80, 2] * 3 + 1, x[80:], x[80:, 2] * 3 + 1)
    assert linear["linear"] > 0.99
    nothing = probe_r2(x[:80], noise[:80], x[80:], noise[80:])
    assert nothing["kernel_ridge"] < 0.1 and nothing["linear"] < 0.1


def test_probes_of_several_targets_score_each_target_as_alone(planted):
    x, signal, noise = planted
    targets = np.stack([signal, x[:, 2] * 3 + 1, noise], axis=1)
    together = probe_r2_columns(x[:80], targets[:80], x[80:], targets[80:])
    for column, scores in enumerate(together):  # the default grid: one search per target
        alone = probe_r2(x[:80], targets[:80, column], x[80:], targets[80:, column])
        assert scores == pytest.approx(alone, abs=1e-9)
    assert together[0]["kernel_ridge"] > 0.9 and together[1]["linear"] > 0.99 and together[2]["kernel_ridge"] < 0.1


def test_retrieval_extremes():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 16))
    assert retrieval_at_k(a, a + 0.01 * rng.normal(size=a.shape), 1) == 1.0
    shuffled = np.mean([retrieval_at_k(a, rng.permutation(rng.normal(size=a.shape)), 1) for _ in range(20)])
    assert shuffled < 0.06  # chance is 1/50
    assert retrieval_at_k(a, rng.normal(size=a.shape), 50) == 1.0


def test_view_accuracy_and_dci():
    rng = np.random.default_rng(2)
    t1, t2 = rng.normal(size=(40, 4)), rng.normal(size=(40, 4)) + 3.0
    assert view_accuracy((t1[:20], t2[:20]), (t1[20:], t2[20:])) == 1.0
    same = rng.normal(size=(40, 4))
    assert view_accuracy((same[:20], same[:20] + 0.01), (same[20:], same[20:] + 0.01)) < 0.7
    factors = rng.uniform(size=(200, 2))
    codes = np.column_stack([factors[:, 0], factors[:, 1], rng.normal(size=200)])
    result = dci(codes[:100], factors[:100], codes[100:], factors[100:])
    assert result["informativeness_r2"] > 0.9 and result["disentanglement"] > 0.8 and result["completeness"] > 0.8


def test_psnr_ssim_inside_the_mask():
    torch.manual_seed(0)
    target = torch.randn(24, 24, 24)
    mask = torch.zeros(24, 24, 24, dtype=torch.bool)
    mask[4:20, 4:20, 4:20] = True
    perfect_psnr, perfect_ssim = psnr_ssim(target.clone(), target, mask)
    assert perfect_psnr > 60 and perfect_ssim == pytest.approx(1.0, abs=1e-4)
    noisy_psnr, noisy_ssim = psnr_ssim(target + 2.0 * torch.randn_like(target), target, mask)
    assert noisy_psnr < 20 and noisy_ssim < 0.8
    outside_changed = target.clone()
    outside_changed[~mask] = 100.0
    assert psnr_ssim(outside_changed, target, mask)[0] > 60  # voxels outside the brain do not count


def test_run_metrics_json_is_complete(tiny_run_dir):
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    assert (tiny_run_dir / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (tiny_run_dir / "bundle" / "metrics.json").is_file() and (tiny_run_dir / "bundle" / "report.png").is_file()
    trained, baseline = metrics["trained"], metrics["untrained_baseline"]
    expected = [
        retrieval_key(1, "T1w", "T2w"),
        retrieval_key(5, "T2w", "T1w"),
        view_accuracy_key("content"),
        view_accuracy_key("style"),
        "control_permuted_content_r2_T1w",
        r2_key("kernel_ridge", "content", "content"),
        r2_key("linear", "content", "style"),
        r2_key("kernel_ridge", "style", "own_style"),
        "r2_kernel_ridge_content_T1w_brain_scale",
        "dci_disentanglement",
        "dci_informativeness_r2",
        image_key("psnr", "recon", "t1"),
        image_key("ssim", "recon", "t2"),
        image_key("psnr", "cross", "t2"),
        image_key("psnr", "cross_meanstyle", "t1"),
        "psnr_gap_cross_t2",
    ]
    for key in expected:
        assert {"value", "definition", "split"} <= set(trained[key]), key
        assert trained[key]["split"] == "test" and trained[key]["definition"]
    assert image_key("psnr", "recon", "t1") not in baseline and r2_key("kernel_ridge", "content", "content") in baseline
    assert trained["style_factors_counted"]["T1w"] and all(
        "gain" not in n for n in trained["style_factors_counted"]["T1w"]
    )
    found = trained[retrieval_key(1, "T1w", "T2w")]["value"] * metrics["subjects"]["test"]
    assert found == pytest.approx(round(found))  # a share of the test subjects: a whole number of them
