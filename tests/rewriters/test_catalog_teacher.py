"""The catalogue teacher: deterministic prompts of exact length, in the words of a query's
catalogue neighbours; and the grounding protocol's StaticGrounder."""

from __future__ import annotations

import asyncio
from itertools import pairwise

import pytest

from rewriters.catalog_teacher import (FILLERS, CatalogTeacher, CatalogTeacherConfig,
                                       catalog_words, document_frequencies)
from rewriters.commands import LENGTH_MAX, LENGTH_MIN, count_words
from rewriters.data import Example
from rewriters.distill import DistillConfig, distill
from rewriters.errors import ConfigError, TeacherError
from rewriters.grounding import GroundItem, StaticGrounder
from rewriters.queries import QuerySpec

ALL_LENGTHS = range(LENGTH_MIN, LENGTH_MAX + 1)

# An icon catalogue. For the query "github" every word below is in one item only, so with the
# grounding set as background each has idf log(4/2) + 1 and the order is that of
# item weight x field weight:
#   brand 3x3=9 | branch, git (2x3) and logo, octocat, social (3x2) = 6 | brands 3x1.5=4.5 |
#   control, merge, version 2x2=4 | development 2x1.5=3 | dog 0.5x3=1.5 | animal, pet 0.5x2=1 |
#   animals 0.5x1.5=0.75
GITHUB = [
    GroundItem("i1", "Brand GitHub", tags=("logo", "octocat", "social"), category="brands",
               weight=3.0, source="click"),
    GroundItem("i2", "git branch", tags=("version", "control", "merge"),
               category="development", weight=2.0, source="similar-query"),
    GroundItem("i3", "dog", tags=("animal", "pet"), category="animals", weight=0.5),
]
GITHUB_ORDER = ["brand", "branch", "git", "logo", "octocat", "social", "brands", "control",
                "merge", "version", "development", "dog", "animal", "pet", "animals"]
# "icon" is in every title; "github" in two of three
ICONS = [GroundItem("x1", "github mark icon"), GroundItem("x2", "github octocat icon"),
         GroundItem("x3", "terminal icon")]
GROUNDER = StaticGrounder({"github": GITHUB, "code": ICONS})
QUERIES = ["github", "GitHub  logo", "code", "new year's eve party invitation card",
           "a dog and a cat on a sofa", "photo of a cat", "!!!",
           " ".join(f"w{i}" for i in range(45))]  # longer than the longest prompt


def run(coro):
    return asyncio.run(coro)


def test_grounded_words_rank_by_weight_field_and_word():
    teacher = CatalogTeacher(GROUNDER)
    got = teacher.grounding_words("github", "template", GITHUB)
    assert [w for w, _ in got] == GITHUB_ORDER  # "github" is the query's own: never grounded
    assert got[0][1] == pytest.approx(9 * 1.6931471805599454)
    assert teacher.grounding_words("github", "template", GITHUB, limit=2) == got[:2]
    # the prompt reads query words, then grounded words best first
    assert teacher.compose("github", "template", 8, GITHUB) == \
        "github brand branch git logo octocat social brands"
    assert teacher.compose("github", "image", 8, GITHUB) == \
        "a photo of github brand branch git logo"


def test_a_strong_neighbour_beats_a_weak_one():
    teacher = CatalogTeacher(GROUNDER)
    order = [w for w, _ in teacher.grounding_words("github", "image", GITHUB)]
    assert order.index("octocat") < order.index("pet")  # both tags; weight 3 vs 0.5
    prompt = teacher.compose("github", "template", 12, GITHUB).split()
    assert "octocat" in prompt and "pet" not in prompt
    # swap the weights and the weak neighbour's words move ahead
    swapped = [GroundItem(it.id, it.title, it.tags, it.category, weight=w)
               for it, w in zip(GITHUB, (0.5, 2.0, 3.0))]
    order = [w for w, _ in teacher.grounding_words("github", "image", swapped)]
    assert order.index("pet") < order.index("octocat")


def test_distinctive_words_beat_words_common_to_the_catalogue():
    # grounding set as background: "icon" (3 titles: 9 x 1) beats "github" (2: 6 x 1.29)
    local = CatalogTeacher(GROUNDER)
    assert [w for w, _ in local.grounding_words("code", "template", ICONS)][:2] == \
        ["icon", "github"]
    assert local.compose("code", "template", 3, ICONS) == "code icon github"
    # the catalogue says "icon" is on 900 of 1000 items: it drops behind every rarer word
    df = {"icon": 900, "github": 3, "octocat": 1, "mark": 40, "terminal": 12}
    wide = CatalogTeacher(GROUNDER, vocabulary_df=df, n_docs=1000)
    order = [w for w, _ in wide.grounding_words("code", "template", ICONS)]
    assert order == ["github", "octocat", "terminal", "mark", "icon"]
    assert wide.compose("code", "template", 3, ICONS) == "code github octocat"


@pytest.mark.parametrize("query", QUERIES)
def test_every_length_is_exact_and_never_repeats(query):
    teacher = CatalogTeacher(GROUNDER)
    requests = [(t, n) for t in ("image", "template") for n in ALL_LENGTHS]
    reply = run(teacher.generate(query, "both", requests))
    assert [t for t, _ in reply.prompts] == [t for t, _ in requests]
    for (task, n), (_, prompt) in zip(requests, reply.prompts):
        words = prompt.split()
        assert count_words(prompt) == n and prompt == " ".join(words), (task, n, prompt)
        assert len(set(words)) == n, prompt  # no repeated word, so no repeated 3-gram
        trigrams = list(zip(words, words[1:], words[2:]))
        assert len(set(trigrams)) == len(trigrams)
        assert all(a != b for a, b in pairwise(words))
        Example.make(query, task, prompt, teacher.name, "both")  # a valid training example


def test_the_query_words_come_first():
    teacher = CatalogTeacher(GROUNDER)
    # deduplicated, casefolded, in query order; edge punctuation dropped
    assert teacher.compose("GitHub logo, github", "template", 6, GITHUB).split()[:2] == \
        ["github", "logo"]
    words = "new year's eve party invitation card".split()
    for n in ALL_LENGTHS:
        assert teacher.compose(" ".join(words), "template", n, GITHUB).split()[:6] == words[:n]
    # longer than the prompt: its first words only
    assert teacher.compose("one two three four five", "image", 3, GITHUB) == "one two three"
    # image prompts put "a photo of" before the query when 3 more words fit after it
    assert teacher.compose("dog sofa", "image", 5, []).split()[:2] == ["dog", "sofa"]
    assert teacher.compose("dog sofa", "image", 6, []) == "a photo of dog sofa detailed"
    # ... and never when the query has one of those words: "a" would repeat
    assert teacher.compose("photo of a cat", "image", 20, GITHUB).startswith("photo of a cat ")


def test_no_grounding_answers_with_query_words_and_fillers():
    teacher = CatalogTeacher(GROUNDER)
    reply = run(teacher.generate("unknown query", None, [("template", 5), ("image", 4)]))
    assert reply.intent == "both"  # the catalogue does not label intent
    assert reply.prompts == [("template", "unknown query template design layout"),
                             ("image", "unknown query photo detailed")]
    assert run(teacher.generate("unknown", "image", [("image", 3)])).intent == "image"
    # a filler already in the query is not repeated
    assert teacher.compose("template design", "template", 4, []) == \
        "template design layout editable"
    assert all(len(set(f)) >= LENGTH_MAX for f in FILLERS.values())


def test_same_input_same_prompts_across_instances():
    requests = [("image", 12), ("template", 7), ("image", 12), ("template", 40)]
    a = run(CatalogTeacher(GROUNDER).generate("github", None, requests))
    b = run(CatalogTeacher(StaticGrounder({"GitHub": list(reversed(GITHUB))}))
            .generate("  github ", None, requests))
    assert a == b
    assert a.prompts[0] == a.prompts[2]  # a repeated request is answered alike


class CountingGrounder:
    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, str, int]] = []
        self.fail = fail

    def ground(self, query, task, k=20):
        self.calls.append((query, task, k))
        if self.fail:
            raise RuntimeError("index is down")
        return GITHUB[:k]


def test_grounds_once_per_task_with_k_from_config():
    grounder = CountingGrounder()
    teacher = CatalogTeacher(grounder, CatalogTeacherConfig(k=2))
    reply = run(teacher.generate("github", None, [("image", 5), ("template", 9), ("image", 30)]))
    assert grounder.calls == [("github", "image", 2), ("github", "template", 2)]
    assert "dog" not in reply.prompts[1][1]  # the third item was not asked for


def test_grounder_failure_is_one_failed_query(tmp_path):
    with pytest.raises(TeacherError, match="'github' failed: RuntimeError: index is down"):
        run(CatalogTeacher(CountingGrounder(fail=True)).generate("github", None, [("image", 5)]))
    # and a distillation run counts it instead of stopping
    out = tmp_path / "d.jsonl"
    cfg = DistillConfig(prompts_per_task=2, concurrency=2)
    report = run(distill([QuerySpec("github", None), QuerySpec("code", "template")],
                         CatalogTeacher(GROUNDER), out, cfg, progress=False))
    assert report.queries_done == 2 and report.examples_written == 8
    assert report.examples_rejected == 0


def test_candidate_words_skip_stop_words_numbers_and_letters():
    assert catalog_words("The 2024 Calendar of Events, a b-side & Q4 plans") == \
        ["calendar", "events", "side", "q4", "plans"]
    items = [GroundItem("c1", "The 2024 calendar", tags=("x", "of")),
             GroundItem("c2", "calendar of events")]
    df, n = document_frequencies(items)
    assert (df, n) == ({"calendar": 2, "events": 1}, 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"vocabulary_df": {"a": 1}}, "together"),
    ({"n_docs": 10}, "together"),
    ({"vocabulary_df": {}, "n_docs": 0}, "n_docs 0"),
    ({"grounder": None}, "no ground"),
])
def test_bad_teacher_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CatalogTeacher(**{"grounder": GROUNDER, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 0}, "k 0"), ({"title_weight": -1.0}, "title_weight -1.0"),
    ({"title_weight": 0, "tags_weight": 0, "category_weight": 0, "description_weight": 0},
     "every field weight is 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CatalogTeacherConfig(**kwargs)


def test_bad_requests_are_config_errors():
    teacher = CatalogTeacher(GROUNDER)
    with pytest.raises(ConfigError, match="out of range"):
        teacher.compose("github", "image", LENGTH_MAX + 1, GITHUB)
    with pytest.raises(ConfigError, match="unknown task 'video'"):
        run(teacher.generate("github", None, [("video", 5)]))
    with pytest.raises(ConfigError, match="unknown task 'video'"):
        teacher.grounding_words("github", "video", GITHUB)


# --------------------------------------------------------------------------- grounding protocol

def test_static_grounder_matches_normalised_queries_strongest_first():
    weak = GroundItem("w", "weak", weight=0.1)
    g = StaticGrounder({"Git Hub": [weak, *GITHUB]})
    assert [it.id for it in g.ground("  git   HUB ", "image")] == ["i1", "i2", "i3", "w"]
    assert [it.id for it in g.ground("git hub", "template", k=2)] == ["i1", "i2"]
    assert g.ground("gitlab", "image") == []
    with pytest.raises(ConfigError, match="k 0"):
        g.ground("git hub", "image", k=0)
    with pytest.raises(ConfigError, match="GroundItem"):
        StaticGrounder({"q": [{"id": "x", "title": "t"}]})


@pytest.mark.parametrize("kwargs, match", [
    ({"weight": 0.0}, "weight 0.0"), ({"weight": float("nan")}, "weight nan"),
    ({"source": "ad"}, "unknown source 'ad'.*click"), ({"id": ""}, "item id ''"),
    ({"tags": "logo"}, "list of strings"), ({"tags": ("logo", 7)}, r"tags\[1\] 7"),
    ({"title": None}, "title None"),
])
def test_ground_item_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GroundItem(**{"id": "x", "title": "t", **kwargs})


def test_ground_item_stores_tags_as_a_tuple():
    assert GroundItem("x", "t", tags=["a", "b"]).tags == ("a", "b")
