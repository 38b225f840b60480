"""The API description is true: Schemathesis generates requests from /openapi.json and checks
every answer against it (status codes, content types, bodies, headers, the key), and the
description itself lists the real error body, statuses and security scheme."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from plugin.config import get_settings
from plugin.service import create_app

from .fakes import FakeRewriter

KEY = "openapi-test-key"
EXAMPLES = 40  # per operation and mode


@pytest.fixture(scope="module")
def served(tmp_path_factory, intent_detector, image_index, template_index):
    """The real app over a real pipeline (fake rewriter), with an API key."""
    from plugin.pipeline import Pipeline

    from .conftest import settings_for
    from .fakes import HashEncoder

    settings = settings_for(tmp_path_factory.mktemp("openapi"),
                            service={"api_key": KEY, "deadline_ms": 200})
    pipe = Pipeline(FakeRewriter(), intent_detector, settings, image_index=image_index,
                    image_encoder=HashEncoder(), template_index=template_index)
    app = create_app(pipe)
    app.dependency_overrides[get_settings] = lambda: settings
    yield app
    pipe.batcher.close()  # the indexes are the session's


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
def test_every_answer_matches_the_description(served, mode):
    # valid requests and schema-violating ones, every operation in /openapi.json, all checks
    # (none excluded): the key is sent, and the ignored_auth check also sends requests without
    # it and expects the documented 401
    api = schemathesis.openapi.from_asgi("/openapi.json", served)
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 8  # rewrite, search, healthz x2, readyz x2, metrics, thumbnail

    for operation in operations:
        inputs = sum(len(getattr(operation, part)) for part in
                     ("body", "query", "headers", "path_parameters", "cookies"))
        if mode is GenerationMode.NEGATIVE and not inputs:
            continue  # nothing to send wrongly (the probes and /metrics take no input)

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def answers(case):
            case.call_and_validate(headers={"X-API-Key": KEY})

        answers()


def test_errors_statuses_and_key_are_documented(served):
    spec = TestClient(served).get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # FastAPI's {detail: [...]} is not what we send
    assert schemas["ErrorResponse"]["properties"]["error"]["$ref"].endswith("/ErrorDetail")
    assert spec["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": spec["components"]["securitySchemes"]["ApiKey"]["description"]}
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path in ("/v1/rewrite", "/v1/search"):
        op = spec["paths"][path]["post"]
        assert op["security"] == [{"ApiKey": []}]
        assert set(op["responses"]) == {"200", "400", "401", "413", "422", "503"}
        for status in ("400", "401", "413", "422", "503"):
            assert op["responses"][status]["content"]["application/json"]["schema"] == error_ref
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert set(spec["paths"]["/healthz"]) == {"get", "head"}
    assert set(spec["paths"]["/readyz"]) == {"get", "head"}
    assert set(spec["paths"]["/readyz"]["get"]["responses"]) == {"200", "503"}
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=1.0.0; charset=utf-8"]
    assert metrics["text/plain; version=1.0.0; charset=utf-8"]["schema"] == {"type": "string"}


def test_answers_use_the_documented_error_body(served):
    client = TestClient(served)
    no_key = client.post("/v1/rewrite", json={"query": "red dog"})
    assert no_key.status_code == 401
    assert no_key.json() == {"error": {"code": "unauthorized",
                                       "message": "missing or wrong X-API-Key header"}}
    bad = client.post("/v1/rewrite", json={"query": "red dog", "length": 99},
                      headers={"X-API-Key": KEY})
    assert bad.status_code == 422 and set(bad.json()) == {"error"}
    assert bad.json()["error"]["code"] == "invalid_request"
