"""Files and folders written in one piece: a file is either its old complete self or its new
complete self, never a prefix, and a folder appears only when complete. What is written keeps the
permissions a plain write would give (the umask), so another account can read a shared bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plain_permissions(path: Path, folder: bool = False) -> None:
    """The mode ``open``/``mkdir`` would have given: mkstemp/mkdtemp make owner-only files."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def probe_writable(folder: Path) -> None:
    """Write and remove a small file in ``folder``: permission bits say nothing for root, a
    read-only file system or a full disk. Raises OSError."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-") as f:
        f.write(b"\0" * 4096)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def staged_folder(destination: Path, replace: bool = False):
    """Yield a new staging folder beside ``destination``; on success it is renamed into place.

    A stopped write leaves no half folder. An existing ``destination`` is replaced only with
    ``replace``, and then only once the new folder is complete.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield staging
        plain_permissions(staging, folder=True)
        if destination.exists() and replace:
            retired = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            destination.rename(retired / destination.name)
            staging.rename(destination)
            shutil.rmtree(retired)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _save_via_temporary(path, write)


def atomic_write_json(path: Path, value) -> Path:
    return atomic_write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def _save_via_temporary(path: Path, save, suffix: str = ".tmp") -> Path:
    """Call ``save(temporary_path)`` beside ``path``, then rename the result onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        save(tmp)
        plain_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_torch_save(path: Path, value) -> Path:
    """torch.save through a temporary file; load it back with ``torch.load(weights_only=True)``."""
    return _save_via_temporary(path, lambda tmp: torch.save(value, tmp))


def atomic_write_tsv(path: Path, header: list[str], rows) -> Path:
    """A tab-separated table written in one piece."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def nifti_image(array: np.ndarray, affine: np.ndarray):
    """An [i, j, k] array as a NIfTI image in millimetres, its RAS affine in both qform and sform."""
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    return image


def atomic_save_nifti(image, path: Path) -> Path:
    """A nibabel image saved through a temporary file of the same suffix (it picks the format)."""
    suffix = ".nii.gz" if Path(path).name.endswith(".nii.gz") else Path(path).suffix
    return _save_via_temporary(path, lambda tmp: nib.save(image, tmp), suffix)
