"""hyperframe's per-frame flag-name set, built once per frame class."""

from __future__ import annotations

from typing import Any

#: the hyperframe whose ``Flags.__init__`` ``cache_frame_flag_names`` replaces
HYPERFRAME_VERSION = "6.1.0"

_FLAG_NAMES: dict[int, tuple[list[Any], frozenset[str]]] = {}


def _cached_flags_init(self: Any, defined_flags: list[Any]) -> None:
    # hyperframe builds the set of valid flag names of a frame's class for every frame (a set
    # comprehension per frame, ~6% of a busy server): the class's list is a constant, so once
    entry = _FLAG_NAMES.get(id(defined_flags))
    if entry is None or entry[0] is not defined_flags:
        entry = (defined_flags, frozenset(flag.name for flag in defined_flags))
        _FLAG_NAMES[id(defined_flags)] = entry  # holds the list: its id is never reused
    self._valid_flags = entry[1]
    self._flags = set()


def cache_frame_flag_names() -> bool:
    """Make hyperframe's ``Flags`` reuse one frozenset of valid names per frame class (the same
    checks, same errors). Only on the hyperframe it was written against; True when in place."""
    import hyperframe
    import hyperframe.flags

    if hyperframe.__version__ != HYPERFRAME_VERSION:
        return False
    hyperframe.flags.Flags.__init__ = _cached_flags_init  # type: ignore[method-assign]
    return True
