"""indexers.jsonl: numbered lines, JSON objects with reject reasons, the validation one-liner."""

import pytest
from pydantic import BaseModel, ValidationError

from indexers.errors import DataError
from indexers.jsonl import first_error, json_objects, numbered_lines


class Rec(BaseModel):
    id: str
    tags: list[str] = []


def _error(obj) -> ValidationError:
    with pytest.raises(ValidationError) as got:
        Rec.model_validate(obj)
    return got.value


def test_json_objects_skip_blanks_and_give_a_reason_per_bad_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": }\n[1, 2]\n   \n{"id": "b"}\n')
    got = list(json_objects(numbered_lines(path, "catalogue")))
    assert got == [
        (1, {"id": "a"}, None),
        (3, None, "not JSON: Expecting value at column 8"),  # line 2 blank: skipped
        (4, None, "expected a JSON object, got list"),
        (6, {"id": "b"}, None),  # line 5 only spaces
    ]
    assert list(json_objects([(7, "{oops")], bad_json="bad JSON"))[0][2].startswith("bad JSON: ")


def test_numbered_lines_name_the_file_and_raise_the_callers_class(tmp_path):
    with pytest.raises(DataError, match=r"^manifest .*nope\.jsonl does not exist$"):
        list(numbered_lines(tmp_path / "nope.jsonl", "manifest"))
    bad = tmp_path / "bin.tsv"
    bad.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"^query log .*bin\.tsv cannot be read: "):
        list(numbered_lines(bad, "query log"))
    with pytest.raises(DataError, match=r"bin\.tsv is not UTF-8 text: "):
        list(numbered_lines(bad, "query log", undecodable="is not UTF-8 text"))
    assert [n for n, _ in numbered_lines(bad, "log", encoding_errors="replace")] == [1, 2]

    class TheirDataError(Exception):
        pass

    with pytest.raises(TheirDataError, match="run file"):
        list(numbered_lines(tmp_path / "nope.txt", "run file", error=TheirDataError))


def test_first_error_is_loc_colon_message():
    assert first_error(_error({})) == "id: Field required"
    assert first_error(_error({})) == first_error(_error({}).errors())  # the list works too
    assert first_error(_error({}), missing="missing") == "id: missing"
    assert first_error(_error({"id": "a", "tags": [1]})) == "tags.0: Input should be a valid string"
    # a whole-record error has no location: "record" unless told otherwise
    assert first_error(_error([1])).startswith("record: Input should be a valid dictionary")
    assert first_error(_error([1]), empty=None).startswith("Input should be")
    assert first_error(_error([1]), empty="").startswith(": Input should be")


def test_first_error_drops_location_parts_and_is_empty_without_errors():
    errors = [{"loc": ("body", "query"), "msg": "String should have at least 1 character"},
              {"loc": ("body", "k"), "msg": "later errors are not reported"}]
    assert first_error(errors, drop=("body",)) == "query: String should have at least 1 character"
    assert first_error([{"loc": ("body",), "msg": "Field required"}], drop=("body",),
                       empty=None) == "Field required"
    assert first_error([]) == ""
