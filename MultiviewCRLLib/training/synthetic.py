"""The embedded synthetic cohort: paired T1-weighted / T2-weighted brain MRI with known factors.

Anatomy comes from the MNI ICBM152 2009a template and its grey/white-matter probability maps,
which ship inside the nilearn wheel (CSF = brain - GM - WM, clipped to [0, 1]). Each subject gets
*content* factors (anatomy, shared by both views) and each view gets its own *style* factors
(sequence, bias field, noise, gain). Signals follow the spin-echo equation

    S = PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

with per-tissue values from the BrainWeb 1.5 T table (Kwan et al., IEEE TMI 1999), mixed by tissue
probability (partial volume). Images are skull-stripped, as the preprocessed cohorts the pipeline
is built for: zero outside the brain, Rician noise inside it.

Run ``python -m MultiviewCRLLib.training.synthetic --out DIR --subjects N --seed S`` to write a BIDS
dataset with ``participants.tsv`` holding every factor and a subject-level ``split`` column.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from ..config import VIEWS
from ..runtime.storage import nifti_image, probe_writable, staged_folder
from .atlas import VENTRICLE_BOX_MM, TissueAtlas, load_tissue_atlas
from .data import split_subjects
from .factors import (
    BIAS_LENGTH_MM,
    CLINICAL_NAMES,
    CONTENT_RANGES,
    DEFORM_AMPLITUDE_MM,
    DESIGNS,
    LESION_VOLUME_ML,
    VOLUME_NAMES,
    draw_design,
    factor_names,
    participants_sidecar,
)

# BrainWeb 1.5 T tissue parameters (Kwan et al., IEEE TMI 1999): T1 ms, T2 ms, PD.
# The lesion row is a chronic white-matter lesion: longer T1 and T2 than white matter, so it is
# dark on T1w and bright on T2w.
TISSUES = {
    "CSF": (2569.0, 329.0, 1.00),
    "GM": (833.0, 83.0, 0.86),
    "WM": (500.0, 70.0, 0.77),
    "lesion": (1100.0, 160.0, 0.85),
}

# Hippocampi in MNI space (mm) and the extent of medial temporal atrophy about them (Gaussian SD, mm).
HIPPOCAMPI_MM = ((-26.0, -22.0, -14.0), (26.0, -22.0, -14.0))
HIPPOCAMPUS_SD_MM = (6.0, 12.0, 7.0)
# Grey matter within about this distance of CSF or the brain's edge is what atrophy turns to fluid.
ATROPHY_REACH_MM = 2.0
LESION_BLOBS = 4
LESION_CLUSTER_RADIUS_MM = 12.0
REFERENCE_INTENSITY = 3000.0
DSEG_LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "lesion"}
# Each view without noise (same sequence, bias field and gain): what synthesis is scored against.
REFERENCE_DERIVATIVE = Path("derivatives") / "noisefree"


# Low-resolution acquisitions of each T2w (``degradation.LOWRES_ACQUISITIONS``), when asked for.
LOWRES_DERIVATIVE = Path("derivatives") / "lowres"
LOWRES_VIEW = "T2w"


def lowres_view(image: Path, label: str) -> Path:
    """Where a cohort image's low-resolution acquisition ``acq-<label>`` is written."""
    image = Path(image)
    subject = image.parents[1].name
    return (
        image.parents[2]
        / LOWRES_DERIVATIVE
        / subject
        / "anat"
        / image.name.replace(f"{subject}_", f"{subject}_acq-{label}_")
    )


def noise_free_reference(image: Path) -> Path | None:
    """The noise-free reference of a cohort image ``<root>/sub-X/anat/sub-X_<view>.nii.gz``, if written."""
    image = Path(image)
    reference = image.parents[2] / REFERENCE_DERIVATIVE / image.parents[1].name / "anat" / image.name
    return reference if reference.is_file() else None


def tissue_labels(image: Path) -> Path | None:
    """The tissue labels (DSEG_LABELS) of a cohort image ``<root>/sub-X/anat/sub-X_<view>.nii.gz``, if written."""
    image = Path(image)
    subject = image.parents[1].name
    labels = image.parents[2] / "derivatives" / "tissues" / subject / "anat" / f"{subject}_dseg.nii.gz"
    return labels if labels.is_file() else None


def tissue_signal(tr_ms: float, te_ms: float) -> dict[str, float]:
    """Spin-echo signal of each tissue for one protocol."""
    return {name: pd * (1.0 - math.exp(-tr_ms / t1)) * math.exp(-te_ms / t2) for name, (t1, t2, pd) in TISSUES.items()}


def _bounding_box(x: np.ndarray, center: np.ndarray, half_width: np.ndarray) -> tuple[slice, ...] | None:
    """Index box of the voxels whose position ``x`` (3, ...) lies within ``half_width`` of ``center``."""
    inside = np.ones(x.shape[1:], dtype=bool)
    for d in range(3):
        inside &= np.abs(x[d] - center[d]) < half_width[d]
    if not inside.any():
        return None
    box = []
    for axis in range(3):
        hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(hits[0], hits[-1] + 1))
    return tuple(box)


class SubjectGenerator:
    """Renders one subject's T1w and T2w volumes on an output grid from its factors.

    The anatomy is a backward warp: every output voxel (world mm) is mapped to template mm by
    undoing the brain scale, the smooth deformation and the ventricle expansion, then the tissue
    maps are sampled there (trilinear).
    """

    def __init__(self, template: TissueAtlas, spacing_mm: float):
        self.template, self.spacing_mm = template, spacing_mm
        self.maps = torch.from_numpy(np.ascontiguousarray(template.maps, dtype=np.float32))[None]  # (1, 3, ...)
        extent = np.array(template.maps.shape[1:]) * np.abs(np.diag(template.affine)[:3])
        self.shape = tuple(int(math.ceil(e / spacing_mm)) for e in extent)
        self.affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
        self.affine[:3, 3] = template.affine[:3, 3]
        if np.count_nonzero(template.affine[:3, :3] - np.diag(np.diag(template.affine[:3, :3]))):
            raise ValueError("the template grid must be axis-aligned")
        # Only voxels that can hold brain at the largest scale and deformation are computed.
        ijk = np.argwhere(template.maps.sum(0) > 0.5)
        box_mm = np.stack([ijk.min(0), ijk.max(0)]) @ template.affine[:3, :3].T + template.affine[:3, 3]
        scale = CONTENT_RANGES["brain_scale"][1]
        margin = 2 * DEFORM_AMPLITUDE_MM + 4
        c = template.brain_center_mm
        box_mm = c + (box_mm - c) * scale + np.array([[-margin], [margin]])
        lo = np.floor((box_mm[0] - self.affine[:3, 3]) / spacing_mm).astype(int)
        hi = np.ceil((box_mm[1] - self.affine[:3, 3]) / spacing_mm).astype(int) + 1
        self.box = tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, self.shape))

    def world_axes(self) -> list[np.ndarray]:
        """World coordinate (mm) of each computed voxel along each axis, broadcastable to 3D."""
        axes = []
        for d, s in enumerate(self.box):
            values = np.arange(s.start, s.stop, dtype=np.float32) * self.affine[d, d] + self.affine[d, 3]
            axes.append(values.reshape([-1 if a == d else 1 for a in range(3)]))
        return axes

    def template_coordinates(self, factors: dict[str, float]) -> np.ndarray:
        """Template mm position sampled by each computed voxel, shape (3, x, y, z), float32."""
        t = self.template
        c = t.brain_center_mm.astype(np.float32)
        rel = [(w - c[d]) / np.float32(factors["brain_scale"]) for d, w in enumerate(self.world_axes())]
        # Smooth bending: each mode displaces one axis as a half sine along another axis.
        a = DEFORM_AMPLITUDE_MM
        rel = [
            rel[0] - np.float32(a * factors["deform_1"]) * np.sin(np.pi * rel[1] / 180.0),
            rel[1] - np.float32(a * factors["deform_2"]) * np.sin(np.pi * rel[2] / 140.0),
            rel[2] - np.float32(a * factors["deform_3"]) * np.sin(np.pi * rel[0] / 150.0),
        ]
        x = np.empty((3, *(len(s.ravel()) for s in self.world_axes())), dtype=np.float32)
        for d in range(3):
            x[d] = rel[d] + c[d]
        # Ventricle expansion: sample closer to the ventricle centre, which enlarges the ventricles.
        # The Gaussian weight vanishes beyond 4 sigma, so only that box is touched.
        v = t.ventricle_center_mm.astype(np.float32)
        sigma = np.array([14.0, 28.0, 16.0], dtype=np.float32)
        box = _bounding_box(x, v, 4.0 * sigma)
        if box is not None:
            d = x[(slice(None), *box)] - v[:, None, None, None]
            weight = np.exp(-0.5 * np.sum((d / sigma[:, None, None, None]) ** 2, axis=0))
            x[(slice(None), *box)] = v[:, None, None, None] + d * (
                1.0 - np.float32(factors["ventricle_enlargement"]) * weight
            )
        return x

    def lesion_centers(self, factors: dict[str, float], rng: np.random.Generator) -> np.ndarray:
        """Centres (template mm) of the lesion blobs: a cluster around one deep-WM site."""
        deep = self.template.deep_wm_mm
        quantiles = [factors[f"lesion_site_{axis}"] for axis in "xyz"]
        target = np.array([np.quantile(deep[:, d], q) for d, q in enumerate(quantiles)])
        site = deep[np.argmin(np.sum((deep - target) ** 2, axis=1))]
        offsets = rng.normal(scale=LESION_CLUSTER_RADIUS_MM / 2, size=(LESION_BLOBS, 3))
        return site + offsets

    def atrophy(self, x: np.ndarray, gm: np.ndarray, wm: np.ndarray, csf: np.ndarray, factors) -> np.ndarray:
        """The grey matter (fraction per voxel) that atrophy turns to CSF: grey matter next to fluid
        (sulci, the brain's edge), everywhere by ``cortical_atrophy`` and about the hippocampi by
        ``medial_temporal_atrophy``. ``x``: (3, ...) template mm of each voxel."""
        outside = np.clip(1.0 - gm - wm - csf, 0.0, 1.0)
        fluid = ndimage.gaussian_filter(csf + outside, ATROPHY_REACH_MM / self.spacing_mm)
        near_fluid = np.clip(2.0 * fluid, 0.0, 1.0)
        sd = np.array(HIPPOCAMPUS_SD_MM, dtype=np.float32)[:, None, None, None]
        medial = sum(
            np.exp(-0.5 * np.sum(((x - np.array(c, dtype=np.float32)[:, None, None, None]) / sd) ** 2, axis=0))
            for c in HIPPOCAMPI_MM
        )
        share = factors.get("cortical_atrophy", 0.0) * near_fluid + factors.get("medial_temporal_atrophy", 0.0) * medial
        return gm * np.clip(share, 0.0, 0.95).astype(np.float32)

    def volumes(self, tissues: dict[str, np.ndarray], x: np.ndarray) -> dict[str, float]:
        """Tissue volumes (ml, ``VOLUME_NAMES``) of a subject's fractions in the computed box."""
        ml = self.spacing_mm**3 / 1e3
        box = np.ones(x.shape[1:], dtype=bool)
        for d, (low, high) in enumerate(VENTRICLE_BOX_MM):
            box &= (x[d] > low) & (x[d] < high)
        sums = {name: float(tissues[key].sum() * ml) for name, key in zip(VOLUME_NAMES, ("GM", "WM", "CSF"))}
        sums["ventricle_ml"] = float(tissues["CSF"][box].sum() * ml)
        sums["lesion_ml"] = float(tissues["lesion"].sum() * ml)
        return sums

    def sample_maps(self, ijk: np.ndarray) -> np.ndarray:
        """The template's tissue maps, trilinearly, at voxel coordinates ``ijk`` (3, ...): (3, ...),
        zero beyond the template (one torch grid sample for the three maps)."""
        maps = self.maps
        size = torch.tensor(maps.shape[2:], dtype=torch.float32)
        # grid_sample takes (x, y, z) = (last, middle, first) axis, in [-1, 1] from first to last voxel.
        points = torch.from_numpy(np.ascontiguousarray(ijk, dtype=np.float32)).movedim(0, -1)
        grid = (2 * points / (size - 1) - 1).flip(-1)[None]
        sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return sampled[0].numpy()

    def tissues(self, factors: dict[str, float], lesion_centers: np.ndarray) -> dict[str, np.ndarray]:
        """Tissue fractions in the computed box: GM, WM, CSF, lesion and their sum, the brain; and
        "coordinates", the template mm (3, ...) each voxel samples."""
        x = self.template_coordinates(factors)
        affine = self.template.affine
        ijk = np.stack([(x[d] - np.float32(affine[d, 3])) / np.float32(affine[d, d]) for d in range(3)])
        gm, wm, csf = self.sample_maps(ijk)
        lost = self.atrophy(x, gm, wm, csf, factors)
        gm, csf = gm - lost, csf + lost
        volume_mm3 = 1e3 * (LESION_VOLUME_ML[0] + factors["lesion_load"] * (LESION_VOLUME_ML[1] - LESION_VOLUME_ML[0]))
        radius = (3.0 * volume_mm3 / (4.0 * math.pi * LESION_BLOBS)) ** (1.0 / 3.0)
        lesion = np.zeros_like(wm)
        for center in lesion_centers.astype(np.float32):
            # A soft-edged ball; beyond radius + 12 mm its weight is below 1e-5.
            box = _bounding_box(x, center, np.full(3, radius + 12.0, dtype=np.float32))
            if box is None:
                continue
            dist = np.sqrt(np.sum((x[(slice(None), *box)] - center[:, None, None, None]) ** 2, axis=0))
            lesion[box] = np.maximum(lesion[box], 1.0 / (1.0 + np.exp(dist - radius)))
        lesion *= wm
        return {"GM": gm, "WM": wm - lesion, "CSF": csf, "lesion": lesion, "brain": gm + wm + csf, "coordinates": x}

    def segmentation(self, tissues: dict[str, np.ndarray]) -> np.ndarray:
        """Hard tissue labels (DSEG_LABELS) on the full output grid: the dominant tissue of each brain voxel."""
        names = [name for name in DSEG_LABELS.values() if name != "background"]
        dominant = np.argmax(np.stack([tissues[name] for name in names]), axis=0).astype(np.uint8) + 1
        dominant[tissues["brain"] < 0.5] = 0
        out = np.zeros(self.shape, dtype=np.uint8)
        out[self.box] = dominant
        return out

    def render(
        self, tissues: dict[str, np.ndarray], style: dict[str, float], rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One view's int16 volume on the full output grid, and the same without noise (its reference)."""
        signal = tissue_signal(style["tr_ms"], style["te_ms"])
        image = sum(tissues[name] * np.float32(s) for name, s in signal.items())
        c = self.template.brain_center_mm
        gradient = (style["bias_x"], style["bias_y"], style["bias_z"])
        log_bias = sum(
            np.float32(g) * (w - np.float32(c[d])) for d, (g, w) in enumerate(zip(gradient, self.world_axes()))
        )
        image *= np.exp(log_bias / np.float32(BIAS_LENGTH_MM))
        image *= np.float32(style["gain"] * REFERENCE_INTENSITY)
        sigma = np.float32(style["noise_level"] * REFERENCE_INTENSITY)
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
        noisy = np.sqrt(real * real + imag * imag)  # Rician magnitude
        return tuple(self._on_grid(volume, tissues["brain"] < 0.5) for volume in (noisy, image))

    def _on_grid(self, volume: np.ndarray, outside_brain: np.ndarray) -> np.ndarray:
        """The computed box as an int16 volume on the full output grid, skull-stripped."""
        volume[outside_brain] = 0.0
        out = np.zeros(self.shape, dtype=np.int16)
        out[self.box] = np.clip(np.rint(volume), 0, np.iinfo(np.int16).max).astype(np.int16)
        return out


def style_of(design: dict[str, float], view: str) -> dict[str, float]:
    """The style factors of one view, without the view prefix."""
    prefix = f"{view.lower()}_"
    return {k[len(prefix) :]: v for k, v in design.items() if k.startswith(prefix)}


_WORKER: SubjectGenerator | None = None


def _init_worker(spacing_mm: float, threads: int | None = None) -> None:
    """The process's generator; ``threads``: torch's threads in it (one per process in a pool)."""
    global _WORKER
    if threads:
        torch.set_num_threads(threads)
    _WORKER = SubjectGenerator(load_tissue_atlas(), spacing_mm)


def _generate_subject(job: tuple[int, int, str, dict[str, float], str]) -> dict[str, float]:
    """Write one subject's two NIfTI files; return its realised factors."""
    index, seed, subject, design, out_dir, lowres = job
    gen = _WORKER
    rng = np.random.default_rng([seed, 2, index])
    centers = gen.lesion_centers(design, rng)
    tissues = gen.tissues(design, centers)
    factors = {k: design[k] for k in CONTENT_RANGES if not k.startswith("lesion_site")}
    factors.update(zip(("lesion_x", "lesion_y", "lesion_z"), centers.mean(0).tolist()))
    factors.update(gen.volumes(tissues, tissues["coordinates"]))
    factors.update({k: design[k] for k in CLINICAL_NAMES if k in design})
    anat = Path(out_dir) / subject / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    reference_dir = Path(out_dir) / REFERENCE_DERIVATIVE / subject / "anat"
    reference_dir.mkdir(parents=True, exist_ok=True)
    for view in VIEWS:
        style = style_of(design, view)
        noisy, clean = gen.render(tissues, style, rng)
        _save(noisy, gen.affine, anat / f"{subject}_{view}.nii.gz")
        _save(clean, gen.affine, reference_dir / f"{subject}_{view}.nii.gz")
        if lowres and view == LOWRES_VIEW:
            _save_lowres_views(
                noisy, gen.affine, anat / f"{subject}_{view}.nii.gz", np.random.default_rng([seed, 3, index])
            )
        factors.update({f"{view.lower()}_{k}": v for k, v in style.items()})
    seg_dir = Path(out_dir) / "derivatives" / "tissues" / subject / "anat"
    seg_dir.mkdir(parents=True, exist_ok=True)
    _save(gen.segmentation(tissues), gen.affine, seg_dir / f"{subject}_dseg.nii.gz")
    return factors


def _save_lowres_views(volume: np.ndarray, affine: np.ndarray, image: Path, rng: np.random.Generator) -> None:
    """Each low-resolution acquisition of ``volume`` (the view written to ``image``), as int16."""
    from .degradation import LOWRES_ACQUISITIONS

    spacing_mm = float(np.linalg.norm(affine[:3, 0]))
    for label, draw in LOWRES_ACQUISITIONS.values():
        low, low_affine = draw(rng, spacing_mm).acquire(volume.astype(np.float32), affine)
        path = lowres_view(image, label)
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(np.clip(np.rint(low), 0, np.iinfo(np.int16).max).astype(np.int16), low_affine, path)


def _save(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    nib.save(nifti_image(volume, affine), path)


def generate_cohort(
    out_dir: Path,
    n_subjects: int,
    seed: int = 0,
    spacing_mm: float = 1.0,
    workers: int | None = None,
    show_progress: bool = False,
    design: str = "adni",
    lowres_views: bool = False,
) -> Path:
    """Write a complete BIDS dataset of ``n_subjects`` paired T1w/T2w subjects into ``out_dir``,
    their factors drawn by ``design`` (``factors.DESIGNS``: ADNI-shaped, or all independent).

    The dataset is written to a temporary sibling folder and moved into place only when complete,
    so an interrupted run never leaves a half-written cohort behind. ``show_progress``: a progress bar.
    ``lowres_views``: also each T2w's low-resolution acquisitions, under ``derivatives/lowres``.
    """
    out_dir = Path(out_dir)
    with staged_folder(out_dir, replace=True) as staging:
        designs = draw_design(n_subjects, seed, design)
        subjects = [f"sub-{i + 1:04d}" for i in range(n_subjects)]
        jobs = [(i, seed, subjects[i], designs[i], str(staging), lowres_views) for i in range(n_subjects)]
        workers = workers or min(os.cpu_count() or 1, n_subjects)
        load_tissue_atlas()  # loaded here once, so that forked workers inherit it
        progress = {"total": n_subjects, "desc": "synthetic cohort", "unit": "subject", "disable": not show_progress}
        if workers > 1:
            with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(spacing_mm, 1)) as pool:
                rows = list(tqdm(pool.map(_generate_subject, jobs), **progress))
        else:
            _init_worker(spacing_mm)
            rows = [_generate_subject(job) for job in tqdm(jobs, **progress)]
        splits = split_subjects(subjects, seed)
        content, style = factor_names()
        clinical = [c for c in CLINICAL_NAMES if c in rows[0]]
        columns = clinical + content + list(VOLUME_NAMES) + style["T1w"] + style["T2w"]
        lines = ["\t".join(["participant_id", "split", *columns])]
        for subject, row in zip(subjects, rows):
            cells = (row[c] if isinstance(row[c], str) else f"{row[c]:.6g}" for c in columns)
            lines.append("\t".join([subject, splits[subject], *cells]))
        (staging / "participants.tsv").write_text("\n".join(lines) + "\n")
        (staging / "participants.json").write_text(json.dumps(participants_sidecar(design), indent=2) + "\n")
        description = {
            "Name": "MultiviewCRL synthetic paired T1w/T2w cohort",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "GeneratedBy": [
                {
                    "Name": "MultiviewCRLLib.training.synthetic",
                    "Description": f"subjects={n_subjects} seed={seed} spacing_mm={spacing_mm} design={design}",
                }
            ],
            "SourceDatasets": [{"Description": "MNI ICBM152 2009a nonlinear symmetric template (nilearn)"}],
        }
        (staging / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
        seg_root = staging / "derivatives" / "tissues"
        labels = "\n".join(f"{index}\t{name}" for index, name in DSEG_LABELS.items())
        (seg_root / "dseg.tsv").write_text(f"index\tname\n{labels}\n")
        seg_description = {
            "Name": "Tissue labels of the synthetic cohort (dominant tissue per voxel)",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "MultiviewCRLLib.training.synthetic"}],
        }
        (seg_root / "dataset_description.json").write_text(json.dumps(seg_description, indent=2) + "\n")
    return out_dir


def _check_output(parser: argparse.ArgumentParser, out_dir: Path, overwrite: bool) -> None:
    """Refuse an output folder that cannot be written or would lose existing files."""
    if out_dir.exists() and not out_dir.is_dir():
        parser.error(f"--out {out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        parser.error(f"--out {out_dir}: folder exists and is not empty; pass --overwrite to replace it")
    ancestor = out_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        parser.error(f"--out {out_dir}: {ancestor} is not a folder")
    try:
        probe_writable(ancestor)
    except OSError as err:
        parser.error(f"--out {out_dir}: cannot write in {ancestor} ({err.strerror})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m MultiviewCRLLib.training.synthetic",
        description="Write a simulated BIDS cohort of paired T1w/T2w brain MRI with known content and style factors.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output BIDS folder (created)")
    parser.add_argument("--subjects", type=int, default=64, help="number of subjects (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the factors, noise and splits (default 0)")
    parser.add_argument("--spacing", type=float, default=1.0, help="voxel size in mm (default 1, the template grid)")
    parser.add_argument("--workers", type=int, default=None, help="parallel processes (default: one per core)")
    parser.add_argument(
        "--design",
        choices=DESIGNS,
        default="adni",
        help="adni: diagnosis and age drive atrophy, ventricles and lesions; independent: every factor uniform",
    )
    parser.add_argument(
        "--lowres-views",
        action="store_true",
        help="also write each T2w acquired at low resolution (k-space x2, 6 mm slabs) under derivatives/lowres",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error(f"--subjects must be at least 1, got {args.subjects}")
    if not args.spacing > 0:
        parser.error(f"--spacing must be positive, got {args.spacing}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}")
    _check_output(parser, args.out, args.overwrite)
    try:
        generate_cohort(
            args.out,
            args.subjects,
            args.seed,
            args.spacing,
            args.workers,
            show_progress=True,
            design=args.design,
            lowres_views=args.lowres_views,
        )
    except OSError as err:
        print(f"error: could not write the cohort to {args.out}: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.subjects} subjects to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
