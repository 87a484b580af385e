"""`retry_within`: a whole call tried again for a bounded time after the transport gave up.

A fake clock and sleep make the waits exact; the errors come from a real ``TeacherClient`` over
``httpx.MockTransport`` (the client's own error mapping), with the transport's retries off.
"""

from __future__ import annotations

import httpx
import pytest

from client import (
    ConnectError,
    StaleWeightsError,
    StepRetry,
    TeacherClient,
    UnprocessableEntityError,
    retry_within,
)


class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def error(status: int, type_: str = "x") -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": type_, "message": "m", "field": None}})


def client_answering(answers: list):
    """A client whose n-th request gets ``answers[n]`` (a response, or an exception raised);
    ``readyz`` is never retried by the transport, so every attempt here is retry_within's."""
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        answer = answers[min(len(calls), len(answers) - 1)]
        calls.append(request.url.path)
        if isinstance(answer, Exception):
            raise answer
        return answer

    tc = TeacherClient("http://t:1", http_transport=httpx.MockTransport(handler))
    return tc, calls


READY = httpx.Response(200, json={"status": "ready", "weights_version": 3})


def test_waits_double_until_the_call_succeeds_and_each_wait_is_reported():
    down = httpx.ConnectError("refused")
    tc, calls = client_answering([down, down, error(503), READY])
    t, waits = FakeTime(), []
    got = retry_within(
        tc.readyz,
        StepRetry(seconds=100, wait=2, wait_max=5),
        on_wait=lambda n, s, e: waits.append((n, s, type(e).__name__)),
        sleep=t.sleep,
        clock=t.clock,
    )
    assert got.weights_version == 3 and len(calls) == 4
    assert t.slept == [2, 4, 5]
    assert waits == [
        (1, 2, "ConnectError"),
        (2, 4, "ConnectError"),
        (3, 5, "ServiceUnavailableError"),
    ]


def test_gives_up_with_the_last_error_when_time_runs_out():
    tc, calls = client_answering([httpx.ConnectError("refused")])
    t = FakeTime()
    with pytest.raises(ConnectError):
        retry_within(tc.readyz, StepRetry(seconds=10, wait=4), sleep=t.sleep, clock=t.clock)
    assert t.slept == [4, 6] and len(calls) == 3  # the last wait is cut to the time left


def test_a_request_that_is_wrong_is_never_sent_again():
    tc, calls = client_answering([error(422)])
    t = FakeTime()
    with pytest.raises(UnprocessableEntityError):
        retry_within(tc.readyz, StepRetry(seconds=100), sleep=t.sleep, clock=t.clock)
    assert len(calls) == 1 and t.slept == []


def test_zero_seconds_tries_once():
    tc, calls = client_answering([error(503)])
    with pytest.raises(Exception):  # noqa: B017 - whatever the transport raised
        retry_within(tc.readyz, StepRetry(seconds=0), sleep=FakeTime().sleep)
    assert len(calls) == 1


def test_a_409_is_tried_again_only_after_recover_put_the_weights_back():
    stale = error(409, "stale_weights")
    tc, calls = client_answering([stale, READY])
    t, recovered = FakeTime(), []

    def recover(exc):
        recovered.append(exc)
        return True

    got = retry_within(
        tc.readyz, StepRetry(seconds=100), recover=recover, sleep=t.sleep, clock=t.clock
    )
    assert got.weights_version == 3 and len(recovered) == 1 and t.slept == []
    assert isinstance(recovered[0], StaleWeightsError)

    tc, calls = client_answering([stale])
    with pytest.raises(StaleWeightsError):  # nothing to recover: the 409 is the answer
        retry_within(tc.readyz, StepRetry(seconds=100), recover=lambda e: False, sleep=t.sleep)
    assert len(calls) == 1
