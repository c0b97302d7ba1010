"""SLO parsing, per-request goodness and the seed's checklist arithmetic."""

import pytest

from lmforge.bench.slo import SEED_DEFAULTS, checklist, parse_slo
from lmforge.errors import LmforgeError


def test_units_and_aliases():
    slo = parse_slo("ttft=500ms, tpot=0.05s, e2e=2, tps=20, memory=80%, utilisation=70")
    assert slo.limits == {"ttft": 0.5, "tpot": 0.05, "e2e": 0.002, "tps": 20.0, "memory": 0.8, "utilization": 0.7}
    assert parse_slo(slo.to_text()).limits == slo.limits  # round trip
    assert set(parse_slo(SEED_DEFAULTS).limits) == {"ttft", "tps", "utilization", "memory"}


@pytest.mark.parametrize("text, message", [("ttft", "not KEY=VALUE"), ("speed=3", "unknown objective"),
                                           ("ttft=fast", "not a duration"), ("memory=120%", "percentage"),
                                           ("tps=-3", "positive rate"), ("", "at least one")])
def test_bad_syntax_is_a_clear_error(text, message):
    with pytest.raises(LmforgeError, match=message):
        parse_slo(text)


def test_a_request_is_good_only_when_it_meets_every_objective():
    slo = parse_slo("ttft=500ms,tps=20,itl=200ms")
    assert slo.request_is_good(0.4, 0.04, 3.0, 0.1)
    assert not slo.request_is_good(0.6, 0.04, 3.0, 0.1)     # TTFT too long
    assert not slo.request_is_good(0.4, 0.06, 3.0, 0.1)     # 1/0.06 = 16.7 tok/s < 20
    assert not slo.request_is_good(0.4, 0.04, 3.0, 0.25)    # one gap too long
    assert slo.request_is_good(0.4, None, 0.4, None)        # a one-token answer has no TPOT to judge


def test_checklist_passes_fails_and_says_what_was_not_measured():
    slo = parse_slo(SEED_DEFAULTS)
    lines = {line.objective.split()[0]: line for line in
             checklist(slo, tps=25.0, ttft_s=0.612, utilization=0.9, memory_fraction=None)}
    assert lines["TPS"].passed is True and "25.0 tok/s" in lines["TPS"].measured
    assert lines["TTFT"].passed is False and lines["TTFT"].measured == "612 ms"
    assert lines["CPU"].passed is True
    assert lines["memory"].passed is None and lines["memory"].measured == "not measured"
    edge = checklist(slo, tps=20.0, ttft_s=0.5, utilization=0.7, memory_fraction=0.8)
    assert [line.passed for line in edge] == [False] * 4  # the seed's limits are strict: TTFT < 500 ms, TPS > 20
    inside = checklist(slo, tps=20.01, ttft_s=0.499, utilization=0.71, memory_fraction=0.79)
    assert [line.passed for line in inside] == [True] * 4
