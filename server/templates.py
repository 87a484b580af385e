"""Prompt templates: the student prompt and every method's teacher context (ALGORITHMS.md).

Kept in one module because two places must agree on them word for word: ``server/contexts.py``,
which renders teacher contexts at scoring time, and ``scripts/train_default_model.py``, which
teaches the embedded model to read privileged context in exactly these forms.
Sources per template: [P] official code, [S] secondary, [R] this service's choice (ALGORITHMS.md).
"""

from __future__ import annotations

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
