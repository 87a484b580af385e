"""Prompt texts and the one template fill, shared by the server, the hints and the trainers.

Both sides must agree on these word for word: the server renders the student prompt and every
method's teacher context at scoring time (``server/credit/<method>.py`` names its template here),
``trainer/toy`` renders the same forms to train and evaluate the embedded model, and a caller that
sends ``prompt_ids`` should have rendered ``STUDENT`` the same way. Sources per template: [P]
official code, [S] secondary, [R] this service's choice (docs/algorithms.md).

`fill` is the only way a template is filled, in one pass:

- ``{name}`` is replaced when ``name`` is given; every other brace (``\\boxed{}``, ``{x}``) is kept;
- a filled value is never scanned again, so a peer's text containing ``{answer}`` stays literal
  (no leak of the gold answer into a teacher context, no amplification of caller text);
- a template may use one placeholder at most ``MAX_PLACEHOLDER_USES`` times;
- with ``max_chars`` the rendered size is computed before anything is built, and a message that
  would exceed it raises `PromptTooLarge` naming the placeholder that contributes most.
"""

from __future__ import annotations

import re
from collections import Counter

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

# Student prompt (user message; the chat template is applied around it). [P] OPSD data_collator.py
STUDENT = "{problem}\n\n" + BOXED_INSTRUCTION

# OPSD teacher, full reference solution. [P] OPSD data_collator.py
OPSD_TEACHER = (
    "{problem}\n\nHere is a reference solution to this problem:\n{solution}\n\n\n"
    "After understanding the reference solution and the rationale behind each step, now articulate "
    "your own step-by-step reasoning that derives the same final answer to the problem below:\n\n"
    + BOXED_INSTRUCTION
)

# SDPO reprompt: {prompt} is the student's user message. [P] lasgroup/SDPO actor.yaml
SDPO_REPROMPT = "{prompt}{solution}{feedback}\n\nCorrectly solve the original question.\n"
SDPO_SOLUTION = "\nCorrect solution:\n\n{successful_previous_attempt}\n\n"
SDPO_FEEDBACK = (
    "\nThe following is feedback from your unsuccessful earlier attempt:\n\n{feedback_raw}\n\n"
)

# RLSD: the gold final answer only. [S] third-party reimplementation
RLSD_TEACHER = (
    "Problem: {problem}\n\nThe final answer to this problem is: {answer}\n\n"
    "Using this knowledge, work out the reasoning that leads to this answer. " + BOXED_INSTRUCTION
)

# HSD: a* plus a uniformly drawn successful peer; the fallback drops the peer block. [R]
HSD_TEACHER = (
    "{problem}\n\nCorrect solution:\n\n{peer}\n\nThe final answer is {answer}.\n\n"
    "Correctly solve the original question."
)
HSD_TEACHER_FALLBACK = (
    "{problem}\n\nThe final answer is {answer}.\n\nCorrectly solve the original question."
)

# AntiSD: a verified solution (peer or dataset) + correctness of the attempt. [S] reimplementation
ANTISD_TEACHER = (
    "Problem: {problem}\n\n[Reference solution and grading, visible only to the teacher]\n"
    "Verified solution:\n{solution}\nGrading of the attempt below: the final answer is {grade}."
)

# AMR-SD teacher: the rollout's own reflection, no ground truth. [R]
AMRSD_TEACHER = "{problem}\n\n<{kind}>{reflection}</{kind}>\n"

# AMR-SD Meta-Reflection prompt, written by the policy itself. [R]
REFLECTION_PROMPT = (
    "Problem: {problem}\nAttempt: {attempt}\nVerifier: the final answer is {grade}.\n"
    "{peer_block}{feedback_block}"
    "Write a concise Socratic {kind} that points to the key step {focus}. "
    "Do NOT state the final answer. Wrap it in <{kind}>...</{kind}>."
)
REFLECTION_PEER_BLOCK = "A verified-correct attempt from a peer: {peer}\n"
REFLECTION_FEEDBACK_BLOCK = "Feedback: {feedback}\n"
REFLECTION_FOCUS = {"hint": "that made it work", "critique": "where it went wrong"}

# A template may use one placeholder at most this many times (ours use each at most 3 times).
MAX_PLACEHOLDER_USES = 8

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PromptTooLarge(ValueError):
    """A template uses a placeholder too often, or its rendering would exceed ``max_chars``.

    ``placeholder`` names the culprit: the over-used one, or the one contributing most characters.
    """

    def __init__(self, placeholder: str, message: str):
        super().__init__(message)
        self.placeholder = placeholder


def placeholder_uses(template: str, names: set[str] | None = None) -> Counter[str]:
    """How many times each ``{name}`` occurs in ``template`` (only ``names`` when given)."""
    found = (m.group(1) for m in PLACEHOLDER.finditer(template))
    return Counter(n for n in found if names is None or n in names)


def check_uses(template: str, names: set[str] | None = None) -> Counter[str]:
    """`placeholder_uses`, raising `PromptTooLarge` when one exceeds ``MAX_PLACEHOLDER_USES``."""
    uses = placeholder_uses(template, names)
    for name, n in uses.items():
        if n > MAX_PLACEHOLDER_USES:
            raise PromptTooLarge(
                name,
                f"{{{name}}} is used {n} times; a template may use it at most "
                f"{MAX_PLACEHOLDER_USES} times",
            )
    return uses


def fill(template: str, /, *, max_chars: int | None = None, **values: str) -> str:
    """``template`` with each ``{name}`` in ``values`` replaced, in one pass (see module doc).

    >>> fill("{problem}\\n\\\\boxed{}", problem="1+{answer}", answer="2")
    '1+{answer}\\n\\\\boxed{}'

    The size check costs one scan of the template and is exact: rendered length =
    len(template) + Σ_name uses(name) · (len(value) − len(name) − 2).
    """
    uses = check_uses(template, set(values))
    if max_chars is not None and uses:
        growth = {n: k * (len(values[n]) - len(n) - 2) for n, k in uses.items()}
        size = len(template) + sum(growth.values())
        if size > max_chars:
            worst = max(growth, key=lambda n: growth[n])
            raise PromptTooLarge(
                worst, f"the prompt would be {size} characters, over the limit of {max_chars}"
            )
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


def student_message(problem: str, *, max_chars: int | None = None) -> str:
    """The student prompt's user message for ``problem`` (chat template not applied)."""
    return fill(STUDENT, problem=problem, max_chars=max_chars)
