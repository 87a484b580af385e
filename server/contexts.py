"""Teacher contexts: the user message each rollout's teacher scores its response under.

For every rollout the teacher sees one user message rendered through the model's chat template
(with the generation prompt), then the rollout's ``response_ids`` verbatim: the response is never
re-tokenised. Which message is the method's own business (``teacher_message`` in
``server/credit/<method>.py``, templates in ``proto/prompts.py``); this module gives it the tools:
required group fields (a 422 naming the field and the method), the single-pass fill bounded by the
model's length, and demonstrations without ``<think>`` blocks, right-truncated to fit both the
method's limit and ``max_model_len`` (leaving room for the response).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from proto import prompts
from server.answers import strip_thinking  # linear-time; re-exported for hints.py
from server.credit import CreditMethod, GroupView, RolloutView

# Where a placeholder's value comes from, for the 422 of an oversized prompt.
_GROUP_FIELDS = {
    "problem": "problem",
    "solution": "reference_solution",
    "answer": "reference_answer",
}
_ROLLOUT_FIELDS = {"feedback_raw": "feedback", "reflection": "reflection"}


def longest_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry: no text longer than n times this fits n tokens
    (byte-level entries count bytes, which bound characters)."""
    cached = getattr(tokenizer, "_tc_longest_token_chars", None)
    if cached is None:
        cached = max((len(t) for t in tokenizer.get_vocab()), default=1)
        tokenizer._tc_longest_token_chars = cached
    return cached


@dataclass
class TeacherContext:
    message: str | None  # the user message; None = no teacher context (row masked)
    ids: tuple[int, ...]  # chat template applied, generation prompt included
    peer_index: int | None = None  # index within the group of the rollout shown as a peer


class ContextError(ValueError):
    """A teacher context cannot be built from the request; ``field`` is the JSON path to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class ContextBuilder:
    """Renders and tokenises user messages for one request (caching the chat-template ids)."""

    def __init__(self, tokenizer, max_model_len: int, method_id: str = ""):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.method_id = method_id
        # A message with more characters than this cannot fit max_model_len tokens: refused
        # before it is built, so caller text can never make the server build a huge prompt.
        self.max_chars = max_model_len * longest_token_chars(tokenizer)
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

    def truncate(self, text: str, budget: int) -> str:
        """Right-truncate ``text`` to at most ``budget`` tokens."""
        if budget <= 0:
            return ""
        # Characters past budget·longest token cannot survive: cut them before tokenising.
        text = text[: budget * longest_token_chars(self.tokenizer)]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return text if len(ids) <= budget else self.tokenizer.decode(ids[:budget])

    # ---- the tools a method's teacher_message uses (server.credit.method.ContextTools) --------

    def require(self, group: GroupView, rollout: RolloutView, name: str) -> str:
        value = getattr(group, name)
        if not value:
            raise ContextError(
                f"groups[{rollout.group}].{name}",
                f"method {self.method_id} builds its teacher context from groups[].{name}",
            )
        return value

    def fill(self, rollout: RolloutView, template: str, **values: str) -> str:
        try:
            return prompts.fill(template, max_chars=self.max_chars, **values)
        except prompts.PromptTooLarge as exc:
            field = self._source(rollout, exc.placeholder)
            raise ContextError(
                field,
                f"{field}: the teacher context of method {self.method_id} cannot fit the model's "
                f"max_model_len {self.max_model_len}: {exc}",
            ) from None

    def student_message(self, rollout: RolloutView, problem: str) -> str:
        return self.fill(rollout, prompts.STUDENT, problem=problem)

    def fit(self, rollout: RolloutView, render: Callable[[str], str], demo: str, limit: int) -> str:
        overhead = len(self.chat_ids(render("")))
        budget = min(limit, self.max_model_len - rollout.response_len - overhead)
        return render(self.truncate(demo, budget))

    def strip_thinking(self, text: str) -> str:
        return strip_thinking(text)

    def _source(self, rollout: RolloutView, placeholder: str) -> str:
        if placeholder in _GROUP_FIELDS:
            return f"groups[{rollout.group}].{_GROUP_FIELDS[placeholder]}"
        path = f"groups[{rollout.group}].rollouts[{rollout.index_in_group}]"
        return f"{path}.{_ROLLOUT_FIELDS[placeholder]}" if placeholder in _ROLLOUT_FIELDS else path

    # ---- per request -------------------------------------------------------------------------

    def build(
        self,
        method: CreditMethod,
        params,
        groups: Sequence[GroupView],
        rollouts: Sequence[RolloutView],
        peers: Sequence[int | None],
        mask: Sequence[bool],
        only: Sequence[int],
    ) -> dict[int, TeacherContext]:
        """Contexts of the rollouts at batch positions ``only``; masked ones get no message."""
        assert method.teacher_message is not None
        out = {}
        for b in only:
            r = rollouts[b]
            if not mask[b]:
                out[b] = TeacherContext(None, ())
                continue
            peer = rollouts[peers[b]] if peers[b] is not None else None
            message = method.teacher_message(self, params, groups[r.group], r, peer)
            out[b] = TeacherContext(
                message, self.chat_ids(message), peer.index_in_group if peer else None
            )
        return out
