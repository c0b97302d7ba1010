"""A short, seeded run of the schema-driven fuzz (benchmarks/bench_fuzz.py has the full one):
every route of the server's own OpenAPI description, valid and invalid bodies; no 5xx, errors
in OpenAI's shape, and a healthy server afterwards."""

import sys
from pathlib import Path

import pytest
from test_serve import Server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_fuzz import SERVER_ARGS, fuzz, problem  # noqa: E402

pytestmark = pytest.mark.slow  # a real server process on the embedded model


@pytest.fixture(scope="module")
def fuzzed_server():
    server = Server(*SERVER_ARGS)
    yield server
    server.stop()


def test_no_generated_request_makes_the_server_fail(fuzzed_server):
    report = fuzz(fuzzed_server.url, cases=15, seed=1)
    assert report["failures"] == [] and report["healthy_after"]
    counts = {route: sum(c.values()) for route, c in report["routes"].items()}
    assert set(counts) >= {"POST /v1/completions", "POST /v1/chat/completions", "POST /generate", "POST /tokenize",
                           "POST /detokenize", "GET /health", "GET /metrics", "GET /v1/models"}
    assert all(n >= 15 for route, n in counts.items() if route.startswith("POST"))  # valid and invalid ran
    statuses = status_totals(report)
    assert statuses[200] >= 5 and any(400 <= s < 500 for s in statuses)  # answers and refusals both


def status_totals(report) -> dict[int, int]:
    total: dict[int, int] = {}
    for counts in report["routes"].values():
        for status, n in counts.items():
            total[int(status)] = total.get(int(status), 0) + n
    return total


class _Reply:
    def __init__(self, status, text):
        self.status_code, self.text = status, text

    def json(self):
        import json
        return json.loads(self.text)


def test_the_fuzz_judges_answers_as_it_should():
    assert problem(_Reply(200, "{}")) is None
    assert problem(_Reply(400, '{"error": {"message": "bad", "type": "invalid_request_error"}}')) is None
    assert "500" in problem(_Reply(500, "boom"))
    assert "OpenAI" in problem(_Reply(422, '{"detail": []}'))
    assert "message" in problem(_Reply(404, '{"error": {"message": "", "type": "x"}}'))
