import pytest

from plugin.fusion import rrf
from rewriters.errors import ConfigError


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
