"""Schemathesis against ``/openapi.json``: no 500s, every answer as the schema documents it."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from serve_helpers import photo_bytes

from alexnet.serve.app import ServeSettings, create_app
from alexnet.serve.server import BackgroundServer

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25


@pytest.mark.slow
def test_the_api_keeps_to_its_schema(served):
    app = create_app(served, ServeSettings(max_bytes=200_000, timeout_s=10))
    with BackgroundServer(app) as url:
        while httpx.get(f"{url}/readyz").status_code != 200:
            pass
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        tested = []
        statuses: set[int] = set()
        for result in schema.get_all_operations():
            operation = result.ok()
            tested.append(operation.label)
            # valid requests, and ones that break the schema (topk=0, class=-1, wrong types)
            cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(
                GenerationMode.NEGATIVE
            )

            @given(case=cases)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case) -> None:
                statuses.add(case.call_and_validate(base_url=url, checks=CHECKS).status_code)

            run()
            if operation.method.upper() == "POST":  # and a real image, which random bytes never are
                case = operation.Case(body=photo_bytes(0), media_type="image/png")
                response = case.call_and_validate(base_url=url, checks=CHECKS)
                assert response.status_code == 200, response.text
    assert "POST /v1/predict" in tested and "POST /v1/explain" in tested
    assert "GET /v1/model" in tested and "GET /metrics" in tested
    assert {200, 400, 422} <= statuses, statuses  # the fuzzing reached the refusals too
