"""One real training step of TRL 1.16's ``ServerDistillationTrainer`` with its teacher URL pointing
at a live tokencredit server (the embedded model as student and teacher, on CPU).

TRL's own test of this trainer replaces ``VLLMClient`` with a mock; here nothing is replaced: the
student generates, TRL's client posts ``/v1/completions`` with ``prompt_logprobs``, tokencredit
answers, and the step's loss and gradient come out finite and nonzero.
"""

from __future__ import annotations

import math
import re

import httpx


def completions_served(url: str) -> float:
    """Requests ``/v1/completions`` has answered with 200, from the server's Prometheus metrics."""
    text = httpx.get(url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        route_ok = '"/v1/completions"' in line and re.search(r'status="200"', line)
        if line.startswith("tokencredit_requests_total") and route_ok:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_server_distillation_trainer_step(hf_server, model_path, tmp_path):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.server_distillation import (
        ServerDistillationConfig,
        ServerDistillationTrainer,
    )

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    student = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    dataset = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": "What is 2+3?"}]},
            {"prompt": [{"role": "user", "content": "What is 7*6?"}]},
        ]
    )
    config = ServerDistillationConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_steps=1,
        learning_rate=1e-3,
        max_completion_length=8,
        teacher_model_server_url=hf_server.url,
        loss_top_k=1,
        beta=1.0,
        loss_add_tail=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        use_cpu=True,
        bf16=False,
    )
    served_before = completions_served(hf_server.url)
    trainer = ServerDistillationTrainer(
        model=student, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    trainer.train()

    assert completions_served(hf_server.url) > served_before  # the teacher was tokencredit
    logs = [rec for rec in trainer.state.log_history if "grad_norm" in rec]
    assert logs, trainer.state.log_history
    assert math.isfinite(logs[0]["loss"]) and math.isfinite(logs[0]["grad_norm"])
    assert logs[0]["grad_norm"] > 0
    changed = sum(
        not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters()
    )
    assert changed > 0  # one optimizer step moved the student
