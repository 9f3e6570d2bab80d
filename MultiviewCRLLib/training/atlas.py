"""The MNI ICBM152 2009a template, from the nilearn wheel (no network access): its tissue probability
maps, which the synthetic cohort's anatomy is drawn from, and its skull-stripped T1w brain, the space
a bundle's inputs are prepared into."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage

# The lateral ventricles' box in template (MNI) space, mm per axis; cortical CSF lies outside it.
VENTRICLE_BOX_MM = ((-25.0, 25.0), (-45.0, 25.0), (0.0, 35.0))


@dataclass(frozen=True)
class TissueAtlas:
    """Tissue probability maps on the 1 mm template grid, shape (3, X, Y, Z): GM, WM, CSF."""

    maps: np.ndarray
    affine: np.ndarray
    brain_center_mm: np.ndarray
    ventricle_center_mm: np.ndarray
    deep_wm_mm: np.ndarray  # (N, 3) deep white-matter positions


@cache
def load_tissue_atlas() -> TissueAtlas:
    """Load the MNI152 2009a maps bundled with nilearn (no network access), once per process: the
    maps take seconds to unpack and sum, and every cohort a process writes reads them."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_gm_template, load_mni152_wm_template

    gm_img = load_mni152_gm_template(resolution=1)
    affine = gm_img.affine.copy()
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(load_mni152_brain_mask(resolution=1).dataobj, dtype=np.float32)
    gm *= brain
    wm *= brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    maps = np.stack([gm, wm, csf])

    def to_mm(ijk: np.ndarray) -> np.ndarray:
        return ijk @ affine[:3, :3].T + affine[:3, 3]

    brain_center = to_mm(np.argwhere(brain > 0.5).mean(0))
    ijk = np.argwhere(csf > 0.8)
    mm = to_mm(ijk)
    central = np.all([(mm[:, d] > low) & (mm[:, d] < high) for d, (low, high) in enumerate(VENTRICLE_BOX_MM)], axis=0)
    ventricle_center = mm[central].mean(0)
    deep = np.argwhere(ndimage.binary_erosion(wm > 0.95, iterations=3))
    return TissueAtlas(maps, affine, brain_center, ventricle_center, to_mm(deep))


def mni_brain_template():
    """The skull-stripped MNI152 T1w brain at 2 mm and its mask (nilearn): the space the synthetic
    cohort is built in (and the report's registered inputs), which a bundle carries so that raw
    scans can be prepared against it."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    from ..runtime.preparation import Template

    image = load_mni152_template(resolution=2)
    mask = load_mni152_brain_mask(resolution=2)
    return Template(np.asarray(image.dataobj, dtype=np.float32), np.asarray(mask.dataobj) > 0, image.affine)
