import random

import pytest

from plugin.fusion import FusionWeights, fuse_channels, rrf, term_coverage
from rewriters.errors import ConfigError
from rewriters.retrieval_return import ndcg_at_k


def test_rrf_by_hand():
    # k = 60. a: 1/61 (raw #1) + 1/63 (rewrite #3) = 0.0322664
    #         b: 1/62 (raw #2)                     = 0.0161290
    #         c: 1/61 (rewrite #1)                 = 0.0163934
    #         d: 1/62 (rewrite #2)                 = 0.0161290  (ties b: best rank 2 both → id)
    fused = rrf({"raw": ["a", "b"], "rewrite": ["c", "d", "a"]})
    assert [f.id for f in fused] == ["a", "c", "b", "d"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 63)
    assert fused[0].ranks == {"raw": 1, "rewrite": 3}
    assert fused[2].score == pytest.approx(1 / 62)


def test_rrf_weights_and_limit():
    # rewrite weighted 0: the order is the raw order, rewrite-only docs come last (score 0)
    fused = rrf({"raw": ["a", "b"], "rewrite": ["c", "a"]}, {"rewrite": 0.0}, limit=3)
    assert [f.id for f in fused] == ["a", "b", "c"]


def test_rrf_is_stable_and_ignores_duplicates():
    lists = {"raw": ["x", "y", "x"], "rewrite": ["y", "x"]}
    first = rrf(lists)
    assert first == rrf(dict(lists)) == rrf(lists)
    assert first[0].ranks == {"raw": 1, "rewrite": 2}  # the second "x" in raw is ignored


def test_rrf_rejects_bad_values():
    with pytest.raises(ConfigError, match="k 0"):
        rrf({"raw": []}, k=0)
    with pytest.raises(ConfigError, match="weights must be >= 0"):
        rrf({"raw": ["a"]}, {"raw": -1})
    assert rrf({"raw": [], "rewrite": []}) == []


# -- per-query channel weights --------------------------------------------------------------


def test_default_weights_by_hand():
    w = FusionWeights()
    assert w.for_query() == {"raw": 1.0, "dense": 1.0, "rewrite": 0.0}  # no rewrite: dropped
    assert w.for_query(1.0, 1.0) == {"raw": 1.0, "dense": 1.0, "rewrite": 1.0}
    assert w.for_query(1.0, 0.75) == {"raw": 1.0, "dense": 1.0, "rewrite": 0.5}


@pytest.mark.parametrize("coverage,want_raw", [
    (0.0, 0.5),  # below the floor: base weight only
    (0.25, 0.5),
    (0.5, 0.5),  # at the floor: still nothing added
    (0.75, 1.5),  # gain (0.75-0.5)/(1-0.5) = 0.5 -> 0.5 + 2 x 0.5
    (1.0, 2.5),  # full coverage: 0.5 + 2
])
def test_raw_weight_grows_with_coverage_above_the_floor(coverage, want_raw):
    w = FusionWeights(raw=0.5, raw_coverage=2.0, coverage_floor=0.5, dense=0.3)
    assert w.for_query(coverage) == {"raw": want_raw, "dense": 0.3, "rewrite": 0.0}


@pytest.mark.parametrize("sim,want", [
    (None, 0.0),  # no similarity known: no rewrite
    (-0.3, 0.0),
    (0.0, 0.0),
    (0.2, 0.0),  # at the floor: dropped (the floor is exclusive)
    (0.21, 0.025),  # 2 x (0.21 - 0.2) / 0.8
    (0.6, 1.0),  # 2 x 0.4 / 0.8
    (1.0, 2.0),
])
def test_rewrite_weight_is_linear_above_its_floor(sim, want):
    w = FusionWeights(rewrite=2.0, rewrite_floor=0.2)
    assert w.for_query(0.0, sim)["rewrite"] == pytest.approx(want, abs=1e-6)


def test_zero_floors():
    w = FusionWeights(raw=0.0, raw_coverage=1.0, coverage_floor=0.0, rewrite_floor=0.0)
    assert w.for_query(0.3, 0.3) == {"raw": 0.3, "dense": 1.0, "rewrite": 0.3}
    assert w.for_query(0.0, 0.0) == {"raw": 0.0, "dense": 1.0, "rewrite": 0.0}


@pytest.mark.parametrize("kw,match", [
    ({"raw": -1}, "raw=-1"), ({"raw_coverage": -0.1}, "raw_coverage"),
    ({"dense": -2}, "dense"), ({"rewrite": -1}, "rewrite"),
    ({"coverage_floor": 1.0}, "coverage_floor 1.0"), ({"coverage_floor": -0.1}, "coverage"),
    ({"rewrite_floor": 1.0}, "rewrite_floor 1.0"), ({"k": 0}, "rrf k 0"),
])
def test_bad_weights_are_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        FusionWeights(**kw)


# -- term coverage ---------------------------------------------------------------------------


def test_term_coverage_by_hand():
    # words of the query, 5-letter prefixes: red, summe, poste
    hits = ["Summer sale flyer",  # summe         -> 1 of 3
            "Red POSTERS",  # red, poste           -> 2 of 3 (the best hit counts)
            "ocean"]
    assert term_coverage("red summer poster", hits) == pytest.approx(2 / 3)
    assert term_coverage("red summer poster", ["red summer posters"]) == 1.0
    assert term_coverage("red red RED", ["red"]) == 1.0  # a repeated word counts once
    assert term_coverage("colour", ["Colours"]) == 1.0  # prefix match
    assert term_coverage("red", ["green"]) == 0.0


@pytest.mark.parametrize("query,hits", [("red poster", []), ("!!! ...", ["red poster"]),
                                        ("", ["red"])])
def test_term_coverage_without_words_or_hits_is_zero(query, hits):
    assert term_coverage(query, hits) == 0.0


# -- fuse_channels ---------------------------------------------------------------------------


def test_fuse_channels_ignores_zero_weight_and_unweighted_channels():
    lists = {"raw": ["a", "b"], "dense": ["d", "a"], "rewrite": ["c", "a"]}
    # rewrite weighted 0 and dense missing from the weights: neither adds its documents
    fused = fuse_channels(lists, {"raw": 1.0, "rewrite": 0.0}, k=60)
    assert [f.id for f in fused] == ["a", "b"]
    assert fused[0].ranks == {"raw": 1}  # the dropped channels leave no rank either
    assert fuse_channels(lists, {"raw": 0.0, "dense": 0.0, "rewrite": 0.0}, k=60) == []
    # plain rrf with weight 0 still lists the rewrite-only document (score 0), fuse does not
    assert "c" in [f.id for f in rrf(lists, {"raw": 1.0, "dense": 0.0, "rewrite": 0.0})]


def test_fuse_channels_by_hand():
    # k = 10. a: 2/11 (raw #1) + 0.5/12 (dense #2) = 0.2235;  d: 0.5/11 = 0.0455;
    #         b: 2/12 = 0.1667
    fused = fuse_channels({"raw": ["a", "b"], "dense": ["d", "a"]},
                          {"raw": 2.0, "dense": 0.5}, k=10, limit=2)
    assert [f.id for f in fused] == ["a", "b"]
    assert fused[0].score == pytest.approx(2 / 11 + 0.5 / 12)
    assert fused[1].score == pytest.approx(2 / 12)


# -- the product guarantee: an off-topic rewrite never pushes raw's hits down ----------------


def _case(rng: random.Random, n: int = 20):
    """A raw list with 1-3 relevant docs in its top 3, and a rewrite list of other docs."""
    raw = [f"r{i:02d}" for i in range(n)]
    rel = {d: 1.0 for d in rng.sample(raw[:3], rng.randint(1, 3))}
    rewrite = [f"x{i:02d}" for i in range(n)]  # none of raw's docs: off-topic
    rng.shuffle(rewrite)
    return raw, rel, rewrite


@pytest.mark.parametrize("seed", range(25))
def test_off_topic_rewrite_never_ranks_below_raw(seed):
    rng = random.Random(seed)
    raw, rel, rewrite = _case(rng)
    floor = rng.choice([0.3, 0.5, 0.7])
    w = FusionWeights(raw=rng.choice([0.25, 1.0]), raw_coverage=rng.choice([0.0, 2.0]),
                      rewrite=rng.choice([1.0, 3.0]), rewrite_floor=floor,
                      k=rng.choice([10, 60]))
    sim = rng.uniform(-0.2, floor)  # at or below the floor: off-topic
    weights = w.for_query(rng.random(), sim)
    assert weights["rewrite"] == 0.0
    lists = {"raw": raw, "rewrite": rewrite}
    fused = [f.id for f in fuse_channels(lists, weights, w.k, limit=10)]
    assert fused == raw[:10]
    assert ndcg_at_k(fused, rel, 10) >= ndcg_at_k(raw, rel, 10) > 0
    # with the dense channel on too, the off-topic rewrite changes nothing (fused == hybrid)
    lists["dense"] = raw[::-1]
    hybrid = fuse_channels({"raw": raw, "dense": raw[::-1]}, weights, w.k, limit=10)
    assert fuse_channels(lists, weights, w.k, limit=10) == hybrid


def test_on_topic_rewrite_enters_the_fused_list():
    raw, _, rewrite = _case(random.Random(0))
    w = FusionWeights(rewrite_floor=0.5)
    # sim 1: full weight; the rewrite's first doc ties raw's first (1/61) -> fused ranks 1-2
    full = fuse_channels({"raw": raw, "rewrite": rewrite}, w.for_query(0.0, 1.0), w.k, 10)
    assert {f.id for f in full[:2]} == {raw[0], rewrite[0]}
    assert sum(f.id in rewrite for f in full) == 5  # 5 of the top 10 from each list
    # just above the floor: a small weight; its docs come after raw's but are there
    low = fuse_channels({"raw": raw, "rewrite": rewrite}, w.for_query(0.0, 0.55), w.k)
    assert [f.id for f in low[:20]] == raw and [f.id for f in low[20:]] == rewrite
