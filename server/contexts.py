"""Teacher contexts: what each method shows the teacher before the student's response tokens.

For every rollout the teacher sees one user message rendered through the model's chat template
(with the generation prompt), then the rollout's ``response_ids`` verbatim: the response is never
re-tokenised. Which message, per method (ALGORITHMS.md §1, templates in ``server/templates.py``):

====================  ======================================================================
teacher_context       message
====================  ======================================================================
none                  the student prompt itself (OPD: the loaded model is the external teacher)
reference_solution    OPSD: problem + the dataset's reference solution
sdpo_demo             SDPO: student prompt + first *other* success + feedback; none -> masked
answer_only           RLSD: problem + the gold final answer
hsd_peer              HSD: problem + a uniformly drawn other success + a*; none -> a* alone
antisd_solution       AntiSD: a verified peer solution, else the dataset's, + this attempt's grade
reflection            AMR-SD: problem + the rollout's own <hint>/<critique>; empty -> student prompt
====================  ======================================================================

Demonstrations lose their ``<think>`` blocks and are right-truncated to fit both the method's
``max_reprompt_len`` and the model's ``max_model_len`` (leaving room for the response).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from server import templates
from server.credit import CreditMethod, antisd_select_solutions, hsd_select_peers, sdpo_select_demo

THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)


def fill(template: str, **values: str) -> str:
    """``str.format`` for our templates, which contain literal braces (``\\boxed{}``)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def strip_thinking(text: str) -> str:
    return THINK_BLOCK.sub("", text).strip()


@dataclass
class RolloutView:
    """What context building needs of one rollout (batch order; ``group`` is its group index)."""

    group: int
    index_in_group: int
    reward: float
    response_len: int
    text: str  # decoded response (or the caller's ``text``)
    feedback: str | None
    reflection: str | None


@dataclass
class GroupView:
    problem: str | None
    reference_answer: str | None
    reference_solution: str | None


@dataclass
class TeacherContext:
    message: str | None  # the user message; None = no teacher context (row masked)
    ids: tuple[int, ...]  # chat template applied, generation prompt included
    peer_index: int | None = None  # index within the group of the rollout shown as a peer


class MissingField(ValueError):
    """A method needs a group field the request left out; ``field`` is its JSON path."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ContextBuilder:
    def __init__(self, tokenizer, max_model_len: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._chat_ids: dict[str, tuple[int, ...]] = {}

    # ---- rendering ---------------------------------------------------------------------------

    def chat_ids(self, message: str) -> tuple[int, ...]:
        if message not in self._chat_ids:  # the rollouts of a group share most messages
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}],
                tokenize=True,
                add_generation_prompt=True,
                return_dict=False,
            )
            self._chat_ids[message] = tuple(int(i) for i in ids)
        return self._chat_ids[message]

    def student_message(self, problem: str) -> str:
        return fill(templates.STUDENT, problem=problem)

    def truncate(self, text: str, budget: int) -> str:
        """Right-truncate ``text`` to at most ``budget`` tokens."""
        if budget <= 0:
            return ""
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= budget else self.tokenizer.decode(ids[:budget])

    def _with_demo(self, render, demo: str, limit: int, response_len: int) -> str:
        """Render with ``demo`` cut so that message + response fit the budgets."""
        overhead = len(self.chat_ids(render("")))
        budget = min(limit, self.max_model_len - response_len - overhead)
        return render(self.truncate(demo, budget))

    # ---- per method --------------------------------------------------------------------------

    def build(
        self,
        method: CreditMethod,
        params,
        groups: Sequence[GroupView],
        rollouts: Sequence[RolloutView],
        seed: int,
    ) -> list[TeacherContext]:
        kind = method.teacher_context
        rewards = [r.reward for r in rollouts]
        group_ids = [r.group for r in rollouts]
        peers: list[int | None] = [None] * len(rollouts)
        if kind == "sdpo_demo":
            peers = sdpo_select_demo(
                rewards, group_ids, params.success_threshold, params.dont_reprompt_on_self_success
            )
        elif kind == "hsd_peer":
            peers = hsd_select_peers(
                rewards, group_ids, seed, params.success_threshold, params.fallback
            )
        elif kind == "antisd_solution":
            peers = antisd_select_solutions(rewards, group_ids, seed, params.success_threshold)
        out = []
        for b, r in enumerate(rollouts):
            g = groups[r.group]
            peer = peers[b]
            peer_view = rollouts[peer] if peer is not None and peer >= 0 else None
            message = self._message(kind, params, g, r, peer_view)
            out.append(
                TeacherContext(
                    message=message,
                    ids=self.chat_ids(message) if message is not None else (),
                    peer_index=peer_view.index_in_group
                    if peer_view is not None and message is not None
                    else None,
                )
            )
        return out

    def _require(self, group: GroupView, r: RolloutView, name: str, method: str) -> str:
        value = getattr(group, name)
        if not value:
            raise MissingField(
                f"groups[{r.group}].{name}",
                f"method {method} builds its teacher context from groups[].{name}",
            )
        return value

    def _message(
        self, kind: str, params, g: GroupView, r: RolloutView, peer: RolloutView | None
    ) -> str | None:
        if kind in ("none",):
            return self.student_message(self._require(g, r, "problem", "opd"))
        problem = self._require(g, r, "problem", kind)
        if kind == "reference_solution":
            solution = self._require(g, r, "reference_solution", "opsd")
            return fill(templates.OPSD_TEACHER, problem=problem, solution=solution)
        if kind == "answer_only":
            answer = self._require(g, r, "reference_answer", "rlsd")
            return fill(templates.RLSD_TEACHER, problem=problem, answer=answer)
        if kind == "sdpo_demo":
            return self._sdpo(params, problem, r, peer)
        if kind == "hsd_peer":
            answer = self._require(g, r, "reference_answer", "hsd")
            if peer is None:
                return (
                    fill(templates.HSD_TEACHER_FALLBACK, problem=problem, answer=answer)
                    if params.fallback
                    else None
                )

            def render(demo: str) -> str:
                return fill(templates.HSD_TEACHER, problem=problem, peer=demo, answer=answer)

            text = (
                strip_thinking(peer.text)
                if params.remove_thinking_from_demonstration
                else peer.text
            )
            return self._with_demo(render, text, params.max_reprompt_len, r.response_len)
        if kind == "antisd_solution":
            grade = "correct" if r.reward >= params.success_threshold else "incorrect"
            if peer is not None:
                solution = peer.text
            elif g.reference_solution:
                solution = g.reference_solution
            else:
                solution = self._require(g, r, "reference_solution", "antisd")

            def render(demo: str) -> str:
                return fill(templates.ANTISD_TEACHER, problem=problem, solution=demo, grade=grade)

            return self._with_demo(
                render, strip_thinking(solution), self.max_model_len, r.response_len
            )
        if kind == "reflection":
            if not r.reflection or not r.reflection.strip():
                return self.student_message(problem)  # empty reflection: teacher = student, I = 0
            tag = "hint" if r.reward >= 0.5 else "critique"
            return fill(
                templates.AMRSD_TEACHER, problem=problem, kind=tag, reflection=r.reflection.strip()
            )
        raise ValueError(f"unknown teacher context {kind!r}")

    def _sdpo(self, params, problem: str, r: RolloutView, demo: RolloutView | None) -> str | None:
        use_feedback = (
            params.include_environment_feedback
            and bool(r.feedback)
            and (demo is None or not params.environment_feedback_only_without_solution)
        )
        if demo is None and not use_feedback:
            return None  # SDPO: no demonstration and no feedback -> no loss for this rollout
        feedback = (
            fill(templates.SDPO_FEEDBACK, feedback_raw=r.feedback or "") if use_feedback else ""
        )
        prompt = self.student_message(problem)

        def render(demo_text: str) -> str:
            solution = (
                fill(templates.SDPO_SOLUTION, successful_previous_attempt=demo_text) if demo else ""
            )
            return fill(
                templates.SDPO_REPROMPT, prompt=prompt, solution=solution, feedback=feedback
            )

        if demo is None:
            return render("")
        text = (
            demo.text
            if not params.remove_thinking_from_demonstration
            else strip_thinking(demo.text)
        )
        return self._with_demo(render, text, params.max_reprompt_len, r.response_len)
