"""The dense channel (``indexers.dense``): exact against brute force (``text_fakes.brute_scores``,
the score as the module documents it), save/load, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexers.dense import (
    DENSE_FILE,
    DENSE_ITEMS_FILE,
    DENSE_ROWS_FILE,
    DenseConfig,
    DenseIndex,
)
from indexers.errors import ConfigError, EncoderMismatchError, IndexStoreError, ModelError

from .text_fakes import WordEncoder, brute_scores, brute_top

DIM = 13  # awkward on purpose


def assert_matches_brute(got, scores, k, allow=None):
    """``got`` is brute force's top-k: same scores position by position, every score exact
    for its id, and the same ids wherever brute force has no near-tie (float32 vs float64)."""
    want = brute_top(scores, k, allow)
    assert len(got) == len(want)
    assert len({i for i, _ in got}) == len(got)
    np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=1e-5)
    for i, s in got:
        assert abs(s - scores[i]) < 1e-5, i
        assert allow is None or allow.get(i, False), i
    ws = [s for _, s in want] + [-np.inf]
    for pos, ((gi, _), (wi, s)) in enumerate(zip(got, want)):
        gap = min(ws[pos - 1] - s if pos else np.inf, s - ws[pos + 1])
        if gap > 1e-4:
            assert gi == wi, (pos, got, want)


def random_catalogue(n_items: int, seed: int, max_rows: int = 7):
    """Items i0000.. with 1..max_rows rows each: the first their own text, the rest queries."""
    rng = np.random.default_rng(seed)
    ids, kinds = [], []
    for i in range(n_items):
        n = int(rng.integers(1, max_rows + 1))
        ids += [f"i{i:04d}"] * n
        kinds += ["item"] + ["query"] * (n - 1)
    return rng.standard_normal((len(ids), DIM)).astype(np.float32), ids, kinds


CONFIGS = [DenseConfig(2.0, 0.5), DenseConfig(0.5, 0.0), DenseConfig(4.0, 2.0),
           DenseConfig(1.0, 0.5)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"iw{c.item_weight}-mw{c.max_weight}")
@pytest.mark.parametrize("n_items", [1, 2, 7, 199, 611])
def test_search_equals_brute_force(n_items, cfg):
    vectors, ids, kinds = random_catalogue(n_items, seed=n_items)
    index = DenseIndex(vectors, ids, "rand", kinds, cfg)
    assert index.n_items == n_items and len(index) == len(ids)
    queries = np.random.default_rng(100 + n_items).standard_normal((7, DIM)).astype(np.float32)
    want = brute_scores(vectors, ids, kinds, cfg, queries)
    for k in (1, 3, 10, n_items + 5):  # k above the item count returns every item
        got = index.search(queries, k)
        assert len(got) == len(queries)
        for hits, scores in zip(got, want):
            assert_matches_brute(hits, scores, k)
        if k > n_items:
            assert all(len(h) == n_items for h in got)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_allow_filter_equals_brute_force_over_allowed_items(k):
    vectors, ids, kinds = random_catalogue(523, seed=3)
    cfg = DenseConfig(2.0, 0.5)
    index = DenseIndex(vectors, ids, "rand", kinds, cfg)
    rng = np.random.default_rng(4)
    items = list(dict.fromkeys(ids))
    # ~8% allowed (fewer than k=40), some items mapped to False, the rest missing (= not allowed)
    allow = {i: bool(rng.random() < 0.08) for i in items[::2]}
    allow.update({i: True for i in items[1::97]})
    n_allowed = sum(allow.values())
    assert 5 < n_allowed < 40
    for q in rng.standard_normal((5, DIM)).astype(np.float32):
        (hits,) = index.search(q[None], k, allow)
        assert len(hits) == min(k, n_allowed)
        assert_matches_brute(hits, brute_scores(vectors, ids, kinds, cfg, q)[0], k, allow)


def test_allow_with_fewer_than_k_or_none():
    vectors, ids, kinds = random_catalogue(300, seed=5)
    index = DenseIndex(vectors, ids, "rand", kinds)
    q = np.ones((1, DIM), np.float32)
    # two allowed items, k=10: exactly those two, whatever their rank overall
    got = index.search(q, 10, {"i0007": True, "i0299": True, "i0001": False})[0]
    assert sorted(i for i, _ in got) == ["i0007", "i0299"]
    assert index.search(q, 10, {})[0] == []
    assert index.search(q, 10, {"nope": True})[0] == []


def test_search_finds_an_item_through_its_best_row():
    # Item "far": its own text points away from the query, one logged query matches exactly.
    # Item "near": a moderately close own text. Centroid alone prefers "near" (1/sqrt(2) =
    # 0.707 > far's centroid); with max_weight 2 "far" wins: its best row scores 1 (2 x 1 = 2)
    # against near's 2 x 0.707.
    e = np.eye(4, dtype=np.float32)
    vectors = np.stack([e[1], e[2], e[3], e[0], e[0] + e[1]])
    ids = ["far", "far", "far", "far", "near"]
    kinds = ["item", "query", "query", "query", "item"]
    q = e[0][None]
    centroid_only = DenseIndex(vectors, ids, "x", kinds, DenseConfig(2.0, 0.0)).search(q, 2)[0]
    assert [i for i, _ in centroid_only] == ["near", "far"]
    # far's centroid: normalise(2*e1 + e2 + e3 + e0) -> cos with e0 = 1/sqrt(7) = 0.378
    assert centroid_only[1][1] == pytest.approx(1 / np.sqrt(7), abs=1e-6)
    assert centroid_only[0][1] == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    with_max = DenseIndex(vectors, ids, "x", kinds, DenseConfig(2.0, 2.0)).search(q, 2)[0]
    assert [i for i, _ in with_max] == ["far", "near"]
    assert with_max[0][1] == pytest.approx(1 / np.sqrt(7) + 2.0, abs=1e-6)
    assert with_max[1][1] == pytest.approx(3 / np.sqrt(2), abs=1e-6)


def test_item_weight_moves_the_centroid():
    # one item, own text e0, one logged query e1; query e0.
    # centroid = normalise(w*e0 + e1): cos with e0 = w / sqrt(w^2 + 1): w=1 -> 0.7071, w=3 ->
    # 0.9487 (max_weight 0: the centroid only)
    e = np.eye(3, dtype=np.float32)
    for w, want in ((1.0, 1 / np.sqrt(2)), (3.0, 3 / np.sqrt(10))):
        ix = DenseIndex(np.stack([e[0], e[1]]), ["a", "a"], "x", ["item", "query"],
                        DenseConfig(w, 0.0))
        assert ix.search(e[0][None], 1)[0][0][1] == pytest.approx(want, abs=1e-6)


def test_ties_break_on_id_across_rounds(monkeypatch):
    # 450 identical items (2 equal rows each): every score ties, so the answer is the first ids,
    # whichever rows FAISS happens to read first. A tie never beats the bound on unseen items,
    # so the search must widen past its first 200 candidates (the threshold loop).
    rounds = []
    real = DenseIndex._best_rows
    monkeypatch.setattr(DenseIndex, "_best_rows",
                        lambda self, vec, n: rounds.append(n) or real(self, vec, n))
    rng = np.random.default_rng(8)
    base = np.repeat(rng.standard_normal((1, DIM)).astype(np.float32), 2, axis=0)
    n = 450
    ids = [f"d{i:03d}" for i in range(n) for _ in range(2)]
    names = list(dict.fromkeys(ids))
    order = rng.permutation(n)  # insertion order is not id order
    ids = [names[i] for i in order for _ in range(2)]
    kinds = ["item", "query"] * n
    index = DenseIndex(np.tile(base, (n, 1)), ids, "x", kinds)
    for q in rng.standard_normal((4, DIM)).astype(np.float32):
        got = index.search(q[None], 7)[0]
        assert [i for i, _ in got] == [f"d{i:03d}" for i in range(7)]
        assert len({s for _, s in got}) == 1
    assert max(rounds) > min(rounds)  # some query read more rows in a later round


def test_zero_query_scores_zero_and_ranks_by_id():
    vectors, ids, kinds = random_catalogue(250, seed=9)
    got = DenseIndex(vectors, ids, "x", kinds).search(np.zeros((1, DIM)), 3)[0]
    assert got == [("i0000", 0.0), ("i0001", 0.0), ("i0002", 0.0)]


def test_queries_are_normalised():
    vectors, ids, kinds = random_catalogue(40, seed=10)
    index = DenseIndex(vectors, ids, "x", kinds)
    q = np.random.default_rng(11).standard_normal((2, DIM)).astype(np.float32)
    a, b = index.search(q, 5), index.search(q * 7.5, 5)
    assert [[i for i, _ in h] for h in a] == [[i for i, _ in h] for h in b]
    np.testing.assert_allclose([s for h in a for _, s in h], [s for h in b for _, s in h],
                               atol=1e-6)
    assert index.search(q[0], 5) == index.search(q[:1], 5)  # a single 1-D vector works


def test_empty_index_returns_nothing():
    index = DenseIndex(np.zeros((0, DIM), np.float32), [], "x")
    assert index.n_items == 0 and len(index) == 0
    assert index.search(np.ones((2, DIM)), 3) == [[], []]


# -- build from texts ---------------------------------------------------------------------


def test_build_rows_kinds_and_logged_query_word():
    enc = WordEncoder(dim=256)
    items = {"t1": "Summer sale poster", "t2": "Wedding invitation card", "t3": "Coffee menu"}
    # t2 clicked by "nuptials"; "ghost" is not in the catalogue and is ignored
    expansions = {"t2": ["nuptials", "marriage party"], "ghost": ["boo"]}
    assert not enc.collides("nuptials", [*items.values(), "marriage party"])
    index = DenseIndex.build(items, expansions, enc)
    assert index.row_ids == ["t1", "t2", "t2", "t2", "t3"]
    assert index.row_kinds == ["item", "item", "query", "query", "item"]
    assert index.encoder_name == "words-256" and index.dim == 256
    assert enc.calls == [["Summer sale poster", "Wedding invitation card", "nuptials",
                          "marriage party", "Coffee menu"]]
    # "nuptials" is in no item's own text: only t2's logged query finds it
    got = index.search(enc.encode(["nuptials"]), 3)[0]
    assert got[0][0] == "t2" and got[0][1] > 0.5
    assert all(s == pytest.approx(0.0, abs=1e-6) for _, s in got[1:])


def test_build_checks_the_encoder_output_shape():
    class Short(WordEncoder):
        def encode(self, texts):
            return super().encode(texts)[:, :5]

    with pytest.raises(ModelError, match=r"returned shape \(2, 5\), expected \(2, 64\)"):
        DenseIndex.build({"a": "x", "b": "y"}, {}, Short(dim=64))


def test_build_of_no_items():
    index = DenseIndex.build({}, {"a": ["q"]}, WordEncoder(dim=16))
    assert index.n_items == 0 and index.search(np.ones((1, 16)), 2) == [[]]


# -- save / load --------------------------------------------------------------------------


def test_save_load_round_trip_gives_identical_results(tmp_path):
    vectors, ids, kinds = random_catalogue(333, seed=12)
    cfg = DenseConfig(3.0, 1.5)
    index = DenseIndex(vectors, ids, "rand-13", kinds, cfg)
    index.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {DENSE_FILE, DENSE_ITEMS_FILE,
                                                    DENSE_ROWS_FILE}
    again = DenseIndex.load(tmp_path)
    assert (again.config, again.encoder_name, again.dim) == (cfg, "rand-13", DIM)
    assert (again.row_ids, again.row_kinds, again.item_ids) == (ids, kinds, index.item_ids)
    q = np.random.default_rng(13).standard_normal((6, DIM)).astype(np.float32)
    allow = {i: True for i in index.item_ids[::3]}
    for k in (1, 8, 400):
        assert again.search(q, k) == index.search(q, k)
        assert again.search(q, k, allow) == index.search(q, k, allow)


def test_load_of_a_directory_without_files_is_none(tmp_path):
    assert DenseIndex.load(tmp_path) is None
    assert DenseIndex.load(tmp_path / "not-even-there") is None


def test_load_of_a_damaged_index_is_index_store_error(tmp_path):
    vectors, ids, kinds = random_catalogue(20, seed=14)
    DenseIndex(vectors, ids, "x", kinds).save(tmp_path)
    meta = json.loads((tmp_path / DENSE_ROWS_FILE).read_text())
    meta["rows"], meta["kinds"] = meta["rows"][:-1], meta["kinds"][:-1]
    (tmp_path / DENSE_ROWS_FILE).write_text(json.dumps(meta))
    with pytest.raises(IndexStoreError, match="does not match its row list; rebuild"):
        DenseIndex.load(tmp_path)
    (tmp_path / DENSE_ROWS_FILE).unlink()
    with pytest.raises(IndexStoreError, match="unreadable.*rebuild"):
        DenseIndex.load(tmp_path)
    (tmp_path / DENSE_ROWS_FILE).write_text(json.dumps(meta))
    (tmp_path / DENSE_ITEMS_FILE).write_bytes(b"not faiss")
    with pytest.raises(IndexStoreError, match="unreadable"):
        DenseIndex.load(tmp_path)


# -- errors -------------------------------------------------------------------------------


def test_dim_mismatch_is_encoder_mismatch_error():
    vectors, ids, kinds = random_catalogue(10, seed=15)
    index = DenseIndex(vectors, ids, "rand-13", kinds)
    with pytest.raises(EncoderMismatchError, match="dim 12.*13; encode with rand-13"):
        index.search(np.ones((1, DIM - 1)), 3)
    assert issubclass(EncoderMismatchError, IndexStoreError)


@pytest.mark.parametrize("kw", [{"item_weight": 0.0}, {"item_weight": -1.0},
                                {"max_weight": -0.1}, {"item_weight": float("nan")},
                                {"max_weight": float("nan")}])
def test_bad_config_is_config_error(kw):
    with pytest.raises(ConfigError, match="out of range"):
        DenseConfig(**kw)


def test_bad_inputs_are_config_errors():
    v = np.ones((3, DIM), np.float32)
    with pytest.raises(ConfigError, match="3 row ids for vectors of shape"):
        DenseIndex(v[:2], ["a", "b", "c"], "x")
    with pytest.raises(ConfigError, match="must match"):
        DenseIndex(np.ones(DIM, np.float32), ["a"], "x")
    index = DenseIndex(v, ["a", "b", "c"], "x")
    for k in (0, -3):
        with pytest.raises(ConfigError, match=f"k={k}"):
            index.search(v, k)
    with pytest.raises(IndexStoreError, match="grouped by item"):
        DenseIndex(v, ["a", "b", "a"], "x")  # rows of one item must be adjacent


@pytest.mark.slow
def test_minilm_finds_a_synonym():
    """The real encoder (offline copy): "puppy" finds the dog template, not the invoice."""
    from indexers.dense import load_text_encoder

    enc = load_text_encoder()
    items = {"dog": "Dog walking service flyer", "inv": "Invoice template for accountants",
             "cake": "Birthday cake bakery menu"}
    index = DenseIndex.build(items, {"cake": ["sweet treats"]}, enc)
    assert index.dim == enc.dim == 384 and index.encoder_name.startswith("minilm:")
    assert index.search(enc.encode(["puppy"]), 1)[0][0][0] == "dog"
    assert index.search(enc.encode(["dessert shop"]), 1)[0][0][0] == "cake"
