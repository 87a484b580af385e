"""``python -m trainer.trl --method hsd --steps 100``: TRL GRPO with tokencredit's per-token credit.

Defaults train the embedded model (``server/default_model``) on the arithmetic task (16 prompts
x 8 samples per step, lr 1e-4 after 10 warm-up steps, constant) and start a teacher server as a
subprocess (``python -m uvicorn server.app:app``, hf backend, ``TC_WEIGHTS_ROOT`` inside the
output folder). Point it at your own server, model and data with:

  --server-url URL        a running tokencredit server (comma-separated replicas); then also
                          --teacher_weights_root PATH, the local path of its TC_WEIGHTS_ROOT,
                          for methods whose teacher follows the policy (or --weights-sync push)
  --weights-sync MODE     how the teacher gets the policy's weights: disk (default; a checkpoint
                          in TC_WEIGHTS_ROOT, then POST /v1/weights) or push (broadcast over a
                          gloo group with TeacherClient.push_weights, no shared folder;
                          docs/weights.md); the same as --teacher_weights_sync
  --model PATH            a local Hugging Face model folder (the server must serve the same
                          tokenizer; the trainer pushes the weights for self-teacher methods)
  --dataset PATH          a dataset saved with ``Dataset.save_to_disk`` or a .json/.jsonl file,
                          with TRL's ``prompt`` column and the teacher's columns
                          (--problem-column, --answer-column, --solution-column)
  --reward MODULE:FUNC    a TRL reward function (default: trainer.trl.arith:boxed_reward)

Every other `TokenCreditConfig` / `GRPOConfig` field is a flag too (``--num-generations 8
--max-completion-length 48 --credit-params '{"mix": 0.5}' --save-steps 50 ...``); see
``--help``. Outputs are TRL's: ``output_dir/checkpoint-N`` (with ``tokencredit_state.json``),
``trainer_state.json`` with the log history, and the final model.
"""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "server" / "default_model"

# The arithmetic run's defaults; any of them can be overridden on the command line.
ARITH_DEFAULTS = [
    "--per_device_train_batch_size", "128",  # 16 prompts x 8 samples
    "--num_generations", "8",
    "--max_completion_length", "48",
    "--temperature", "1.0",
    "--learning_rate", "1e-4",
    "--warmup_steps", "10",
    "--lr_scheduler_type", "constant_with_warmup",
    "--max_grad_norm", "1.0",
    "--loss_type", "dapo",
    "--beta", "0.0",
    "--logging_steps", "1",
    "--save_steps", "50",
    "--shuffle_dataset", "false",
    "--use_cpu", "true",
    "--bf16", "false",
    "--report_to", "none",
]  # fmt: skip


def script_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.trl",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    ap.add_argument("--method", default="hsd", help="credit method (--credit_method)")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps (--max_steps)")
    ap.add_argument("--model", default="", help="local HF model folder (default: embedded)")
    ap.add_argument("--dataset", default="", help="dataset folder or .json/.jsonl (default: arith)")
    ap.add_argument("--reward", default="trainer.trl.arith:boxed_reward", help="MODULE:FUNC")
    ap.add_argument("--server-url", default="", help="running server; default: start one")
    ap.add_argument(
        "--weights-sync",
        choices=("disk", "push"),
        default="disk",
        help="teacher weights: disk checkpoint + POST /v1/weights, or push over a gloo group",
    )
    ap.add_argument("--output-dir", default="", help="default: /tmp/tokencredit-trl/<method>")
    ap.add_argument("--seed", type=int, default=0, help="training seed and problem stream")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (trainer and server)")
    ap.add_argument("--resume", action="store_true", help="resume from the last checkpoint")
    ap.add_argument("-h", "--help", action="store_true")
    return ap


def load_reward(spec: str):
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def load_dataset_arg(path: str, steps: int, batch_prompts: int, seed: int):
    if not path:
        from trainer.trl.arith import arith_dataset

        return arith_dataset(steps * batch_prompts, seed=seed)
    import datasets

    if path.endswith((".json", ".jsonl")):
        return datasets.load_dataset("json", data_files=path, split="train")
    return datasets.load_from_disk(path)


def start_server(model: str, out: Path, threads: int, stack: ExitStack) -> tuple[str, str]:
    """``python -m uvicorn server.app:app`` as a subprocess; the trainer never imports server."""
    import socket

    from client import TeacherClient

    weights_root = out / "teacher_weights"
    weights_root.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "TC_MODEL": model,
        "TC_BACKEND": "hf",
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_WEIGHTS_ROOT": str(weights_root),
        "TC_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = stack.enter_context(open(out / "server.log", "w"))  # noqa: SIM115 - closed by the stack
    cmd = [sys.executable, "-m", "uvicorn", "server.app:app", "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port)], env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    stack.callback(stop)
    url = f"http://127.0.0.1:{port}"
    with TeacherClient(url) as probe:
        probe.wait_ready(timeout=300)
    return url, str(weights_root)


def main(argv: list[str] | None = None) -> None:
    args, rest = script_parser().parse_known_args(argv)
    import torch
    from transformers import AutoTokenizer, HfArgumentParser

    from trainer.trl import TokenCreditConfig, TokenCreditGRPOTrainer

    if args.help:
        print(script_parser().format_help())
        HfArgumentParser(TokenCreditConfig).print_help()
        return
    torch.set_num_threads(args.threads)
    model = args.model or os.environ.get("TC_MODEL") or str(DEFAULT_MODEL)
    out = Path(args.output_dir or Path(tempfile.gettempdir()) / "tokencredit-trl" / args.method)
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        server_args: list[str] = []
        if args.server_url:
            server_args = ["--teacher_url", args.server_url]
        else:
            url, root = start_server(model, out, args.threads, stack)
            server_args = ["--teacher_url", url]
            if args.weights_sync == "disk":
                server_args += ["--teacher_weights_root", root]
        (cfg,) = HfArgumentParser(TokenCreditConfig).parse_args_into_dataclasses(
            [
                *ARITH_DEFAULTS,
                "--output_dir", str(out),
                "--max_steps", str(args.steps),
                "--seed", str(args.seed),
                "--credit_seed", str(args.seed),
                "--credit_method", args.method,
                "--teacher_weights_sync", args.weights_sync,
                *server_args,
                *rest,
            ]
        )  # fmt: skip
        prompts_per_step = cfg.generation_batch_size // cfg.num_generations
        dataset = load_dataset_arg(args.dataset, args.steps, prompts_per_step, args.seed)
        tokenizer = AutoTokenizer.from_pretrained(model)
        trainer = TokenCreditGRPOTrainer(
            model=model,
            reward_funcs=load_reward(args.reward),
            args=cfg,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.train(resume_from_checkpoint=True if args.resume else None)
        trainer.save_model(str(out / "final"))


if __name__ == "__main__":
    main()
