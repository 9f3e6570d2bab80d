"""What a front end needs to start and stop a run, importable before torch is installed (standard
library only): whether the choices made allow a run, where a bundle's model card is, and the
cancellation token that the analysis and the registrations check between, and inside, their steps.
"""

from __future__ import annotations

import threading
from pathlib import Path

# The bundle's description for its users: what it was trained on, what it may be used for.
MODEL_CARD = "MODEL_CARD.md"


class Cancelled(Exception):
    """The user cancelled a run; what it would have produced is discarded."""


class CancelToken:
    """A flag that one thread sets (:meth:`cancel`) and a run on another checks (:meth:`check`).
    A new token is never cancelled until told; a cancelled one stays cancelled."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` once the token is cancelled."""
        if self.cancelled:
            raise Cancelled("cancelled")


def model_chosen(model_folder) -> bool:
    """Whether ``model_folder`` names an existing folder (an empty path line reads as '.')."""
    return model_folder is not None and str(model_folder).strip() not in ("", ".") and Path(model_folder).is_dir()


def can_apply(t1, t2, model_folder) -> bool:
    """The analysis runs with a model and at least one of the T1w and T2w inputs (nodes or None)."""
    return (t1 is not None or t2 is not None) and model_chosen(model_folder)


def can_align(t1, t2, model_folder) -> bool:
    """The registration needs both inputs and a model."""
    return t1 is not None and t2 is not None and model_chosen(model_folder)


def can_restore(t1, t2, model_folder) -> bool:
    """The restoration needs the T2w (the low-resolution view) and a model; the T1w guides it when given."""
    return t2 is not None and model_chosen(model_folder)


def model_card(model_folder) -> Path | None:
    """The bundle's model card, or None when the folder has none."""
    if not model_chosen(model_folder):
        return None
    card = Path(model_folder) / MODEL_CARD
    return card if card.is_file() else None
