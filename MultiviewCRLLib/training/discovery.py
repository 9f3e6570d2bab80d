"""Finding paired T1w/T2w volumes: BIDS folders, CSV/TSV manifests, folder-per-subject layouts.

Every candidate subject ends up either kept or rejected with a reason; the report is printed and
saved as a TSV next to the run, so no subject is ever dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..config import VIEWS
from ..runtime.storage import atomic_write_tsv

DEFAULT_VIEWS = VIEWS
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DiscoveryError(RuntimeError):
    """No usable subject, a strict run with rejections, or an unreadable dataset description."""


@dataclass(frozen=True)
class Pair:
    """One subject's (or session's) two views. ``key`` is unique: subject plus session if any."""

    subject: str
    t1: Path
    t2: Path
    session: str = ""
    split: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        return f"{self.subject}_{self.session}" if self.session else self.subject

    def as_item(self) -> dict:
        """The dict a MONAI dataset consumes: paths as strings plus identifiers."""
        return {"subject": self.key, "t1": str(self.t1), "t2": str(self.t2)}


@dataclass(frozen=True)
class Rejection:
    subject: str
    file: str
    reason: str


@dataclass
class DiscoveryReport:
    source: str
    kept: list[Pair] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.kept)} subjects kept, {len(self.rejected)} rejected"]
        lines += [f"  rejected {r.subject}: {r.reason} ({r.file})" for r in self.rejected]
        return "\n".join(lines)

    def write_tsv(self, path: Path) -> Path:
        """One row per candidate: subject, status (kept/rejected), files, reason."""
        rows = [[p.key, "kept", f"{p.t1};{p.t2}", ""] for p in self.kept]
        rows += [[r.subject, "rejected", r.file, r.reason.replace("\t", " ").replace("\n", " ")] for r in self.rejected]
        return atomic_write_tsv(path, ["subject", "status", "file", "reason"], rows)

    def require_usable(self, strict: bool = False) -> None:
        """Refuse to go on with zero usable subjects, or (strict) with any rejection."""
        if not self.kept:
            raise DiscoveryError(f"no usable subjects found.\n{self.summary()}")
        if strict and self.rejected:
            raise DiscoveryError(f"--strict: {len(self.rejected)} subjects rejected.\n{self.summary()}")


def _checked(path: Path) -> tuple[nib.Nifti1Image | None, np.ndarray | None, str | None]:
    """A volume file read once: (image, data, None), or (None, None, why it cannot serve as a 3D volume)."""
    path = Path(path)
    if not path.is_file():
        return None, None, "file not found"
    try:
        img = nib.load(path)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) == 4:
            return None, None, f"4D image with {shape[3]} volumes (one volume expected)"
        if len(shape) != 3 or min(shape) < 2:
            return None, None, f"not a 3D image (shape {tuple(img.shape)})"
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as err:
        return None, None, f"unreadable ({type(err).__name__}: {err})"
    finite = np.isfinite(data)
    if not finite.all():
        return None, None, f"non-finite voxels ({int((~finite).sum())} NaN/Inf)"
    if not np.any(data):
        return None, None, "empty volume (all voxels are zero)"
    return img, data, None


def volume_problem(path: Path) -> str | None:
    """Why a file cannot serve as a 3D volume, or None when it can."""
    return _checked(path)[2]


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D volume file as an [i, j, k] float32 array and its RAS affine; ValueError naming the
    file and the problem when it cannot serve as one."""
    image, data, problem = _checked(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return np.asarray(data, dtype=np.float32).reshape(image.shape[:3]), image.affine


def _validated(candidates: list[Pair], rejected: list[Rejection], source: str) -> DiscoveryReport:
    """Check both files of every candidate; keep the pairs whose two volumes are usable."""
    report = DiscoveryReport(source, rejected=list(rejected))
    for pair in candidates:
        problems = [(path, volume_problem(path)) for path in (pair.t1, pair.t2)]
        problems = [(path, why) for path, why in problems if why]
        if problems:
            report.rejected += [Rejection(pair.key, str(path), why) for path, why in problems]
        else:
            report.kept.append(pair)
    return report


def _read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        sample = f.read(4096)
        f.seek(0)
        delimiter = "\t" if path.suffix == ".tsv" or ("\t" in sample and "," not in sample) else ","
        return [
            {k.strip(): (v or "").strip() for k, v in row.items() if k}
            for row in csv.DictReader(f, delimiter=delimiter)
        ]


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def discover_bids(root: Path, views: tuple[str, str] = DEFAULT_VIEWS) -> DiscoveryReport:
    """``sub-*/[ses-*/]anat/*_<view>.nii[.gz]``, paired within session; split/labels from participants.tsv."""
    root = Path(root)
    if not root.is_dir():
        raise DiscoveryError(f"{root}: BIDS folder not found")
    participants = {}
    if (root / "participants.tsv").is_file():
        participants = {row.get("participant_id", ""): row for row in _read_table(root / "participants.tsv")}
    found: dict[tuple[str, str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for anat in sorted(list(root.glob("sub-*/anat")) + list(root.glob("sub-*/ses-*/anat"))):
        subject = anat.parts[len(root.parts)]
        session = anat.parent.name if anat.parent.name.startswith("ses-") else ""
        for path in sorted(anat.iterdir()):
            stem = _strip_nifti(path.name)
            if stem != path.name and stem.split("_")[-1] in views:
                found[(subject, session)][stem.split("_")[-1]].append(path)
    candidates, rejected = [], []
    for (subject, session), by_view in sorted(found.items()):
        key = f"{subject}_{session}" if session else subject
        problem = _pairing_problem(by_view, views)
        if problem:
            rejected.append(Rejection(key, problem[1], problem[0]))
            continue
        row = participants.get(subject, {})
        labels = {k: v for k, v in row.items() if k not in ("participant_id", "split")}
        candidates.append(
            Pair(subject, by_view[views[0]][0], by_view[views[1]][0], session, row.get("split", ""), labels)
        )
    return _validated(candidates, rejected, str(root))


def _pairing_problem(by_view: dict[str, list[Path]], views: tuple[str, str]) -> tuple[str, str] | None:
    """(reason, file) when a subject lacks a view or has several files for one."""
    for view in views:
        files = by_view.get(view, [])
        if not files:
            other = next(iter(f for v in views for f in by_view.get(v, [])), "")
            return f"missing {view} view", str(other)
        if len(files) > 1:
            return f"duplicate {view}: {len(files)} files", ";".join(str(f) for f in files)
    return None


def discover_manifest(path: Path) -> DiscoveryReport:
    """A CSV/TSV with columns ``subject, t1, t2`` (+ optional ``split`` and label columns).

    Relative paths resolve against the manifest's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise DiscoveryError(f"{path}: manifest not found")
    rows = _read_table(path)
    missing = {"subject", "t1", "t2"} - set(rows[0] if rows else {})
    if missing:
        raise DiscoveryError(f"{path}: manifest lacks the column(s) {sorted(missing)} (needs subject, t1, t2)")
    counts = defaultdict(int)
    for row in rows:
        counts[row["subject"]] += 1
    candidates, rejected = [], []
    for line, row in enumerate(rows, start=2):
        subject = row["subject"]
        if not subject:
            rejected.append(Rejection(f"line {line}", str(path), "empty subject"))
            continue
        if counts[subject] > 1:
            rejected.append(Rejection(subject, str(path), f"duplicate subject: {counts[subject]} rows in the manifest"))
            continue
        views = {v: row[v] for v in ("t1", "t2")}
        absent = [v for v, p in views.items() if not p]
        if absent:
            rejected.append(Rejection(subject, str(path), f"missing {absent[0].upper()} view (empty cell)"))
            continue
        t1, t2 = ((path.parent / p).resolve() for p in views.values())
        labels = {k: v for k, v in row.items() if k not in ("subject", "t1", "t2", "split")}
        candidates.append(Pair(subject, t1, t2, split=row.get("split", ""), labels=labels))
    return _validated(candidates, rejected, str(path))


def discover_folders(root: Path, t1_pattern: str, t2_pattern: str) -> DiscoveryReport:
    """One folder per subject under ``root``; each view found by a glob pattern inside it.

    The technical report's ``{dataroot}/{dataset_name}/<subject>/...`` layout is this with
    ``root = dataroot / dataset_name``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DiscoveryError(f"{root}: data folder not found")
    candidates, rejected = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        by_view = {view: sorted(folder.glob(pattern)) for view, pattern in (("T1", t1_pattern), ("T2", t2_pattern))}
        problem = _pairing_problem(by_view, ("T1", "T2"))
        if problem:
            rejected.append(Rejection(folder.name, problem[1] or str(folder), problem[0]))
            continue
        candidates.append(Pair(folder.name, by_view["T1"][0], by_view["T2"][0]))
    return _validated(candidates, rejected, str(root))


def discover(
    source: Path,
    views: tuple[str, str] = DEFAULT_VIEWS,
    t1_pattern: str | None = None,
    t2_pattern: str | None = None,
) -> DiscoveryReport:
    """Pick the layout: a manifest file, a folder-per-subject layout (patterns given), or BIDS."""
    source = Path(source)
    if source.is_file():
        return discover_manifest(source)
    if t1_pattern or t2_pattern:
        if not (t1_pattern and t2_pattern):
            raise DiscoveryError("folder layouts need both a T1 and a T2 pattern")
        return discover_folders(source, t1_pattern, t2_pattern)
    return discover_bids(source, views)
