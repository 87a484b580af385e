"""Hostile input at the size limits: no request may freeze the process (issue: "no small request
may freeze, starve or poison the server").

Each case sends one adversarial request to a live server (the ``server`` fixture: every backend
present) while a prober asks ``/healthz`` every 50 ms on its own connection; the slowest health
answer during the request must stay under ``HEALTH_BOUND_S`` (1 s) plus the slowest answer of
the idle server just before (the shared machine's own noise). Before the fixes, a 12 KB
``/get_reward`` body blocked ``/healthz`` for 23 s and these bodies (1 MiB, the text routes'
``TC_MAX_TEXT_BODY_BYTES``) would block it for many minutes, so the bound separates the two cases
by orders of magnitude even on a loaded machine.

Also here: checkpoints with int32 or non-finite tensors are refused before the swap.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from server.middleware import json_items
from server.settings import Settings

HEALTH_BOUND_S = 1.0
REQUEST_TIMEOUT_S = 300.0
TEXT_LIMIT = 1024 * 1024  # TC_MAX_TEXT_BODY_BYTES default
N = TEXT_LIMIT - 4096  # characters of adversarial text: the body stays under the limit


def send_while_probing(bench, url: str, path: str, body: bytes):
    with bench.HealthProber(url) as prober, cf.ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            httpx.post,
            url + path,
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=REQUEST_TIMEOUT_S,
        )
        response = future.result()
        deadline = time.monotonic() + 30
        while prober.count < 1 and time.monotonic() < deadline:  # a fast answer: one probe at least
            time.sleep(0.01)
    return response, prober


def reward_body(query: str, label="4") -> bytes:
    return json.dumps({"query": [query], "labels": [label]}).encode()


def hints_body(**group) -> bytes:
    body = {
        "groups": [{"problem": "What is 2+2?", **group}],
        "max_tokens": 8,
        "temperature": 0.0,
    }
    return json.dumps(body).encode()


def grpo_body(groups: int, ids_per_rollout: int) -> bytes:
    rollouts = [{"response_ids": [7] * ids_per_rollout, "reward": float(i % 2)} for i in range(8)]
    return json.dumps({"method": "grpo", "groups": [{"rollouts": rollouts}] * groups}).encode()


def grpo_body_under_item_cap(ids_per_rollout: int) -> bytes:
    """The most groups whose body stays under the default TC_MAX_JSON_ITEMS."""
    per_group = json_items(grpo_body(2, ids_per_rollout)) - json_items(
        grpo_body(1, ids_per_rollout)
    )
    groups = (Settings().max_json_items - 100) // per_group
    body = grpo_body(groups, ids_per_rollout)
    assert Settings().max_json_items - 2 * per_group < json_items(body) <= Settings().max_json_items
    return body


CASES = {
    # /get_reward: the answer-phrase regex, \boxed{ scanning, <think>, the label parser
    "reward, spaces after 'answer is'": (
        "/get_reward",
        lambda: reward_body("The answer is" + " " * N + ","),
        {200},
    ),
    "reward, unclosed \\boxed{": ("/get_reward", lambda: reward_body("\\boxed{" * (N // 8)), {200}),
    "reward, nested \\boxed{ closed": (
        "/get_reward",
        lambda: reward_body("\\boxed{" * (N // 9) + "4" + "}" * (N // 9)),
        {200},
    ),
    "reward, <think> repeated": ("/get_reward", lambda: reward_body("<think>" * (N // 7)), {200}),
    "reward, '<' repeated (special-token scan)": (
        "/get_reward",
        lambda: reward_body("<" * N),
        {200},
    ),
    "reward, a million-digit answer": ("/get_reward", lambda: reward_body("1" * N), {200}),
    "reward, label of '$' wrappers": ("/get_reward", lambda: reward_body("4", "$" * N), {200}),
    "reward, label JSON nested 100k deep": (
        "/get_reward",
        lambda: reward_body("4", '{"a":' * 100_000 + "1" + "}" * 100_000),
        {422},
    ),
    # /v1/hints: <think> stripping of attempts, the leak guard's answer extraction
    "hints, <think> repeated in an attempt": (
        "/v1/hints",
        lambda: hints_body(
            rollouts=[{"text": "<think>" * (N // 7) + "</think> 2+2=4", "correct": True}]
        ),
        {200},
    ),
    "hints, spaces after 'answer is' in the reference solution": (
        "/v1/hints",
        lambda: hints_body(
            reference_solution="The answer is" + " " * N + ",",
            rollouts=[{"text": "2+2=5", "correct": False}],
        ),
        {200},
    ),
    "hints, unclosed \\boxed{ in a correct peer": (
        "/v1/hints",
        lambda: hints_body(
            rollouts=[
                {"text": "<think>x</think>" + "\\boxed{" * (N // 9), "correct": True},
                {"text": "2+2=5", "correct": False},
            ]
        ),
        {200, 422},  # 422 when the peer cannot be cut to fit the prompt
    ),
    # /v1/tokenize: 256 KB takes several seconds to tokenize here, all of it off the event loop
    "tokenize, 256 KB of text": (
        "/v1/tokenize",
        lambda: json.dumps({"text": "12+34=46 " * 28_000}).encode(),
        {200},
    ),
    # the scoring routes: JSON parsing holds the event loop, so TC_MAX_JSON_ITEMS bounds its cost
    "advantages, JSON id lists just under TC_MAX_JSON_ITEMS": (
        "/v1/advantages",
        lambda: grpo_body_under_item_cap(ids_per_rollout=1000),
        {200},
    ),
    "advantages, one-token rollouts just under TC_MAX_JSON_ITEMS": (
        "/v1/advantages",
        lambda: grpo_body_under_item_cap(ids_per_rollout=1),
        {200},
    ),
    "advantages, over TC_MAX_JSON_ITEMS": (
        "/v1/advantages",
        lambda: grpo_body(groups=1_000, ids_per_rollout=1000),
        {413},
    ),
    # over the text routes' limit: refused before parsing
    "reward, over TC_MAX_TEXT_BODY_BYTES": (
        "/get_reward",
        lambda: reward_body("a" * (TEXT_LIMIT + 10)),
        {413},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_health_answers_while_a_hostile_request_runs(bench, server, name):
    path, make_body, allowed = CASES[name]
    body = make_body()
    # On a machine shared with other jobs an idle health answer can itself take a while: allow
    # 1 s on top of the idle server's worst (quadratic code blocks for minutes to hours here).
    bound = HEALTH_BOUND_S + bench.idle_health_worst(server.url)
    response, prober = send_while_probing(bench, server.url, path, body)
    assert response.status_code in allowed, (name, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    assert prober.count >= 1
    assert prober.worst < bound, (
        f"{name}: /healthz took {prober.worst:.2f} s (bound {bound:.2f} s) while a "
        f"{len(body):,}-byte request ran"
    )


# ---- checkpoints ---------------------------------------------------------------------------------


def save_checkpoint(model_path: str, folder, transform) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    state = {k: transform(k, v.detach().clone()) for k, v in model.state_dict().items()}
    model.save_pretrained(folder, state_dict=state)


@pytest.mark.parametrize(
    "kind",
    ["int32", "nan", "inf"],
)
def test_checkpoints_with_non_float_or_non_finite_tensors_are_refused(server, model_path, kind):
    """An admin loading a corrupt checkpoint got 200 and then garbage or NaN served."""
    folder = server.weights_root / f"bad-{kind}"
    if not folder.exists():

        def transform(name, tensor):
            if "layers.0.mlp" not in name:
                return tensor
            if kind == "int32":
                return tensor.to(torch.int32)
            tensor.view(-1)[0] = float("nan") if kind == "nan" else float("inf")
            return tensor

        save_checkpoint(model_path, folder, transform)
    before = httpx.get(server.url + "/readyz", timeout=30).json()["weights_version"]
    res = httpx.post(server.url + "/v1/weights", json={"path": folder.name}, timeout=300)
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["type"] == "weights_load_failed" and "layers.0.mlp" in error["message"]
    assert ("I32" in error["message"]) if kind == "int32" else ("non-finite" in error["message"])
    assert httpx.get(server.url + "/readyz", timeout=30).json()["weights_version"] == before
    ok = httpx.post(
        server.url + "/v1/logprobs",
        json={"sequences": [{"context_ids": [1, 2], "target_ids": [3]}]},
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["weights_version"] == before


# ---- connection limits ---------------------------------------------------------------------------


def test_uvicorn_limits_are_the_same_everywhere():
    """serve.sh, both images and the test servers run uvicorn with the same connection limits."""
    from pathlib import Path

    from client.launcher import UVICORN_LIMITS

    repo = Path(__file__).resolve().parents[2]
    serve = " ".join((repo / "scripts" / "serve.sh").read_text().replace("\\\n", " ").split())
    assert " ".join(UVICORN_LIMITS) in serve
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (repo / "deploy" / name).read_text()
        entry = text[text.index("ENTRYPOINT") :]
        assert ", ".join(f'"{flag}"' for flag in UVICORN_LIMITS) in " ".join(
            entry.replace("\\\n", " ").split()
        ), name
