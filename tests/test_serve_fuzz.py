"""A schema-driven fuzz of the server's OpenAPI description finds no 5xx (schemathesis + hypothesis)."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from test_serve import Server

pytestmark = pytest.mark.slow  # a real server process on the embedded model


@pytest.fixture(scope="module")
def fuzzed_server():
    # A short context keeps every generated request quick (max_tokens is capped by the window).
    server = Server("--max-seq-len", "48", "--max-queue", "256", "--request-timeout", "60")
    yield server
    server.stop()


def operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_generated_request_makes_the_server_fail(fuzzed_server, mode):
    seen = []
    for operation in operations(fuzzed_server.url):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(base_url=fuzzed_server.url, timeout=120)
            seen.append(response.status_code)
            assert response.status_code < 500, (f"{case.method} {case.path} {case.body!r} -> "
                                                f"{response.status_code} {response.text}")

        try:
            call()
        except Unsatisfiable:  # an operation without inputs (GET /health) has no invalid form
            assert mode == GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    assert len(seen) >= 15 * 4  # the operations with inputs were all exercised
    if mode == GenerationMode.NEGATIVE:
        assert any(400 <= s < 500 for s in seen)
    else:
        assert seen.count(200) >= 5  # some schema-valid requests got answers, not only 4xx
