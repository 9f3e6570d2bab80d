"""Strata of a cohort: affinity propagation finds planted groups, the association tests and FDR
single out the columns that differ, bad columns and small cohorts get notices, and a run's bundle
carries the strata that name a new pair's stratum in words."""

import json
from pathlib import Path

import numpy as np
import pytest

from MultiviewCRLLib.runtime.bundle import export_bundle, load_bundle
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.runtime.strata import Strata, stratum_embedding
from MultiviewCRLLib.training.discovery import Pair
from MultiviewCRLLib.training.stratification import MIN_SUBJECTS, StrataNotice, stratify


def planted_cohort(n_per_group: int = 20, groups: int = 3, seed: int = 0):
    """(embeddings (N, 16), pairs) with ``groups`` well-separated groups; the "ventricles" and
    "diagnosis" columns follow the group, "noise" does not, "site" has one value and "age" misses some."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(groups, 16)) * 5
    group = np.repeat(np.arange(groups), n_per_group)
    embedding = centres[group] + rng.normal(size=(len(group), 16)) * 0.5
    pairs = []
    for i, g in enumerate(group):
        labels = {
            "ventricles": f"{g + rng.normal(scale=0.3):.3f}",
            "diagnosis": ["CN", "MCI", "AD"][g],
            "noise": f"{rng.normal():.3f}",
            "site": "A",
            "age": "" if i % 7 == 0 else f"{rng.uniform(60, 80):.1f}",
        }
        pairs.append(Pair(f"sub-{i:03d}", Path("t1.nii.gz"), Path("t2.nii.gz"), labels=labels))
    return embedding, pairs, group


def test_planted_groups_are_found_stable_and_explained():
    embedding, pairs, group = planted_cohort()
    result = stratify(embedding, pairs, "content", {"ventricles": ("larger ventricles", "smaller ventricles")})
    assert len(result.strata.sizes) == 3 and sorted(result.strata.sizes) == [20, 20, 20]
    # Every planted group is one stratum.
    assert all(len(set(result.labels[group == g])) == 1 for g in range(3))
    assert result.stability > 0.9
    tests = {t.column: t for t in result.tests}
    assert tests["ventricles"].test == "kruskal-wallis" and tests["ventricles"].q < 0.05
    assert tests["diagnosis"].test == "chi-squared" and tests["diagnosis"].q < 0.05
    assert tests["noise"].q > 0.05
    assert tests["site"].p is None and "single value" in tests["site"].notice
    assert tests["age"].p is not None and tests["age"].subjects == 60 - 9 and "missing" in tests["age"].notice
    assert any("site" in notice for notice in result.notices)
    # The stratum with the largest ventricles is described in the column's own words.
    top = int(np.argmax([p["ventricles"] for p in result.strata.profiles]))
    assert "larger ventricles than" in result.strata.describe(top)
    assert result.strata.describe(top).startswith(f"stratum {top + 1} of 3 (20 of 60 subjects): ")


def test_strata_round_trip_and_nearest():
    embedding, pairs, group = planted_cohort()
    strata = stratify(embedding, pairs, "content").strata
    again = Strata.from_dict(json.loads(json.dumps(strata.to_dict())))
    labels = [again.nearest(e) for e in embedding]
    assert all(len(set(np.array(labels)[group == g])) == 1 for g in range(3))


def test_too_small_a_cohort_gets_a_notice():
    embedding, pairs, _ = planted_cohort(n_per_group=3)
    with pytest.raises(StrataNotice, match=f"9 subjects is too small to stratify \\(at least {MIN_SUBJECTS}\\)"):
        stratify(embedding, pairs, "content")


def test_stratum_embeddings():
    rng = np.random.default_rng(0)
    latents = {"T1w": rng.normal(size=(5, 12)), "T2w": rng.normal(size=(5, 12))}
    content = stratum_embedding(latents, 4, "content")
    assert content.shape == (5, 4) and np.allclose(np.linalg.norm(content, axis=1), 1)
    fused = stratum_embedding(latents, 4, "fused")
    assert fused.shape == (5, 4 + 8 + 8)
    assert np.allclose(fused[:, 4:12], latents["T1w"][:, 4:]) and np.allclose(fused[:, 12:], latents["T2w"][:, 4:])
    with pytest.raises(ValueError, match="stratum embedding must be one of"):
        stratum_embedding(latents, 4, "pixels")


def test_run_writes_strata_and_the_bundle_names_a_pairs_stratum(tiny_run_dir, tmp_path):
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    strata = metrics["strata"]
    assert strata["subjects"] == 48 and strata["embedding"] == "content"
    assert strata["strata"] >= 2 and sum(strata["sizes"]) == 48
    assert {"column", "test", "p", "q", "significant"} <= set(strata["associations"][0])
    rows = (tiny_run_dir / "strata.tsv").read_text().splitlines()
    assert rows[0] == "subject\tsplit\tstratum\texemplar" and len(rows) == 49
    assert sum(int(r.split("\t")[3]) for r in rows[1:]) == strata["strata"]
    for folder in (tiny_run_dir, tiny_run_dir / "bundle"):
        assert (folder / "strata.png").stat().st_size > 10_000
    trained = metrics["trained"]
    assert trained["fused_compression_ratio"]["value"] > 1
    assert 0 < trained["fused_cnr_retention_t1"]["value"] < 2
    exported = export_bundle(tiny_run_dir / "bundle", tmp_path / "exported")
    bundle = load_bundle(exported)
    assert bundle.strata is not None and len(bundle.strata.sizes) == strata["strata"]
    import nibabel as nib

    source = Path(json.loads((tiny_run_dir / "settings.json").read_text())["data"]["source"])
    volume = nib.load(sorted(source.glob("sub-*/anat/*_T1w.nii.gz"))[0])
    array = np.asarray(volume.dataobj, dtype=np.float32)
    analysis = analyse_pair(bundle, (array, volume.affine), None, prepare=False)
    assert analysis.stratum.startswith("stratum ") and " of 48 subjects)" in analysis.stratum


def test_broken_strata_file_is_refused(tiny_run_dir, tmp_path):
    from MultiviewCRLLib.runtime.bundle import BundleError

    exported = export_bundle(tiny_run_dir / "bundle", tmp_path / "exported")
    (exported / "strata.json").write_text('{"embedding": "content"}')
    with pytest.raises(BundleError, match="strata.json is invalid"):
        load_bundle(exported)


def test_stratify_adds_strata_to_a_bundle_without_them(tiny_run_dir, tmp_path, capsys):
    from trainer_cli import main

    exported = export_bundle(tiny_run_dir / "bundle", tmp_path / "exported")
    (exported / "strata.json").unlink()
    cohort = json.loads((tiny_run_dir / "settings.json").read_text())["data"]["source"]
    cache = json.loads((tiny_run_dir / "settings.json").read_text())["data_root"]
    argv = ["stratify", "--bundle", str(exported), "--cohort", cohort, "--data-root", cache, "--device", "cpu"]
    assert main(argv) == 0
    assert "strata of the cohort (content embedding, 48 subjects)" in capsys.readouterr().out
    assert load_bundle(exported).strata is not None
    assert json.loads((exported / "metrics.json").read_text())["strata"]["subjects"] == 48
    assert main(argv) == 2  # strata already there: never replaced
    assert "exists; remove it first" in capsys.readouterr().err
