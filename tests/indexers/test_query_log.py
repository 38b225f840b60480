"""Query logs (``query`` / ``query<TAB>clicked_id``): parsing, rejects, expansions, checksums."""

from __future__ import annotations

import json
import random

import pytest

from indexers.errors import DataError
from indexers.query_log import (
    LogReject,
    QueryLog,
    normalize_query,
    read_query_log,
    unknown_clicks,
    write_log_rejects,
)

# A hand-made log; every line annotated with what the reader must make of it.
LOG_LINES = [
    "# exported 2024-05-01",  # 1  comment: skipped
    "dog\tt1",  # 2  "dog" clicked t1
    "Dog \tt1 ",  # 3  same query after normalising; t1 again (id stripped) -> dog: t1 x2
    "dog\tt2",  # 4  dog: t2 x1
    "cat",  # 5  a search with no click
    "",  # 6  blank: skipped
    "   ",  # 7  blank (spaces only): skipped
    "  CAT  ",  # 8  "cat" again, no click -> cat searched twice
    "a\tb\tc",  # 9  REJECT: 3 fields
    "\tt1",  # 10 REJECT: empty query
    "   \tt3",  # 11 REJECT: query of spaces only
    "bird\t",  # 12 REJECT: empty id
    "bird\t  ",  # 13 REJECT: id of spaces only
    "  # indented comment",  # 14 comment: skipped
    "big   red\tdog\tt4",  # 15 REJECT: 3 fields (a TAB inside the query)
    "big  Red  Barn\tt4",  # 16 "big red barn" clicked t4
]
# queries: dog, cat, big red barn; searches: dog 3, cat 2, barn 1 = 6; clicks: 4 (t1 x2, t2, t4)
REJECTED = {9: "3 fields", 10: "query is empty", 11: "query is empty", 12: "id after the TAB",
            13: "id after the TAB", 15: "3 fields"}


@pytest.fixture()
def log_file(tmp_path):
    path = tmp_path / "queries.tsv"
    path.write_text("\n".join(LOG_LINES) + "\n", encoding="utf-8")
    return path


def test_parse_by_hand(log_file):
    log, _ = read_query_log(log_file)
    assert len(log) == 3
    assert log.texts == {"dog": "dog", "cat": "cat", "big red barn": "big Red Barn"}
    assert dict(log.searches) == {"dog": 3, "cat": 2, "big red barn": 1}
    assert log.clicked("dog") == {"t1": 2, "t2": 1}  # most clicked first
    assert log.clicked("  DOG ") == {"t1": 2, "t2": 1}  # matched after normalising
    assert log.clicked("cat") == {} and "cat" not in log.clicks  # searched, never clicked
    assert log.clicked("never searched") == {}
    assert log.clicked("BIG red   barn") == {"t4": 1}
    assert log.click_count == 4
    assert "Cat" in log and " dog" in log and "bird" not in log and 42 not in log


def test_rejects_carry_file_line_and_reason(log_file):
    _, rejects = read_query_log(log_file)
    assert [r.line for r in rejects] == sorted(REJECTED)
    for r in rejects:
        assert r.file == str(log_file)
        assert REJECTED[r.line] in r.reason, (r.line, r.reason)


def test_crlf_line_endings_parse_like_lf(tmp_path, log_file):
    crlf = tmp_path / "crlf.tsv"
    crlf.write_bytes("\r\n".join(LOG_LINES).encode() + b"\r\n")
    a, ra = read_query_log(log_file)
    b, rb = read_query_log(crlf)
    assert a.texts == b.texts and a.clicks == b.clicks and a.searches == b.searches
    assert [r.line for r in ra] == [r.line for r in rb]


def test_clicks_tie_break_on_id(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q\tzz\nq\taa\nq\tmm\nq\tmm\n")
    log, _ = read_query_log(path)
    assert list(log.clicked("q")) == ["mm", "aa", "zz"]  # mm x2, then aa, zz (x1) by id


@pytest.mark.parametrize("text,n_rejected", [("", 0), ("# only a comment\n\n", 0),
                                             ("a\tb\tc\n\tx\n", 2)])
def test_no_valid_line_is_data_error_naming_the_file(tmp_path, text, n_rejected):
    path = tmp_path / "empty.tsv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{path.name} holds no valid line \({n_rejected} rej"):
        read_query_log(path)


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_query_log(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="is a directory"):
        read_query_log(tmp_path)
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("caf\xe9\tt1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.tsv is not UTF-8"):
        read_query_log(bad)
    late = tmp_path / "late.tsv"  # the bad byte after good lines still fails the file
    late.write_bytes(b"dog\tt1\n" * 50 + b"\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_query_log(late)


def test_normalize_query():
    assert normalize_query("  Big\t RED\n barn ") == "big red barn"
    assert normalize_query("STRASSE") == normalize_query("straße")  # casefold, not lower
    assert normalize_query("   ") == ""


def test_add_rejects_an_empty_query():
    log = QueryLog()
    with pytest.raises(DataError, match="empty"):
        log.add("  \t ", "t1")
    assert len(log) == 0


# -- expansions ---------------------------------------------------------------------------

def expansion_log() -> QueryLog:
    # t1 clicked by: "red poster" x3, "Alpha" x2, "green" x2, "blue poster" x1
    # t2 clicked by: "blue poster" x2;  t9 (not in the catalogue) by "sale" x1
    events = ([("red poster", "t1")] * 3 + [("Alpha", "t1")] * 2 + [("green", "t1")] * 2
              + [("blue poster", "t1")] + [("blue poster", "t2")] * 2 + [("sale", "t9")]
              + [("no click", None)])
    random.Random(3).shuffle(events)  # the order of events must not matter
    return QueryLog.from_events(events)


def test_expansions_most_clicked_first_ties_by_query():
    got = expansion_log().expansions()
    # Alpha and green tie at 2 clicks: ordered by normalised query ("alpha" < "green");
    # the text is the query as typed ("Alpha")
    assert got == {"t1": ["red poster", "Alpha", "green", "blue poster"],
                   "t2": ["blue poster"], "t9": ["sale"]}
    assert list(got) == ["t1", "t2", "t9"]  # items sorted


def test_expansions_cap_and_id_filter():
    log = expansion_log()
    assert log.expansions(max_per_item=2) == {"t1": ["red poster", "Alpha"],
                                              "t2": ["blue poster"], "t9": ["sale"]}
    assert log.expansions(ids={"t1", "t2", "t5"}, max_per_item=1) == {
        "t1": ["red poster"], "t2": ["blue poster"]}  # t9 unknown, t5 never clicked
    assert log.expansions(ids=[]) == {}


def test_without_drops_queries_and_copies():
    log = expansion_log()
    rest = log.without(["RED  Poster", "never logged"])
    assert "red poster" not in rest and "red poster" in log  # the original is untouched
    assert rest.expansions()["t1"] == ["Alpha", "green", "blue poster"]
    # left: Alpha 2, green 2, blue poster 3 (t1 + t2 x2), sale 1, "no click" 1 search
    assert rest.summary() == {"queries": 5, "searches": 9, "clicks": 8, "clicked_items": 3}
    assert "no click" in rest  # queries without clicks are kept too
    rest.add("blue poster", "t2")  # a copy: adding to it leaves the original alone
    assert log.clicked("blue poster") == {"t2": 2, "t1": 1}
    assert rest.clicked("blue poster") == {"t2": 3, "t1": 1}
    assert log.without([]).checksum() == log.checksum()


def test_overlap_keeps_given_form_and_order():
    log = expansion_log()
    assert log.overlap(["Sale ", "unknown", "RED poster", "no  click"]) == [
        "Sale ", "RED poster", "no  click"]
    assert log.overlap([]) == []


def test_checksum_independent_of_line_order_but_not_content(tmp_path):
    lines = [ln for ln in LOG_LINES if ln and "\t" in ln and not ln.startswith("#")]
    a, b, c = (tmp_path / f"{n}.tsv" for n in "abc")
    a.write_text("\n".join(lines) + "\n")
    shuffled = lines[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != lines
    b.write_text("\n".join(shuffled) + "\n")
    c.write_text("\n".join(lines + ["dog\tt1"]) + "\n")  # one more click
    sums = [read_query_log(p)[0].checksum() for p in (a, b, c)]
    assert sums[0] == sums[1] != sums[2]
    assert len(sums[0]) == 16 and int(sums[0], 16) >= 0
    # one more search without a click changes it too
    assert QueryLog.from_events([("q", "t1")]).checksum() != QueryLog.from_events(
        [("q", "t1"), ("q", None)]).checksum()


def test_summary(log_file):
    log, _ = read_query_log(log_file)
    # 3 distinct queries; 6 search lines (dog 3, cat 2, barn 1); 4 clicks on t1, t2, t4
    assert log.summary() == {"queries": 3, "searches": 6, "clicks": 4, "clicked_items": 3}
    assert QueryLog().summary() == {"queries": 0, "searches": 0, "clicks": 0,
                                    "clicked_items": 0}


def test_unknown_clicks():
    log = expansion_log()  # 11 clicks: t1 x8, t2 x2, t9 x1
    assert unknown_clicks(log, {"t1", "t2"}) == 1
    assert unknown_clicks(log, {"t1": object()}) == 3  # a mapping works too (t2 x2 + t9)
    assert unknown_clicks(log, set()) == 11
    assert unknown_clicks(QueryLog(), set()) == 0


def test_write_log_rejects(tmp_path, log_file):
    _, rejects = read_query_log(log_file)
    out = write_log_rejects(tmp_path / "deep" / "dir" / "log_rejects.jsonl", rejects)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == sorted(REJECTED)
    assert set(rows[0]) == {"file", "line", "reason"} and rows[0]["file"] == str(log_file)
    write_log_rejects(out, [LogReject("f", 1, "x")])  # replaces, never appends
    assert out.read_text() == '{"file": "f", "line": 1, "reason": "x"}\n'
    write_log_rejects(out, [])
    assert out.read_text() == ""
