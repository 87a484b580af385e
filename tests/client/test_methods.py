"""Every client method against the real server on a real port (sync and async)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

import client
from client import AsyncTeacherClient, TeacherClient
from proto import Group, Rollout, ScoreSequence

# Separate requests may be batched differently, which moves the last float32 bits.
ATOL = 1e-5


@pytest.fixture(scope="module")
def tc(server):
    with TeacherClient(server.url) as c:
        yield c


@pytest.fixture(scope="module")
def vocab(tc):
    return tc.model().vocab_size


def make_sequences(vocab: int, n: int = 5, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {
            "context_ids": rng.integers(0, vocab, int(rng.integers(1, 30))).tolist(),
            "target_ids": rng.integers(0, vocab, int(rng.integers(0, 20))).tolist(),
        }
        for _ in range(n)
    ]


def make_groups(vocab: int, n_groups: int = 3, n_rollouts: int = 4, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    groups = []
    for g in range(n_groups):
        rollouts = [
            {
                "response_ids": rng.integers(3, vocab, int(rng.integers(1, 12))).tolist(),
                "reward": float(rng.integers(0, 2)) if i else 1.0,
                "text": f"answer {g}.{i}",
            }
            for i in range(n_rollouts)
        ]
        groups.append(
            {
                "prompt_ids": rng.integers(3, vocab, 6).tolist(),
                "problem": f"{g}+{g}=?",
                "reference_answer": str(2 * g),
                "reference_solution": f"{g}+{g}={2 * g}",
                "rollouts": rollouts,
            }
        )
    return groups


def test_health_ready_model(tc, server):
    assert tc.healthz().status == "ok"
    ready = tc.readyz()
    assert ready.status == "ready" and ready.weights_version >= 0
    tc.wait_ready(timeout=10)
    info = tc.model()
    raw = httpx.get(server.url + "/v1/model").json()
    assert info.model_dump() == raw
    assert "antisd" in info.methods


def test_tokenize_text_and_messages(tc, server):
    ids = tc.tokenize("12+34=46")
    assert ids == httpx.post(server.url + "/v1/tokenize", json={"text": "12+34=46"}).json()["ids"]
    chat = tc.tokenize(messages=[{"role": "user", "content": "1+1"}])
    assert isinstance(chat, list) and len(chat) > len(tc.tokenize("1+1"))
    with pytest.raises(ValueError, match="exactly one"):
        tc.tokenize("a", messages=[{"role": "user", "content": "b"}])


@pytest.mark.parametrize("encoding", ["base64", "json"])
def test_logprobs_equal_the_raw_wire_numbers(tc, server, vocab, encoding):
    seqs = make_sequences(vocab)
    res = tc.logprobs(seqs, top_k=3, entropy=True, encoding=encoding)
    raw = httpx.post(
        server.url + "/v1/logprobs", json={"sequences": seqs, "top_k": 3, "entropy": True}
    ).json()
    assert len(res) == len(seqs) and res.chunks == 1
    assert res.weights_version == raw["weights_version"]
    assert res.entropy_kind == raw["entropy_kind"]
    assert res.usage.model_dump() == raw["usage"]
    for seq, got, want in zip(seqs, res, raw["results"]):
        T = len(seq["target_ids"])
        assert got.logprobs.shape == (T,) and got.logprobs.dtype == np.float32
        assert got.topk_ids.shape == (T, 3) and got.topk_ids.dtype == np.int64
        assert got.topk_logprobs.shape == (T, 3) and got.entropy.shape == (T,)
        np.testing.assert_allclose(got.logprobs, np.float32(want["logprobs"]), atol=ATOL)
        np.testing.assert_allclose(got.entropy, np.float32(want["entropy"]), atol=ATOL)
        np.testing.assert_allclose(got.topk_ids.reshape(-1), np.ravel(want["topk_ids"]), atol=ATOL)
        np.testing.assert_allclose(
            got.topk_logprobs.reshape(-1), np.float32(np.ravel(want["topk_logprobs"])), atol=ATOL
        )


def test_packed_and_json_give_identical_numbers(tc, vocab):
    seqs = make_sequences(vocab, n=6, seed=1)
    packed = tc.logprobs(seqs, top_k=2, entropy=True, encoding="base64")
    plain = tc.logprobs(seqs, top_k=2, entropy=True, encoding="json")
    for a, b in zip(packed, plain):
        for name in ("logprobs", "entropy", "topk_ids", "topk_logprobs"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=ATOL)
    groups = make_groups(vocab)
    a = tc.advantages("rlsd", groups, return_details=True, encoding="base64")
    b = tc.advantages("rlsd", groups, return_details=True, encoding="json")
    for x, y in zip(a.flat(), b.flat()):
        np.testing.assert_allclose(x, y, atol=ATOL)


def test_logprobs_input_forms_and_torch(tc, vocab):
    import torch

    ctx, tgt = [5, 6, 7], [8, 9]
    forms = [
        {"context_ids": ctx, "target_ids": tgt},
        (np.array(ctx), np.array(tgt)),
        (torch.tensor(ctx), torch.tensor(tgt)),
        ScoreSequence(context_ids=ctx, target_ids=tgt),
    ]
    res = tc.logprobs(forms, as_torch=True, top_k=1)
    first = res[0].logprobs
    assert isinstance(first, torch.Tensor) and first.dtype == torch.float32
    assert isinstance(res[0].topk_ids, torch.Tensor)
    for r in res:
        assert torch.equal(r.logprobs, first)


def test_min_weights_version_passes_through(tc):
    with pytest.raises(client.StaleWeightsError) as info:
        tc.logprobs([([1], [2])], min_weights_version=10**6)
    assert info.value.status == 409 and info.value.field == "min_weights_version"
    assert tc.logprobs([([1], [2])], min_weights_version=0).weights_version >= 0


def test_request_id_is_sent_and_reported(faults):
    with TeacherClient(faults.url) as c:
        c.logprobs([([1, 2], [3])], request_id="my-call-1")
        assert faults.hits[-1] == ("/v1/logprobs", "my-call-1")
        c.logprobs([([1, 2], [3])])
        generated = faults.hits[-1][1]
        assert generated and len(generated) == 32


def test_server_validation_errors_are_typed_with_field(tc, vocab):
    with pytest.raises(client.UnprocessableEntityError) as info:
        tc.logprobs([([1, 2], [vocab + 5])])
    err = info.value
    assert err.status == 422 and err.field == "sequences[0].target_ids"
    assert err.request_id and "outside the vocabulary" in err.message
    with pytest.raises(client.UnprocessableEntityError) as info:
        tc.advantages(
            "grpo", [{"rollouts": [{"response_ids": [1, 2], "reward": 1.0}]}], params={"nope": 1}
        )
    assert info.value.field == "params.nope"
    with pytest.raises(ValueError, match="unknown method"):
        tc.advantages("ppo", [{"rollouts": []}])


def test_advantages_grpo_and_details(tc, server, vocab):
    groups = make_groups(vocab)
    res = tc.advantages("grpo", groups, return_details=True, step=3)
    assert res.method == "grpo" and res.chunks == 1
    assert [len(g) for g in res.groups] == [len(g["rollouts"]) for g in groups]
    raw = httpx.post(
        server.url + "/v1/advantages", json={"method": "grpo", "groups": groups, "step": 3}
    ).json()
    for got, want in zip(
        res.flat(), [r["advantages"] for g in raw["groups"] for r in g["rollouts"]]
    ):
        np.testing.assert_allclose(got, np.float32(want), atol=ATOL)
    for g, group in zip(res.groups, groups):
        for r, rollout in zip(g, group["rollouts"]):
            assert r.advantages.shape == (len(rollout["response_ids"]),)
            assert r.details is not None and r.details.signal.shape == r.advantages.shape
    assert res.stats.rollouts == sum(len(g["rollouts"]) for g in groups)


def test_advantages_antisd_state_round_trip_and_proto_input(tc, vocab):
    groups = make_groups(vocab, n_groups=2)
    first = tc.advantages("antisd", groups, step=0, state=None)
    assert first.state is not None and first.stats.gate is not None
    as_proto = [Group.model_validate(g) for g in groups]
    assert isinstance(as_proto[0].rollouts[0], Rollout)
    second = tc.advantages("antisd", as_proto, step=1, state=first.state, as_torch=True)
    assert second.state is not None
    assert len(second.state["warmup_history"]) == len(first.state["warmup_history"]) + 1
    assert second.groups[0][0].advantages.dtype.is_floating_point  # torch tensor


def test_hints(tc, server):
    groups = [
        {
            "problem": "2+2=?",
            "reference_answer": "4",
            "rollouts": [{"text": "2+2=4", "correct": True}, {"text": "2+2=5", "correct": False}],
        }
    ]
    res = tc.hints(groups, max_tokens=8, seed=1)
    assert len(res.groups) == 1 and len(res.groups[0].reflections) == 2
    kinds = [r.kind for r in res.groups[0].reflections]
    assert kinds == ["hint", "critique"]


def test_reward(tc, server):
    res = tc.reward(["1+1=2", "1+1=3"], labels=["2", "2"])
    assert len(res.rewards) == 2 and len(res.scores) == 2


def test_auth_errors_and_keys(strict_server, monkeypatch):
    url = strict_server.url
    monkeypatch.delenv("TC_API_KEY", raising=False)
    with TeacherClient(url) as c:
        assert c.healthz().status == "ok"  # open route
        with pytest.raises(client.AuthenticationError) as info:
            c.model()
        assert info.value.status == 401 and info.value.attempts == 1
    with TeacherClient(url, api_key="wrong") as c, pytest.raises(client.PermissionDeniedError):
        c.model()
    monkeypatch.setenv("TC_API_KEY", strict_server.api_key)
    with TeacherClient(url) as c:
        assert c.model().vocab_size > 0
        with pytest.raises(client.PermissionDeniedError):
            c.load_weights("nowhere")  # needs an admin key
    with TeacherClient(url, admin_key=strict_server.admin_key) as c:
        with pytest.raises(client.UnprocessableEntityError) as info:
            c.load_weights("nowhere")  # admin accepted; the folder does not exist
        assert info.value.field == "path"


def test_async_client_every_method(server, vocab):
    seqs = make_sequences(vocab, n=4, seed=3)
    groups = make_groups(vocab, n_groups=2)

    async def run():
        async with AsyncTeacherClient(server.url) as ac:
            assert (await ac.healthz()).status == "ok"
            assert (await ac.readyz()).status == "ready"
            await ac.wait_ready(timeout=10)
            info = await ac.model()
            ids = await ac.tokenize("1+1=2")
            lp = await ac.logprobs(seqs, top_k=2, entropy=True)
            adv = await ac.advantages("dr_grpo", groups)
            many = await asyncio.gather(*(ac.logprobs(seqs[:2]) for _ in range(4)))
            return info, ids, lp, adv, many

    info, ids, lp, adv, many = asyncio.run(run())
    with TeacherClient(server.url) as c:
        ref = c.logprobs(seqs, top_k=2, entropy=True)
        ref_adv = c.advantages("dr_grpo", groups)
        assert ids == c.tokenize("1+1=2")
    assert info.vocab_size == vocab
    # concurrent requests may share a server batch: equal up to float32 rounding
    for a, b in zip(lp, ref):
        np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.topk_ids, b.topk_ids, atol=ATOL)
    for a, b in zip(adv.flat(), ref_adv.flat()):
        np.testing.assert_allclose(a, b, atol=ATOL)  # dr_grpo: rewards only, no forward
    for res in many:
        np.testing.assert_allclose(res[1].logprobs, ref[1].logprobs, rtol=1e-5, atol=1e-5)
