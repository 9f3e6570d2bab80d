"""Subject-level splits, the preprocessing cache keyed on its config, and paired augmentation."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import volume_path

from MultiviewCRLLib.config import PreprocessingConfig
from MultiviewCRLLib.training.data import assign_splits, paired_dataset, read_splits, split_subjects, write_splits
from MultiviewCRLLib.training.discovery import Pair, discover_bids

SMALL = PreprocessingConfig(spacing_mm=(4.0, 4.0, 4.0), spatial_size=(40, 48, 40))


def fake_pairs(n, **labels):
    return [Pair(f"s{i:03d}", Path("t1"), Path("t2"), labels={k: v[i] for k, v in labels.items()}) for i in range(n)]


def test_split_subjects_is_seeded_disjoint_and_proportional():
    subjects = [f"s{i}" for i in range(200)]
    a, b = split_subjects(subjects, seed=1), split_subjects(subjects, seed=1)
    assert a == b and set(a) == set(subjects)
    counts = {name: list(a.values()).count(name) for name in ("train", "val", "test")}
    assert counts == {"train": 160, "val": 20, "test": 20}
    assert split_subjects(subjects, seed=2) != a


def test_given_split_wins_and_sessions_stay_together():
    pairs = [Pair("a", Path("x"), Path("y"), split="test")]
    pairs += [Pair("b", Path("x"), Path("y"), session=s) for s in ("ses-1", "ses-2")]
    pairs += fake_pairs(30)
    splits = assign_splits(pairs, seed=0)
    assert splits["a"] == "test"
    assert len(splits) == 32  # one entry per subject, so both sessions of "b" share it
    with pytest.raises(ValueError, match="unknown split names"):
        assign_splits([Pair("a", Path("x"), Path("y"), split="holdout")], seed=0)


def test_stratified_split_keeps_label_proportions():
    labels = ["AD"] * 40 + ["CN"] * 160
    splits = assign_splits(fake_pairs(200, diagnosis=labels), seed=0, stratify="diagnosis")
    for name, expected in (("train", 32), ("val", 4), ("test", 4)):
        ad = sum(1 for i, label in enumerate(labels) if label == "AD" and splits[f"s{i:03d}"] == name)
        assert ad == expected


def test_splits_round_trip(tmp_path):
    splits = split_subjects(["x", "y", "z"], seed=0)
    assert read_splits(write_splits(splits, tmp_path / "splits.tsv")) == splits


@pytest.fixture
def two_pairs(cohort64):
    return discover_bids(cohort64).kept[:2]


def test_cache_equals_uncached_and_is_keyed_on_config(two_pairs, tmp_path):
    uncached = paired_dataset(two_pairs, SMALL)[0]
    cached = paired_dataset(two_pairs, SMALL, cache_root=tmp_path)
    first, again = cached[0], cached[0]
    for key in ("t1", "t2", "mask_t1", "mask_t2"):
        assert first[key].shape == (1, 40, 48, 40)
        assert torch.allclose(torch.as_tensor(first[key]), torch.as_tensor(uncached[key]))
        assert torch.equal(torch.as_tensor(again[key]), torch.as_tensor(first[key]))
    assert [p.name for p in tmp_path.iterdir()] == [SMALL.fingerprint()]
    other = PreprocessingConfig(spacing_mm=(5.0, 5.0, 5.0), spatial_size=(40, 48, 40))
    assert paired_dataset(two_pairs, other, cache_root=tmp_path)[0]["t1"].shape == (1, 40, 48, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([SMALL.fingerprint(), other.fingerprint()])


def test_changed_file_is_not_served_from_cache(cohort64, tmp_path):
    data = tmp_path / "data"
    for view in ("T1w", "T2w"):
        (data / f"{view}.nii.gz").parent.mkdir(exist_ok=True)
        (data / f"{view}.nii.gz").write_bytes(volume_path(cohort64, "sub-0001", view).read_bytes())
    pair = [Pair("one", data / "T1w.nii.gz", data / "T2w.nii.gz")]
    cache = tmp_path / "cache"
    before = paired_dataset(pair, SMALL, cache_root=cache)[0]["t1"]
    (data / "T1w.nii.gz").write_bytes(volume_path(cohort64, "sub-0002", "T1w").read_bytes())
    os.utime(data / "T1w.nii.gz", ns=(1, 1))
    after = paired_dataset(pair, SMALL, cache_root=cache)[0]["t1"]
    assert not torch.allclose(torch.as_tensor(before), torch.as_tensor(after))
    assert len(list((cache / SMALL.fingerprint()).iterdir())) == 2


def test_augmentation_shares_the_spatial_transform(cohort64):
    same = Pair("same", volume_path(cohort64, "sub-0001", "T1w"), volume_path(cohort64, "sub-0001", "T1w"))
    plain = paired_dataset([same], SMALL)[0]
    assert torch.equal(torch.as_tensor(plain["t1"]), torch.as_tensor(plain["t2"]))
    moved = jittered = 0
    dataset = paired_dataset([same], SMALL, augment=True, seed=3)
    for _ in range(4):
        item = dataset[0]
        # One spatial draw for both views: their masks coincide wherever the volume was moved to.
        assert torch.equal(torch.as_tensor(item["mask_t1"]), torch.as_tensor(item["mask_t2"]))
        moved += not torch.equal(torch.as_tensor(item["mask_t1"]), torch.as_tensor(plain["mask_t1"]))
        t1, t2 = (torch.as_tensor(item[k]).flatten().numpy() for k in ("t1", "t2"))
        assert np.corrcoef(t1, t2)[0, 1] > 0.98
        jittered += not np.array_equal(t1, t2)  # intensity jitter is drawn per view
    assert moved >= 2 and jittered >= 2
    # Seeded: the same seed gives the same augmented volumes.
    again = [paired_dataset([same], SMALL, augment=True, seed=3)[0]["t1"] for _ in range(2)]
    assert torch.equal(torch.as_tensor(again[0]), torch.as_tensor(again[1]))
