"""Every bundle carries a model card written from its own settings and evaluation: the trained run's,
an exported copy's and the bundled demo model's, each with every section and the figures of its
metrics.json."""

import json
import re
from pathlib import Path

import trainer_cli
from MultiviewCRLLib.training.model_card import MODEL_CARD, SECTIONS, TARGETS, model_card

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "Resources" / "Models" / "demo"


def sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, re.M)


def test_a_trained_run_has_a_card_with_every_section_and_its_figures(tiny_run_dir):
    bundle = tiny_run_dir / "bundle"
    text = (bundle / MODEL_CARD).read_text()
    assert sections(text) == list(SECTIONS)
    trained = json.loads((bundle / "metrics.json").read_text())["trained"]
    shown = [t for t in TARGETS if trained.get(t.key, {}).get("value") is not None]
    assert shown, "the card shows none of the targets"
    for target in shown:
        assert f"| {target.label} | {trained[target.key]['value']:.3f} |" in text
    assert "**Simulated.**" in text  # the tiny run trains on the synthetic cohort


def test_export_writes_the_card_beside_the_copied_bundle(tiny_run_dir, tmp_path):
    assert trainer_cli.main(["export", "--run", str(tiny_run_dir), "--out", str(tmp_path / "exported")]) == 0
    text = (tmp_path / "exported" / MODEL_CARD).read_text()
    assert sections(text) == list(SECTIONS)


def test_a_missed_target_is_listed_as_a_limitation():
    settings = {"dataset": "ADNI", "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}}
    target = TARGETS[0]
    metrics = {"trained": {target.key: {"value": target.bar - 0.5}}}
    text = model_card(settings, metrics)
    limitations = text.split("## Known limitations")[1].split("## ")[0]
    assert f"{target.label}: {target.bar - 0.5:.3f}, short of its target" in limitations
    assert "**Simulated.**" not in text


def test_the_bundled_model_card_is_current():
    settings, metrics, restoration = (
        json.loads((DEMO / name).read_text()) for name in ("settings.json", "metrics.json", "restoration.json")
    )
    assert (DEMO / MODEL_CARD).read_text() == model_card(settings, metrics, restoration)


def test_the_card_gives_the_restoration_figures_it_was_measured_with():
    restoration = {
        "networks": {"guided": {"view": "T2w"}, "unguided": {"view": "T2w"}},
        "subjects": 100,
        "steps": 1000,
        "test_subjects": 60,
        "measured": {"k-space x2": {"B-spline": {"psnr": 21.5}, "alone": {"psnr": 23.25}, "guided": {"psnr": 26.125}}},
    }
    settings = {"dataset": "ADNI", "preprocessing": {"spacing_mm": [2.0, 2.0, 2.0]}}
    section = model_card(settings, {}, restoration).split("## Restoration")[1]
    assert "| k-space x2 | 21.50 | 23.25 | 26.12 |" in section and "on 60 test subjects" in section
    assert "restores no low-resolution view" in model_card(settings, {}).split("## Restoration")[1]
