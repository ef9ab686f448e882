"""serve()'s GC policy: start-up objects are frozen, cycles made later are still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from grpcstack.gc_policy import freeze_startup_objects


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_freeze_keeps_later_cycles_collectable(restore_gc: None) -> None:
    before = Node()
    frozen = freeze_startup_objects(young_threshold=5000)
    assert frozen > 1000  # the interpreter, pytest and grpcstack's modules
    # not == frozen: a thread an earlier test left (a driver's monitor) may free frozen objects
    assert gc.get_freeze_count() > frozen // 2
    assert gc.get_threshold()[0] == 5000
    a, b = Node(), Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    gc.collect()
    assert ref() is None  # a cycle made after the freeze is still found
    assert before.other is None  # frozen objects stay alive and usable


def test_zero_threshold_keeps_pythons(restore_gc: None) -> None:
    threshold = gc.get_threshold()
    freeze_startup_objects(0)
    assert gc.get_threshold() == threshold
