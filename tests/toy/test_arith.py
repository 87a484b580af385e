"""The toy arithmetic task: seeded generator, worked solutions, answer checking, prompt rendering."""

from __future__ import annotations

import random
import re

import pytest

from server.contexts import ContextBuilder
from server.credit import GroupView, RolloutView, get_method
from trainer.toy import contexts as C
from trainer.toy.arith import (
    Problem,
    extract_boxed,
    generate_problems,
    is_correct,
    make_problem,
    slipped_solution,
)

STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)\.")


def test_generator_is_deterministic_and_seed_dependent():
    assert generate_problems(50, seed=3) == generate_problems(50, seed=3)
    assert generate_problems(50, seed=3) != generate_problems(50, seed=4)
    random.seed(123)  # global state must not matter
    a = generate_problems(5, seed=7)
    random.seed(456)
    assert a == generate_problems(5, seed=7)


def test_example_format():
    p = make_problem((37, 48, 19), ("+", "-"))
    assert p == Problem(
        "What is 37+48-19?", "66", "37+48=85. 85-19=66. \\boxed{66}", (37, 48, 19), ("+", "-")
    )
    assert make_problem((5, 3), ("-",)).solution == "5-3=2. \\boxed{2}"


def test_solutions_are_correct_and_never_negative():
    problems = generate_problems(500, seed=0)
    assert {len(p.operands) for p in problems} == {2, 3}
    for p in problems:
        expr = p.question.removeprefix("What is ").removesuffix("?")
        assert re.fullmatch(r"\d{1,2}([+-]\d{1,2}){1,2}", expr), p.question
        assert all(1 <= x <= 99 for x in p.operands)
        assert str(eval(expr)) == p.answer  # left-to-right + and - is Python's evaluation order
        steps = STEP.findall(p.solution)
        assert len(steps) == len(p.ops)
        prev = None
        for a, op, b, r in steps:
            assert int(r) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0
            assert prev is None or int(a) == prev  # each step continues from the last result
            prev = int(r)
        assert p.solution.endswith(f" \\boxed{{{p.answer}}}")
        assert is_correct(p.solution, p.answer)


def test_slipped_solution_is_plausibly_wrong():
    rng = random.Random(0)
    for p in generate_problems(300, seed=1):
        slip = slipped_solution(p, rng)
        assert not is_correct(slip.text, p.answer) and is_correct(slip.text, slip.answer)
        steps = STEP.findall(slip.text)
        wrong = [i for i, (a, op, b, r) in enumerate(steps) if int(r) != eval(f"{a}{op}{b}")]
        assert wrong == [slip.step]  # exactly one arithmetic slip, later steps follow from it
        assert int(steps[slip.step][3]) == slip.value >= 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("37+48=85. 85-19=66. \\boxed{66}", "66"),
        ("\\boxed{1} then \\boxed{ 2 }", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("no answer", None),
        ("truncated \\boxed{6", None),
        ("\\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_is_correct():
    assert is_correct("x \\boxed{66}", "66")
    assert is_correct("x \\boxed{66}", 66)
    assert is_correct("x \\boxed{ 066 }", "66")
    assert not is_correct("x \\boxed{65}", "66")
    assert not is_correct("the answer is 66", "66")
    assert not is_correct("\\boxed{66", "66")


def test_prompts_match_server_rendering(model_path):
    """trainer.toy.contexts renders exactly the teacher messages the server's methods build."""
    from transformers import AutoTokenizer

    ctx = ContextBuilder(AutoTokenizer.from_pretrained(model_path), 4096, "toy")
    p = make_problem((37, 48, 19), ("+", "-"))
    group = GroupView(p.question, p.answer, p.solution)
    rollout = RolloutView(0, 0, 1.0, 8, p.solution, None, "Check the subtraction.")
    peer = RolloutView(0, 1, 1.0, 8, p.solution, None, None)

    def server(method: str, peer: RolloutView | None = None) -> str:
        m = get_method(method)
        return m.teacher_message(ctx, m.parse_params(), group, rollout, peer)

    assert C.student_user(p) == server("opd")
    assert C.opsd_user(p) == server("opsd")
    assert C.rlsd_user(p) == server("rlsd")
    assert C.hsd_user(p) == server("hsd")
    assert C.hsd_user(p, peer=p.solution) == server("hsd", peer)
    assert C.sdpo_user(p, peer=p.solution) == server("sdpo", peer)
    assert C.antisd_user(p, grade="correct") == server("antisd")
    assert C.amrsd_user(p, "hint", "Check the subtraction.") == server("amrsd")
    for make in C.TEACHER_CONTEXTS.values():
        msg = make(p)
        assert not re.search(r"\{[a-z_]+\}", msg), msg  # every placeholder filled
        assert p.question in msg
    assert C.student_user(p).endswith("\\boxed{}.")


def test_reflections_point_at_a_step_without_the_answer():
    rng = random.Random(0)
    for p in generate_problems(300, seed=2):
        slip = slipped_solution(p, rng)
        for text in (C.hint_text(p, rng), C.critique_text(p, slip, rng)):
            assert not re.search(rf"(?<!\d){p.answer}(?!\d)", text), (p, text)
            assert "<" not in text and len(text) < 100
        user = C.reflection_user(p, slip.text, correct=False, peer=p.solution)
        assert "Wrap it in <critique>...</critique>." in user and p.solution in user
