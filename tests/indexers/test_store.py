"""IndexStore: the publish history, rollback, pruning that keeps the last good version, and the
clean-up of unfinished builds (with hand-made versions: a version is a directory and a marker)."""

from __future__ import annotations

import pytest

from indexers.errors import IndexStoreError
from indexers.store import HISTORY_FILE, IndexStore


def publish_new(store: IndexStore) -> str:
    v = store.new_version()
    store.mark_complete(v)
    store.publish(v)
    return v.name


def names(paths) -> list[str]:
    return [p.name for p in paths]


def test_previous_is_the_version_live_before(tmp_path):
    store = IndexStore(tmp_path)
    assert store.previous() is None and store.history() == []
    a = publish_new(store)
    assert store.previous() is None  # a first build has nothing before it
    b = publish_new(store)
    c = publish_new(store)
    assert store.history() == [a, b, c]
    assert store.current().name == c and store.previous().name == b


def test_rollback_pops_one_version_at_a_time(tmp_path):
    store = IndexStore(tmp_path)
    a, b, c = (publish_new(store) for _ in range(3))
    now, was = store.rollback()
    assert (now.name, was.name) == (b, c) and store.current().name == b
    assert store.previous().name == a  # rolling back again goes one more step back
    store.rollback()
    assert store.current().name == a
    with pytest.raises(IndexStoreError, match="nothing to roll back to"):
        store.rollback()
    # an explicit target is any complete version, and the one left becomes previous
    store.rollback(to=c)
    assert store.current().name == c and store.previous().name == a
    with pytest.raises(IndexStoreError, match="already the live version"):
        store.rollback(to=c)
    with pytest.raises(IndexStoreError, match=f"no complete version 'v-nope'.*{a}"):
        store.rollback(to="v-nope")


def test_publish_after_rollback_keeps_the_rolled_back_version_as_previous(tmp_path):
    store = IndexStore(tmp_path)
    a = publish_new(store)
    publish_new(store)
    store.rollback()  # the second one was bad
    d = publish_new(store)
    assert store.current().name == d and store.previous().name == a


def test_unfinished_versions_are_never_rollback_targets(tmp_path):
    store = IndexStore(tmp_path)
    a = publish_new(store)
    store.new_version()  # an unfinished build between a and b
    b = publish_new(store)
    assert store.current().name == b and store.previous().name == a
    with pytest.raises(IndexStoreError, match="no complete version"):
        store.rollback(to=names(store.incomplete_versions())[0])


def test_store_without_history_falls_back_to_the_newest_older_version(tmp_path):
    store = IndexStore(tmp_path)
    _, b, c = (publish_new(store) for _ in range(3))
    (tmp_path / HISTORY_FILE).unlink()  # a store published before HISTORY existed
    assert store.previous().name == b
    d = publish_new(store)  # the live version joins the history before the new one
    assert store.history() == [c, d] and store.previous().name == c


def test_prune_never_deletes_the_version_live_before(tmp_path):
    store = IndexStore(tmp_path)
    a, b, c = (publish_new(store) for _ in range(3))
    assert names(store.prune(keep=1)) == [a]  # keep=1 alone would delete b as well
    assert names(store.complete_versions()) == [b, c]
    assert store.rollback()[0].name == b  # so there is always something to roll back to


def test_prune_keeps_live_and_previous_after_a_rollback(tmp_path):
    store = IndexStore(tmp_path)
    a, b, _, d = (publish_new(store) for _ in range(4))
    store.rollback()
    store.rollback()  # live b, previous a; c and d are newer
    store.prune(keep=1)
    assert names(store.complete_versions()) == [a, b, d]


def test_clean_unfinished_removes_only_older_unlocked_builds(tmp_path):
    store = IndexStore(tmp_path)
    old_dead, old_running = store.new_version(), store.new_version()
    held = store.lock(old_running)
    try:
        done = publish_new(store)
        newer = store.new_version()  # started after the newest complete one: may resume
        assert names(store.clean_unfinished()) == [old_dead.name]
        assert names(store.incomplete_versions()) == [old_running.name, newer.name]
        with pytest.raises(IndexStoreError, match="another build is writing"):
            store.lock(old_running)
    finally:
        held.close()
    assert names(store.clean_unfinished()) == [old_running.name]
    assert names(store.incomplete_versions()) == [newer.name]
    assert store.current().name == done


def test_clean_unfinished_without_a_complete_version_keeps_everything(tmp_path):
    store = IndexStore(tmp_path)
    v = store.new_version()
    assert store.clean_unfinished() == [] and store.incomplete_versions() == [v]
