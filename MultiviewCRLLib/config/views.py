"""The two views: their names as users see them and as dataset entries, and how messages name them."""

from __future__ import annotations

VIEWS = ("T1w", "T2w")  # BIDS suffixes: the names users see
VIEW_KEYS = ("t1", "t2")  # the same views as dataset entries, in the same order
VIEW_NAMES = dict(zip(VIEW_KEYS, VIEWS))
_OTHER = {**dict(zip(VIEWS, reversed(VIEWS))), **dict(zip(VIEW_KEYS, reversed(VIEW_KEYS)))}


def volume_words(view: str, names: dict[str, str] | None = None) -> str:
    """How messages name a given volume: "the T2w 'MRBrainT2'" when its name is known, else "the T2w"."""
    return f"the {view} '{names[view]}'" if names and view in names else f"the {view}"


def other_view(view: str) -> str:
    """The other view, named the same way: "T1w" <-> "T2w", "t1" <-> "t2"."""
    return _OTHER[view]
