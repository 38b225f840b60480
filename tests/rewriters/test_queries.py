"""Query sources: the built-in generator and seed files."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from rewriters.commands import INTENTS
from rewriters.errors import ConfigError, DataError
from rewriters.queries import QuerySpec, builtin_capacity, builtin_queries, read_queries


def test_builtin_queries_are_distinct_and_deterministic():
    a = builtin_queries(500, seed=3)
    assert a == builtin_queries(500, seed=3)
    assert a != builtin_queries(500, seed=4)
    assert len({q.query.lower() for q in a}) == 500
    for q in a:
        assert q.query == " ".join(q.query.split()) and q.query == q.query.lower()
        assert 1 <= len(q.query.split()) <= 10


def test_builtin_queries_mix_intents_40_40_20():
    counts = Counter(q.intent for q in builtin_queries(1000))
    assert counts == {"image": 400, "template": 400, "both": 200}
    assert set(counts) <= set(INTENTS)


def test_builtin_queries_reach_3000_distinct():
    assert builtin_capacity() >= 3000
    qs = builtin_queries(3000, seed=1)
    assert len({q.query.lower() for q in qs}) == 3000
    # a rich vocabulary: many different first words, not a handful of templates
    assert len({q.query.split()[0] for q in qs}) > 300


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "10"])
def test_builtin_queries_rejects_bad_n(n):
    with pytest.raises(ConfigError, match="at least 1"):
        builtin_queries(n)


def test_builtin_queries_rejects_n_beyond_capacity():
    with pytest.raises(ConfigError, match=str(builtin_capacity())):
        builtin_queries(builtin_capacity() + 1)


def test_read_queries_parses_intents_comments_and_duplicates(tmp_path, caplog):
    path = tmp_path / "seed.txt"
    path.write_text(
        "# seed queries\n"
        "golden retriever puppy on a beach\timage\n"
        "\n"
        "birthday party invitation\tTemplate\n"  # labels are case-insensitive
        "  coffee   shop  \n"  # whitespace normalised, no intent
        "yoga\t\n"  # empty label = unknown intent
        "Coffee Shop\tboth\n",  # duplicate of line 5, dropped
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="rewriters.queries"):
        got = read_queries(path)
    assert got == [
        QuerySpec("golden retriever puppy on a beach", "image"),
        QuerySpec("birthday party invitation", "template"),
        QuerySpec("coffee shop", None),
        QuerySpec("yoga", None),
    ]
    assert "seed.txt:7" in caplog.text and "line 5" in caplog.text


def test_read_queries_bad_intent_names_file_line_and_allowed(tmp_path):
    path = tmp_path / "seed.txt"
    path.write_text("# header\nyoga\tboth\nwedding menu\tposter\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"seed\.txt:3: unknown intent 'poster'; "
                                        r"allowed: image, template, both"):
        read_queries(path)


def test_read_queries_too_many_fields(tmp_path):
    path = tmp_path / "seed.txt"
    path.write_text("yoga\tboth\textra\n", encoding="utf-8")
    with pytest.raises(DataError, match="seed.txt:1"):
        read_queries(path)


def test_read_queries_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_queries(tmp_path / "nope.txt")


def test_read_queries_directory_and_undecodable(tmp_path):
    with pytest.raises(DataError, match="cannot be read"):
        read_queries(tmp_path)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot be read"):
        read_queries(bad)


def test_read_queries_empty_file(tmp_path):
    path = tmp_path / "seed.txt"
    path.write_text("# nothing here\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no queries"):
        read_queries(path)
