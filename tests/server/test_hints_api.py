"""POST /v1/hints (AMR-SD Meta-Reflection): prompt building, parsing and the leak guard in process,
then the route end to end on the real model.

Assertions hold for any model (a random one only exercises the fallbacks): structure, counts,
kinds, peers, determinism and fallback flags that agree with each other. Generation runs on CPU,
so requests keep ``max_tokens`` small.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx
import pytest
from transformers import AutoTokenizer

from proto import HintsRequest
from proto import prompts as T
from proto.prompts import fill
from server.contexts import ContextBuilder
from server.engines.base import GenerateOutput
from server.errors import ServiceError
from server.hints import (
    PromptBuilder,
    choose_peer,
    derive_seed,
    leak_answers,
    parse_reflection,
    reflect_rollouts,
    stop_ids,
)

PROBLEM = "What is 12+7-5?"
RIGHT = "12+7=19. 19-5=14. \\boxed{14}"
WRONG = "12+7=19. 19-5=13. \\boxed{13}"
REASONS = {"leaked", "no_tag", "truncated", "empty"}


def group(**extra):
    """Correct, wrong (with feedback), correct, wrong: every rollout has another correct one."""
    return {
        "problem": PROBLEM,
        "reference_answer": "14",
        "rollouts": [
            {"text": RIGHT, "correct": True},
            {"text": WRONG, "correct": False, "feedback": "The final answer 13 is incorrect."},
            {"text": "<think>hmm, 19-5</think>" + RIGHT, "correct": True},
            {"text": "12+7=18. \\boxed{13}", "correct": False},
        ],
        **extra,
    }


def lone_group():
    """One correct rollout (no peer for it) and one wrong one (the correct one is its peer)."""
    return {
        "problem": "What is 3+4?",
        "rollouts": [
            {"text": "3+4=7. \\boxed{7}", "correct": True},
            {"text": "3+4=8. \\boxed{8}", "correct": False},
        ],
    }


# ---- in process: prompts, peers, parsing ---------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return AutoTokenizer.from_pretrained(model_path)


def test_prompt_is_the_reflection_template_through_the_chat_template(tokenizer):
    jobs = PromptBuilder(tokenizer, 4096, 48).build([group()], seed=0)
    assert [j.kind for j in jobs] == ["hint", "critique", "hint", "critique"]
    job = jobs[1]
    peer = group()["rollouts"][job.peer_index]["text"].split("</think>")[-1]
    expected = fill(
        T.REFLECTION_PROMPT,
        problem=PROBLEM,
        attempt=WRONG,
        grade="incorrect",
        peer_block=fill(T.REFLECTION_PEER_BLOCK, peer=peer),
        feedback_block=fill(
            T.REFLECTION_FEEDBACK_BLOCK, feedback="The final answer 13 is incorrect."
        ),
        kind="critique",
        focus=T.REFLECTION_FOCUS["critique"],
    )
    assert job.message == expected
    assert job.prompt_ids == ContextBuilder(tokenizer, 4096).chat_ids(expected)
    assert "<think>" not in jobs[2].message  # thinking stripped from the attempt


def test_reference_answer_never_reaches_the_prompt(tokenizer):
    secret = "98765"
    g = group(reference_answer=secret, reference_solution=f"19-5 = {secret}. \\boxed{{{secret}}}")
    jobs = PromptBuilder(tokenizer, 4096, 48).build([g, lone_group()], seed=0)
    assert all(secret not in j.message for j in jobs)
    bare = group()
    del bare["reference_answer"]
    plain = PromptBuilder(tokenizer, 4096, 48).build([bare, lone_group()], seed=0)
    assert [j.message for j in jobs] == [j.message for j in plain]


def test_peers_are_other_correct_rollouts_and_seeded():
    correct = [True, False, True, False, True]
    for seed in range(5):
        for i in range(len(correct)):
            peer = choose_peer(correct, i, seed, group=0)
            assert peer != i and correct[peer]
            assert peer == choose_peer(correct, i, seed, group=0)
    assert choose_peer([True, False], 0, 0, 0) is None
    assert choose_peer([False, False], 1, 0, 0) is None
    assert choose_peer([True, False], 1, 0, 0) == 0
    draws = {choose_peer(correct, 1, s, 0) for s in range(40)}
    assert draws == {0, 2, 4}  # uniform over the candidates, not always the first
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(1, 1, 2)


def test_long_attempts_and_peers_are_cut_on_the_right(tokenizer):
    long_right = "12+7=19. " * 300 + "\\boxed{14}"
    g = {
        "problem": PROBLEM,
        "rollouts": [
            {"text": long_right, "correct": True},
            {"text": "19-5=13. " * 300, "correct": False},
        ],
    }
    max_model_len, max_tokens = 512, 48
    jobs = PromptBuilder(tokenizer, max_model_len, max_tokens).build([g], seed=0)
    for job in jobs:
        assert len(job.prompt_ids) + max_tokens <= max_model_len
        assert len(job.prompt_ids) + max_tokens > max_model_len - 40  # filled, not emptied
        assert "Verifier: the final answer is" in job.message  # the template survives
    critique = jobs[1].message
    attempt = critique.split("Attempt: ")[1].split("\nVerifier")[0]
    peer = critique.split("from a peer: ")[1].split("\nWrite")[0]
    assert (
        attempt and "19-5=13. 19-5=13." in attempt and len(attempt) < len(g["rollouts"][1]["text"])
    )
    assert peer.startswith("12+7=19.") and "\\boxed{14}" not in peer  # the right end is cut


def test_prompt_that_cannot_fit_is_a_422(tokenizer):
    with pytest.raises(ServiceError) as err:
        PromptBuilder(tokenizer, 512, 512).build([group()], seed=0)
    assert err.value.field == "max_tokens"
    huge = {"hint": "word " * 2000 + "{attempt}"}
    with pytest.raises(ServiceError) as err:
        PromptBuilder(tokenizer, 512, 48).build([group()], seed=0, templates=huge)
    assert (
        err.value.status == 422 and err.value.field == "templates.hint"
    )  # the template is too long
    with pytest.raises(ServiceError) as err:
        PromptBuilder(tokenizer, 512, 48).build([{"problem": "", "rollouts": []}], seed=0)
    assert err.value.field == "groups[0].problem"


@pytest.mark.parametrize(
    ("generated", "kind", "finish", "text", "reason"),
    [
        ("<hint>Redo the tens.</hint>", "hint", "stop", "Redo the tens.", None),
        ("<hint> Redo the tens. </hint>trailing", "hint", "length", "Redo the tens.", None),
        (
            "<think>ok</think><critique>Check 19-5.</critique>",
            "critique",
            "stop",
            "Check 19-5.",
            None,
        ),
        # stopped on eos / on a single-token closing tag the engine drops
        ("<hint>Redo the tens.", "hint", "stop", "Redo the tens.", None),
        # over-long: cut after the last complete sentence
        (
            "<critique>Check 19-5. Then redo the bor",
            "critique",
            "length",
            "Check 19-5.",
            "truncated",
        ),
        ("<critique>Check 19-5 digit by dig", "critique", "length", "", "truncated"),
        ("Check 19-5.", "critique", "stop", "", "no_tag"),
        ("<hint>Check 19-5.</hint>", "critique", "stop", "", "no_tag"),  # the other kind's tag
        ("", "hint", "length", "", "no_tag"),
        ("<hint>  </hint>", "hint", "stop", "", "empty"),
        ("<hint>So it comes to 14.</hint>", "hint", "stop", "", "leaked"),
        ("<hint>You boxed \\boxed{14}.</hint>", "hint", "stop", "", "leaked"),
        ("<hint>Step 114 is fine.</hint>", "hint", "stop", "Step 114 is fine.", None),
    ],
)
def test_parse_reflection(generated, kind, finish, text, reason):
    r = parse_reflection(generated, kind, finish, answers=["14"], peer_index=2)
    assert (r.kind, r.text, r.reason, r.peer_index) == (kind, text, reason, 2)
    assert r.fallback == (text == "")
    assert r.leaked == (reason == "leaked")


def test_leak_answers():
    assert leak_answers({"reference_answer": " 42 ", "reference_solution": "\\boxed{7}"}) == ["42"]
    assert leak_answers({"reference_solution": "so 3+4 = \\boxed{7}."}) == ["7"]
    assert leak_answers({"reference_solution": "3+4 is 7"}) == ["7"]
    # no reference at all: the final answers of the group's correct rollouts
    g = {
        "rollouts": [
            {"text": "\\boxed{7}", "correct": True},
            {"text": "\\boxed{7.0}", "correct": True},
            {"text": "\\boxed{8}", "correct": False},
        ]
    }
    assert leak_answers(g) == ["7"]


@dataclass
class _Info:
    max_model_len: int = 512


class FakeEngine:
    """Records the generate calls and answers with scripted texts, one per item in order."""

    def __init__(self, tokenizer, texts):
        self.tokenizer, self.info, self.texts, self.calls = tokenizer, _Info(), texts, []

    async def generate(self, items):
        self.calls.append(items)
        return [
            GenerateOutput(self.tokenizer.encode(t, add_special_tokens=False), f)
            for t, f in self.texts[: len(items)]
        ]


def test_reflect_rollouts_one_batch_seeded_and_in_order(tokenizer):
    texts = [
        ("<hint>Keep the carry.</hint>", "stop"),
        ("<critique>The answer is 14.</critique>", "stop"),  # leaks
        ("<hint>Good borrow. Then sub", "length"),
        ("garbage", "length"),
        ("<hint>Nice.</hint>", "stop"),
        ("<critique>Recheck 3+4.</critique>", "stop"),
    ]
    engine = FakeEngine(tokenizer, texts)
    groups = [group(), lone_group()]
    out = asyncio.run(reflect_rollouts(engine, groups, max_tokens=48, temperature=0.5, seed=7))
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 6
    items = engine.calls[0]
    assert [it.seed for it in items] == [derive_seed(7, 0, i) for i in range(4)] + [
        derive_seed(7, 1, i) for i in range(2)
    ]
    assert len({it.seed for it in items}) == 6
    assert all(it.max_tokens == 48 and it.temperature == 0.5 for it in items)
    assert all(tokenizer.eos_token_id in it.stop_ids for it in items)
    assert stop_ids(tokenizer)["hint"] == items[0].stop_ids
    flat = [r for g in out for r in g]
    assert [len(g) for g in out] == [4, 2]
    assert [r.text for r in flat] == [
        "Keep the carry.",
        "",
        "Good borrow.",
        "",
        "Nice.",
        "Recheck 3+4.",
    ]
    assert [r.reason for r in flat] == [None, "leaked", "truncated", "no_tag", None, None]
    assert [r.peer_index for r in out[1]] == [None, 0]
    asyncio.run(reflect_rollouts(engine, groups, max_tokens=48, seed=8))
    assert [it.seed for it in engine.calls[1]] != [it.seed for it in items]


def test_reflect_rollouts_select(tokenizer):
    """Only selected rollouts are generated (advantages: those sent without a reflection); the
    others still serve as peers, and a group with none selected needs no problem."""
    engine = FakeEngine(tokenizer, [("<critique>Recheck 3+4.</critique>", "stop")] * 6)
    groups = [lone_group(), {"problem": None, "rollouts": [{"text": "x", "correct": True}]}]
    everything = asyncio.run(reflect_rollouts(engine, groups[:1], max_tokens=8, seed=3))
    out = asyncio.run(
        reflect_rollouts(engine, groups, max_tokens=8, seed=3, select=[[False, True], [False]])
    )
    assert len(engine.calls[1]) == 1
    assert engine.calls[1][0] == engine.calls[0][1]  # same prompt, peer and seed as unselected
    assert out[0][0] is None and out[1] == [None]
    assert out[0][1] == everything[0][1] and out[0][1].peer_index == 0


def test_template_overrides_reach_the_engine(tokenizer):
    engine = FakeEngine(tokenizer, [("<hint>x</hint>", "stop")] * 2)
    overrides = {"hint": "H {problem} | {grade} | {peer}", "critique": "C {attempt} {feedback}"}
    asyncio.run(reflect_rollouts(engine, [lone_group()], max_tokens=8, templates=overrides))
    decoded = [tokenizer.decode(it.prompt_ids) for it in engine.calls[0]]
    assert "H What is 3+4? | correct | " in decoded[0]
    assert "C 3+4=8. \\boxed{8} " in decoded[1]


def test_template_placeholders_are_validated():
    ok = HintsRequest.model_validate(
        {"groups": [lone_group()], "templates": {"hint": "{problem} \\boxed{} \\frac{a}{b}"}}
    )
    assert ok.templates.hint.startswith("{problem}")
    with pytest.raises(ValueError, match="answer"):
        HintsRequest.model_validate({"groups": [lone_group()], "templates": {"hint": "{answer}"}})


def test_placeholders_are_bounded_and_caller_text_is_never_expanded(tokenizer):
    """The most a template may use a placeholder, on a 200 KB attempt that is full of placeholders
    itself: the prompt is built from the cut attempt, never from 8 copies of 200 KB."""
    attempt = "{attempt}{peer_block}{problem}" * 7000  # ~200 KB
    template = "{attempt}" * T.MAX_PLACEHOLDER_USES + " Write a {kind}."
    g = {"problem": "{attempt}", "rollouts": [{"text": attempt, "correct": False}]}
    started = time.perf_counter()
    jobs = PromptBuilder(tokenizer, 1024, 48).build([g], seed=0, templates={"critique": template})
    assert time.perf_counter() - started < 30.0  # seconds of tokenising at most, not minutes
    assert len(jobs[0].prompt_ids) <= 1024 - 48
    assert jobs[0].message.endswith(" Write a critique.")
    with pytest.raises(ValueError, match="at most 8 times"):
        HintsRequest.model_validate(
            {"groups": [lone_group()], "templates": {"hint": "{attempt}" * 9}}
        )


# ---- end to end ------------------------------------------------------------------------------------


def call(server, method: str, path: str, **kw) -> httpx.Response:
    """One request to a real server (``server``) or to the app in process (``app_server``)."""
    if hasattr(server, "request"):
        return server.request(method, path, **kw)
    return httpx.request(method, server.url + path, timeout=kw.pop("timeout", 120), **kw)


def post(server, body, timeout=300):
    return call(server, "POST", "/v1/hints", json=body, timeout=timeout)


def request_body(seed=0, **extra):
    return {
        "groups": [group(), lone_group()],
        "max_tokens": 48,
        "temperature": 1.0,
        "seed": seed,
        **extra,
    }


@pytest.fixture(scope="module")
def first(server):
    res = post(server, request_body())
    assert res.status_code == 200, res.text
    return res.json()


def check_reflection(r):
    assert set(r) == {"kind", "text", "peer_index", "leaked", "fallback", "reason"}
    if r["fallback"]:
        assert r["text"] == "" and r["reason"] in REASONS
    else:
        assert r["text"] and r["text"] == r["text"].strip()
        assert r["reason"] in (None, "truncated")
        assert f"<{r['kind']}>" not in r["text"] and f"</{r['kind']}>" not in r["text"]
    assert r["leaked"] == (r["reason"] == "leaked")


def test_one_reflection_per_rollout(first):
    assert isinstance(first["weights_version"], int)
    body = request_body()
    assert [len(g["reflections"]) for g in first["groups"]] == [
        len(g["rollouts"]) for g in body["groups"]
    ]
    for g, out in zip(body["groups"], first["groups"]):
        correct = [r["correct"] for r in g["rollouts"]]
        for i, r in enumerate(out["reflections"]):
            check_reflection(r)
            assert r["kind"] == ("hint" if correct[i] else "critique")
            others = [j for j, ok in enumerate(correct) if ok and j != i]
            if others:
                assert r["peer_index"] in others
            else:
                assert r["peer_index"] is None
            if r["text"]:
                assert "14" not in r["text"].replace("114", "")  # the leak guard held


def test_same_seed_same_reflections(server, first):
    if server.backend != "hf":
        pytest.skip("bitwise reproducible sampling is an hf-engine guarantee")
    again = post(server, request_body()).json()
    assert again == first


def test_other_seed_other_reflections(server, first):
    other = post(server, request_body(seed=1)).json()
    flat = [r for g in first["groups"] for r in g["reflections"]]
    flat_other = [r for g in other["groups"] for r in g["reflections"]]
    assert [r["kind"] for r in flat] == [r["kind"] for r in flat_other]
    written = [r for r in flat + flat_other if not r["fallback"]]
    if written:  # a model that writes reflections writes (usually) different ones per seed
        assert flat != flat_other


def test_one_token_budget_falls_back(server):
    res = post(server, request_body(max_tokens=1))
    assert res.status_code == 200, res.text
    for g in res.json()["groups"]:
        for r in g["reflections"]:
            check_reflection(r)
            assert r["fallback"] and r["reason"] in ("truncated", "no_tag", "empty")


def test_template_override_is_used(server):
    huge = "word " * 5000 + "{attempt}"
    res = post(server, request_body(templates={"critique": huge}, max_tokens=4))
    assert res.status_code == 422, res.text
    assert res.json()["error"]["field"] == "templates.critique"  # the template is too long
    small = "Critique this: {attempt}. Wrap it in <critique>...</critique>."
    res = post(server, request_body(templates={"critique": small}, max_tokens=4))
    assert res.status_code == 200, res.text


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"groups": []}, "groups"),
        ({"groups": [{"problem": PROBLEM, "rollouts": []}]}, "groups[0].rollouts"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0.9}, "top_p"),
        ({"templates": {"hint": "{problem} {answer}"}}, "templates.hint"),
        ({"templates": {"critique": ""}}, "templates.critique"),
        (
            {"groups": [{"problem": PROBLEM, "rollouts": [{"text": "x"}]}]},
            "groups[0].rollouts[0].correct",
        ),
        (
            {
                "groups": [
                    {"problem": PROBLEM, "rollouts": [{"text": "x", "correct": True, "reward": 1}]}
                ]
            },
            "groups[0].rollouts[0].reward",
        ),
    ],
)
def test_bad_requests_are_422_naming_the_field(app_server, patch, field):
    res = post(app_server, {**request_body(), **patch})
    assert res.status_code == 422, res.text
    assert res.json()["error"]["field"] == field


def test_max_tokens_over_model_len(app_server):
    max_model_len = call(app_server, "GET", "/v1/model").json()["max_model_len"]
    if max_model_len > 4096:
        pytest.skip("max_tokens is capped at 4096 by the wire model")
    res = post(app_server, request_body(max_tokens=max_model_len))
    assert res.status_code == 422 and res.json()["error"]["field"] == "max_tokens"


def test_placeholder_amplification_is_a_fast_422(server):
    """A 178 KB body whose template repeats {attempt} 20,000 times once held the server for minutes
    at 4 GB; the template is refused before anything is built."""
    body = request_body(templates={"hint": "{attempt}" * 20_000})
    body["groups"][0]["rollouts"][0]["text"] = "x" * 2000
    started = time.perf_counter()
    res = post(server, body, timeout=60)
    elapsed = time.perf_counter() - started
    assert res.status_code == 422, res.text
    assert res.json()["error"]["field"] == "templates.hint"
    assert "at most 8 times" in res.json()["error"]["message"]
    assert elapsed < 10.0
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def test_stale_weights_is_409(app_server):
    res = post(app_server, request_body(min_weights_version=10**6))
    assert res.status_code == 409 and res.json()["error"]["field"] == "min_weights_version"


# ---- many seeded rollouts at once (regression: this killed the vLLM CPU engine) -------------------


def big_hints_request(rollouts: int) -> dict:
    """``rollouts`` sampled reflections of ~100-token prompts: over one scheduler step's budget."""
    steps = " ".join(f"{i}+{i}={2 * i}." for i in range(12))
    return {
        "groups": [
            {
                "problem": PROBLEM,
                "reference_answer": "14",
                "rollouts": [
                    {"text": f"{steps} \\boxed{{{14 + i % 2}}}", "correct": i % 2 == 0}
                    for i in range(rollouts)
                ],
            }
        ],
        "max_tokens": 8,
        "temperature": 1.0,
        "seed": 0,
    }


def test_forty_seeded_rollouts_in_one_call(server):
    r = httpx.post(server.url + "/v1/hints", json=big_hints_request(40), timeout=300)
    assert r.status_code == 200, r.text
    assert len(r.json()["groups"][0]["reflections"]) == 40
    again = httpx.post(server.url + "/v1/hints", json=big_hints_request(40), timeout=300)
    assert again.json()["groups"] == r.json()["groups"], "seeded: the same call, the same text"
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_concurrent_hints_and_scoring(server):
    async def mix():
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            score = {"sequences": [{"context_ids": [5] * 150, "target_ids": [6] * 150}] * 4}
            calls = [client.post("/v1/hints", json=big_hints_request(24)) for _ in range(2)]
            calls += [client.post("/v1/logprobs", json=score) for _ in range(4)]
            return await asyncio.gather(*calls)

    answers = asyncio.run(mix())
    assert [a.status_code for a in answers] == [200] * 6, [a.text[:200] for a in answers]


def test_temperature_the_engine_cannot_sample_is_a_4xx(server):
    # HintsRequest allows temperatures up to 10; vLLM samples at most at 2. Found by the fuzz:
    # vLLM's refusal surfaced as a 500.
    body = {"groups": [group()], "max_tokens": 4, "temperature": 2.5}
    r = httpx.post(server.url + "/v1/hints", json=body, timeout=120)
    if server.backend == "vllm":
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "temperature"
    else:
        assert r.status_code == 200, r.text
