"""Fixtures for the vLLM engine tests: a model folder, one engine per module, an event loop.

The model is ``TC_TEST_MODEL``, else the embedded ``server/default_model`` when it is there, else a
tiny random Qwen3 (hidden 64, 2 layers, head_dim 32: the smallest head vLLM's CPU attention takes)
with its own byte-level BPE tokenizer, built in a temporary folder.

vLLM starts its engine core with ``spawn``; pytest's entry point guards ``__main__``, so an
``AsyncLLM`` built in the test process works. It is built once per module on a private event loop
(``Loop.run`` drives a coroutine to completion) and shut down at the end.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from server.settings import DEFAULT_MODEL_DIR, Settings

MAX_MODEL_LEN = 512
MAX_TOP_K = 8


def build_tiny_qwen3(folder: Path, seed: int = 0) -> Path:
    """A random Qwen3ForCausalLM with a real tokenizer, saved as a Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    words = "system user assistant the answer is twelve plus seven equals nineteen so we carry one"
    tok.train_from_iterator(
        [f"{words} {i} + {i * 7 % 100} = {i + i * 7 % 100}" for i in range(400)], trainer
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config).float()
    with torch.no_grad():  # varied next-token entropies (about 0.5-5 nats) instead of ~log(vocab)
        model.model.embed_tokens.weight.mul_(6.0)
    model.save_pretrained(folder)
    return folder


class Loop:
    """A private event loop that outlives single tests (the engine's output handler lives on it)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.loop.close()


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory) -> Path:
    chosen = os.environ.get("TC_TEST_MODEL")
    if chosen:
        return Path(chosen)
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR
    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="module")
def loop():
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def engine(loop, vllm_model_dir):
    from server.engines.vllm import VLLMEngine

    settings = Settings(
        model=str(vllm_model_dir),
        backend="vllm",
        device="cpu",
        dtype="float32",
        max_model_len=MAX_MODEL_LEN,
        max_top_k=MAX_TOP_K,
        enable_prefix_caching=True,
    )
    eng = loop.run(VLLMEngine.create(settings))
    yield eng
    loop.run(eng.close())


@pytest.fixture(scope="module")
def reference(vllm_model_dir):
    """Direct transformers log-probs, float32: ``reference(ids) -> (len(ids), vocab)`` tensor."""
    return _make_reference(vllm_model_dir)


@pytest.fixture(scope="session")
def make_reference():
    """``make_reference(folder)`` -> the ``reference`` function for another model folder."""
    return _make_reference


def _make_reference(folder):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    @torch.no_grad()
    def logprobs(ids):
        return model(torch.tensor([list(ids)])).logits.float().log_softmax(-1)[0]

    return logprobs
