"""The admission policy on its own: no server, no model."""

import pytest

from lmforge.serve.admission import Admission, Readiness
from lmforge.serve.errors import ApiError
from lmforge.serve.metrics import ServerMetrics
from lmforge.serve.settings import ServerSettings

READY = Readiness(True, "m")


def refused(admission, headers=None, status=READY, model=None, client="10.0.0.1") -> ApiError:
    with pytest.raises(ApiError) as caught:
        admission.check(headers or {}, client, status, model)
    return caught.value


def test_the_key_is_checked_first_then_the_rate_then_readiness_then_the_model():
    admission = Admission(ServerSettings(api_keys=["k1", "k2"], rate_limit=2 / 60), ServerMetrics())  # bursts of 2
    loading = Readiness(False, None)
    assert refused(admission, status=loading).status == 401  # no key: 401 even while loading
    assert refused(admission, {"authorization": "Bearer nope"}, status=loading).status == 401
    assert refused(admission, {"authorization": "Bearer k1"}, status=loading).status == 503
    admission.check({"x-api-key": "k1"}, None, READY, "m")  # the 503 above took k1's first token
    limited = refused(admission, {"authorization": "Bearer k1"})
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    admission.check({"authorization": "Bearer k2"}, None, READY, "m")  # another key has its own bucket
    assert refused(admission, {"authorization": "Bearer k2"}, model="other").code == "model_not_found"


def test_readiness_failures_say_why():
    admission = Admission(ServerSettings(), ServerMetrics())
    assert refused(admission, status=Readiness(False, None, failure="broken")).code == "model_failed"
    draining = refused(admission, status=Readiness(False, "m", draining=True))
    assert draining.status == 503 and "shutting down" in str(draining)
    assert "loading" in str(refused(admission, status=Readiness(False, None)))
    admission.check({}, None, READY, None)  # no model named: any is fine


def test_without_keys_clients_are_rate_limited_by_address():
    admission = Admission(ServerSettings(rate_limit=1 / 3600), ServerMetrics())  # burst 1
    admission.check({}, "10.0.0.1", READY, None)
    assert refused(admission, client="10.0.0.1").status == 429
    admission.check({}, "10.0.0.2", READY, None)


def test_long_requests_are_capped_while_the_queue_fills():
    metrics = ServerMetrics()
    admission = Admission(ServerSettings(max_queue=10, degrade_at=0.5, degrade_max_tokens=16), metrics)
    assert admission.budget(100, 10, 512, waiting=4) == (100, False)
    assert admission.budget(100, 10, 512, waiting=5) == (16, True)
    assert admission.budget(8, 10, 512, waiting=5) == (8, False)  # short ones go as they are
    assert admission.budget(100, 10, 512, waiting=10) == (100, False)  # full: the engine says 429
    assert admission.budget(None, 10, 512, waiting=0) == (502, False)  # unset: the rest of the window
    assert admission.degraded_headers(True)["X-Lmforge-Degraded"].startswith("max_tokens capped at 16")
    assert admission.degraded_headers(False) == {}
    assert "lmforge_requests_degraded_total 1.0" in metrics.render().decode()


@pytest.mark.parametrize("field, value, flag", [("max_batch", 0, "--max-batch"), ("max_queue", 0, "--max-queue"),
                                                ("prefill_chunk", 0, "--prefill-chunk"),
                                                ("max_seq_len", 1, "--max-seq-len")])
def test_settings_out_of_range_name_their_flag(field, value, flag, capsys):
    from lmforge.cli import main
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match=flag):
        ServerSettings(**{field: value}).check()
    assert main(["serve", flag, str(value)]) == 1  # refused before anything loads
    assert flag in capsys.readouterr().err
