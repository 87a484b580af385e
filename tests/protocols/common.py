"""Shared helpers of the protocol tests: sequences to score and an independent reference."""

from __future__ import annotations

import numpy as np
import torch


def reference_logprobs(hf_model, ids: list[int]) -> np.ndarray:
    """log p(ids[j] | ids[:j]) for j >= 1, by a plain transformers forward in float32."""
    model, _ = hf_model
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logp = logits.log_softmax(-1)[:-1]  # (L-1, V): row j-1 predicts ids[j]
    return logp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()


def sequences(tokenizer) -> tuple[list[list[int]], list[int]]:
    prompts = ["What is 2+3?", "Compute 7*6.", "1+1="]
    answers = ["2+3=5. \\boxed{5}", "7*6 = 42, so \\boxed{42}", "2"]
    seqs, lengths = [], []
    for p, a in zip(prompts, answers):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": p}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        seqs.append(list(prompt) + tokenizer.encode(a))
        lengths.append(len(prompt))
    return seqs, lengths
