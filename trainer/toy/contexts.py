"""The toy task's prompts in the exact forms of ``proto/prompts.py``, plus reflection texts.

Shared by ``scripts/train_default_model.py`` (which teaches the embedded model to read privileged
context), ``scripts/eval_default_model.py`` and the tests, so all three agree word for word with the
server's teacher contexts (docs/algorithms.md §4).

Templates are filled with the server's own single-pass ``proto.prompts.fill``, not ``str.format``:
``BOXED_INSTRUCTION`` ends in a literal ``\\boxed{}`` (a positional field for ``str.format``), and
braces inside inserted values (``\\boxed{66}``) must be left alone.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from proto.prompts import (
    AMRSD_TEACHER,
    ANTISD_TEACHER,
    HSD_TEACHER,
    HSD_TEACHER_FALLBACK,
    OPSD_TEACHER,
    REFLECTION_FEEDBACK_BLOCK,
    REFLECTION_FOCUS,
    REFLECTION_PEER_BLOCK,
    REFLECTION_PROMPT,
    RLSD_TEACHER,
    SDPO_FEEDBACK,
    SDPO_REPROMPT,
    SDPO_SOLUTION,
    STUDENT,
    fill,
)
from trainer.toy.arith import Problem, Slip

# ---- Student and teacher user messages ---------------------------------------------------------


def student_user(p: Problem) -> str:
    """The student prompt's user message (STUDENT)."""
    return fill(STUDENT, problem=p.question)


def opsd_user(p: Problem, solution: str | None = None) -> str:
    """OPSD: the full reference solution (§4.3)."""
    return fill(OPSD_TEACHER, problem=p.question, solution=solution or p.solution)


def sdpo_user(p: Problem, peer: str | None = None, feedback: str | None = None) -> str:
    """SDPO reprompt: student message + a successful peer and/or environment feedback (§4.4)."""
    sol = fill(SDPO_SOLUTION, successful_previous_attempt=peer) if peer else ""
    fb = fill(SDPO_FEEDBACK, feedback_raw=feedback) if feedback else ""
    return fill(SDPO_REPROMPT, prompt=student_user(p), solution=sol, feedback=fb)


def rlsd_user(p: Problem) -> str:
    """RLSD: the gold final answer only (§4.5)."""
    return fill(RLSD_TEACHER, problem=p.question, answer=p.answer)


def hsd_user(p: Problem, peer: str | None = None) -> str:
    """HSD: gold answer + a successful peer, or the answer alone (fallback) (§4.6)."""
    if peer is None:
        return fill(HSD_TEACHER_FALLBACK, problem=p.question, answer=p.answer)
    return fill(HSD_TEACHER, problem=p.question, peer=peer, answer=p.answer)


def antisd_user(p: Problem, solution: str | None = None, grade: str = "correct") -> str:
    """AntiSD: a verified solution + the grading of the scored attempt (§4.7)."""
    return fill(ANTISD_TEACHER, problem=p.question, solution=solution or p.solution, grade=grade)


def amrsd_user(p: Problem, kind: str, reflection: str) -> str:
    """AMR-SD teacher: the rollout's own ``<hint>``/``<critique>``, no ground truth (§4.8)."""
    return fill(AMRSD_TEACHER, problem=p.question, kind=kind, reflection=reflection)


def reflection_user(
    p: Problem, attempt: str, correct: bool, peer: str | None = None, feedback: str | None = None
) -> str:
    """AMR-SD Meta-Reflection prompt: ``hint`` for a correct attempt, ``critique`` for a wrong one."""
    kind = "hint" if correct else "critique"
    return fill(
        REFLECTION_PROMPT,
        problem=p.question,
        attempt=attempt,
        grade="correct" if correct else "incorrect",
        peer_block=fill(REFLECTION_PEER_BLOCK, peer=peer) if peer else "",
        feedback_block=fill(REFLECTION_FEEDBACK_BLOCK, feedback=feedback) if feedback else "",
        kind=kind,
        focus=REFLECTION_FOCUS[kind],
    )


def chat_prompt(tokenizer, user: str) -> str:
    """Chat template around one user message, with the assistant generation prompt appended."""
    msgs = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


# ---- Reflection and feedback texts (training targets) ------------------------------------------


def _steps(p: Problem) -> list[tuple[int, str, int]]:
    """``(left, op, right)`` of each step of the correct solution."""
    out, acc = [], p.operands[0]
    for op, b in zip(p.ops, p.operands[1:]):
        out.append((acc, op, b))
        acc = acc + b if op == "+" else acc - b
    return out


def _carries(a: int, op: str, b: int) -> bool:
    return (a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10)


_ORDINAL = ["first", "second", "third"]


def _leaks(text: str, answer: str) -> bool:
    return re.search(rf"(?<!\d){re.escape(answer)}(?!\d)", text) is not None


def hint_text(p: Problem, rng: random.Random) -> str:
    """A short hint for a correct attempt: names the key step, never the final answer.

    With three operands it may give the first step's (intermediate) result, and for a carry/borrow it
    gives the ones-digit sum/difference, so a teacher reading the hint is surer of some digits than
    the student: the hint carries real but partial information, as a Meta-Reflection should.
    """
    steps = _steps(p)
    k = max(range(len(steps)), key=lambda i: (_carries(*steps[i]), -i))  # first carry/borrow step
    a, op, b = steps[k]
    options = [f"Do {a}{op}{b} digit by digit, ones first, then tens."]
    if _carries(a, op, b) and op == "+":
        options.append(
            f"In {a}+{b} the ones give {a % 10}+{b % 10}={a % 10 + b % 10}; carry the 1."
        )
    elif _carries(a, op, b):
        options.append(f"In {a}-{b} borrow a ten: {a % 10 + 10}-{b % 10}={a % 10 + 10 - b % 10}.")
    if len(steps) > 1:
        (a0, op0, b0), r0 = steps[0], steps[1][0]
        options.append(f"Start with {a0}{op0}{b0}={r0}, then do the last step carefully.")
    text = rng.choice(options)
    if _leaks(text, p.answer):
        text = "Work left to right, one operation per step, and check each carry."
    return text


def critique_text(p: Problem, slip: Slip, rng: random.Random) -> str:
    """A short critique of a wrong attempt: points at the slipped step, never the final answer."""
    a, op, b = _steps(p)[slip.step]  # the slipped step's inputs are still correct
    name = "addition" if op == "+" else "subtraction"
    text = rng.choice(
        [
            f"Check the step {a}{op}{b}; it is not {slip.value}. Recompute the {name}.",
            f"The slip is in {a}{op}{b}: redo that {name} digit by digit.",
            f"Recheck the {_ORDINAL[slip.step]} step, {a}{op}{b}={slip.value}; the result is off.",
        ]
    )
    if _leaks(text, p.answer):
        text = f"Recheck the {_ORDINAL[slip.step]} step; recompute the {name} digit by digit."
    return text


def feedback_text(wrong_answer: str, rng: random.Random) -> str:
    """Environment feedback for a wrong attempt, as an RL loop's verifier would phrase it."""
    return rng.choice(
        [
            f"The final answer {wrong_answer} is incorrect.",
            "Your final answer is incorrect.",
            f"Incorrect: \\boxed{{{wrong_answer}}} does not match the expected answer.",
        ]
    )


# Canonical teacher contexts for evaluation, privileged information taken from the reference.
TEACHER_CONTEXTS: dict[str, Callable[[Problem], str]] = {
    "opsd": opsd_user,
    "sdpo": lambda p: sdpo_user(p, peer=p.solution),
    "rlsd": rlsd_user,
    "hsd": lambda p: hsd_user(p, peer=p.solution),
    "hsd_fallback": hsd_user,
    "antisd": antisd_user,
    "amrsd": lambda p: amrsd_user(p, "hint", hint_text(p, random.Random(p.question))),
}
