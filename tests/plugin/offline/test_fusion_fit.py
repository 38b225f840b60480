"""Fitting the fusion weights on held-out logged queries (``plugin.offline.fusion_fit``).

The synthetic world: 60 templates (``make_templates(60, seed=4)``) and a seeded log of ~200
queries. Each query is 1-2 words of one template's title, half of them also carrying that
template's made-up synonym ``syn<NN>`` (a word no template text holds: only the log teaches
it), and clicks that template 1-3 times (sometimes a second one too). Extra queries make the
eligibility rules checkable by eye: 4 never clicked, 3 clicked 12 catalogue items (> 10),
2 clicked only an id the catalogue lacks.
"""

from __future__ import annotations

import random

import pytest

from indexers.query_log import QueryLog, normalize_query
from plugin.config import PipelineSettings
from plugin.fitted_weights import FITTED, fusion_weights
from plugin.fusion import FusionWeights
from plugin.offline import fusion_fit
from plugin.offline.fusion_fit import FusionFitConfig, fit_fusion, fit_queries
from rewriters.errors import ConfigError

from ...indexers.template_fixtures import make_templates
from ...indexers.text_fakes import WordEncoder

N_ITEMS = 60
NOT_ELIGIBLE = {"nothing clicked 0", "nothing clicked 1", "nothing clicked 2",
                "nothing clicked 3", "clicked everything 0", "clicked everything 1",
                "clicked everything 2", "only unknown 0", "only unknown 1"}


@pytest.fixture(scope="module")
def records():
    return make_templates(N_ITEMS, seed=4).records


def make_log(records, n_queries: int = 200, seed: int = 0) -> QueryLog:
    rng = random.Random(seed)
    events: list[tuple[str, str | None]] = []
    for _ in range(n_queries):
        r = rng.choice(records)
        words = rng.sample(r.title.casefold().split(), rng.randint(1, 2))
        if rng.random() < 0.5:
            words.append(f"syn{r.id[-2:]}")
        q = " ".join(words)
        events += [(q, r.id)] * rng.randint(1, 3)
        if rng.random() < 0.2:
            events.append((q, rng.choice(records).id))
    for i in range(4):
        events.append((f"nothing clicked {i}", None))
    for i in range(3):
        events += [(f"clicked everything {i}", r.id) for r in records[:12]]
    for i in range(2):
        events.append((f"only unknown {i}", "zz999"))
    return QueryLog.from_events(events)


@pytest.fixture(scope="module")
def qlog(records):
    return make_log(records)


@pytest.fixture(scope="module")
def ids(records):
    return {r.id for r in records}


# -- which queries are held out ----------------------------------------------------------------


def test_fit_queries_is_seeded_and_eligible_only(qlog, ids):
    cfg = FusionFitConfig()
    held = fit_queries(qlog, ids, cfg)
    eligible = [q for q in qlog.clicks if q not in NOT_ELIGIBLE]
    assert len(held) == int(len(eligible) * 0.15) >= cfg.min_queries
    assert set(held) <= set(eligible) and not set(held) & NOT_ELIGIBLE
    assert held == sorted(held) and all(q == normalize_query(q) for q in held)
    assert fit_queries(qlog, ids, cfg) == held  # same seed, same queries
    assert fit_queries(qlog, ids, FusionFitConfig(seed=1)) != held


def test_fit_queries_counts_only_known_clicks():
    # "wide" clicked 12 ids, only 10 of them in the catalogue: eligible (10 <= max_clicked);
    # "wider" clicked 11 known ids: not; "gone" clicked only unknown ids: not
    known = {f"k{i}" for i in range(11)}
    events = [("wide", f"k{i}") for i in range(10)] + [("wide", "u1"), ("wide", "u2")]
    events += [("wider", f"k{i}") for i in range(11)] + [("gone", "u1")]
    events += [(f"q{i:02d}", "k0") for i in range(39)]
    log = QueryLog.from_events(events)
    eligible = {"wide", *(f"q{i:02d}" for i in range(39))}
    seen = set()
    for seed in range(30):  # half of the 40 eligible each time; 30 draws cover them all
        held = fit_queries(log, known, FusionFitConfig(share=0.5, min_queries=1, seed=seed))
        assert len(held) == 20
        seen |= set(held)
    assert seen == eligible


def test_fit_queries_caps_and_floors():
    log = QueryLog.from_events([(f"q{i}", "a") for i in range(100)])
    assert len(fit_queries(log, {"a"}, FusionFitConfig(share=0.5, max_queries=20,
                                                       min_queries=1))) == 20
    # 100 x 0.15 = 15 held out, below min_queries 20: nothing
    assert fit_queries(log, {"a"}, FusionFitConfig()) == []
    assert fit_queries(log, {"a"}, FusionFitConfig(min_queries=15)) != []
    assert fit_queries(QueryLog(), {"a"}, FusionFitConfig()) == []


@pytest.mark.parametrize("kw,match", [({"max_queries": 19}, "max_queries 19"),
                                      ({"share": 0.0}, "share 0.0"), ({"share": 0.6}, "share")])
def test_bad_fit_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        FusionFitConfig(**kw)


# -- fitting ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(records, qlog):
    """One fit with the fake encoder, capturing what the temporary index was built from."""
    captured = []
    real = fusion_fit.build_tantivy_index

    def spy(recs, root, **kw):
        captured.append(kw)
        return real(recs, root, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fusion_fit, "build_tantivy_index", spy)
        out = fit_fusion(records, qlog, WordEncoder(dim=512), progress=False)
    return out, captured


def test_fit_returns_grid_weights_and_beats_every_single_channel(fitted, qlog, ids):
    out, _ = fitted
    cfg = FusionFitConfig()
    assert out["raw"] in cfg.raw and out["raw_coverage"] in cfg.raw_coverage
    assert out["coverage_floor"] in cfg.coverage_floor and out["dense"] in cfg.dense
    assert out["k"] in cfg.k
    assert set(FITTED) <= set(out)
    FusionWeights(**{n: out[n] for n in FITTED})  # a valid set of weights
    assert out["fitted_on"] == len(fit_queries(qlog, ids, cfg))
    scores = out["ndcg@10"]
    # the grid holds raw alone (1, 0, k=60), dense alone (0, 1) and equal RRF (1, 1): the max
    # over the grid is at least each of them
    for name in ("raw", "dense", "equal_rrf"):
        assert 0 <= scores[name] <= scores["fitted"] <= 1, name
    assert scores["fitted"] > 0.3  # the log's words find the clicked templates


def test_held_out_clicks_never_reach_the_temporary_index(fitted, qlog, ids):
    _, captured = fitted
    (kw,) = captured
    held = set(fit_queries(qlog, ids, FusionFitConfig()))
    indexed = {normalize_query(q) for qs in kw["expansions"].values() for q in qs}
    assert indexed and not indexed & held
    # everything else that clicked a catalogue item is there
    assert indexed == set(qlog.without(held).clicks) - {"only unknown 0", "only unknown 1"}
    assert kw["encoder"] is not None and kw["keep_versions"] == 1


def test_fit_is_deterministic(records, qlog, fitted):
    again = fit_fusion(records, qlog, WordEncoder(dim=512), progress=False)
    strip = lambda d: {k: v for k, v in d.items() if k != "seconds"}
    assert strip(again) == strip(fitted[0])


def test_fit_without_encoder_fits_raw_only(records, qlog):
    out = fit_fusion(records, qlog, None, progress=False)
    assert out["dense"] == 0.0 and out["ndcg@10"]["dense"] is None
    assert out["ndcg@10"]["fitted"] >= out["ndcg@10"]["raw"]


def test_nothing_to_fit_returns_none(records):
    assert fit_fusion(records, None, WordEncoder()) is None
    small = make_log(records, n_queries=40)  # ~40 x 0.15 = 6 held out < 20
    assert fit_fusion(records, small, WordEncoder(), progress=False) is None


# -- settings + fitted values ------------------------------------------------------------------


FIT = {"raw": 0.25, "raw_coverage": 2.0, "coverage_floor": 0.5, "dense": 0.0, "k": 10,
       "fitted_on": 30, "ndcg@10": {"fitted": 0.5}}


def test_fusion_weights_apply_fitted_values_only_when_asked():
    p = PipelineSettings(raw_weight=0.7, coverage_weight=0.1, coverage_floor=0.2,
                         dense_weight=0.9, rewrite_weight=1.5, rewrite_floor=0.4, rrf_k=30)
    settings_only = FusionWeights(raw=0.7, raw_coverage=0.1, coverage_floor=0.2, dense=0.9,
                                  rewrite=1.5, rewrite_floor=0.4, k=30)
    # the rewrite's weight and floor always come from the settings
    assert fusion_weights(p, FIT) == FusionWeights(raw=0.25, raw_coverage=2.0,
                                                   coverage_floor=0.5, dense=0.0, rewrite=1.5,
                                                   rewrite_floor=0.4, k=10)
    assert fusion_weights(p.model_copy(update={"fitted_fusion": False}), FIT) == settings_only
    assert fusion_weights(p, None) == fusion_weights(p, {}) == settings_only
    # a partial fit replaces only what it holds
    assert fusion_weights(p, {"dense": 0.0}) == FusionWeights(
        raw=0.7, raw_coverage=0.1, coverage_floor=0.2, dense=0.0, rewrite=1.5,
        rewrite_floor=0.4, k=30)
