"""A raw cohort prepared once before training (``trainer_cli.py --prepare``): every pair goes
through the same scan preparation as an analysis in Slicer (intensity range, brain extraction with
the template's brain mask, rigid alignment to the template), and the prepared pairs are cached.

The cache lives in ``<data root>/prepared/<settings key>/<pair key>-<input key>/``: the settings
key hashes the template and the preparation's parameters, the input key the two raw files' paths,
sizes and modification times, so a changed template, setting or scan is prepared anew and nothing
else is. A pair whose preparation fails is rejected with its reason, never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from ..config import VIEWS
from ..runtime import alignment, preparation
from ..runtime.preparation import AlignmentError, Template, prepare_pair, to_scanner_range
from ..runtime.storage import atomic_save_nifti, nifti_image
from .discovery import DiscoveryReport, Pair, Rejection

# What a prepared cohort's inputs look like, recorded in the run's settings and its bundle.
PREPARED_INPUTS = (
    "raw scans prepared: skull and scalp removed by the template's brain mask, rigidly aligned to the template"
)
GIVEN_INPUTS = "as given: taken to be skull-stripped and in the template's space, as the preparation would make them"


def settings_key(template: Template, mask_threshold: float) -> str:
    """A digest of everything the preparation's output depends on besides the scans."""
    digest = hashlib.sha256()
    for array in (template.image, template.mask.astype(np.uint8), template.affine):
        digest.update(np.ascontiguousarray(array).tobytes())
    parameters = {
        "mask_threshold": mask_threshold,
        "scale_range": preparation.SCALE_RANGE,
        "template_agreement": preparation.MIN_TEMPLATE_AGREEMENT,
        "range": (preparation.RANGE_FACTOR, preparation.TARGET_FACTOR),
        "registration": (
            alignment.HISTOGRAM_BINS,
            alignment.SAMPLING,
            alignment.SAMPLING_SEED,
            alignment.SHRINK_FACTORS,
        ),
        "pyramid": (
            alignment.SMOOTHING_MM,
            alignment.ITERATIONS,
            alignment.SEARCH_STEPS,
            alignment.SEARCH_STEP_DEGREES,
        ),
    }
    digest.update(json.dumps(parameters, sort_keys=True).encode())
    return digest.hexdigest()[:12]


def input_key(pair: Pair) -> str:
    """A digest of the pair's raw files: their paths, sizes and modification times."""
    stats = [(str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in (pair.t1, pair.t2)]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:10]


def prepare_cohort(
    report: DiscoveryReport, data_root: Path, template: Template, mask_threshold: float
) -> DiscoveryReport:
    """The discovery report of the prepared pairs (split and labels kept), preparing those not yet
    in the cache; a pair that cannot be prepared joins the rejected ones with the reason."""
    folder = Path(data_root) / "prepared" / settings_key(template, mask_threshold)
    out = DiscoveryReport(f"{report.source} (prepared in {folder})", rejected=list(report.rejected))
    for pair in tqdm(report.kept, desc="preparing raw scans", unit="pair"):
        target = folder / f"{pair.key}-{input_key(pair)}"
        paths = {view: target / f"{pair.key}_{view}.nii.gz" for view in VIEWS}
        if not all(path.is_file() for path in paths.values()):
            given = {}
            for view, path in zip(VIEWS, (pair.t1, pair.t2)):
                image = nib.load(path)
                given[view] = (
                    to_scanner_range(np.asarray(image.dataobj, dtype=np.float32), mask_threshold)[0],
                    image.affine,
                )
            try:
                prepared = prepare_pair(
                    given, template, {view: str(path) for view, path in zip(VIEWS, (pair.t1, pair.t2))}
                )
            except AlignmentError as err:
                out.rejected.append(Rejection(pair.key, str(pair.t1), f"preparation failed: {err}"))
                continue
            target.mkdir(parents=True, exist_ok=True)
            for view, (array, affine) in prepared.images.items():
                atomic_save_nifti(nifti_image(array.astype(np.float32), affine), paths[view])
        out.kept.append(replace(pair, t1=paths[VIEWS[0]], t2=paths[VIEWS[1]]))
    return out
