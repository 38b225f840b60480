"""Hybrid template search on Elasticsearch (es_hybrid): BM25 and kNN fused by reciprocal rank
fusion, by the cluster's rrf retriever (8.16+) or here (older clusters, or a cluster that
refuses the retriever) with the same result."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from indexers.es_hybrid import fuse_rrf
from indexers.es_index import EsSettings, build_es_index, open_es_index
from indexers.templates import TemplateHit

from .es_double import EsDouble
from .template_fixtures import make_templates
from .text_fakes import TextRandEncoder

ALIAS = "tpl"
QUERIES = ["modern poster", "island vows", "lagoon brunch", "festival music"]
EXPANSIONS = {"t00005": ["island vows"], "t00007": ["lagoon brunch"]}


def hit(i: str) -> TemplateHit:
    return TemplateHit(id=i, score=0.0, title=i, category="c", tags=())


def test_fuse_rrf_by_hand():
    # a: 1/61 + 1/62 = .032522   c: 1/63 + 1/61 = .032266   b: 1/62   d: 1/63
    fused = fuse_rrf([[hit("a"), hit("b"), hit("c")], [hit("c"), hit("a"), hit("d")]], k=3)
    assert [h.id for h in fused] == ["a", "c", "b"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62)
    # ties: same score, the better best rank first, then the id
    tied = fuse_rrf([[hit("x"), hit("y")], [hit("y"), hit("x")]], k=5)
    assert [h.id for h in tied] == ["x", "y"]
    assert fuse_rrf([[], []], k=5) == []


@pytest.fixture(scope="module")
def records():
    return make_templates(180, seed=5).records


def hybrid_results(records, version, **double_opts):
    """(results per query, the double) of a hybrid index on a cluster of ``version``."""
    enc = TextRandEncoder()
    with EsDouble() as es:
        es.version = version
        for name, value in double_opts.items():
            setattr(es, name, value)
        settings = EsSettings(hosts=es.url, alias=ALIAS, retry_backoff_s=0.001,
                              max_backoff_s=0.01, num_candidates=30)
        build_es_index(records, settings, encoder=enc, expansions=EXPANSIONS)
        with open_es_index(settings, encoder=enc) as ix:
            got = ix.search_batch(QUERIES, k=8, filters={"tags": ["sale"]})
            got += [ix.search("island vows", k=8)]
        return got, es


def test_the_rrf_retriever_and_client_side_fusion_agree(records):
    served, es_new = hybrid_results(records, "9.1.0")
    fused, es_old = hybrid_results(records, "8.15.2")
    assert [[(h.id, round(h.score, 9)) for h in r] for r in served] == [
        [(h.id, round(h.score, 9)) for h in r] for r in fused]
    assert all(len(r) == 8 for r in served)
    assert all("sale" in h.tags for r in served[:-1] for h in r)
    # unfiltered: the logged query is in t00005's queries (BM25) and is its nearest row (kNN)
    assert served[-1][0].id == "t00005"
    # 8.16+: one rrf search per query; older: a BM25 and a kNN search per query
    new = [b for c in es_new.calls("POST", "/_msearch$") for b in c.body[1::2]]
    old = [b for c in es_old.calls("POST", "/_msearch$") for b in c.body[1::2]]
    assert len(new) == len(QUERIES) + 1 and all("retriever" in b for b in new)
    assert len(old) == 2 * (len(QUERIES) + 1) and not any("retriever" in b for b in old)
    assert [("query" in b, "knn" in b) for b in old[:2]] == [(True, False), (False, True)]
    assert old[1]["knn"]["field"] == "rows.vector" and old[1]["size"] == 30  # the window


def test_a_refused_retriever_falls_back_once_and_stays_fused_here(records, caplog):
    served, _ = hybrid_results(records, "9.1.0")
    with caplog.at_level(logging.WARNING, logger="indexers.es_hybrid"):
        fused, es = hybrid_results(records, "9.1.0", rrf_licensed=False)
    assert [[h.id for h in r] for r in fused] == [[h.id for h in r] for r in served]
    assert caplog.text.count("refused the rrf retriever") == 1
    bodies = [c.body[1::2] for c in es.calls("POST", "/_msearch$")]
    assert all("retriever" in b for b in bodies[0])  # tried once ...
    assert not any("retriever" in b for call in bodies[1:] for b in call)  # ... then not again


def test_an_unreadable_version_fuses_here(records):
    served, _ = hybrid_results(records, "9.1.0")
    enc = TextRandEncoder()
    with EsDouble() as es:
        settings = EsSettings(hosts=es.url, alias=ALIAS, num_candidates=30)
        build_es_index(records, settings, encoder=enc, expansions=EXPANSIONS)
        es.fail("GET", "^/$", 403, times=5)  # a key without the monitor privilege
        with open_es_index(settings, encoder=enc) as ix:
            got = ix.search_batch(QUERIES, k=8, filters={"tags": ["sale"]})
        assert not any("retriever" in b for c in es.calls("POST", "/_msearch$")
                       for b in c.body[1::2])
    assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in served[:-1]]


def test_an_index_without_dense_rows_uses_the_embedding_field(records):
    enc = TextRandEncoder()
    with EsDouble() as es:
        settings = EsSettings(hosts=es.url, alias=ALIAS, num_candidates=30)
        build_es_index(records, settings, encoder=enc)
        with open_es_index(settings, encoder=enc) as ix:
            ix.meta = {**ix.meta, "dense": None}  # as a schema-v1 index reads
            ix.search("modern poster", k=5)
        (call,) = es.calls("POST", "/_msearch$")
        assert call.body[1]["retriever"]["rrf"]["retrievers"][1]["knn"]["field"] == "embedding"


def test_bm25_only_without_an_encoder_or_with_hybrid_off(records):
    enc = TextRandEncoder()
    with EsDouble() as es:
        settings = EsSettings(hosts=es.url, alias=ALIAS)
        build_es_index(records, settings, encoder=enc)
        with open_es_index(settings) as ix:
            ix.search("modern poster", k=5)
        with open_es_index(replace(settings), encoder=enc, hybrid=False) as ix:
            ix.search_batch(["modern poster"], k=5)
        bodies = [r.body for r in es.calls("POST", "/_search$")]
        bodies += [b for c in es.calls("POST", "/_msearch$") for b in c.body[1::2]]
        assert len(bodies) == 2
        assert all("retriever" not in b and "knn" not in b for b in bodies)
