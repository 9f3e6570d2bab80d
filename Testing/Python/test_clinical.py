"""What clinicians read, measured: tissue labels on the model grid, a content map scored as a
segmentation, the Gaussian-mixture baseline, lesion contrast and the Alzheimer's probe — on the
real NIfTI files of a synthetic cohort."""

import numpy as np
import pytest
import torch
from conftest import volume_path
from monai.networks.utils import one_hot

from MultiviewCRLLib.config import DEMO_GRID
from MultiviewCRLLib.runtime.preprocessing import preprocess_file
from MultiviewCRLLib.training import clinical
from MultiviewCRLLib.training.synthetic import tissue_labels

SUBJECTS = ("sub-0001", "sub-0002", "sub-0003")


@pytest.fixture(scope="module")
def on_grid(cohort64):
    """Three subjects' T1w, T2w, brain masks and tissue labels on the demo's 4 mm model grid."""
    out = []
    for subject in SUBJECTS:
        item = {}
        for key, view in (("t1", "T1w"), ("t2", "T2w")):
            image, mask = preprocess_file(volume_path(cohort64, subject, view), DEMO_GRID)
            item[key], item[f"mask_{key}"] = image[0].as_tensor(), mask[0].as_tensor()
        item["labels"] = clinical.labels_on_grid(tissue_labels(volume_path(cohort64, subject, "T1w")), DEMO_GRID)
        out.append(item)
    return out


def brain_dice(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_labels_lie_on_the_image_grid(on_grid):
    for item in on_grid:
        labels = item["labels"]
        assert labels.shape == tuple(DEMO_GRID.spatial_size)
        assert set(labels.unique().tolist()) == {0, 1, 2, 3, 4}
        assert brain_dice(labels > 0, item["mask_t1"] > 0.5) > 0.9
        # Each tissue is where its contrast says: WM brightest on T1w, CSF brightest on T2w.
        means = {t: item["t1"][labels == i].mean() for t, i in clinical.TISSUES.items()}
        assert means["WM"] > means["GM"] > means["CSF"]
        means = {t: item["t2"][labels == i].mean() for t, i in clinical.TISSUES.items()}
        assert means["CSF"] > means["GM"] > means["WM"]


def test_a_map_that_names_the_tissues_scores_dice_one(on_grid):
    # A map whose channels are the labels in another order, plus an unused channel, as a trained
    # map would be: the channels are named on the first two subjects and score 1 on the third.
    order = torch.tensor([3, 0, 5, 1, 4, 2])

    def as_map(labels):
        return one_hot(labels[None, None], num_classes=6)[0][order.argsort()]

    maps = [as_map(item["labels"]) for item in on_grid]
    masks = [item["labels"] > 0 for item in on_grid]
    named = clinical.channel_tissues(maps[:2], [item["labels"] for item in on_grid[:2]], masks[:2])
    segmentation = clinical.map_segmentation(maps[2], named, masks[2])
    assert clinical.dice_per_tissue(segmentation, on_grid[2]["labels"]) == pytest.approx(
        dict.fromkeys(clinical.TISSUES, 1.0)
    )
    # Another subject's map is a worse segmentation of this one.
    wrong = clinical.map_segmentation(maps[0], named, masks[2])
    assert clinical.dice_per_tissue(wrong, on_grid[2]["labels"])["GM"] < 0.9


def test_the_mixture_baseline_finds_the_tissues(on_grid):
    for key in ("t1", "t2"):
        item = on_grid[0]
        scores = clinical.dice_per_tissue(
            clinical.mixture_segmentation(item[key], item[f"mask_{key}"], key), item["labels"]
        )
        assert min(scores["WM"], scores["GM"], scores["CSF"]) > 0.5, (key, scores)
        assert scores["lesion"] == 0.0  # three classes cannot name lesions


def test_lesion_contrast_has_each_contrasts_sign(on_grid):
    t1, t2, labels = on_grid[0]["t1"], on_grid[0]["t2"], on_grid[0]["labels"]
    assert clinical.lesion_contrast(t1, labels) < 0 < clinical.lesion_contrast(t2, labels)


def test_diagnosis_probe_reads_what_drives_the_groups():
    rng = np.random.default_rng(0)
    groups = np.array(["CN", "AD", "MCI"] * 40)
    severity = (groups == "AD") * 1.0 + (groups == "MCI") * 0.5
    features = np.stack([severity + 0.3 * rng.standard_normal(len(groups)), rng.standard_normal(len(groups))], 1)
    assert clinical.diagnosis_auroc(features[:60], groups[:60], features[60:], groups[60:]) > 0.9
    noise = rng.standard_normal((len(groups), 2))
    assert clinical.diagnosis_auroc(noise[:60], groups[:60], noise[60:], groups[60:]) < 0.8
    assert clinical.diagnosis_auroc(features[:60], groups[:60], features[60:], ["CN"] * 60) is None
