"""plugin.errors: the one table from both error families to exit and HTTP statuses."""

import pytest

from indexers import errors as ix
from plugin import errors
from rewriters import errors as rw

# class → (exit status, HTTP status, error code); the most specific row wins
CASES = [
    (rw.UdrlError, 2, 400, "bad_request"),
    (rw.ConfigError, 2, 400, "bad_request"),
    (rw.QueryTooLongError, 2, 400, "query_too_long"),
    (rw.DataError, 2, 400, "bad_request"),
    (rw.ModelError, 2, 400, "bad_request"),
    (rw.TeacherError, 2, 400, "bad_request"),
    (errors.ServiceError, 2, 400, "bad_request"),
    (errors.QueueFullError, 2, 503, "queue_full"),
    (ix.IndexerError, 2, 400, "bad_request"),
    (ix.ConfigError, 2, 400, "bad_request"),
    (ix.DataError, 2, 400, "bad_request"),
    (ix.ModelError, 2, 400, "bad_request"),
    (ix.IndexStoreError, 2, 503, "index_unavailable"),
    (ix.EncoderMismatchError, 2, 503, "index_unavailable"),
]


def _name(value):
    return f"{value.__module__}.{value.__name__}" if isinstance(value, type) else None


@pytest.mark.parametrize("cls,exit_status,status,code", CASES, ids=_name)
def test_each_class_maps_to_its_statuses(cls, exit_status, status, code):
    exc = cls("boom")
    assert isinstance(exc, errors.UDRL_ERRORS)
    assert errors.exit_code(exc) == exit_status
    assert errors.http_status(exc) == status
    assert errors.error_code(exc) == code


def test_publish_refused_is_an_index_store_error():
    exc = ix.PublishRefusedError("lost 40% of the documents", check=None)
    assert (errors.exit_code(exc), errors.http_status(exc)) == (2, 503)
    assert errors.error_code(exc) == "index_unavailable"


def test_only_a_full_queue_asks_the_client_to_retry():
    assert errors.http_headers(errors.QueueFullError("full")) == {"Retry-After": "1"}
    assert errors.http_headers(ix.IndexStoreError("down")) == {}


def test_an_error_not_the_projects_is_left_to_the_caller():
    exc = RuntimeError("a bug")
    assert not isinstance(exc, errors.UDRL_ERRORS)
    assert errors.status_of(exc) is None
    assert (errors.exit_code(exc), errors.http_status(exc), errors.error_code(exc)) == (
        1, 500, "internal")


def test_family_tuples_catch_either_package():
    assert isinstance(ix.ConfigError("k"), errors.CONFIG_ERRORS)
    assert isinstance(rw.ConfigError("k"), errors.CONFIG_ERRORS)
    assert isinstance(ix.DataError("d"), errors.DATA_ERRORS)
    assert isinstance(rw.ModelError("m"), errors.MODEL_ERRORS)
    assert not isinstance(ix.IndexStoreError("s"), errors.CONFIG_ERRORS)
    # a bad option is still a ValueError in both packages
    assert issubclass(ix.ConfigError, ValueError) and issubclass(rw.ConfigError, ValueError)


def test_the_packages_do_not_share_a_root():
    assert not issubclass(ix.IndexerError, rw.UdrlError)
    assert not issubclass(rw.UdrlError, ix.IndexerError)


def test_cli_reports_an_indexer_error_as_one_line_and_status_2(monkeypatch, capsys):
    from plugin import cli

    def boom(*a, **k):
        raise ix.IndexStoreError("no index at /x; build one with `udrl index templates`")

    monkeypatch.setattr(cli, "app", boom)
    assert cli.main(["anything"]) == 2
    assert capsys.readouterr().err == (
        "error: no index at /x; build one with `udrl index templates`\n")


@pytest.mark.parametrize("exc,status,code", [
    (ix.IndexStoreError("alias 'udrl-templates' does not exist"), 503, "index_unavailable"),
    (ix.ConfigError("k must be >= 1, got 0"), 400, "bad_request"),
    (rw.DataError("bad line"), 400, "bad_request"),
], ids=["indexers-store", "indexers-config", "rewriters-data"])
def test_service_answers_either_family_with_the_tables_status(make_pipeline, monkeypatch, exc,
                                                              status, code):
    from fastapi.testclient import TestClient

    from plugin.config import get_settings
    from plugin.service import create_app

    from .fakes import FakeRewriter

    pipe = make_pipeline(FakeRewriter())

    def refuse(*a, **k):
        raise exc

    monkeypatch.setattr(pipe, "search", refuse)
    app = create_app(pipe)
    app.dependency_overrides[get_settings] = lambda: pipe.settings
    r = TestClient(app).post("/v1/search", json={"query": "red poster"})
    assert r.status_code == status
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"] == str(exc)
