"""Candidate scoring on ``POST /v1/logprobs``: the teacher's exact log-probs of caller-chosen ids
at every position, and the tail mass outside them (hf engine); vLLM answers 400 naming the field.
"""

from __future__ import annotations

import httpx
import numpy as np
import torch

from proto import decode_packed, encode_packed


def full_logprobs(hf_model, context, target) -> torch.Tensor:
    """(len(target), V) log-softmax rows that predict each target token, by plain transformers."""
    model, _ = hf_model
    with torch.no_grad():
        logits = model(torch.tensor([context + target])).logits[0].float()
    return logits.log_softmax(-1)[len(context) - 1 : len(context) - 1 + len(target)]


def student_topk(vocab: int, L: int, C: int, seed: int) -> list[list[int]]:
    """C distinct ids per position, as a student's top-k would be."""
    rng = np.random.default_rng(seed)
    return [rng.choice(vocab, size=C, replace=False).tolist() for _ in range(L)]


def test_candidates_exact_with_tail(hf_server, hf_model):
    vocab = httpx.get(hf_server.url + "/v1/model").json()["vocab_size"]
    context, target = [1, 304, 201, 308, 277, 223, 20], [13, 21, 33, 2]
    candidates = student_topk(vocab, len(target), 5, seed=0)
    candidates[1][0] = 31  # the teacher's likely next tokens among them too
    res = httpx.post(
        hf_server.url + "/v1/logprobs",
        json={
            "sequences": [
                {"context_ids": context, "target_ids": target, "candidate_ids": candidates}
            ]
        },
        timeout=60,
    )
    assert res.status_code == 200, res.text
    out = res.json()["results"][0]
    logp_LV = full_logprobs(hf_model, context, target)  # (L, V)
    want_LC = logp_LV.gather(1, torch.tensor(candidates))  # (L, C)
    np.testing.assert_allclose(out["candidate_logprobs"], want_LC.numpy(), atol=1e-5)
    # tail = log(1 - sum_c p_c), computed here as the naive float64 difference
    tail_L = np.log1p(-np.exp(want_LC.double().numpy()).sum(-1))
    np.testing.assert_allclose(out["candidate_tail"], tail_L, atol=1e-5)
    # candidates + tail is a distribution: sum_c p_c + exp(tail) = 1
    total = np.exp(out["candidate_logprobs"]).sum(-1) + np.exp(out["candidate_tail"])
    np.testing.assert_allclose(total, 1.0, atol=1e-5)


def test_candidates_packed_and_tail_when_set_holds_almost_everything(hf_server, hf_model):
    context, target = [1, 304, 201, 308], [277, 223]
    logp_LV = full_logprobs(hf_model, context, target)
    top_LC = logp_LV.topk(50, -1).indices.int().numpy()  # (L, 50): nearly all the mass
    body = {
        "sequences": [
            {
                "context_ids": context,
                "target_ids": target,
                "candidate_ids": encode_packed(top_LC, "int32"),
            }
        ],
        "encoding": "base64",
    }
    out = httpx.post(hf_server.url + "/v1/logprobs", json=body, timeout=60).json()["results"][0]
    cand = decode_packed(out["candidate_logprobs"])
    tail = decode_packed(out["candidate_tail"])
    assert cand.shape == (2, 50) and tail.shape == (2,)
    rest = logp_LV.clone()
    rest.scatter_(1, torch.tensor(top_LC, dtype=torch.long), float("-inf"))
    want_tail = torch.logsumexp(rest, -1).numpy()  # the exact tail, not 1 - sum in float32
    np.testing.assert_allclose(tail, want_tail, rtol=1e-4)


def test_empty_target_and_mixed_requests(hf_server):
    body = {
        "sequences": [
            {"context_ids": [5, 6], "target_ids": [], "candidate_ids": []},
            {"context_ids": [5, 6], "target_ids": [7, 8]},
        ],
        "top_k": 2,
    }
    res = httpx.post(hf_server.url + "/v1/logprobs", json=body, timeout=60).json()["results"]
    assert res[0]["candidate_logprobs"] == [] and res[0]["candidate_tail"] == []
    assert "candidate_logprobs" not in res[1] or res[1]["candidate_logprobs"] is None


def test_bad_candidates_are_422_naming_the_field(hf_server):
    def post(candidates, target=(7, 8)):
        seq = {"context_ids": [5, 6], "target_ids": list(target), "candidate_ids": candidates}
        return httpx.post(hf_server.url + "/v1/logprobs", json={"sequences": [seq]}, timeout=60)

    for bad in ([[1, 1], [2, 3]], [[1, 2]], [[1], [2, 3]], [[], []], [[1, 2], [3, 10**9]]):
        res = post(bad)
        assert res.status_code == 422, (bad, res.text)
        assert res.json()["error"]["field"] == "sequences[0].candidate_ids", res.text


def test_vllm_backend_refuses_candidates_naming_the_field(server):
    seq = {"context_ids": [5, 6], "target_ids": [7, 8], "candidate_ids": [[1, 2], [3, 4]]}
    res = httpx.post(server.url + "/v1/logprobs", json={"sequences": [seq]}, timeout=60)
    if server.backend == "vllm":
        assert res.status_code == 400, res.text
        assert res.json()["error"]["field"] == "sequences[0].candidate_ids"
    else:
        assert res.status_code == 200, res.text
        assert np.shape(res.json()["results"][0]["candidate_logprobs"]) == (2, 2)
