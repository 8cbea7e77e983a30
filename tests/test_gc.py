"""The collector's bulk settings (core/_gc.py): set inside the block, restored after it."""

from __future__ import annotations

import gc

from assessment_store.core import bulk_collection, settle_collection


def test_bulk_collection_raises_the_threshold_and_restores_it() -> None:
    """Inside the block the young threshold is the one asked for; after it, the one before."""
    before = gc.get_threshold()
    with bulk_collection(young=12_345):
        assert gc.get_threshold()[0] == 12_345
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before


def test_bulk_collection_unfreezes_what_it_froze() -> None:
    """With nothing frozen before, the block's freeze is undone at its end, also when it raises."""
    gc.unfreeze()
    try:
        with bulk_collection():
            raise KeyError("boom")
    except KeyError:
        pass
    assert gc.get_freeze_count() == 0


def test_bulk_collection_keeps_an_earlier_freeze() -> None:
    """A process that had frozen objects of its own keeps them frozen after the block."""
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with bulk_collection():
            pass
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_settle_collection_freezes_and_raises_the_threshold() -> None:
    """A started service's objects are frozen and young collections become rare, for good."""
    before = gc.get_threshold()
    try:
        settle_collection()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] > before[0]
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
