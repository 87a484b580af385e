"""Transformers engine: exact per-token log-probs, top-k and full-vocabulary entropy.

Scoring never builds a ``[tokens, vocab]`` float tensor for a whole batch: the decoder runs once
per batch to hidden states, then only the rows that predict target tokens go through the LM head,
``chunk_rows`` at a time (as TRL's ``entropy_from_logits`` chunks rows to cap memory).

Naive equivalent, one sequence (what the tests compare against)::

    logp = model(ids).logits[0].float().div(T).log_softmax(-1)      # (L, V)
    lp_j = logp[len(ctx) - 1 + j, target[j]]

Batches are planned by length under ``max_batch_tokens`` (sorted, so padding stays small), and
items that share a long context (the G rollouts of a group scored under one teacher context) run
the context once and reuse its KV cache for every target. Many groups go through one forward
(contexts left-padded under an attention mask), so sharing does not shrink the batches a GPU sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from proto.weights_push import TensorSpec
from server.engines.base import (
    EngineInfo,
    GenerateItem,
    GenerateOutput,
    ScoreItem,
    ScoreOutput,
    WeightsError,
)
from server.settings import Settings

log = logging.getLogger(__name__)

# Floats of one LM-head chunk: rows * vocab <= this (32 MiB of float32 on CPU; 512 MiB on a GPU,
# where each chunk costs kernel launches and a small chunk leaves the device idle).
HEAD_CHUNK_ELEMENTS = {"cpu": 8 * 1024 * 1024, "cuda": 128 * 1024 * 1024}
# A context shared by at least this many items, and at least this long, is computed once.
SHARED_PREFIX_MIN_ITEMS = 2
SHARED_PREFIX_MIN_TOKENS = 8
# A padded batch's longest sequence is at most this many times its shortest.
MAX_PAD_RATIO = 1.25

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# vLLM's ``_SAMPLING_EPS``: generation below this temperature is greedy on both backends.
GREEDY_BELOW_TEMPERATURE = 1e-5


def tokenizer_sha256(model_path: str, tokenizer) -> str:
    """sha256 of tokenizer.json when present (same bytes, same tokenizer), else of the vocab."""
    file = Path(model_path) / "tokenizer.json"
    if file.is_file():
        return hashlib.sha256(file.read_bytes()).hexdigest()
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(vocab.encode()).hexdigest()


def resolve_device_dtype(settings: Settings) -> tuple[str, torch.dtype]:
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.dtype == "auto":
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
    else:
        dtype = DTYPES[settings.dtype]
    return device, dtype


@dataclass
class _SharedUnit:
    """Items scored on one copy of a shared context's KV cache."""

    context: tuple[int, ...]
    members: list[int]  # item indices, sorted by target length
    longest: int  # longest target among them


@dataclass
class _Rows:
    """Hidden states that predict target tokens, flattened over a batch."""

    hidden_NH: torch.Tensor  # (N, H)
    targets_N: torch.Tensor  # (N,)
    owners: list[tuple[int, int, int]]  # (item index, start row, length)


class HFEngine:
    """``TeacherEngine`` on transformers; forward passes run one at a time in a worker thread."""

    def __init__(
        self, model: PreTrainedModel, tokenizer, settings: Settings, device: str, dtype: torch.dtype
    ):
        self._model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self._lock = threading.Lock()  # one forward at a time; torch already uses every core
        self.share_prefixes = True  # off only to measure what sharing saves (benchmarks/credit.py)
        # Context tokens computed once for a group instead of once per item (benchmarks read it).
        self.stats = {"prefix_cached_tokens": 0}
        config = model.config
        self.info = EngineInfo(
            model=settings.model_path,
            backend="hf",
            dtype=str(dtype).removeprefix("torch."),
            device=device,
            vocab_size=int(config.vocab_size),
            max_model_len=settings.max_model_len or int(config.max_position_embeddings),
            max_top_k=settings.max_top_k,
            entropy_kind="exact",
            tokenizer_sha256=tokenizer_sha256(settings.model_path, tokenizer),
        )

    # ---- construction -----------------------------------------------------------------------

    @classmethod
    async def create(cls, settings: Settings) -> HFEngine:
        return await asyncio.to_thread(cls.load, settings)

    @classmethod
    def load(cls, settings: Settings) -> HFEngine:
        device, dtype = resolve_device_dtype(settings)
        tokenizer = AutoTokenizer.from_pretrained(settings.model_path)
        model = _load_model(settings.model_path, device, dtype)
        return cls(model, tokenizer, settings, device, dtype)

    # ---- protocol ---------------------------------------------------------------------------

    async def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        return await asyncio.to_thread(self.score_sync, items)

    async def generate(self, items: list[GenerateItem]) -> list[GenerateOutput]:
        return await asyncio.to_thread(self.generate_sync, items)

    async def prepare_weights(self, path: str) -> PreTrainedModel:
        return await asyncio.to_thread(self._prepare_weights_sync, path)

    async def swap_weights(self, prepared: PreTrainedModel) -> None:
        with self._lock:
            self._model = prepared

    def tensor_specs(self) -> dict[str, TensorSpec]:
        """What a weights push must carry (server/weights_push.py): every tensor of the state
        dict once, with the serving dtype and shape. A tied alias (``lm_head.weight`` sharing the
        input embedding's storage) is left out, as ``named_parameters()`` leaves it out."""
        specs, seen = {}, set()
        for name, tensor in self._model.state_dict().items():
            key = (tensor.data_ptr(), tuple(tensor.shape))
            if key in seen:
                continue
            seen.add(key)
            specs[name] = TensorSpec(
                name=name, dtype=str(tensor.dtype).removeprefix("torch."), shape=list(tensor.shape)
            )
        return specs

    async def install_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Make pushed tensors (checked against ``tensor_specs``) the serving weights. Called with
        no request in flight (the weights gate drains).

        No copy: each parameter's storage is pointed at the received tensor (``param.data = t``),
        so the swap is instant and the old storage is freed. A tied LM head is the same
        ``Parameter`` object as the input embedding, so it follows."""
        tensors = {n: t.to(self.device) for n, t in tensors.items()}
        with self._lock:
            owners = dict(self._model.named_parameters()) | dict(self._model.named_buffers())
            for name, tensor in tensors.items():
                owners[name].data = tensor

    async def warmup(self) -> None:
        ids = tuple(self.tokenizer.encode("1+1=2")) or (0,)
        await self.score([ScoreItem(ids[:1], ids[1:] or ids, top_k=1, entropy=True)])

    async def close(self) -> None:
        self._model = None

    # ---- scoring ----------------------------------------------------------------------------

    @torch.inference_mode()
    def score_sync(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        outputs: list[ScoreOutput | None] = [None] * len(items)
        with self._lock:
            model = self._model
            shared, single = self._split_shared_prefixes(items)
            for units in self._pack_units(self._shared_units(shared, items)):
                self._score_shared(model, items, units, outputs)
            for chunk in self._budget_chunks(
                sorted(single, key=lambda i: items[i].num_tokens), items
            ):
                self._score_padded(model, items, chunk, outputs)
        return outputs  # type: ignore[return-value]

    def _split_shared_prefixes(
        self, items: list[ScoreItem]
    ) -> tuple[dict[tuple, list[int]], list[int]]:
        by_context: dict[tuple, list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            by_context[item.context_ids].append(i)
        shared, single = {}, []
        for context, members in by_context.items():
            if (
                self.share_prefixes
                and len(members) >= SHARED_PREFIX_MIN_ITEMS
                and len(context) >= SHARED_PREFIX_MIN_TOKENS
            ):
                shared[context] = members
            else:
                single.extend(members)
        return shared, single

    def _shared_units(self, shared: dict[tuple, list[int]], items: list[ScoreItem]):
        for context, members in shared.items():
            by_length = sorted(members, key=lambda i: len(items[i].target_ids))
            for chunk in self._split_group(by_length, items, len(context)):
                yield _SharedUnit(context, chunk, len(items[chunk[-1]].target_ids))

    def _split_group(self, order: list[int], items: list[ScoreItem], context_len: int):
        """Split one context's items (sorted by target length) into runs that minimise computed
        tokens: each run pays its context once plus rows x its longest target (the padding).
        A run also holds a copy of the context's KV per row, so rows x (context + longest) must
        fit the budget, as the same rows would unshared. Exact dynamic programme over split
        points; groups are small."""
        lengths = [len(items[i].target_ids) for i in order]
        budget = self.settings.max_batch_tokens
        best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j items
        cut = [0] * (len(order) + 1)
        for j in range(1, len(order) + 1):
            for i in range(j - 1, -1, -1):  # run = items i..j-1; its longest is lengths[j-1]
                held = (j - i) * (context_len + lengths[j - 1])  # KV copies + targets
                if held > budget and j - i > 1:
                    break
                cost = context_len + (j - i) * lengths[j - 1]
                if best[i] + cost < best[j]:
                    best[j], cut[j] = best[i] + cost, i
        runs, j = [], len(order)
        while j:
            runs.append(order[cut[j] : j])
            j = cut[j]
        return runs[::-1]

    def _pack_units(self, units) -> list[list[_SharedUnit]]:
        """Units sorted by longest target, packed into one forward while what the target forward
        holds (rows x (longest context + longest target): a KV copy of its context per row) fits
        the budget and neither the contexts nor the targets of a pack differ by more than
        ``MAX_PAD_RATIO``."""
        budget = self.settings.max_batch_tokens
        packs: list[list[_SharedUnit]] = []
        pack: list[_SharedUnit] = []
        for unit in sorted(units, key=lambda u: u.longest):
            if pack:
                contexts = [len(u.context) for u in (*pack, unit)]
                rows = sum(len(u.members) for u in pack) + len(unit.members)
                held = rows * (max(contexts) + unit.longest)
                ragged = max(contexts) > MAX_PAD_RATIO * min(contexts) or (
                    unit.longest > MAX_PAD_RATIO * max(pack[0].longest, 1)
                )
                if held > budget or ragged:
                    packs.append(pack)
                    pack = []
            pack.append(unit)
        if pack:
            packs.append(pack)
        return packs

    def _budget_chunks(self, order: list[int], items: list[ScoreItem]):
        """Consecutive runs of ``order`` (sorted by length) whose padded size (rows x longest)
        fits the token budget, and whose longest item is at most ``MAX_PAD_RATIO`` x the shortest,
        so padding never costs more than a fifth of a batch's compute."""
        budget = self.settings.max_batch_tokens
        chunk: list[int] = []
        longest = shortest = 0
        for i in order:
            n = items[i].num_tokens
            too_big = (len(chunk) + 1) * max(longest, n) > budget
            too_ragged = n > MAX_PAD_RATIO * max(shortest, 1)
            if chunk and (too_big or too_ragged):
                yield chunk
                chunk, longest = [], 0
            if not chunk:
                shortest = n
            chunk.append(i)
            longest = max(longest, n)
        if chunk:
            yield chunk

    def _score_padded(self, model, items, chunk: list[int], outputs) -> None:
        """Right-padded batch; rows for target j sit at position len(context) - 1 + j.

        No attention mask: with padding on the right, a real token's causal window holds only
        real tokens, so plain causal attention (the fast SDPA path) gives exact results for every
        row we read; the pad positions' outputs are never used.
        """
        seqs = [items[i].context_ids + items[i].target_ids for i in chunk]
        longest = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids_BT = torch.full((len(seqs), longest), pad, dtype=torch.long)
        for b, seq in enumerate(seqs):
            ids_BT[b, : len(seq)] = torch.tensor(seq)
        hidden_BTH = _decoder(model)(
            input_ids=ids_BT.to(self.device), use_cache=False
        ).last_hidden_state
        batch_idx, pos_idx, targets, owners, start = [], [], [], [], 0
        for b, i in enumerate(chunk):
            ctx, tgt = items[i].context_ids, items[i].target_ids
            batch_idx += [b] * len(tgt)
            pos_idx += range(len(ctx) - 1, len(ctx) - 1 + len(tgt))
            targets += tgt
            owners.append((i, start, len(tgt)))
            start += len(tgt)
        rows = _Rows(
            hidden_NH=hidden_BTH[
                torch.tensor(batch_idx, dtype=torch.long), torch.tensor(pos_idx, dtype=torch.long)
            ],
            targets_N=torch.tensor(targets, dtype=torch.long),
            owners=owners,
        )
        self._head(model, rows, items, outputs)

    def _score_shared(self, model, items, units: list[_SharedUnit], outputs) -> None:
        """Run every unit's context once (left-padded, one forward), then all their targets on
        copies of those KV caches (right-padded, one forward).

        Left padding keeps each context's last token at the same column, and position ids count
        real tokens only, so every row sees exactly what it would see alone; pad keys are masked.
        """
        decoder = _decoder(model)
        G, C = len(units), max(len(u.context) for u in units)
        ctx_GC = torch.zeros((G, C), dtype=torch.long)
        mask_GC = torch.zeros((G, C), dtype=torch.long)
        for g, unit in enumerate(units):
            ctx_GC[g, C - len(unit.context) :] = torch.tensor(unit.context)
            mask_GC[g, C - len(unit.context) :] = 1
        padded = bool((mask_GC == 0).any())
        mask_GC = mask_GC.to(self.device)
        out = decoder(
            input_ids=ctx_GC.to(self.device),
            attention_mask=mask_GC if padded else None,
            position_ids=(mask_GC.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
        )
        last_GH = out.last_hidden_state[:, -1]  # predicts token 0 of every target of the unit
        row_unit = [g for g, unit in enumerate(units) for _ in unit.members]
        members = [i for unit in units for i in unit.members]
        self.stats["prefix_cached_tokens"] += sum(
            (len(u.members) - 1) * len(u.context) for u in units
        )
        # Feed target[:-1]: the hidden state of target j-1 predicts target j.
        fed = [items[i].target_ids[:-1] for i in members]
        longest = max(len(f) for f in fed)
        hidden_NTH = None
        if longest:
            ids_NT = torch.zeros((len(fed), longest), dtype=torch.long)  # right-padded
            for b, f in enumerate(fed):
                ids_NT[b, : len(f)] = torch.tensor(f, dtype=torch.long)
            row_unit_N = torch.tensor(row_unit, device=self.device)
            cache = out.past_key_values
            cache.batch_select_indices(row_unit_N)  # a copy of its unit's context per row
            context_lens_N = mask_GC.sum(-1)[row_unit_N]
            position_ids = context_lens_N[:, None] + torch.arange(longest, device=self.device)
            mask_NT = None
            if padded:
                ones = torch.ones((len(fed), longest), dtype=torch.long, device=self.device)
                mask_NT = torch.cat([mask_GC[row_unit_N], ones], dim=1)
            hidden_NTH = decoder(
                input_ids=ids_NT.to(self.device),
                attention_mask=mask_NT,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state
        pieces, targets, owners, start = [], [], [], 0
        for b, (g, i) in enumerate(zip(row_unit, members)):
            tgt = items[i].target_ids
            if not tgt:
                owners.append((i, start, 0))
                continue
            pieces.append(last_GH[g][None])
            if len(tgt) > 1:
                pieces.append(hidden_NTH[b, : len(tgt) - 1])
            targets += tgt
            owners.append((i, start, len(tgt)))
            start += len(tgt)
        hidden_NH = torch.cat(pieces) if pieces else last_GH[:0]
        rows = _Rows(
            hidden_NH=hidden_NH, targets_N=torch.tensor(targets, dtype=torch.long), owners=owners
        )
        self._head(model, rows, items, outputs)

    def _head(self, model, rows: _Rows, items: list[ScoreItem], outputs) -> None:
        """LM head + log-softmax + top-k + entropy, ``chunk_rows`` rows at a time, in float32.

        Per row, when asked: the target's vocabulary rank ``#{v: logit_v >= logit_target}`` (vLLM's
        ``rank``), and for caller-chosen candidates ``c`` their log-probs ``logit_c - logZ`` and the
        tail ``log(1 - sum_c p_c) = logsumexp(logits without c) - logZ`` (docs/protocols.md).
        """
        head = model.get_output_embeddings()
        N = rows.hidden_NH.shape[0]
        temps_N = torch.ones(N)
        k = 0
        want_entropy = want_ranks = False
        C = max(
            (
                len(items[i].candidate_ids[0])
                for i, _, n in rows.owners
                if n and items[i].candidate_ids
            ),
            default=0,
        )
        cand_NC = torch.zeros((N, C), dtype=torch.long)  # candidate ids, rows padded by repeats
        for i, start, length in rows.owners:
            temps_N[start : start + length] = items[i].temperature
            k = max(k, items[i].top_k)
            want_entropy |= items[i].entropy
            want_ranks |= items[i].ranks
            if C and length and items[i].candidate_ids:
                rows_LC = torch.tensor(items[i].candidate_ids, dtype=torch.long)  # (L, c)
                cand_NC[start : start + length] = rows_LC[:, -1:].expand(length, C)
                cand_NC[start : start + length, : rows_LC.shape[1]] = rows_LC
        # Results stay on the device until the end: one copy to the host, not one per chunk.
        dev = self.device
        lp_N = torch.empty(N, device=dev)
        ent_N = torch.empty(N, device=dev) if want_entropy else None
        topv_NK = torch.empty((N, k), device=dev)
        topi_NK = torch.empty((N, k), dtype=torch.long, device=dev)
        rank_N = torch.empty(N, dtype=torch.long, device=dev) if want_ranks else None
        cand_lp_NC = torch.empty((N, C), device=dev)
        tail_N = torch.empty(N, device=dev) if C else None
        cand_NC = cand_NC.to(dev)
        chunk_rows = max(
            1, HEAD_CHUNK_ELEMENTS.get(dev, HEAD_CHUNK_ELEMENTS["cpu"]) // self.info.vocab_size
        )
        targets_N = rows.targets_N.to(dev)
        temps_N = temps_N.to(dev)
        for s in range(0, N, chunk_rows):
            e = min(N, s + chunk_rows)
            logits_nV = head(rows.hidden_NH[s:e]).float() / temps_N[s:e, None]  # (n, V)
            logz_n = torch.logsumexp(logits_nV, dim=-1)
            target_n1 = logits_nV.gather(1, targets_N[s:e, None])  # (n, 1)
            lp_N[s:e] = target_n1[:, 0] - logz_n
            if rank_N is not None:
                # vLLM's rank: how many ids score at least as high as the target (1 = argmax)
                rank_N[s:e] = (logits_nV >= target_n1).sum(-1)
            if C:
                cand_lp_NC[s:e] = logits_nV.gather(1, cand_NC[s:e]) - logz_n[:, None]
                # Tail mass outside the candidates, log(1 - sum_c p_c), as a log-sum-exp over
                # the other ids: exact even when the candidates hold nearly all the mass.
                rest_nV = logits_nV.scatter(1, cand_NC[s:e], float("-inf"))
                tail_N[s:e] = torch.logsumexp(rest_nV, dim=-1) - logz_n
            if k:
                v, idx = logits_nV.topk(k, dim=-1)
                topv_NK[s:e] = v - logz_n[:, None]
                topi_NK[s:e] = idx
            if ent_N is not None:
                # H = -sum p log p, with log p = logit - logZ (no cancellation against logZ)
                logp_nV = logits_nV - logz_n[:, None]
                ent_N[s:e] = -(logp_nV.exp() * logp_nV).sum(-1)
        lp_N, topv_NK, topi_NK = lp_N.cpu(), topv_NK.cpu(), topi_NK.cpu()
        ent_N = ent_N.cpu() if ent_N is not None else None
        rank_N = rank_N.cpu() if rank_N is not None else None
        cand_lp_NC = cand_lp_NC.cpu()
        tail_N = tail_N.cpu() if tail_N is not None else None
        for i, start, length in rows.owners:
            item, sl = items[i], slice(start, start + length)
            c = len(item.candidate_ids[0]) if item.candidate_ids else 0
            outputs[i] = ScoreOutput(
                logprobs=lp_N[sl].numpy().astype(np.float32),
                entropy=ent_N[sl].numpy().astype(np.float32) if item.entropy else None,
                topk_ids=topi_NK[sl, : item.top_k].numpy().astype(np.int32) if item.top_k else None,
                topk_logprobs=topv_NK[sl, : item.top_k].numpy().astype(np.float32)
                if item.top_k
                else None,
                ranks=rank_N[sl].numpy().astype(np.int32) if item.ranks else None,
                candidate_logprobs=cand_lp_NC[sl, :c].numpy().astype(np.float32)
                if item.candidate_ids
                else None,
                candidate_tail=tail_N[sl].numpy().astype(np.float32)
                if item.candidate_ids and tail_N is not None
                else (np.zeros(0, np.float32) if item.candidate_ids else None),
            )

    # ---- generation -------------------------------------------------------------------------

    @torch.inference_mode()
    def generate_sync(self, items: list[GenerateItem]) -> list[GenerateOutput]:
        """Ancestral sampling with a KV cache; each item has its own seeded generator.

        Left padding with ``position_ids = cumsum(mask) - 1`` keeps every row's numbers equal to
        generating it alone, so a seed gives the same text whatever the batch.
        """
        if not items:
            return []
        with self._lock:
            model = self._model
            n = len(items)
            longest = max(len(it.prompt_ids) for it in items)
            pad = self.tokenizer.pad_token_id or 0
            ids_BT = torch.full((n, longest), pad, dtype=torch.long)
            mask_BT = torch.zeros((n, longest), dtype=torch.long)
            for b, it in enumerate(items):
                ids_BT[b, longest - len(it.prompt_ids) :] = torch.tensor(it.prompt_ids)
                mask_BT[b, longest - len(it.prompt_ids) :] = 1
            gens = [
                torch.Generator().manual_seed(it.seed if it.seed is not None else 0) for it in items
            ]
            eos = {self.tokenizer.eos_token_id} - {None}
            stops = [eos | set(it.stop_ids) for it in items]
            out_ids: list[list[int]] = [[] for _ in items]
            done = [it.max_tokens <= 0 for it in items]
            finish = ["length"] * n
            stop_id: list[int | None] = [None] * n
            ids_BT, mask_BT = ids_BT.to(self.device), mask_BT.to(self.device)
            cache, step_ids = None, ids_BT
            max_steps = max(it.max_tokens for it in items)
            max_steps = min(max_steps, self.info.max_model_len - longest)
            for _ in range(max(0, max_steps)):
                if all(done):
                    break
                position_ids = (mask_BT.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1] :]
                out = model(
                    input_ids=step_ids,
                    attention_mask=mask_BT,
                    position_ids=position_ids,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                cache = out.past_key_values
                logits_BV = out.logits[:, -1].float().cpu()
                next_ids = []
                for b, it in enumerate(items):
                    if done[b]:
                        next_ids.append(pad)
                        continue
                    # Greedy below 1e-5, as vLLM does: logits / T overflows for a tiny T (NaN).
                    if it.temperature < GREEDY_BELOW_TEMPERATURE:
                        tok = int(logits_BV[b].argmax())
                    else:
                        probs = torch.softmax(logits_BV[b] / it.temperature, dim=-1)
                        tok = int(torch.multinomial(probs, 1, generator=gens[b]))
                    next_ids.append(tok)
                    if tok in stops[b]:
                        done[b], finish[b], stop_id[b] = True, "stop", tok
                    else:
                        out_ids[b].append(tok)
                        if len(out_ids[b]) >= it.max_tokens:
                            done[b] = True
                step_ids = torch.tensor(next_ids, dtype=torch.long, device=self.device)[:, None]
                alive = torch.tensor(
                    [0 if d else 1 for d in done], dtype=torch.long, device=self.device
                )
                mask_BT = torch.cat([mask_BT, alive[:, None]], dim=1)
        return [
            GenerateOutput(token_ids=ids, finish_reason=f, stop_id=sid)  # type: ignore[arg-type]
            for ids, f, sid in zip(out_ids, finish, stop_id)
        ]

    # ---- weights ----------------------------------------------------------------------------

    def _prepare_weights_sync(self, path: str) -> PreTrainedModel:
        started = time.perf_counter()
        try:
            model = _load_model(path, self.device, self.dtype)
        except Exception as exc:  # transformers raises many kinds; all mean "cannot load"
            raise WeightsError(f"cannot load weights from {path}: {exc}") from exc
        old, new = self._model.config, model.config
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "model_type"):
            if getattr(old, key, None) != getattr(new, key, None):
                raise WeightsError(
                    f"checkpoint {key}={getattr(new, key, None)} does not match the served model's "
                    f"{getattr(old, key, None)}"
                )
        log.info("prepared weights from %s in %.2fs", path, time.perf_counter() - started)
        return model


def _load_model(path: str, device: str, dtype: torch.dtype) -> PreTrainedModel:
    # safetensors only: a pytorch_model.bin is a pickle, and a weights folder is named by a request.
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, output_loading_info=True, use_safetensors=True
    )
    # transformers fills missing weights with random values and only warns: refuse instead.
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "mismatched_keys")}
    if problems:
        raise WeightsError(f"checkpoint at {path} does not fit the model: {problems}")
    return model.to(device).eval()


def _decoder(model: PreTrainedModel):
    """The transformer body (no LM head), e.g. ``Qwen3ForCausalLM.model``."""
    return getattr(model, model.base_model_prefix)
