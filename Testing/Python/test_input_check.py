"""The input check: atypicality against the training latents, thresholds from validation subjects,
the warnings a clinician reads, and the statistics a run writes into its bundle."""

import json

import numpy as np
import pytest

from MultiviewCRLLib.runtime.bundle import BundleError, export_bundle, load_bundle
from MultiviewCRLLib.runtime.input_check import INPUT_CHECK, InputCheck, LatentGaussian
from MultiviewCRLLib.training.calibration import calibrate

CONTENT, STYLE = 8, 8


def cohort(n: int, rng, style_means=(-3.0, 3.0)) -> dict:
    """{view: (n, CONTENT + STYLE)}: one content per subject shared by both views (plus a little
    noise), and a style drawn around each view's own mean."""
    content = rng.normal(0, 1, (n, CONTENT))
    return {
        view: np.concatenate([content + rng.normal(0, 0.05, content.shape), rng.normal(mean, 1, (n, STYLE))], axis=1)
        for view, mean in zip(("T1w", "T2w"), style_means)
    }


@pytest.fixture(scope="module")
def check() -> InputCheck:
    rng = np.random.default_rng(0)
    volumes = {view: rng.uniform(1500, 1900, 40) for view in ("T1w", "T2w")}
    return calibrate(cohort(300, rng), cohort(40, rng), volumes, CONTENT)


def subject(rng) -> dict:
    return {view: z[0] for view, z in cohort(1, rng).items()}


def cosine(latents: dict) -> float:
    a, b = (latents[v][:CONTENT] for v in ("T1w", "T2w"))
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_atypicality_is_about_one_on_the_training_latents_and_grows_away_from_them():
    rng = np.random.default_rng(1)
    latents = rng.normal(0, 1, (500, 32)) * np.linspace(0.1, 3, 32)
    gaussian = LatentGaussian.fit(latents, n_axes=8)
    assert abs(gaussian.atypicality(latents).mean() - 1) < 0.1
    far = gaussian.center + 10 * np.sqrt(gaussian.variances[0]) * gaussian.axes[0]
    assert gaussian.atypicality(far)[0] > 2.5
    restored = LatentGaussian.from_dict(json.loads(json.dumps(gaussian.to_dict())))
    assert np.allclose(restored.atypicality(latents[:5]), gaussian.atypicality(latents[:5]))


def test_a_new_subject_like_the_cohort_passes(check):
    rng = np.random.default_rng(2)
    passed = []
    for _ in range(50):
        latents = subject(rng)
        report = check.check(latents, {"T1w": 1700.0, "T2w": 1700.0}, cosine(latents))
        passed.append(report.passed)
        assert any("atypicality" in f for f in report.figures) and any("content agreement" in f for f in report.figures)
    assert np.mean(passed) >= 0.9


def test_swapped_contrasts_are_named(check):
    latents = subject(np.random.default_rng(3))
    swapped = {"T1w": latents["T2w"], "T2w": latents["T1w"]}
    report = check.check(swapped, {"T1w": 1700.0, "T2w": 1700.0}, cosine(swapped), names={"T1w": "scan A"})
    assert any("the T1w 'scan A' looks more like a T2w" in w for w in report.warnings)
    assert any("the T2w looks more like a T1w" in w for w in report.warnings)


def test_a_pair_is_called_swapped_only_when_both_views_look_like_the_other(check):
    """With an encoder told each image's view, one clean image can score a little better as the
    other view; the pair is called swapped only when it is more typical given the other way round."""

    def at(view: str, level: float) -> np.ndarray:  # a latent of that view's atypicality ``level``
        gaussian = check.gaussians[view]
        return (
            gaussian.center + level * np.sqrt((len(gaussian.variances) + 1) * gaussian.variances[0]) * gaussian.axes[0]
        )

    assert min(check.atypicality_threshold.values()) > 1.2
    given = {"T1w": at("T1w", 1.0), "T2w": at("T2w", 1.0)}
    volumes = {"T1w": 1700.0, "T2w": 1700.0}
    one_looks_other = check.check(given, volumes, None, as_other_view={"T1w": at("T2w", 1.2), "T2w": at("T1w", 0.9)})
    assert not any("looks more like" in w for w in one_looks_other.warnings), one_looks_other.warnings
    both_look_other = check.check(given, volumes, None, as_other_view={"T1w": at("T2w", 0.8), "T2w": at("T1w", 0.9)})
    assert sum("looks more like" in w for w in both_look_other.warnings) == 2


def test_two_different_people_are_told_apart(check):
    rng = np.random.default_rng(4)
    warned = []
    for _ in range(50):
        a, b = subject(rng), subject(rng)
        pair = {"T1w": a["T1w"], "T2w": b["T2w"]}
        report = check.check(pair, {"T1w": 1700.0, "T2w": 1700.0}, cosine(pair))
        warned.append(any("do not look like one person" in w for w in report.warnings))
    assert np.mean(warned) >= 0.9


def test_the_one_person_threshold_is_the_lower_of_two_quantiles():
    """Well apart, the threshold sits just above two people's pairs, far below one person's (so a
    pair a little less alike than every validation pair still passes); overlapping, it keeps the
    one-person false alarms at 2%."""
    rng = np.random.default_rng(6)
    volumes = {view: rng.uniform(1500, 1900, 40) for view in ("T1w", "T2w")}
    apart = calibrate(cohort(300, rng), cohort(40, rng), volumes, CONTENT)
    assert apart.different_subjects[-1] < apart.same_subject[0]  # the noise of 0.05 leaves them well apart
    assert np.mean(apart.different_subjects <= apart.same_subject_threshold) == pytest.approx(0.98, abs=0.01)
    assert apart.same_subject_threshold < apart.same_subject[0] - 0.1

    noisy = cohort(40, rng)
    noisy["T2w"][:, :CONTENT] += rng.normal(0, 1.5, (40, CONTENT))  # one person's views hardly agree
    overlapping = calibrate(cohort(300, rng), noisy, volumes, CONTENT)
    assert overlapping.same_subject_threshold == pytest.approx(np.quantile(overlapping.same_subject, 0.02))
    assert np.mean(overlapping.different_subjects <= overlapping.same_subject_threshold) < 0.9


def test_inputs_unlike_the_training_data_are_warned_about(check):
    latents = subject(np.random.default_rng(5))
    latents["T2w"] = latents["T2w"] + 25.0
    report = check.check(latents, {"T1w": 1700.0, "T2w": 2600.0}, None)
    assert any("the T2w is unlike the model's training data" in w and "not meaningful" in w for w in report.warnings)
    assert any("brain mask of the T2w holds 2600 ml" in w and "skull" in w for w in report.warnings)
    single = check.check({"T1w": latents["T1w"]}, {"T1w": 1700.0}, None)
    assert single.passed and not any("content agreement" in f for f in single.figures)


def test_a_run_writes_its_input_check_and_the_bundle_carries_it(tiny_run_dir, tmp_path):
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    section = metrics["input_check"]
    warned = section["clean_test_pairs_warned"] * metrics["subjects"]["test"]
    assert warned == pytest.approx(round(warned))  # a share of the test subjects' own pairs
    assert set(section["atypicality_threshold"]) == {"T1w", "T2w"}
    exported = export_bundle(tiny_run_dir / "bundle", tmp_path / "exported")
    bundle = load_bundle(exported)
    assert bundle.input_check is not None
    assert bundle.input_check.same_subject_threshold == pytest.approx(section["same_subject_threshold"])
    (exported / INPUT_CHECK).write_text('{"gaussians": {}}')
    with pytest.raises(BundleError, match="input_check.json is invalid"):
        load_bundle(exported)


def test_calibrate_adds_the_check_to_a_bundle_without_it(tiny_run_dir, cohort64, tmp_path, capsys):
    from trainer_cli import main

    exported = export_bundle(tiny_run_dir / "bundle", tmp_path / "exported")
    (exported / INPUT_CHECK).unlink()
    settings = json.loads((tiny_run_dir / "settings.json").read_text())
    args = ["--bundle", str(exported), "--cohort", settings["data"]["source"], "--data-root", settings["data_root"]]
    assert main(["calibrate", *args, "--device", "cpu", "--seed", str(settings["seed"])]) == 0
    assert "clean test pairs warned about" in capsys.readouterr().out
    assert load_bundle(exported).input_check is not None
    assert main(["calibrate", *args, "--device", "cpu"]) == 2  # never replaces what the bundle has
    assert "exists" in capsys.readouterr().err
    (exported / INPUT_CHECK).unlink()
    other = ["--bundle", str(exported), "--cohort", str(cohort64), "--data-root", settings["data_root"]]
    assert main(["calibrate", *other, "--device", "cpu"]) == 2  # a cohort the bundle was not trained on
    assert "not the train split" in capsys.readouterr().err
