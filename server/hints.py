"""AMR-SD Meta-Reflection: the policy writes a ``<hint>`` or ``<critique>`` about each rollout.

Source: AMR-SD, arXiv 2605.18529 (docs/algorithms.md §4.8): "the model generates an encouraging
``<hint>`` for successful trajectories or a targeted ``<critique>`` for failed trajectories, using
verifier-approved peer rollouts when available"; no ground truth in either branch. The reflection
later becomes the teacher context ``AMRSD_TEACHER`` of ``/v1/advantages``.

Pipeline, per request (``POST /v1/hints``) or per AMR-SD advantages call (``reflect_rollouts``):

1. **Prompt.** Rollout i of a group gets ``REFLECTION_PROMPT`` (``proto/prompts.py``), or the
   request's ``templates.hint`` / ``templates.critique``, filled in one pass (``prompts.fill``:
   caller text is never expanded, each placeholder at most ``MAX_PLACEHOLDER_USES`` times, the
   rendered size bounded before it is built) with::

       {problem}         the group's problem
       {attempt}         rollout i's text, <think> blocks removed, right-truncated to fit
       {grade}           "correct" | "incorrect"             (the verifier outcome)
       {peer_block}      REFLECTION_PEER_BLOCK with {peer}, or "" without a peer
       {feedback_block}  REFLECTION_FEEDBACK_BLOCK with {feedback}, or "" without feedback
       {peer}, {feedback} the same texts without their block wording ("" when absent)
       {kind}, {focus}   "hint", "that made it work" | "critique", "where it went wrong"

   The peer is one *other* correct rollout of the group, drawn uniformly with a seed derived from
   (seed, group, rollout); none when the group has no other correct rollout. The message goes
   through the chat template as one user turn with the generation prompt. ``reference_answer`` and
   ``reference_solution`` are never placeholders: the reflecting model does not see them.
   Attempt and peer are cut on the right (each keeps at least half of what is free when both are
   long) so that prompt + ``max_tokens`` fits ``max_model_len``.
2. **Generate.** Every reflection of the call in ONE ``engine.generate`` batch; rollout (g, i)
   samples with ``derive_seed(seed, g, i)``, so on the hf engine (one seeded generator per item)
   the same request gives the same texts whatever else is batched. Stop ids: eos, plus the closing
   tag when it is a single token (otherwise the tag is found in the decoded text).
3. **Parse** (``parse_reflection``): the text between ``<kind>`` and ``</kind>`` of the expected
   kind, tags dropped. Fallbacks (``text: ""``, ``fallback: true``; the teacher context is then the
   plain student prompt, so the rollout gets pure GRPO credit):

   =========  ===============================================================================
   reason     when
   =========  ===============================================================================
   no_tag     no ``<kind>`` opening tag of the expected kind (the other kind's tag included)
   truncated  stopped by ``max_tokens`` before ``</kind>`` and no sentence end to cut at; with
              ``fallback: false`` it means the text was cut after its last complete sentence
   empty      nothing but whitespace inside the tags
   leaked     the text states the final answer (``server.answers.mentions_answer``); ``leaked``
   =========  ===============================================================================

   A generation that ends on eos (or on the closing tag when that is its stop id) without a
   written ``</kind>`` is complete. The leak guard's answer: ``reference_answer``, else the final
   answer of ``reference_solution``, else that of the group's correct rollouts (all are checked).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proto import HintsRequest, Reflection
from proto import prompts as T
from server.answers import extract_final_answer, mentions_answer, normalize_answer
from server.contexts import ContextBuilder, longest_token_chars, strip_thinking
from server.engines.base import GenerateItem, GenerateOutput, TeacherEngine
from server.errors import ServiceError
from server.runtime import Runtime

log = logging.getLogger(__name__)

KINDS = ("hint", "critique")
_SENTENCE_END = re.compile(r"[.!?](?=\s)")


# ---- seeds and peers ---------------------------------------------------------------------------


def derive_seed(seed: int, group: int, index: int, salt: str = "generate") -> int:
    """A 31-bit seed for rollout ``index`` of ``group``: same inputs, same seed, any process."""
    digest = hashlib.blake2b(f"{salt}:{seed}:{group}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def choose_peer(correct: Sequence[bool], index: int, seed: int, group: int) -> int | None:
    """A uniformly drawn correct rollout of the group other than ``index``; None if there is none."""
    candidates = [j for j, ok in enumerate(correct) if ok and j != index]
    if not candidates:
        return None
    return random.Random(derive_seed(seed, group, index, salt="peer")).choice(candidates)


# ---- inputs ------------------------------------------------------------------------------------


def _get(obj: Any, name: str, default: Any = None) -> Any:
    """Field of a wire model, dataclass or plain dict."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def leak_answers(group: Any) -> list[str]:
    """The answers the leak guard looks for in the group's reflections (never shown to the model):
    ``reference_answer``; else the final answer of ``reference_solution``; else the distinct final
    answers of the group's correct rollouts."""
    answer = _get(group, "reference_answer")
    if answer and answer.strip():
        return [answer.strip()]
    solution = _get(group, "reference_solution")
    if solution:
        answer = extract_final_answer(strip_thinking(solution), last_number=True)
        if answer:
            return [answer]
    found: dict[str, str] = {}
    for rollout in _get(group, "rollouts") or ():
        if _get(rollout, "correct"):
            answer = extract_final_answer(strip_thinking(_get(rollout, "text") or ""))
            if answer and normalize_answer(answer):
                found.setdefault(normalize_answer(answer), answer)
    return list(found.values())


# ---- prompts -----------------------------------------------------------------------------------


def render_message(
    template: str,
    *,
    problem: str,
    attempt: str,
    correct: bool,
    peer: str | None = None,
    feedback: str | None = None,
    max_chars: int | None = None,
) -> str:
    """The reflection prompt (user message) for one rollout; placeholders filled in one pass, so a
    text that happens to contain ``{feedback}`` is never filled again. Raises
    ``prompts.PromptTooLarge`` when the message would exceed ``max_chars``."""
    kind = "hint" if correct else "critique"
    values = {
        "problem": problem,
        "attempt": attempt,
        "grade": "correct" if correct else "incorrect",
        "peer_block": T.fill(T.REFLECTION_PEER_BLOCK, peer=peer) if peer is not None else "",
        "feedback_block": T.fill(T.REFLECTION_FEEDBACK_BLOCK, feedback=feedback)
        if feedback
        else "",
        "peer": peer or "",
        "feedback": feedback or "",
        "kind": kind,
        "focus": T.REFLECTION_FOCUS[kind],
    }
    return T.fill(template, max_chars=max_chars, **values)


@dataclass(frozen=True)
class ReflectionJob:
    """One rollout's reflection prompt, ready for the engine."""

    group: int
    index: int
    kind: str  # "hint" | "critique"
    message: str  # the user message (no reference answer in it, ever)
    prompt_ids: tuple[int, ...]  # chat template applied, generation prompt included
    peer_index: int | None
    seed: int


class PromptBuilder:
    """Reflection prompts for a batch of groups, fitted to ``max_model_len - max_tokens``."""

    def __init__(self, tokenizer, max_model_len: int, max_tokens: int):
        self.ctx = ContextBuilder(tokenizer, max_model_len)
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_tokens = max_tokens

    def build(
        self,
        groups: Sequence[Any],
        seed: int,
        templates: Any = None,
        select: Sequence[Sequence[bool]] | None = None,
    ) -> list[ReflectionJob]:
        """Jobs in group/rollout order; ``select[g][i]`` False skips rollout i of group g (it
        still serves as a peer)."""
        if self.max_tokens >= self.max_model_len:
            raise ServiceError(
                422,
                f"max_tokens {self.max_tokens} leaves no room for a prompt in the model's "
                f"max_model_len {self.max_model_len}",
                field="max_tokens",
            )
        by_kind = {
            "hint": _get(templates, "hint") or T.REFLECTION_PROMPT,
            "critique": _get(templates, "critique") or T.REFLECTION_PROMPT,
        }
        jobs = []
        for gi, group in enumerate(groups):
            rollouts = list(_get(group, "rollouts") or ())
            if select is not None and not any(select[gi]):
                continue
            problem = _get(group, "problem")
            if not problem:
                raise ServiceError(
                    422, f"groups[{gi}].problem is needed to reflect", field=f"groups[{gi}].problem"
                )
            correct = [bool(_get(r, "correct")) for r in rollouts]
            for ri, rollout in enumerate(rollouts):
                if select is not None and not select[gi][ri]:
                    continue
                peer = choose_peer(correct, ri, seed, gi)
                kind = "hint" if correct[ri] else "critique"
                message, ids = self._fit(
                    f"groups[{gi}].rollouts[{ri}]",
                    "templates." + kind if _get(templates, kind) else None,
                    by_kind[kind],
                    problem=problem,
                    attempt=strip_thinking(_get(rollout, "text") or ""),
                    correct=correct[ri],
                    peer=strip_thinking(_get(rollouts[peer], "text") or "")
                    if peer is not None
                    else None,
                    feedback=_get(rollout, "feedback"),
                )
                jobs.append(
                    ReflectionJob(gi, ri, kind, message, ids, peer, derive_seed(seed, gi, ri))
                )
        return jobs

    def _fit(
        self,
        path: str,
        template_field: str | None,
        template: str,
        *,
        problem: str,
        attempt: str,
        correct: bool,
        peer: str | None,
        feedback: str | None,
    ) -> tuple[str, tuple[int, ...]]:
        """Render, right-truncating attempt and peer until prompt + max_tokens fits.

        No message longer than ``limit`` tokens can fit, so none is built longer than ``limit``
        times the longest token in characters: a caller's text or template never makes the server
        build (or tokenise) a prompt much larger than the model holds."""
        limit = self.max_model_len - self.max_tokens
        max_chars = limit * longest_token_chars(self.tokenizer)

        def render(a: str, p: str | None) -> str:
            try:
                return render_message(
                    template,
                    problem=problem,
                    attempt=a,
                    correct=correct,
                    peer=p,
                    feedback=feedback,
                    max_chars=max_chars,
                )
            except T.PromptTooLarge as exc:
                sources = {
                    "problem": f"{path.split('.')[0]}.problem",
                    "feedback": f"{path}.feedback",
                    "feedback_block": f"{path}.feedback",
                }
                field = sources.get(exc.placeholder) or template_field or path
                raise ServiceError(
                    422,
                    f"{field}: the reflection prompt for {path} cannot fit the model's "
                    f"max_model_len {self.max_model_len} with max_tokens {self.max_tokens}: {exc}",
                    field=field,
                ) from None

        # Text past max_chars cannot survive the token cut below: drop it before anything else.
        attempt = attempt[:max_chars]
        peer = peer[:max_chars] if peer is not None else None
        try:
            message = render(attempt, peer)
        except ServiceError:
            message = None  # too long whole: cut attempt and peer below
        if message is not None:
            ids = self.ctx.chat_ids(message)
            if len(ids) <= limit:
                return message, ids
        free = limit - len(self.ctx.chat_ids(render("", "" if peer is not None else None)))
        if free <= 0:
            raise ServiceError(
                422,
                f"{path}: the reflection prompt without attempt and peer already takes "
                f"{limit - free} tokens; with max_tokens {self.max_tokens} it exceeds the model's "
                f"max_model_len {self.max_model_len}",
                field=template_field or path,  # a caller's template that is too long is to blame
            )
        n_attempt = len(self.tokenizer.encode(attempt, add_special_tokens=False))
        n_peer = len(self.tokenizer.encode(peer, add_special_tokens=False)) if peer else 0
        for _ in range(4):  # re-tokenising a cut text can merge differently: shrink and retry
            a_budget = min(n_attempt, max(free // 2, free - n_peer))
            p_budget = max(0, free - a_budget)
            message = render(
                self.ctx.truncate(attempt, a_budget),
                self.ctx.truncate(peer, p_budget) if peer is not None else None,
            )
            ids = self.ctx.chat_ids(message)
            if len(ids) <= limit:
                return message, ids
            free -= len(ids) - limit
        raise ServiceError(422, f"{path}: cannot fit the reflection prompt", field=path)


# ---- generation and parsing --------------------------------------------------------------------


def stop_ids(tokenizer) -> dict[str, tuple[int, ...]]:
    """Per kind: eos, plus ``</kind>`` when the tokenizer has it as one token."""
    eos = tokenizer.eos_token_id
    out = {}
    for kind in KINDS:
        close = tokenizer.encode(f"</{kind}>", add_special_tokens=False)
        ids = ([eos] if eos is not None else []) + (close if len(close) == 1 else [])
        out[kind] = tuple(dict.fromkeys(int(i) for i in ids))
    return out


def cut_at_sentence(text: str) -> str:
    """``text`` up to and including its last sentence end followed by whitespace ("" if none)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def parse_reflection(
    generated: str,
    kind: str,
    finish_reason: str,
    *,
    answers: Sequence[str] = (),
    peer_index: int | None = None,
) -> Reflection:
    """Turn one decoded generation into a ``Reflection`` (rules in the module docstring)."""

    def fallback(reason: str, leaked: bool = False) -> Reflection:
        return Reflection(
            kind=kind, text="", peer_index=peer_index, leaked=leaked, fallback=True, reason=reason
        )

    text = strip_thinking(generated)
    open_tag, close_tag = f"<{kind}>", f"</{kind}>"
    start = text.find(open_tag)
    if start < 0:
        return fallback("no_tag")
    rest = text[start + len(open_tag) :]
    end = rest.find(close_tag)
    reason = None
    if end >= 0:
        inner = rest[:end]
    elif finish_reason == "stop":
        inner = rest  # ended on eos or on the closing tag (a stop id the engine drops)
    else:
        inner, reason = cut_at_sentence(rest), "truncated"
        if not inner:
            return fallback("truncated")
    inner = inner.strip()
    if not inner:
        return fallback("empty")
    if any(mentions_answer(inner, answer) for answer in answers):
        return fallback("leaked", leaked=True)
    return Reflection(kind=kind, text=inner, peer_index=peer_index, reason=reason)


def parse_outputs(
    tokenizer, groups: Sequence[Any], jobs: list[ReflectionJob], outputs: list[GenerateOutput]
) -> list[list[Reflection | None]]:
    """Decode and parse every generation into its rollout's slot (None where none was asked)."""
    answers = [leak_answers(g) for g in groups]
    out: list[list[Reflection | None]] = [[None] * len(_get(g, "rollouts") or ()) for g in groups]
    for job, gen in zip(jobs, outputs):
        text = tokenizer.decode(gen.token_ids, skip_special_tokens=True)
        out[job.group][job.index] = parse_reflection(
            text,
            job.kind,
            gen.finish_reason,
            answers=answers[job.group],
            peer_index=job.peer_index,
        )
    return out


async def reflect_rollouts(
    engine: TeacherEngine,
    groups: Sequence[Any],
    *,
    max_tokens: int = 256,
    temperature: float = 0.7,
    seed: int = 0,
    templates: Any = None,
    select: Sequence[Sequence[bool]] | None = None,
    generate: Callable[[list[GenerateItem]], Awaitable[list[GenerateOutput]]] | None = None,
) -> list[list[Reflection | None]]:
    """One ``Reflection`` per rollout, groups in order, all generated in one engine batch.

    ``groups``: wire ``HintGroup``s, or dicts / objects with ``problem``, optional
    ``reference_answer`` / ``reference_solution`` (leak guard only) and ``rollouts``, each with
    ``text``, ``correct`` (bool) and optional ``feedback``. ``templates``: optional object or dict
    with ``hint`` / ``critique`` overrides. ``select``: per group, per rollout, whether to reflect
    on it (default all); unselected rollouts still serve as peers and come back as None. Same
    ``seed``, same texts for the selected ones whatever is selected. Takes no weights lease: the caller holds
    ``runtime.gate.reading(...)`` around it. Raises ``ServiceError`` 422 naming
    ``max_tokens``, ``groups[g].problem`` or ``groups[g].rollouts[i]`` when a prompt cannot fit.
    ``generate``: where the prompts go; the server passes ``Batcher.generate`` (queue, 429,
    ``TC_MAX_GENERATE_TOKENS``, scoring first); ``engine.generate`` when left out.
    """
    builder = PromptBuilder(engine.tokenizer, engine.info.max_model_len, max_tokens)
    # Tokenizing caller text and the leak checks run in worker threads: megabytes of text take
    # seconds, which on the event loop would stall every other request and /healthz.
    jobs = await asyncio.to_thread(builder.build, groups, seed, templates, select)
    stops = stop_ids(engine.tokenizer)
    items = [
        GenerateItem(
            prompt_ids=job.prompt_ids,
            max_tokens=max_tokens,
            temperature=temperature,
            seed=job.seed,
            stop_ids=stops[job.kind],
        )
        for job in jobs
    ]
    generate = generate or engine.generate
    outputs: list[GenerateOutput] = await generate(items) if items else []
    out = await asyncio.to_thread(parse_outputs, engine.tokenizer, groups, jobs, outputs)
    n = len(jobs)
    if n:
        reasons: dict[str, int] = {}
        for r in (r for g in out for r in g if r is not None and r.reason):
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        log.info("reflections: %d written, reasons %s", n, reasons or "none")
    return out


async def hints(runtime: Runtime, request: HintsRequest) -> dict[str, Any]:
    """``POST /v1/hints``: reflections for every rollout under one weights version."""
    engine, batcher = runtime.require_engine()
    async with runtime.gate.reading(request.min_weights_version) as version:
        groups = await reflect_rollouts(
            engine,
            request.groups,
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            templates=request.templates,
            generate=batcher.generate,  # admitted: queue (429) and token cap (413)
        )
    return {
        "weights_version": version,
        "groups": [{"reflections": [r.model_dump() for r in g]} for g in groups],
    }
