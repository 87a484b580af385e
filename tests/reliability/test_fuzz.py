"""Fuzzing: no input makes the server answer 5xx, hang, or answer anything but the JSON error
shape of docs/api.md.

Three layers against a live server (the ``server`` fixture: every backend present):

1. schemathesis generates requests for every operation of the committed OpenAPI schema
   (``proto/openapi.json``), both schema-valid and schema-violating ones;
2. hypothesis strategies that stay inside the schema *and* the model's limits (ids in the
   vocabulary, lengths under ``max_model_len``), so requests reach the engine and the credit
   math instead of stopping at validation, with NaN and infinities in every float;
3. hand-written hostile inputs: deep nesting, huge numbers, NaN literals, wrong content types,
   empty and non-UTF-8 bodies, lone surrogates, 10k empty sequences, limits hit exactly.

Throughout every test, ``/healthz`` is asked every 50 ms and must answer within 1 s (plus the
idle server's own worst, the shared machine's noise): no input may freeze the process.

Examples are derandomised (the same requests on every run); ``TC_FUZZ_EXAMPLES`` scales the
example counts (default 20 per operation and mode) and ``TC_FUZZ_SEED`` picks other examples.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from proto import decode_packed

REPO = Path(__file__).resolve().parents[2]
SCHEMA = schemathesis.openapi.from_path(REPO / "proto" / "openapi.json")
# The push handshake makes the server connect to the address in the request (the trainer's
# store): generated addresses must never become connections from a test (loopback only), so the
# transfer routes are tested with real trainers in tests/weights_push instead.
OPERATIONS = [
    op
    for op in (result.ok() for result in SCHEMA.get_all_operations())
    if not op.path.startswith("/v1/weights/transfer/")
]
EXAMPLES = int(os.environ.get("TC_FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("TC_FUZZ_SEED")
TIMEOUT = 120.0  # seconds; a request that takes longer is a hang
ERROR_STATUSES = {400, 401, 403, 404, 405, 409, 413, 415, 422, 429, 503}
METHODS = ("grpo", "dr_grpo", "opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd")


HEALTH_BOUND_S = 1.0  # besides "no 5xx": /healthz answers within this throughout (issue 16)


@pytest.fixture(scope="module")
def idle_health(bench, server) -> float:
    """The idle server's slowest health answer over a second: the shared machine's noise."""
    return bench.idle_health_worst(server.url)


@pytest.fixture(autouse=True)
def health_answers_throughout(request, bench):
    """Every test against a live server runs with /healthz asked every 50 ms; the slowest answer
    must stay under HEALTH_BOUND_S plus the idle server's own worst."""
    if "server" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("server")
    noise = request.getfixturevalue("idle_health")
    with bench.HealthProber(server.url) as prober:
        yield
    assert prober.worst < HEALTH_BOUND_S + noise, (
        f"/healthz took {prober.worst:.2f} s during this test (bound {HEALTH_BOUND_S + noise:.2f} s)"
    )


def fuzz_settings(examples: int):
    wrap = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=SEED is None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure prints its request
    )
    if SEED is None:
        return wrap
    return lambda f: hypothesis_seed(int(SEED))(wrap(f))


def _no_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json(body: bytes):
    """Parse as a strict JSON reader would: ``NaN``/``Infinity`` are errors, not floats."""
    return json.loads(body, parse_constant=_no_constant)


def check_finite_packed(value) -> None:
    """Every packed float array in a response decodes to finite numbers."""
    if isinstance(value, dict):
        if set(value) == {"dtype", "shape", "data"} and value["dtype"] != "int32":
            assert np.isfinite(decode_packed(value)).all(), value
        else:
            for item in value.values():
                check_finite_packed(item)
    elif isinstance(value, list):
        for item in value:
            check_finite_packed(item)


def check_answer(status: int, content_type: str, body: bytes, what: str) -> None:
    """docs/api.md: never a 5xx; errors are JSON ``{"error": {"type", "message", "field"}}``
    (``param`` for ``field`` on the vLLM-compatible routes, docs/protocols.md);
    JSON bodies are strict JSON (no NaN or Infinity, packed or not)."""
    assert status < 500, f"{what} -> {status}: {body[:500]!r}"
    if content_type.startswith("application/json"):
        check_finite_packed(strict_json(body))
    if status >= 400:
        assert status in ERROR_STATUSES, f"{what} -> {status}"
        assert content_type.startswith("application/json"), f"{what} -> {content_type}"
        error = json.loads(body)["error"]
        assert isinstance(error["type"], str) and error["type"], what
        assert isinstance(error["message"], str) and error["message"], what
        # The vLLM/SGLang-compatible routes name the field `param`, as vLLM does.
        named = error["field"] if "field" in error else error["param"]
        assert named is None or isinstance(named, str), what


def has_input(operation) -> bool:
    """Whether there is anything to make invalid (parameterless GETs have no negative cases)."""
    return bool(len(operation.body)) or any(
        len(getattr(operation, where)) for where in ("query", "headers", "path_parameters")
    )


CASES = [
    (op, mode)
    for op in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or has_input(op)
]


@pytest.mark.parametrize(
    "operation,mode",
    CASES,
    ids=[f"{op.method.upper()} {op.path} {mode.value}" for op, mode in CASES],
)
def test_schema_fuzz(server, operation, mode):
    """Every operation of the schema, schemathesis-generated requests: zero 5xx."""
    examples = EXAMPLES if has_input(operation) else 3
    statuses: dict[int, int] = {}

    @fuzz_settings(examples)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        if operation.path == "/v1/hints" and isinstance(case.body, dict):
            # Long generations only cost time here (they are bounded by the model): at most 8
            # tokens, also when the field is left out (256 by default).
            tokens = case.body.get("max_tokens", 256)
            if isinstance(tokens, int | float) and not isinstance(tokens, bool) and tokens > 8:
                case.body["max_tokens"] = 8
        response = case.call(base_url=server.url, timeout=TIMEOUT)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        content_type = response.headers.get("content-type") or [""]  # schemathesis: lists
        check_answer(
            response.status_code,
            content_type[0] if isinstance(content_type, list) else content_type,
            response.content,
            case.as_curl_command()[:1000],
        )

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.NEGATIVE:
            pytest.skip("the schema admits every body of this operation: nothing is invalid")
        raise
    assert statuses, "no request was sent"
    assert_healthy(server.url)


# ---- generated requests inside the model's limits ------------------------------------------------


@pytest.fixture(scope="module")
def model_info(server):
    return httpx.get(server.url + "/v1/model", timeout=30).json()


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.floats(min_value=-30.0, max_value=0.0),
)


def ids(vocab: int, min_size: int = 0, max_size: int = 12):
    return st.lists(st.integers(0, vocab - 1), min_size=min_size, max_size=max_size)


@st.composite
def logprobs_requests(draw, vocab: int, max_top_k: int):
    seqs = draw(
        st.lists(
            st.fixed_dictionaries({"context_ids": ids(vocab, 1), "target_ids": ids(vocab)}),
            min_size=1,
            max_size=6,
        )
    )
    return {
        "sequences": seqs,
        "top_k": draw(st.integers(0, max_top_k)),
        "entropy": draw(st.booleans()),
        "temperature": draw(st.sampled_from([1.0, 1.0, 0.5, 2.0, 1e-3, 100.0])),
        "encoding": draw(st.sampled_from(["json", "base64"])),
    }


TEXT = st.text(max_size=40)  # any code point but surrogates: emoji, NUL, RTL marks...


@st.composite
def rollouts(draw, vocab: int):
    response = draw(ids(vocab, 0, 8))
    n = len(response)
    rollout = {"response_ids": response, "reward": draw(FLOATS | st.sampled_from([0.0, 1.0]))}
    for name in ("student_logprobs", "teacher_logprobs", "teacher_entropy"):
        if draw(st.booleans()):
            rollout[name] = draw(st.lists(FLOATS, min_size=n, max_size=n))
    for name in ("text", "feedback", "reflection"):
        if draw(st.booleans()):
            rollout[name] = draw(TEXT)
    return rollout


@st.composite
def advantages_requests(draw, vocab: int):
    groups = []
    for _ in range(draw(st.integers(1, 3))):
        group = {"rollouts": draw(st.lists(rollouts(vocab), min_size=1, max_size=4))}
        if draw(st.booleans()):
            group["prompt_ids"] = draw(ids(vocab, 1, 10))
        for name in ("problem", "reference_answer", "reference_solution"):
            if draw(st.booleans()):
                group[name] = draw(TEXT)
        groups.append(group)
    return {
        "method": draw(st.sampled_from(METHODS)),
        "groups": groups,
        "step": draw(st.integers(0, 2**62)),
        "seed": draw(st.integers(-(2**70), 2**70)),
        "state": draw(
            st.none()
            | st.dictionaries(st.text(max_size=8), st.integers() | FLOATS | TEXT, max_size=3)
        ),
        "encoding": draw(st.sampled_from(["json", "base64"])),
        "return_details": draw(st.booleans()),
    }


def post(url: str, path: str, body) -> httpx.Response:
    # allow_nan: NaN and infinities go out as the NaN/Infinity literals Python's parser reads.
    content = json.dumps(body, allow_nan=True).encode()
    return httpx.post(
        url + path, content=content, headers={"Content-Type": "application/json"}, timeout=TIMEOUT
    )


def test_logprobs_fuzz_inside_limits(server, model_info):
    @fuzz_settings(EXAMPLES + EXAMPLES // 2)
    @given(body=logprobs_requests(model_info["vocab_size"], model_info["max_top_k"]))
    def run(body):
        res = post(server.url, "/v1/logprobs", body)
        check_answer(res.status_code, res.headers["content-type"], res.content, json.dumps(body))
        if res.status_code != 200:  # vllm: temperature != 1 is a 422
            assert res.status_code == 422 and server.backend == "vllm", res.text
            return
        results = res.json()["results"]
        assert len(results) == len(body["sequences"])
        for seq, out in zip(body["sequences"], results):
            n = len(seq["target_ids"])
            logprobs = out["logprobs"]
            got = logprobs["shape"] if isinstance(logprobs, dict) else [len(logprobs)]
            assert got == [n]

    run()
    assert_healthy(server.url)


def test_advantages_fuzz_inside_limits(server, model_info):
    @fuzz_settings(EXAMPLES + EXAMPLES // 2)
    @given(body=advantages_requests(model_info["vocab_size"]))
    def run(body):
        res = post(server.url, "/v1/advantages", body)
        check_answer(res.status_code, res.headers["content-type"], res.content, json.dumps(body))
        if res.status_code == 200:
            out = res.json()
            for group, got in zip(body["groups"], out["groups"]):
                for rollout, credit in zip(group["rollouts"], got["rollouts"]):
                    adv = credit["advantages"]
                    shape = adv["shape"] if isinstance(adv, dict) else [len(adv)]
                    assert shape == [len(rollout["response_ids"])]

    run()
    assert_healthy(server.url)


# ---- hand-written hostile inputs ---------------------------------------------------------------


def seq(context=(1, 2, 3), target=(4, 5)):
    return {"context_ids": list(context), "target_ids": list(target)}


def group(rewards=(1.0, 0.0), **extra):
    rollouts = [{"response_ids": [5, 6], "reward": r} for r in rewards]
    return {"prompt_ids": [1, 2], "problem": "1+1=", "rollouts": rollouts, **extra}


def raw(text: str) -> bytes:
    return text.encode()


def hostile_cases(vocab: int, max_len: int, max_top_k: int):
    """(name, path, body bytes, content type, allowed statuses)."""
    J = "application/json"
    ok_or_4xx = None  # any status below 500 with a well-formed error
    lp = "/v1/logprobs"
    adv = "/v1/advantages"
    big = "1" + "0" * 400
    nested = 50_000
    return [
        # deep nesting
        ("nested arrays", lp, raw("[" * nested + "]" * nested), J, {400, 422}),
        # 50,000 objects are over TC_MAX_JSON_ITEMS (32 items each): refused before parsing (413)
        ("nested objects", lp, raw('{"a":' * nested + "1" + "}" * nested), J, {400, 413, 422}),
        (
            "nested state",
            adv,
            raw(
                json.dumps({"method": "grpo", "groups": [group()]})[:-1]
                + ',"state":'
                + '{"a":' * nested
                + "1"
                + "}" * nested
                + "}"
            ),
            J,
            {400, 413, 422},
        ),
        (
            "nested state, shallower",
            adv,
            raw(
                json.dumps({"method": "grpo", "groups": [group()]})[:-1]
                + ',"state":'
                + '{"a":' * 400
                + "1"
                + "}" * 400
                + "}"
            ),
            J,
            ok_or_4xx,
        ),
        # huge numbers
        ("id beyond int64", lp, raw(json.dumps({"sequences": [seq((10**30,))]})), J, {422}),
        ("id 2**63", lp, raw(json.dumps({"sequences": [seq((2**63,))]})), J, {422}),
        ("id -2**63-1", lp, raw(json.dumps({"sequences": [seq((-(2**63) - 1,))]})), J, {422}),
        ("id = vocab", lp, raw(json.dumps({"sequences": [seq((vocab,))]})), J, {422}),
        ("id -1", lp, raw(json.dumps({"sequences": [seq((-1,))]})), J, {422}),
        ("id 1.5", lp, raw('{"sequences":[{"context_ids":[1.5],"target_ids":[]}]}'), J, {422}),
        ("id 1e400", lp, raw('{"sequences":[{"context_ids":[1e400],"target_ids":[]}]}'), J, {422}),
        ("5000-digit int", lp, raw('{"sequences":[{"context_ids":[' + "9" * 5000 + "]}]}"), J, {400, 422}),
        ("top_k 10**20", lp, raw(json.dumps({"sequences": [seq()], "top_k": 10**20})), J, {422}),
        ("temperature 1e400", lp, raw('{"sequences":[' + json.dumps(seq()) + '],"temperature":1e400}'), J, {422}),
        ("temperature 5e-324", lp, raw('{"sequences":[' + json.dumps(seq()) + '],"temperature":5e-324,"entropy":true,"top_k":3}'), J, {422}),
        ("temperature NaN", lp, raw('{"sequences":[' + json.dumps(seq()) + '],"temperature":NaN}'), J, {422}),
        ("min_weights_version 10**20", lp, raw(json.dumps({"sequences": [seq()], "min_weights_version": 10**20})), J, {422}),
        ("min_weights_version 2**62", lp, raw(json.dumps({"sequences": [seq()], "min_weights_version": 2**62})), J, {409}),
        ("seed 10**30", adv, raw(json.dumps({"method": "hsd", "seed": 10**30, "groups": [group()]})), J, ok_or_4xx),
        ("seed -10**30", adv, raw(json.dumps({"method": "antisd", "seed": -(10**30), "groups": [group()]})), J, ok_or_4xx),
        ("step 10**30", adv, raw(json.dumps({"method": "antisd", "step": 10**30, "groups": [group()]})), J, ok_or_4xx),
        ("reward 400 digits", adv, raw('{"method":"grpo","groups":[{"rollouts":[{"response_ids":[1],"reward":' + big + "}]}]}"), J, {422}),
        ("rewards +-1e308", adv, raw(json.dumps({"method": "grpo", "groups": [group((1e308, -1e308))]})), J, ok_or_4xx),
        # NaN / Infinity literals in float arrays
        ("NaN rewards", adv, raw('{"method":"grpo","groups":[{"rollouts":[{"response_ids":[1],"reward":NaN},{"response_ids":[1],"reward":Infinity}]}]}'), J, {422}),
        *[
            (
                f"NaN/Infinity log-probs, {method}",
                adv,
                raw(
                    '{"method":"METHOD","groups":[{"prompt_ids":[1],"problem":"p","reference_answer":"2",'
                    '"reference_solution":"s","rollouts":['
                    '{"response_ids":[1,2,3],"reward":1.0,"student_logprobs":[NaN,Infinity,-Infinity],'
                    '"teacher_logprobs":[-Infinity,1e400,NaN],"teacher_entropy":[NaN,-1,Infinity],'
                    '"reflection":"r"},'
                    '{"response_ids":[4],"reward":0.0,"student_logprobs":[-Infinity],'
                    '"teacher_logprobs":[NaN],"teacher_entropy":[Infinity],"reflection":"r"}]}]}'
                    .replace("METHOD", method)
                ),
                J,
                {422},
            )
            for method in METHODS
        ],
        ("packed NaN floats", adv, raw(json.dumps({"method": "opd", "groups": [{"prompt_ids": [1], "rollouts": [{"response_ids": [1], "reward": 1.0, "student_logprobs": {"dtype": "float32", "shape": [1], "data": "AADAfw=="}, "teacher_logprobs": {"dtype": "bfloat16", "shape": [1], "data": "gH8="}}]}]})), J, {422}),
        # non-finite numbers name their field (issue 16): NaN, Infinity, 1e309 (read as inf)
        *[
            (f"{label} reward", adv, raw('{"method":"grpo","groups":[{"rollouts":[{"response_ids":[1],"reward":X},{"response_ids":[1],"reward":0}]}]}'.replace("X", literal)), J, {422})
            for label, literal in (("NaN", "NaN"), ("Infinity", "Infinity"), ("1e309", "1e309"), ("-1e309", "-1e309"))
        ],
        ("1e309 student log-prob", adv, raw('{"method":"opd","groups":[{"prompt_ids":[1],"rollouts":[{"response_ids":[1],"reward":1,"student_logprobs":[1e309]}]}]}'), J, {422}),
        ("-Infinity teacher log-prob", adv, raw('{"method":"opsd","groups":[{"prompt_ids":[1],"rollouts":[{"response_ids":[1],"reward":1,"teacher_logprobs":[-Infinity],"student_logprobs":[-1]}]}]}'), J, {422}),
        ("packed +inf float32", adv, raw(json.dumps({"method": "opd", "groups": [{"prompt_ids": [1], "rollouts": [{"response_ids": [1], "reward": 1.0, "student_logprobs": {"dtype": "float32", "shape": [1], "data": "AACAfw=="}}]}]})), J, {422}),
        ("lam_max NaN", adv, raw('{"method":"antisd","params":{"lam_max":NaN},"groups":[' + json.dumps(group()) + "]}"), J, {422}),
        ("lam_max 1e309", adv, raw('{"method":"antisd","params":{"lam_max":1e309},"groups":[' + json.dumps(group()) + "]}"), J, {422}),
        ("state Infinity", adv, raw('{"method":"antisd","state":{"ema":Infinity},"groups":[' + json.dumps(group()) + "]}"), J, {422}),
        ("temperature 1e-300", lp, raw(json.dumps({"sequences": [seq()], "temperature": 1e-300})), J, {422}),
        ("temperature 1e309", lp, raw('{"sequences":[' + json.dumps(seq()) + '],"temperature":1e309}'), J, {422}),
        # strict wire types (issue 16): no coercion
        ("true as a token id", lp, raw('{"sequences":[{"context_ids":[true],"target_ids":[]}]}'), J, {422}),
        ("1.0 as a token id", lp, raw('{"sequences":[{"context_ids":[1.0],"target_ids":[]}]}'), J, {422}),
        ('"5" as top_k', lp, raw('{"sequences":[' + json.dumps(seq()) + '],"top_k":"5"}'), J, {422}),
        ('"yes" as entropy', lp, raw('{"sequences":[' + json.dumps(seq()) + '],"entropy":"yes"}'), J, {422}),
        ('"yes" as correct', "/v1/hints", raw(json.dumps({"groups": [{"problem": "1+1", "rollouts": [{"text": "2", "correct": "yes"}]}], "max_tokens": 4})), J, {422}),
        ('"1" as a reward', adv, raw(json.dumps({"method": "grpo", "groups": [{"rollouts": [{"response_ids": [1], "reward": "1"}]}]})), J, {422}),
        ("weights version 2**63", "/v1/weights", raw(json.dumps({"path": "x", "version": 2**63})), J, {422}),
        ("weights version 10**30", "/v1/weights", raw(json.dumps({"path": "x", "version": 10**30})), J, {422}),
        # nested structures and placeholder-laden text
        ("label: JSON text nested 100k deep", "/get_reward", raw(json.dumps({"query": ["4"], "labels": ['{"a":' * 100_000 + "1" + "}" * 100_000]})), J, {422}),
        ("label: JSON text of nested arrays", "/get_reward", raw(json.dumps({"query": ["4"], "labels": ["{" + '"answer":' + "[" * 100_000 + "]" * 100_000 + "}"]})), J, {422}),
        ("label: object 500 deep", "/get_reward", raw('{"query":["4"],"labels":[' + '{"answer":' * 500 + '"4"' + "}" * 500 + "]}"), J, {422}),
        ("params 200 deep", adv, raw('{"method":"grpo","params":' + '{"a":' * 200 + "1" + "}" * 200 + ',"groups":[' + json.dumps(group()) + "]}"), J, {422}),
        ("placeholders in a problem", adv, raw(json.dumps({"method": "opsd", "groups": [group(reference_solution="{solution}" * 2000, problem="{problem}{solution}{attempt}" * 2000)]})), J, ok_or_4xx),
        ("placeholders in hints text", "/v1/hints", raw(json.dumps({"groups": [{"problem": "{attempt}{peer}{feedback}" * 1000, "rollouts": [{"text": "{problem}" * 1000, "correct": True, "feedback": "{attempt}" * 1000}]}], "max_tokens": 4})), J, ok_or_4xx),
        # pathological text on the text routes (linear parsers, issue 16)
        ("reward: spaces after 'answer is'", "/get_reward", raw(json.dumps({"query": ["the answer is" + " " * 200_000 + ","], "labels": ["2"]})), J, {200}),
        ("reward: unclosed boxes", "/get_reward", raw(json.dumps({"query": ["\\boxed{" * 30_000], "labels": ["2"]})), J, {200}),
        ("reward: <think> repeated", "/get_reward", raw(json.dumps({"query": ["<think>" * 30_000], "labels": ["2"]})), J, {200}),
        ("hints: <think> repeated", "/v1/hints", raw(json.dumps({"groups": [{"problem": "1+1", "rollouts": [{"text": "<think>" * 30_000 + "</think>2", "correct": True}]}], "max_tokens": 4})), J, {200}),
        # packed arrays that lie
        ("packed shape 10**30", lp, raw(json.dumps({"sequences": [{"context_ids": {"dtype": "int32", "shape": [10**30], "data": "AAAA"}, "target_ids": []}]})), J, {422}),
        ("packed shape [2**32, 2**32]", lp, raw(json.dumps({"sequences": [{"context_ids": {"dtype": "int32", "shape": [2**32, 2**32], "data": ""}, "target_ids": []}]})), J, {422}),
        ("packed bad base64", lp, raw(json.dumps({"sequences": [{"context_ids": {"dtype": "int32", "shape": [1], "data": "!!!!!!!="}, "target_ids": []}]})), J, {422}),
        ("packed float ids", lp, raw(json.dumps({"sequences": [{"context_ids": {"dtype": "float32", "shape": [1], "data": "AACAPw=="}, "target_ids": []}]})), J, {422}),
        ("packed 2-D", lp, raw(json.dumps({"sequences": [{"context_ids": {"dtype": "int32", "shape": [1, 1], "data": "AQAAAA=="}, "target_ids": []}]})), J, {422}),
        ("packed unknown dtype", lp, raw(json.dumps({"sequences": [{"context_ids": {"dtype": "int64", "shape": [1], "data": "AQAAAAAAAAA="}, "target_ids": []}]})), J, {422}),
        # content types and bodies that are not JSON objects
        ("text/plain", lp, raw(json.dumps({"sequences": [seq()]})), "text/plain", {400, 415, 422}),
        ("form", lp, b"sequences=1", "application/x-www-form-urlencoded", {400, 415, 422}),
        ("multipart", lp, b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", {400, 415, 422}),
        ("xml", lp, b"<sequences/>", "application/xml", {400, 415, 422}),
        ("no content type", lp, raw(json.dumps({"sequences": [seq()]})), None, {200, 400, 415, 422}),
        ("empty body", lp, b"", J, {400, 422}),
        ("null", lp, b"null", J, {400, 422}),
        ("array", lp, b"[]", J, {400, 422}),
        ("string", lp, b'"x"', J, {400, 422}),
        ("empty object", adv, b"{}", J, {422}),
        ("truncated", lp, b'{"sequences":[{"context_ids":[1', J, {400}),
        ("trailing garbage", lp, raw(json.dumps({"sequences": [seq()]}) + "}}"), J, {400}),
        ("non-UTF-8 bytes", lp, b'\xff\xfe\x00{"sequences"', J, {400}),
        ("latin-1 in a string", "/v1/tokenize", b'{"text":"caf\xe9"}', J, {400}),
        ("lone surrogate", "/v1/tokenize", raw('{"text":"\\ud800"}'), J, {422}),
        ("lone surrogate in a problem", adv, raw(json.dumps({"method": "opsd", "groups": [group()]}).replace('"1+1="', '"\\udfff"')), J, {422}),
        ("NUL and RTL text", "/v1/tokenize", raw(json.dumps({"text": "a\x00b\u202ec\U0001f600"})), J, {200}),
        ("unknown field", lp, raw(json.dumps({"sequences": [seq()], "sequence": 1})), J, {422}),
        ("duplicate keys", lp, raw('{"sequences":[],"sequences":[' + json.dumps(seq()) + "]}"), J, ok_or_4xx),
        # sizes and limits hit exactly
        ("10k sequences, empty targets", lp, raw(json.dumps({"sequences": [seq((1,), ())] * 10_000})), J, {200}),
        ("empty targets, base64", lp, raw(json.dumps({"sequences": [seq((1,), ())] * 100, "encoding": "base64", "entropy": True, "top_k": max_top_k})), J, {200}),
        ("top_k at the limit", lp, raw(json.dumps({"sequences": [seq()], "top_k": max_top_k, "entropy": True})), J, {200}),
        ("top_k over the limit", lp, raw(json.dumps({"sequences": [seq()], "top_k": max_top_k + 1})), J, {422}),
        ("max_model_len exactly", lp, raw(json.dumps({"sequences": [seq([1] * (max_len - 1), [2])]})), J, {200}),
        ("max_model_len + 1", lp, raw(json.dumps({"sequences": [seq([1] * max_len, [2])]})), J, {422}),
        ("empty context", lp, raw(json.dumps({"sequences": [seq((), (1,))]})), J, {422}),
        ("no sequences", lp, raw(json.dumps({"sequences": []})), J, {422}),
        ("empty response_ids", adv, raw(json.dumps({"method": "grpo", "groups": [{"rollouts": [{"response_ids": [], "reward": 1.0}]}]})), J, ok_or_4xx),
        ("length mismatch", adv, raw(json.dumps({"method": "opd", "groups": [{"prompt_ids": [1], "rollouts": [{"response_ids": [1, 2], "reward": 1.0, "student_logprobs": [0.0]}]}]})), J, {422}),
        ("1 MB of text", "/v1/tokenize", raw(json.dumps({"text": "12+34=46 " * 110_000})), J, {200}),
        ("hints, temperature 1e-300", "/v1/hints", raw(json.dumps({"groups": [{"problem": "1+1", "rollouts": [{"text": "2", "correct": False}]}], "max_tokens": 4, "temperature": 1e-300})), J, {200}),
        ("hints, no tokens", "/v1/hints", raw(json.dumps({"groups": [{"problem": "1+1", "rollouts": [{"text": "2", "correct": True}]}], "max_tokens": 0})), J, {422}),
        ("weights path NUL", "/v1/weights", raw(json.dumps({"path": "a\x00b"})), J, {422}),
        ("weights path 5000 chars", "/v1/weights", raw(json.dumps({"path": "a" * 5000})), J, {422}),
        ("weights path ..", "/v1/weights", raw(json.dumps({"path": ".."})), J, {403}),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def hostile(model_info):
    return {
        case[0]: case
        for case in hostile_cases(
            model_info["vocab_size"], model_info["max_model_len"], model_info["max_top_k"]
        )
    }


HOSTILE_NAMES = [case[0] for case in hostile_cases(300, 512, 20)]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_input(server, hostile, name):
    _, path, body, content_type, allowed = hostile[name]
    headers = {"Content-Type": content_type} if content_type else {}
    res = httpx.post(server.url + path, content=body, headers=headers, timeout=TIMEOUT)
    check_answer(res.status_code, res.headers.get("content-type", ""), res.content, name)
    if allowed is not None:
        assert res.status_code in allowed, f"{name}: {res.status_code} {res.text[:300]}"
    if res.status_code == 200 and path == "/v1/logprobs":
        request = json.loads(body)
        assert len(res.json()["results"]) == len(request["sequences"])


def test_still_healthy_after_the_hostile_inputs(server):
    assert_healthy(server.url)


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return math.nan


def assert_healthy(url: str) -> None:
    assert httpx.get(url + "/readyz", timeout=30).status_code == 200
    ok = httpx.post(url + "/v1/logprobs", json={"sequences": [seq()]}, timeout=TIMEOUT)
    assert ok.status_code == 200, ok.text
    assert metric(url, "tokencredit_in_flight") == 1.0  # the /metrics request itself
