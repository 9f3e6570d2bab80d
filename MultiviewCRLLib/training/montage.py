"""PNG montage of mid-slices of paired T1w/T2w volumes from a BIDS folder.

``python -m MultiviewCRLLib.training.montage DATASET OUT.png --subjects 4``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from ..config import VIEWS


def mid_slices(path: Path) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a volume in RAS orientation, ready for imshow."""
    data = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)
    x, y, z = (n // 2 for n in data.shape)
    return [data[:, :, z].T, data[:, y, :].T, data[x, :, :].T]


def write_montage(dataset: Path, out_png: Path, n_subjects: int = 4) -> Path:
    """Rows: subjects; columns: axial/coronal/sagittal mid-slices of each view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = sorted(p.name for p in Path(dataset).glob("sub-*") if p.is_dir())[:n_subjects]
    if not subjects:
        raise FileNotFoundError(f"{dataset}: no sub-* folders")
    planes = ("axial", "coronal", "sagittal")
    fig, axes = plt.subplots(len(subjects), 6, figsize=(13, 2.3 * len(subjects)), squeeze=False)
    for row, subject in enumerate(subjects):
        for v, view in enumerate(VIEWS):
            slices = mid_slices(Path(dataset) / subject / "anat" / f"{subject}_{view}.nii.gz")
            vmax = np.percentile(np.concatenate([s.ravel() for s in slices]), 99.5)
            for p, image in enumerate(slices):
                ax = axes[row, 3 * v + p]
                ax.imshow(image, cmap="gray", origin="lower", vmin=0, vmax=vmax)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(f"{view} {planes[p]}", fontsize=9)
            axes[row, 0].set_ylabel(subject, fontsize=9)
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return Path(out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m MultiviewCRLLib.training.montage", description=__doc__.splitlines()[0]
    )
    parser.add_argument("dataset", type=Path, help="BIDS folder with sub-*/anat/*_T1w.nii.gz and *_T2w.nii.gz")
    parser.add_argument("out", type=Path, help="PNG file to write")
    parser.add_argument("--subjects", type=int, default=4, help="number of subjects (rows), default 4")
    args = parser.parse_args(argv)
    if args.subjects < 1:
        parser.error(f"--subjects must be at least 1, got {args.subjects}")
    try:
        write_montage(args.dataset, args.out, args.subjects)
    except (FileNotFoundError, nib.filebasedimages.ImageFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
