"""SGLang's ``/generate`` against a real tokencredit server: slime's own teacher request, read the
way slime reads it, equals ``/v1/logprobs`` and a plain transformers forward."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.protocols.common import reference_logprobs, sequences


def slime_payload(tokens: list[int]) -> dict:
    """What slime's ``on_policy_distillation._build_payload`` sends (slime/rollout/
    on_policy_distillation.py, text-only sample)."""
    return {
        "input_ids": tokens,
        "sampling_params": {"temperature": 0, "max_new_tokens": 0, "skip_special_tokens": False},
        "return_logprob": True,
        "logprob_start_len": 0,
    }


def slime_teacher_logprobs(reward: dict, response_length: int) -> np.ndarray:
    """slime's ``post_process_rewards``: drop position 0, keep the response span."""
    lps = np.array([item[0] for item in reward["meta_info"]["input_token_logprobs"][1:]])
    return lps[-response_length:]


def test_slime_request_equals_logprobs_route_and_transformers(hf_server, hf_model):
    _, tokenizer = hf_model
    seqs, lengths = sequences(tokenizer)
    for s, n in zip(seqs, lengths):
        res = httpx.post(hf_server.url + "/generate", json=slime_payload(s), timeout=120)
        assert res.status_code == 200, res.text
        reward = res.json()
        meta = reward["meta_info"]
        assert reward["text"] == "" and reward["output_ids"] == []
        assert meta["prompt_tokens"] == len(s) and meta["completion_tokens"] == 0
        assert meta["finish_reason"] == {"type": "length", "length": 0}
        first = meta["input_token_logprobs"][0]
        assert first == [None, s[0], None]
        assert [e[1] for e in meta["input_token_logprobs"]] == s
        teacher = slime_teacher_logprobs(reward, len(s) - n)
        native = httpx.post(
            hf_server.url + "/v1/logprobs",
            json={"sequences": [{"context_ids": s[:n], "target_ids": s[n:]}]},
            timeout=120,
        ).json()["results"][0]["logprobs"]
        np.testing.assert_allclose(teacher, native, atol=1e-6)
        np.testing.assert_allclose(teacher, reference_logprobs(hf_model, s)[n - 1 :], atol=1e-4)


def test_batch_start_len_top_logprobs_and_text(hf_server):
    ids = [[5, 6, 7, 8, 9], [11, 12, 13]]
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 0},
        "return_logprob": True,
        "logprob_start_len": 1,
        "top_logprobs_num": 2,
        "return_text_in_logprobs": True,
    }
    out = httpx.post(hf_server.url + "/generate", json=body, timeout=60).json()
    assert isinstance(out, list) and len(out) == 2
    for res, p in zip(out, ids):
        meta = res["meta_info"]
        # SGLang's invariant: len(input_token_logprobs) + logprob_start_len == prompt_tokens
        assert len(meta["input_token_logprobs"]) + 1 == meta["prompt_tokens"] == len(p)
        assert len(meta["input_top_logprobs"]) == len(p) - 1
        for (lp, _tid, text), top in zip(meta["input_token_logprobs"], meta["input_top_logprobs"]):
            assert lp < 0 and isinstance(text, str) and len(top) == 2
            assert top[0][0] >= top[1][0] and top[0][0] >= lp - 1e-6
    # logprob_start_len -1 (SGLang's default): the last prompt position only
    body.update(logprob_start_len=-1, top_logprobs_num=0)
    res = httpx.post(hf_server.url + "/generate", json=body, timeout=60).json()[0]
    assert len(res["meta_info"]["input_token_logprobs"]) == 1


def test_generation_greedy_with_output_logprobs(hf_server):
    body = {
        "text": "1+1=",
        "sampling_params": {"temperature": 0, "max_new_tokens": 4},
        "return_logprob": True,
    }
    res = httpx.post(hf_server.url + "/generate", json=body, timeout=60).json()
    meta = res["meta_info"]
    assert meta["completion_tokens"] == len(res["output_ids"]) == 4
    assert [e[1] for e in meta["output_token_logprobs"]] == res["output_ids"]
    # the same tokens scored by /v1/logprobs
    prompt = httpx.post(hf_server.url + "/v1/tokenize", json={"text": "1+1="}).json()["ids"]
    native = httpx.post(
        hf_server.url + "/v1/logprobs",
        json={"sequences": [{"context_ids": prompt, "target_ids": res["output_ids"]}]},
    ).json()["results"][0]["logprobs"]
    np.testing.assert_allclose([e[0] for e in meta["output_token_logprobs"]], native, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input_ids": [5, 6], "sampling_params": {"top_p": 0.5}}, "sampling_params.top_p"),
        ({"input_ids": [5, 6], "stream": True}, "stream"),
        ({"input_ids": [5, 6], "image_data": ["x"]}, "image_data"),
        ({"input_ids": [5, 6], "frobnicate": 1}, "frobnicate"),
        ({"input_ids": [5, 999999]}, "input_ids"),
        (
            {"input_ids": [5, 6], "return_logprob": True, "logprob_start_len": 2},
            "logprob_start_len",
        ),
        (
            {
                "input_ids": [5, 6],
                "return_logprob": True,
                "sampling_params": {"temperature": 0.7, "max_new_tokens": 2},
            },
            "sampling_params.temperature",
        ),
        ({"sampling_params": {"max_new_tokens": 0}}, "input_ids"),
    ],
)
def test_unsupported_or_bad_fields_are_400_naming_them(hf_server, body, param):
    res = httpx.post(hf_server.url + "/generate", json=body, timeout=60)
    assert res.status_code == 400, res.text
    assert res.json()["error"]["param"] == param
