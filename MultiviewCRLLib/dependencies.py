"""What the Slicer module's run path needs installed: read from ``Resources/requirements.txt``,
the one list that the package metadata also uses. Standard library only, so the module can check
before anything heavy is imported."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).resolve().parents[1] / "Resources" / "requirements.txt"


def requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement lines of a requirements file, e.g. ["torch>=2.1", "monai>=1.3", ...]."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


def unmet(requirement: str) -> bool:
    """True when the requirement's distribution is not installed or its version is outside the bounds."""
    from packaging.requirements import Requirement

    parsed = Requirement(requirement)
    try:
        installed = metadata.version(parsed.name)
    except metadata.PackageNotFoundError:
        return True
    return not parsed.specifier.contains(installed, prereleases=True)


def missing_requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirements of ``path`` that this Python does not meet, in file order."""
    return [requirement for requirement in requirements(path) if unmet(requirement)]
