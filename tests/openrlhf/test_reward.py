"""POST /get_reward through OpenRLHF's own reward clients, against a live server.

``openrlhf.utils.agent.SingleTurnAgentExecutor`` is OpenRLHF 0.11.2's rollout-side reward client:
``_fetch_rewards_via_http`` for ``--reward.remote_url http://...`` and ``_fetch_rewards_via_func``
for a reward-function file. Both are called unmodified, pointed at the server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch

import trainer.openrlhf.reward_func as reward_func_module

pytestmark = pytest.mark.openrlhf

PROMPT = "<|im_start|>user\nWhat is 12+7-5?<|im_end|>\n<|im_start|>assistant\n"
# (response, label, expected reward, answer found)
CASES = [
    ("12+7=19. 19-5=14. \\boxed{14}<|im_end|>", "14", 1.0, 1.0),  # plain label
    ("12+7=19. 19-5=13. \\boxed{13}<|im_end|>", "14", 0.0, 1.0),  # wrong
    ("I am not sure.<|im_end|>", "14", 0.0, 0.0),  # no answer at all
    ("So the answer is 14.<|im_end|>", json.dumps({"answer": "14", "problem": "12+7-5"}), 1.0, 1.0),
    ("\\boxed{\\frac{28}{2}}<|im_end|>", {"answer": 14, "solution": "..."}, 1.0, 1.0),  # dict label
    ("\\boxed{}<|im_end|>", "14", 0.0, 0.0),  # an empty box is no answer
]


@pytest.fixture(scope="module")
def agent():
    from openrlhf.utils import agent  # imports without GPU modules (aiohttp, transformers)

    return agent


def test_openrlhf_http_client_reads_our_rewards(agent, server):
    executor = agent.SingleTurnAgentExecutor(server.url + "/get_reward")
    queries = [PROMPT + response for response, *_ in CASES]
    labels = [label for _, label, *_ in CASES]
    answers = asyncio.run(executor._fetch_rewards_via_http(queries, [PROMPT] * len(CASES), labels))
    assert len(answers) == 1  # one endpoint: one request with every query
    assert answers[0]["rewards"] == [reward for *_, reward, _ in CASES]
    assert answers[0]["scores"] == answers[0]["rewards"]
    assert answers[0]["extra_logs"]["answer_found"] == [found for *_, found in CASES]


def test_a_rollout_gets_its_reward_end_to_end(agent, server, hf_model, orlhf):
    """execute() decodes prompt + response ids (special tokens kept), posts them, and the
    answer becomes Experience.rewards through SamplesGenerator, as in a run."""
    _, tokenizer = hf_model
    executor = agent.SingleTurnAgentExecutor([server.url + "/get_reward"])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 12+7-5?"}], tokenize=False, add_generation_prompt=True
    )
    out = {}
    for name, text in (("right", "12+7=19. 19-5=14. \\boxed{14}"), ("wrong", "\\boxed{15}")):
        ids = tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]

        class Engine:
            async def generate(self, prompt_ids, params, multi_modal_data=None):
                token_ids = ids  # noqa: B023 - consumed inside this iteration
                return SimpleNamespace(
                    outputs=[
                        SimpleNamespace(token_ids=token_ids, finish_reason="stop", logprobs=None)
                    ]
                )

        params = SimpleNamespace(max_tokens=64, logprobs=None)
        out[name] = asyncio.run(
            executor.execute(prompt, json.dumps({"answer": "14"}), params, 256, tokenizer, Engine())
        )
    assert out["right"]["reward"] == [1.0] and out["wrong"]["reward"] == [0.0]
    assert out["right"]["extra_logs"] == {"answer_found": [1.0]}

    gen = orlhf.samples_generator.SamplesGenerator.__new__(orlhf.samples_generator.SamplesGenerator)
    exps = [gen._process_response_into_experience(out[k], max_len=256) for k in ("right", "wrong")]
    batch = orlhf.Experience.concat_experiences(exps, tokenizer.pad_token_id)
    assert batch.rewards.flatten().tolist() == [1.0, 0.0]


def test_keyed_pool_through_the_reward_function_file(agent, strict_server, monkeypatch):
    url = strict_server.url + "/get_reward"
    body = {"query": [PROMPT + CASES[0][0]], "prompts": [PROMPT], "labels": ["14"]}
    assert httpx.post(url, json=body).status_code == 401  # what OpenRLHF's HTTP client would get

    monkeypatch.setenv("TOKENCREDIT_URLS", strict_server.url)
    monkeypatch.setenv("TOKENCREDIT_API_KEY", strict_server.api_key)
    path = Path(reward_func_module.__file__)
    executor = agent.SingleTurnAgentExecutor(str(path))  # OpenRLHF loads the file itself
    assert executor.reward_func is not None
    queries = [PROMPT + response for response, *_ in CASES]
    answers = asyncio.run(
        executor._fetch_rewards_via_func(queries, [PROMPT] * len(CASES), [c[1] for c in CASES])
    )
    assert [a["rewards"][0] for a in answers] == [reward for *_, reward, _ in CASES]


def test_bad_labels_are_422_naming_the_label(server):
    res = httpx.post(
        server.url + "/get_reward",
        json={"query": ["a", "b"], "prompts": ["", ""], "labels": ["1", ""]},
    )
    assert res.status_code == 422
    assert res.json()["error"]["field"] == "labels[1]"
    res = httpx.post(server.url + "/get_reward", json={"query": ["a"], "labels": ["1", "2"]})
    assert res.status_code == 422 and res.json()["error"]["field"] == "labels"
    res = httpx.post(server.url + "/get_reward", json={"query": ["a"], "labels": [[1]]})
    assert res.status_code == 422 and res.json()["error"]["field"] == "labels[0]"


def test_torch_rewards_shape_for_the_plugin(orlhf):
    """A reward list of one (what /get_reward answers per rollout) gives (B, 1) rewards after
    concatenation; the plugin reads one reward per row either way."""
    from trainer.openrlhf.experiences import rows_of

    exp = orlhf.Experience(
        sequences=torch.tensor([[5, 6, 7, 8]]),
        attention_mask=torch.ones(1, 4, dtype=torch.long),
        action_mask=torch.tensor([[0, 1, 1]]),
        action_log_probs=torch.tensor([[0.0, -0.5, -0.25]]),
        rewards=torch.tensor([[1.0]]),
    )
    (row,) = rows_of(exp)
    assert row.reward == 1.0
    assert row.prompt_ids.tolist() == [5, 6] and row.response_ids.tolist() == [7, 8]
    assert row.student_logprobs.tolist() == [-0.5, -0.25]
