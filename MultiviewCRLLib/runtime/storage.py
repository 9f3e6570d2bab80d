"""Atomic writes: a file is either its old complete self or its new complete self, never a prefix."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch


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


def atomic_save_nifti(image, path: Path) -> Path:
    """A nibabel image saved through a temporary file of the same suffix (it picks the format)."""
    import nibabel as nib

    suffix = ".nii.gz" if Path(path).name.endswith(".nii.gz") else Path(path).suffix
    return _save_via_temporary(path, lambda tmp: nib.save(image, tmp), suffix)
