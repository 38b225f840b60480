"""Publish checks and rollback: the decision by hand, then the template job on tantivy and on the
Elasticsearch double refusing broken catalogues with the live version kept."""

from __future__ import annotations

import json

import pytest

from indexers.errors import ConfigError, IndexStoreError, PublishRefusedError
from indexers.es_build import es_live_version, rollback_es_alias
from indexers.es_schema import EsSettings
from indexers.publish import PublishPolicy, check_publish, enforce, rollback_templates
from indexers.store import IndexStore
from indexers.template_reindex import TemplateReindexConfig, reindex_templates
from indexers.template_backends import open_template_index

from .bad_catalogues import BAD_CATALOGUES, write_bad, write_jsonl
from .es_double import EsDouble
from .template_fixtures import make_templates

POLICY = PublishPolicy()  # min_count_ratio 0.5, max_reject_rate 0.2


# ---- the decision ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "rejected", "live", "refused_because"),
    [
        (5, 0, None, []),  # a first build: no count to compare with
        (150, 0, 300, []),  # 150 / 300 = 0.5: not below the floor
        (149, 0, 300, ["149 documents is 49.7% of the 300 in live version v1"]),
        (80, 20, 300, ["80 documents is 26.7% of the 300"]),  # 20 / 100 rejected: at the limit
        (79, 21, None, ["21 of 100 records were rejected (21.0%)"]),
        (5, 95, 300, ["5 documents is 1.7%", "95 of 100 records were rejected (95.0%)"]),
        (0, 0, 300, ["0 documents is 0.0%"]),
    ],
)
def test_check_publish_by_hand(count, rejected, live, refused_because):
    check = check_publish(count, rejected, "v1" if live else None, live, POLICY)
    assert check.passed == (not refused_because) == check.publishes
    assert len(check.reasons) == len(refused_because)
    for reason, want in zip(check.reasons, refused_because, strict=True):
        assert reason.startswith(want), reason


def test_zero_and_one_turn_the_checks_off():
    off = PublishPolicy(min_count_ratio=0, max_reject_rate=1)
    assert check_publish(1, 99, "v1", 1000, off).passed
    with pytest.raises(ConfigError, match="max_reject_rate=1.5 is out of range 0-1"):
        PublishPolicy(max_reject_rate=1.5)


def test_refusal_is_one_line_with_the_fix_and_force_publishes():
    check = check_publish(5, 95, "v-live", 300, POLICY)
    with pytest.raises(PublishRefusedError) as err:
        enforce(check, "bad.jsonl", "rejects.jsonl")
    msg = str(err.value)
    assert "\n" not in msg and err.value.check is check
    assert msg.startswith("refusing to publish bad.jsonl: 5 documents is 1.7% of the 300")
    assert "nothing was published and v-live stays live" in msg
    assert "(rejects: rejects.jsonl)" in msg and msg.endswith("--force")

    forced = check_publish(5, 95, "v-live", 300, PublishPolicy(force=True))
    enforce(forced, "bad.jsonl")  # no error
    assert forced.publishes and not forced.passed
    d = forced.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert (d["forced"], d["count_ratio"], d["reject_rate"], len(d["reasons"])) == (
        True, round(5 / 300, 4), 0.95, 2)


# ---- the template job on tantivy ------------------------------------------------------------


@pytest.fixture(scope="module")
def good():
    return make_templates(300, seed=3).records


@pytest.fixture()
def live_root(tmp_path, good):
    """A tantivy store whose live version holds the 300 good templates."""
    root = tmp_path / "tpl"
    src = write_jsonl(tmp_path / "good.jsonl", good)
    rep = reindex_templates(TemplateReindexConfig(source=src, root=root), progress=False)
    assert rep["publish_check"]["passed"] and rep["publish_check"]["live_count"] is None
    return root


@pytest.mark.parametrize("name", list(BAD_CATALOGUES))
def test_bad_catalogue_is_refused_and_the_live_version_kept(name, live_root, good, tmp_path):
    store = IndexStore(live_root)
    live, versions = store.current(), store.complete_versions()
    src, n_valid, n_rejected = write_bad(name, tmp_path, good)
    with pytest.raises(PublishRefusedError, match=rf"^refusing to publish {src}: ") as err:
        reindex_templates(TemplateReindexConfig(source=src, root=live_root), progress=False)
    assert (err.value.check.count, err.value.check.rejected) == (n_valid, n_rejected)
    assert err.value.check.live_count == 300 and len(err.value.check.reasons) == 2
    assert store.current() == live and store.complete_versions() == versions
    assert store.incomplete_versions() == []  # refused before anything was built
    rows = (live_root / "rejects.jsonl").read_text().splitlines()
    assert len(rows) == n_rejected  # the rejects say what is wrong
    with open_template_index("tantivy", root=live_root) as ix:
        assert ix.count() == 300


def test_force_publishes_and_rollback_restores(live_root, good, tmp_path):
    store = IndexStore(live_root)
    live = store.current().name
    src, _, _ = write_bad("duplicates", tmp_path, good)
    cfg = TemplateReindexConfig(source=src, root=live_root, policy=PublishPolicy(force=True))
    rep = reindex_templates(cfg, progress=False)
    assert rep["doc_count"] == 5 and rep["publish_check"]["forced"]
    assert rep["previous_version"] == live and store.previous().name == live

    back = rollback_templates("tantivy", live_root)
    assert back == {"backend": "tantivy", "version": live, "previous_version": rep["version"],
                    "count": 300}
    with open_template_index("tantivy", root=live_root) as ix:
        assert ix.version == live and ix.count() == 300


def test_a_smaller_good_catalogue_publishes(live_root, good, tmp_path):
    src = write_jsonl(tmp_path / "fewer.jsonl", good[:200])  # 200 / 300 = 67%: above the floor
    rep = reindex_templates(TemplateReindexConfig(source=src, root=live_root), progress=False)
    check = rep["publish_check"]
    assert (check["passed"], check["count"], check["live_count"]) == (True, 200, 300)
    assert IndexStore(live_root).current().name == rep["version"]


def test_forced_bad_builds_never_prune_the_version_live_before(live_root, good, tmp_path):
    store = IndexStore(live_root)
    good_version = store.current().name
    src, _, _ = write_bad("malformed", tmp_path, good)
    cfg = TemplateReindexConfig(source=src, root=live_root, keep_versions=1,
                                policy=PublishPolicy(force=True))
    first = reindex_templates(cfg, progress=False)
    assert [p.name for p in store.complete_versions()] == [good_version, first["version"]]
    assert rollback_templates("tantivy", live_root)["version"] == good_version


def test_rollback_with_nothing_before_says_so(live_root):
    with pytest.raises(IndexStoreError, match="nothing to roll back to"):
        rollback_templates("tantivy", live_root)
    with pytest.raises(ConfigError, match="give root for tantivy"):
        rollback_templates("tantivy")


# ---- the template job on the Elasticsearch double -------------------------------------------


def test_elasticsearch_refuses_bad_catalogue_and_rolls_back(good, tmp_path):
    with EsDouble() as es:
        settings = EsSettings(hosts=es.url, alias="tpl")
        cfg = TemplateReindexConfig(source=write_jsonl(tmp_path / "good.jsonl", good),
                                    backend="elasticsearch", es_url=es.url, alias="tpl")
        first = reindex_templates(cfg, progress=False)
        assert es_live_version(settings) == (first["version"], 300)

        src, _, _ = write_bad("malformed", tmp_path, good)
        bad = TemplateReindexConfig(source=src, backend="elasticsearch", es_url=es.url,
                                    alias="tpl")
        with pytest.raises(PublishRefusedError, match=f"{first['version']} stays live"):
            reindex_templates(bad, progress=False)
        assert set(es.indices) == {first["version"]}  # no index was even created
        assert es.aliases == {"tpl": {first["version"]}}

        smaller = TemplateReindexConfig(source=write_jsonl(tmp_path / "s.jsonl", good[:250]),
                                        backend="elasticsearch", es_url=es.url, alias="tpl")
        second = reindex_templates(smaller, progress=False)
        assert es.aliases == {"tpl": {second["version"]}}

        back = rollback_templates("elasticsearch", es=settings)
        assert back == {"backend": "elasticsearch", "version": first["version"],
                        "previous_version": second["version"], "count": 300}
        assert es.aliases == {"tpl": {first["version"]}}
        assert es.calls("POST", "^/_aliases$")[-1].body == {"actions": [
            {"remove": {"index": second["version"], "alias": "tpl"}},
            {"add": {"index": first["version"], "alias": "tpl"}}]}
        with pytest.raises(IndexStoreError, match="records no earlier index"):
            rollback_es_alias(settings)  # the first build replaced nothing
        assert rollback_es_alias(settings, to=second["version"]) == (second["version"],
                                                                     first["version"])
        with pytest.raises(IndexStoreError, match="'other-v1' is not an index built for"):
            rollback_es_alias(settings, to="other-v1")
