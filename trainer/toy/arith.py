"""Multi-step arithmetic: the embedded default model's toy task.

A problem chains 2–3 operands of 1–2 digits with ``+`` and ``-``, evaluated left to right:

    >>> p = generate_problems(1, seed=0)[0]
    >>> p.question, p.solution                                     # doctest: +SKIP
    ('What is 37+48-19?', '37+48=85. 85-19=66. \\boxed{66}')

The worked solution writes one short step per operation and ends with the boxed answer. Negative
numbers never appear: the generator redraws a problem until every running total (and so the final
answer) is >= 0, so the model only ever needs non-negative arithmetic. Wrong attempts for
reflection/feedback training (:func:`slipped_solution`) keep the same property.

Everything is seeded: the same ``seed`` gives the same problems on every machine (``random.Random``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

__all__ = [
    "Problem",
    "Slip",
    "extract_boxed",
    "generate_problems",
    "is_correct",
    "make_problem",
    "random_problem",
    "slipped_solution",
    "solution_text",
]


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem.

    ``answer`` is the final result as a decimal string (e.g. ``"66"``); ``solution`` is the worked
    reference solution ending in ``\\boxed{answer}``. ``operands``/``ops`` keep the structure, for
    building wrong attempts and step-level hints (``ops[i]`` joins ``operands[i]`` and ``operands[i+1]``).
    """

    question: str
    answer: str
    solution: str
    operands: tuple[int, ...] = field(default=(), repr=False)
    ops: tuple[str, ...] = field(default=(), repr=False)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def solution_text(operands: tuple[int, ...], ops: tuple[str, ...], results: list[int]) -> str:
    """Worked solution: ``"37+48=85. 85-19=66. \\boxed{66}"``; ``results[i]`` is step i's result.

    ``results`` is passed in (not recomputed) so that a wrong attempt can carry a slip.
    """
    steps, left = [], operands[0]
    for op, right, res in zip(ops, operands[1:], results):
        steps.append(f"{left}{op}{right}={res}.")
        left = res
    return " ".join(steps) + f" \\boxed{{{results[-1]}}}"


def make_problem(operands: tuple[int, ...], ops: tuple[str, ...]) -> Problem:
    """Build a :class:`Problem` (question, answer, reference solution) from its operands and operators."""
    assert len(ops) == len(operands) - 1, "need one operator between each pair of operands"
    results, acc = [], operands[0]
    for op, b in zip(ops, operands[1:]):
        acc = _apply(acc, op, b)
        results.append(acc)
    expr = str(operands[0]) + "".join(f"{op}{b}" for op, b in zip(ops, operands[1:]))
    return Problem(
        question=f"What is {expr}?",
        answer=str(results[-1]),
        solution=solution_text(operands, ops, results),
        operands=tuple(operands),
        ops=tuple(ops),
    )


def _operand(rng: random.Random) -> int:
    # 30% one-digit (1-9), 70% two-digit (10-99): two-digit steps carry/borrow, which is the hard part.
    return rng.randint(1, 9) if rng.random() < 0.3 else rng.randint(10, 99)


def random_problem(rng: random.Random, p_three: float = 0.6) -> Problem:
    """Draw one problem: 3 operands with probability ``p_three``, else 2; never a negative total."""
    n = 3 if rng.random() < p_three else 2
    while True:
        operands = tuple(_operand(rng) for _ in range(n))
        ops = tuple(rng.choice("+-") for _ in range(n - 1))
        acc, ok = operands[0], True
        for op, b in zip(ops, operands[1:]):
            acc = _apply(acc, op, b)
            ok = ok and acc >= 0
        if ok:
            return make_problem(operands, ops)


def generate_problems(n: int, seed: int, p_three: float = 0.6) -> list[Problem]:
    """``n`` problems from a private ``random.Random(seed)``: deterministic, independent of global state."""
    rng = random.Random(seed)
    return [random_problem(rng, p_three) for _ in range(n)]


@dataclass(frozen=True)
class Slip:
    """A wrong worked attempt: step ``step`` (0-based) gave ``value`` instead of the true result."""

    text: str
    answer: str
    step: int
    value: int


def slipped_solution(problem: Problem, rng: random.Random) -> Slip:
    """A plausible wrong attempt: one step's result is off, later steps are done correctly from it.

    Slips: off by one, off by ten (a dropped or extra carry/borrow), or the digits of a two-digit
    result swapped. Running totals stay >= 0 and the final answer always differs from the correct one.
    """
    n_steps = len(problem.ops)
    while True:
        step = rng.randrange(n_steps)
        results, acc = [], problem.operands[0]
        for i, (op, b) in enumerate(zip(problem.ops, problem.operands[1:])):
            acc = _apply(acc, op, b)
            if i == step:
                kind = rng.choice(["one", "ten", "swap"])
                if kind == "swap" and 10 <= acc <= 99 and acc % 11 and acc % 10:
                    acc = int(str(acc)[::-1])
                else:
                    acc += rng.choice([-1, 1]) * (10 if kind == "ten" else 1)
            results.append(acc)
        if min(results) >= 0 and str(results[-1]) != problem.answer:
            text = solution_text(problem.operands, problem.ops, results)
            return Slip(text=text, answer=str(results[-1]), step=step, value=results[step])


_BOXED = "\\boxed{"


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces balanced), stripped; else None.

    >>> extract_boxed("85-19=66. \\\\boxed{66}")
    '66'
    >>> extract_boxed("no box") is None
    True
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = start + len(_BOXED)
    depth, begin = 1, i
    while i < len(text):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None  # unclosed box: truncated generation


_INT = re.compile(r"[+-]?\d+")


def _normalise(s: str) -> str:
    s = s.strip().replace(" ", "").replace(",", "")
    return str(int(s)) if _INT.fullmatch(s) else s


def is_correct(text: str, answer: str | int) -> bool:
    """True if the last boxed value in ``text`` equals ``answer`` (integers compared by value)."""
    got = extract_boxed(text)
    return got is not None and _normalise(got) == _normalise(str(answer))
