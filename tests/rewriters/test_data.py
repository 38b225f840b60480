import json

import pytest

from rewriters.data import Example, append_examples, read_examples, split_by_query, write_examples
from rewriters.errors import DataError


def _ex(q="cozy cabin", p="a cozy cabin in snow", task="image"):
    return Example.make(q, task, p, "builtin", "image")


def test_invalid_lines_are_reported_with_line_numbers(tmp_path):
    good = _ex().model_dump()
    lines = [
        json.dumps(good),                                   # 1 ok
        "{not json",                                        # 2 bad JSON
        json.dumps({**good, "task": "video"}),              # 3 unknown task
        "",                                                 # 4 blank: ignored
        json.dumps({**good, "words": 9}),                   # 5 words disagree with prompt
        json.dumps({k: v for k, v in good.items() if k != "prompt"}),  # 6 missing field
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    res = read_examples(path)
    assert len(res.examples) == 1
    assert [r.line for r in res.rejects] == [2, 3, 5, 6]
    assert "not JSON" in res.rejects[0].reason
    assert res.rejects[1].reason.startswith("task")
    assert "prompt has 5 words" in res.rejects[2].reason
    assert str(res.rejects[0]).startswith(f"{path}:2:")


def test_missing_or_unreadable_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="is a directory"):
        read_examples(tmp_path)
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="cannot be read"):
        read_examples(bad)


def test_write_is_atomic_and_append_keeps_previous(tmp_path):
    path = tmp_path / "d.jsonl"
    write_examples(path, [_ex()])
    append_examples(path, [_ex(p="a log cabin at night")])
    assert [e.prompt for e in read_examples(path).examples] == [
        "a cozy cabin in snow", "a log cabin at night"]

    def boom():
        yield _ex(p="replacement")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_examples(path, boom())
    assert len(read_examples(path).examples) == 2  # old content intact
    assert [p.name for p in tmp_path.iterdir()] == ["d.jsonl"]  # no temp left behind


def test_whitespace_is_normalised_and_blank_prompt_rejected():
    e = _ex(p="  a   cozy\tcabin ")
    assert e.prompt == "a cozy cabin" and e.words == 3
    with pytest.raises(ValueError):
        Example.make("q", "image", "   ", "t", "image")


def test_split_by_query_keeps_queries_on_one_side(synthetic_examples):
    train, test = split_by_query(synthetic_examples, 0.25, seed=1)
    assert len(train) + len(test) == len(synthetic_examples)
    assert not {e.query for e in train} & {e.query for e in test}
    assert len({e.query for e in test}) == 15  # 25% of 60 queries
