"""The public surface: exported names, configuration objects, the error tree and its mapping."""

from __future__ import annotations

import inspect

import httpx
import pytest

import client
from client import RetryPolicy, Timeout
from client._errors import error_from_response, map_httpx_exceptions
from client._types import split_by_tokens


def test_all_lists_exactly_the_public_names():
    public = {
        name
        for name, value in vars(client).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(client.__all__) == public
    assert len(client.__all__) == len(set(client.__all__))
    for name in client.__all__:
        assert getattr(client, name) is not None


def test_sync_and_async_clients_have_the_same_methods():
    def api(cls):
        return {
            n: inspect.signature(f)
            for n, f in vars(cls).items()
            if not n.startswith("_") and callable(f)
        }

    sync, aio = api(client.TeacherClient), api(client.AsyncTeacherClient)
    assert set(sync) - {"close"} == set(aio) - {"aclose"}
    for name in set(sync) - {"close"}:
        assert sync[name].parameters.keys() == aio[name].parameters.keys(), name
    for name in set(aio) - {"aclose"}:
        assert inspect.iscoroutinefunction(getattr(client.AsyncTeacherClient, name)), name


def test_timeout_defaults_and_forms():
    t = Timeout()
    assert (t.connect, t.read, t.write, t.pool) == (5.0, 120.0, 120.0, 120.0)
    assert t == client.DEFAULT_TIMEOUT
    assert Timeout(3) == Timeout(connect=3, read=3, write=3, pool=3)
    assert Timeout(60, connect=1).connect == 1.0 and Timeout(60, connect=1).read == 60.0
    assert Timeout(None).as_httpx() == httpx.Timeout(None)
    assert Timeout(Timeout(2.0)) == Timeout(2.0)
    with pytest.raises(ValueError, match="positive"):
        Timeout(0)
    assert repr(client.USE_CLIENT_DEFAULT) == "USE_CLIENT_DEFAULT"


def test_client_timeout_none_means_no_timeout_and_default_is_finite():
    with client.TeacherClient("http://127.0.0.1:9") as tc:
        assert tc.timeout.read is not None and tc.timeout.connect is not None
    with client.TeacherClient("http://127.0.0.1:9", timeout=None) as tc:
        assert tc.timeout == Timeout(None)


def test_retry_policy_rejects_statuses_that_never_heal():
    with pytest.raises(ValueError, match="must not be retried"):
        RetryPolicy(statuses=frozenset({429, 422}))
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
    policy = RetryPolicy(backoff_base=0.5, backoff_max=2.0)
    delays = [policy.backoff(5) for _ in range(200)]
    assert min(delays) >= 0.0 and max(delays) <= 2.0  # full jitter under the cap
    assert max(policy.backoff(0) for _ in range(200)) <= 0.5


def test_base_urls_from_env_and_checks(monkeypatch):
    monkeypatch.setenv("TC_URL", "http://a:1, http://b:2/")
    with client.TeacherClient() as tc:
        assert tc.base_urls == ["http://a:1", "http://b:2"]
    with pytest.raises(ValueError, match="http"):
        client.TeacherClient("a:1")
    with pytest.raises(ValueError, match="repeat"):
        client.TeacherClient(["http://a:1", "http://a:1"])


def test_api_key_from_env(monkeypatch):
    monkeypatch.setenv("TC_API_KEY", "k-env")
    with client.TeacherClient("http://a:1") as tc:
        assert tc._headers(admin=False) == {"Authorization": "Bearer k-env"}
    with client.TeacherClient("http://a:1", api_key="k-arg", admin_key="adm") as tc:
        assert tc._headers(admin=False) == {"Authorization": "Bearer k-arg"}
        assert tc._headers(admin=True) == {"Authorization": "Bearer adm"}


@pytest.mark.parametrize(
    ("theirs", "ours"),
    [
        (httpx.ConnectTimeout("x"), client.ConnectTimeout),
        (httpx.ReadTimeout("x"), client.ReadTimeout),
        (httpx.WriteTimeout("x"), client.WriteTimeout),
        (httpx.PoolTimeout("x"), client.PoolTimeout),
        (httpx.ConnectError("x"), client.ConnectError),
        (httpx.ReadError("x"), client.ReadError),
        (httpx.WriteError("x"), client.WriteError),
        (httpx.RemoteProtocolError("x"), client.ProtocolError),
        (httpx.ProxyError("x"), client.TransportError),
    ],
)
def test_httpx_errors_map_onto_the_tree(theirs, ours):
    with pytest.raises(ours) as info, map_httpx_exceptions("rid-1", "http://h/v1/x"):
        raise theirs
    assert type(info.value) is ours
    assert isinstance(info.value, client.TransportError)
    assert info.value.request_id == "rid-1" and info.value.__cause__ is theirs


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_json", client.BadRequestError),
        (401, "unauthorized", client.AuthenticationError),
        (403, "forbidden", client.PermissionDeniedError),
        (404, "not_found", client.NotFoundError),
        (409, "conflict", client.ConflictError),
        (409, "stale_weights", client.StaleWeightsError),
        (413, "payload_too_large", client.PayloadTooLargeError),
        (422, "validation_error", client.UnprocessableEntityError),
        (429, "queue_full", client.RateLimitError),
        (500, "internal_error", client.InternalServerError),
        (502, "bad_gateway", client.ServiceUnavailableError),
        (503, "not_ready", client.ServiceUnavailableError),
        (504, "gateway_timeout", client.ServiceUnavailableError),
    ],
)
def test_error_bodies_map_to_typed_errors(status, kind, cls):
    body = {"error": {"type": kind, "message": "m", "field": "sequences[0]"}}
    request = httpx.Request("POST", "http://h/v1/logprobs")
    response = httpx.Response(
        status, json=body, headers={"X-Request-Id": "r9", "Retry-After": "2"}, request=request
    )
    err = error_from_response(response, "sent-id")
    assert type(err) is cls and isinstance(err, client.APIStatusError)
    assert (err.status, err.type, err.message, err.field, err.request_id) == (
        status,
        kind,
        "m",
        "sequences[0]",
        "r9",
    )
    assert err.retry_after == 2.0
    assert str(status) in str(err) and "r9" in str(err)


def test_non_json_error_body_still_typed():
    request = httpx.Request("GET", "http://h/v1/model")
    response = httpx.Response(502, text="<html>bad gateway</html>", request=request)
    err = error_from_response(response, "sent-id")
    assert isinstance(err, client.ServiceUnavailableError)
    assert err.request_id == "sent-id" and "bad gateway" in err.message


def test_split_by_tokens_keeps_order_and_budget():
    assert split_by_tokens([5, 5, 5], None) == [range(3)]
    assert split_by_tokens([5, 5, 5], 15) == [range(3)]
    assert split_by_tokens([5, 5, 5], 10) == [range(0, 2), range(2, 3)]
    # an item over the budget goes alone; nothing is dropped or reordered
    chunks = split_by_tokens([3, 50, 3, 3, 3], 6)
    assert chunks == [range(0, 1), range(1, 2), range(2, 4), range(4, 5)]
    assert [i for r in chunks for i in r] == list(range(5))


def test_http_transport_hook_for_offline_tests():
    """``http_transport=`` puts any httpx transport under the pools (here httpx's MockTransport),
    so code built on the client can be tested without a server; retries still apply."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["x-request-id"])
        if len(seen) == 1:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {}})
        return httpx.Response(200, json={"ids": [1, 2, 3]})

    fast = RetryPolicy(backoff_base=0.0)
    with client.TeacherClient(
        "http://mock", http_transport=httpx.MockTransport(handler), retry=fast
    ) as tc:
        assert tc.tokenize("abc") == [1, 2, 3]
    assert len(seen) == 2 and seen[0] == seen[1]
