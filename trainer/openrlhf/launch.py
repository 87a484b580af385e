"""Run OpenRLHF's PPO trainer with teacher credit from a tokencredit pool::

    python -m trainer.openrlhf.launch --teacher-url http://teacher-0:8000 \\
        --teacher-url http://teacher-1:8000 --method antisd --params '{"lam": 0.5}' \\
        -- --actor.model_name_or_path Qwen/Qwen3-1.7B --algo.advantage.estimator dr_grpo ...

Everything after ``--`` goes to ``openrlhf.cli.train_ppo_ray`` unchanged. The launcher:

1. checks the OpenRLHF version it patches (0.11.2) and the arguments it refuses (`checks`:
   ``gae``, KL folded into the reward, temperatures, syncing, filtering, images, LoRA, EMA),
   before anything starts;
2. asks the pool whether it is ready and serves the method (``--skip-preflight`` to skip);
3. starts Ray with ``runtime_env={"worker_process_setup_hook": "trainer.openrlhf.hook.setup",
   "env_vars": {TOKENCREDIT_*, ...}}``. ``train_ppo_ray.train`` calls ``ray.init`` only
   ``if not ray.is_initialized()``, so its own init is skipped and this job-level runtime env
   reaches every actor it creates (none of them sets a runtime env of its own). The three
   variables its skipped init would have set are set here, with its defaults;
4. runs ``train_ppo_ray`` as ``__main__`` (its argument parsing lives under
   ``if __name__ == "__main__"``, so there is no ``main()`` to call).

Keys come from the environment, never the command line: ``TOKENCREDIT_API_KEY`` (and
``TOKENCREDIT_ADMIN_KEY`` for ``--sync-weights`` / ``--push-weights``) are forwarded to the
workers. Ray shows a job's environment variables in its dashboard: keep that dashboard private.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from client import PUSH_BACKENDS, TeacherClient, TokenCreditError
from trainer.openrlhf import OPENRLHF_VERSION
from trainer.openrlhf.checks import UnsupportedConfig, check_args
from trainer.openrlhf.config import ENV_ADMIN_KEY, ENV_API_KEY, ConfigError, PluginConfig

SETUP_HOOK = "trainer.openrlhf.hook.setup"
TRAIN_MODULE = "openrlhf.cli.train_ppo_ray"
REPO_ROOT = Path(__file__).resolve().parents[2]


def openrlhf_env_defaults(environ: dict[str, str] | None = None) -> dict[str, str]:
    """What ``train_ppo_ray.train`` would pass to its own ``ray.init`` (0.11.2)."""
    env = os.environ if environ is None else environ
    return {
        "TOKENIZERS_PARALLELISM": env.get("TOKENIZERS_PARALLELISM", "true"),
        "NCCL_DEBUG": env.get("NCCL_DEBUG", "WARN"),
        "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": env.get("RAY_ENABLE_ZERO_COPY_TORCH_TENSORS", "1"),
    }


def build_runtime_env(
    config: PluginConfig, environ: dict[str, str] | None = None
) -> dict[str, Any]:
    """The job-level Ray runtime env: the setup hook and the variables every worker needs."""
    env_vars = {**openrlhf_env_defaults(environ), **config.to_env()}
    if (REPO_ROOT / "pyproject.toml").exists():
        # A source checkout (on a shared file system): make `trainer.openrlhf.hook` importable
        # in workers. Ray expands ${PYTHONPATH} to the worker's own value.
        env_vars["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}${{PYTHONPATH}}"
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": env_vars}


def _flag(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name v`` / ``--name=v`` in OpenRLHF's arguments (last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def openrlhf_args(args: Sequence[str]) -> SimpleNamespace:
    """The part of ``train_ppo_ray``'s parsed arguments that `checks` reads, with its defaults
    (0.11.2), from the command line: the same checks run here and at the first step."""

    def number(name: str, kind: type, default: Any) -> Any:
        raw = _flag(args, name)
        try:
            return default if raw is None else kind(raw)
        except ValueError:
            raise ConfigError(f"{name} {raw!r} is not a valid {kind.__name__}") from None

    def ns(**kw: Any) -> SimpleNamespace:
        return SimpleNamespace(**kw)

    return ns(
        algo=ns(
            advantage=ns(estimator=_flag(args, "--algo.advantage.estimator") or "gae"),
            kl=ns(
                init_coef=number("--algo.kl.init_coef", float, 0.01),
                use_loss="--algo.kl.use_loss" in args,
            ),
            dynamic_filtering_enable="--algo.dynamic_filtering_enable" in args,
        ),
        rollout=ns(temperature=number("--rollout.temperature", float, 1.0)),
        ckpt=ns(save_hf="--ckpt.save_hf" in args, save_steps=number("--ckpt.save_steps", int, -1)),
        data=ns(max_images_per_prompt=number("--data.max_images_per_prompt", int, 0)),
        ds=ns(lora=ns(rank=number("--ds.lora.rank", int, 0))),
        train=ns(enable_ema="--train.enable_ema" in args),
    )


def check_openrlhf_args(args: Sequence[str], config: PluginConfig) -> None:
    """Fail before Ray starts on arguments the plugin refuses at its first step anyway."""
    parsed = openrlhf_args(args)
    try:
        check_args(parsed, config)
    except UnsupportedConfig as exc:
        raise ConfigError(str(exc)) from None
    if config.weights_prefix is not None and (
        not parsed.ckpt.save_hf or parsed.ckpt.save_steps < 1
    ):
        raise ConfigError(
            "--sync-weights needs --ckpt.save_hf and --ckpt.save_steps N: the teacher loads "
            "the HF checkpoints OpenRLHF writes"
        )
    if config.weights_prefix is not None and not config.base_weights:
        raise ConfigError(
            "--sync-weights needs --base-weights PATH (the base model's folder inside the "
            "pool's TC_WEIGHTS_ROOT): a run puts its own weights on the pool before its first "
            "call"
        )


def check_openrlhf_version() -> None:
    try:
        version = metadata.version("openrlhf")
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"openrlhf is not installed: bash scripts/install_openrlhf.sh (or pip install "
            f"openrlhf=={OPENRLHF_VERSION})"
        ) from None
    if version != OPENRLHF_VERSION:
        raise ConfigError(
            f"openrlhf {version} is installed; the plugin patches {OPENRLHF_VERSION} "
            "(RemoteExperienceMaker, BasePPOTrainer) and is untested on other versions"
        )


def preflight(config: PluginConfig, timeout: float) -> None:
    """Every replica ready, and serving the method."""
    with TeacherClient(list(config.urls), api_key=config.api_key) as tc:
        tc.wait_ready(timeout=timeout)
        info = tc.model()
    if config.method not in info.methods:
        raise ConfigError(f"the pool does not serve method {config.method!r} ({info.methods})")


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit(
            "usage: python -m trainer.openrlhf.launch --teacher-url URL --method M "
            "[options] -- <train_ppo_ray arguments>"
        )
    cut = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m trainer.openrlhf.launch",
        description="OpenRLHF train_ppo_ray with per-token advantages from a tokencredit pool.",
        epilog="Keys: TOKENCREDIT_API_KEY, TOKENCREDIT_ADMIN_KEY (environment only).",
    )
    parser.add_argument(
        "--teacher-url", action="append", required=True, help="a replica's base URL; repeatable"
    )
    parser.add_argument("--method", required=True, help="credit method, e.g. antisd, hsd, opsd")
    parser.add_argument("--params", default="{}", help="method parameters as a JSON object")
    parser.add_argument("--seed", type=int, default=0, help="base seed (step s sends seed + s)")
    parser.add_argument("--timeout", type=float, default=600.0, help="read timeout of a call (s)")
    parser.add_argument("--retries", type=int, default=4, help="client transport retries")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=2000.0,
        help="slowest teacher throughput per replica the timeouts allow for",
    )
    parser.add_argument(
        "--step-retry",
        type=float,
        default=1800.0,
        help="seconds a step's call is tried again after the transport gave up (0: never)",
    )
    parser.add_argument(
        "--student",
        choices=("trainer", "server"),
        default="trainer",
        help="student log-probs from the actor (trainer) or scored by the pool (server)",
    )
    parser.add_argument(
        "--sync-weights",
        metavar="PREFIX",
        default=None,
        help="load each HF checkpoint into the teacher: PREFIX/global_step<N>_hf inside the "
        "pool's TC_WEIGHTS_ROOT ('' if --ckpt.path is that root)",
    )
    parser.add_argument(
        "--push-weights",
        action="store_true",
        help="after every step, the actor's rank 0 pushes its weights to every replica over "
        "torch.distributed (no HF checkpoints; instead of --sync-weights)",
    )
    parser.add_argument(
        "--push-backend",
        choices=PUSH_BACKENDS,
        default="auto",
        help="with --push-weights: auto (shm for replicas on this host, else gloo), shm, gloo "
        "(CPU replicas) or nccl (GPU replicas)",
    )
    parser.add_argument(
        "--push-address",
        default=None,
        help="with --push-weights: the actor rank 0's address the replicas connect back to",
    )
    parser.add_argument(
        "--base-weights",
        metavar="PATH",
        default=None,
        help="with --sync-weights: the base model's folder inside the pool's TC_WEIGHTS_ROOT",
    )
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="with --sync-weights: keep every global_step<N>_hf folder (default: delete those "
        "older than the one every replica serves)",
    )
    parser.add_argument(
        "--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS/local)"
    )
    parser.add_argument(
        "--skip-preflight", action="store_true", help="do not contact the pool first"
    )
    parser.add_argument("--preflight-timeout", type=float, default=300.0)
    return parser.parse_args(argv[:cut]), argv[cut + 1 :]


def config_from_args(
    args: argparse.Namespace, environ: dict[str, str] | None = None
) -> PluginConfig:
    env = os.environ if environ is None else environ
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        raise ConfigError(f"--params is not valid JSON: {exc}") from None
    return PluginConfig(
        urls=tuple(u.rstrip("/") for u in args.teacher_url),
        method=args.method,
        params=params,
        seed=args.seed,
        api_key=env.get(ENV_API_KEY) or None,
        admin_key=env.get(ENV_ADMIN_KEY) or None,
        timeout=args.timeout,
        retries=args.retries,
        tokens_per_second=args.tokens_per_second,
        step_retry=args.step_retry,
        student=args.student,
        weights_prefix=args.sync_weights,
        base_weights=args.base_weights,
        prune_checkpoints=not args.keep_checkpoints,
        weights_sync="push" if args.push_weights else "disk",
        push_backend=args.push_backend,
        push_address=args.push_address,
    )


def run_train_ppo_ray(train_args: Sequence[str]) -> None:
    sys.argv = [TRAIN_MODULE, *train_args]
    runpy.run_module(TRAIN_MODULE, run_name="__main__", alter_sys=True)


def main(argv: Sequence[str] | None = None) -> int:
    args, train_args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = config_from_args(args)
        check_openrlhf_args(train_args, config)
        check_openrlhf_version()
        if not args.skip_preflight:
            preflight(config, args.preflight_timeout)
    except (ConfigError, TokenCreditError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray

    ray.init(address=args.ray_address, runtime_env=build_runtime_env(config))
    run_train_ppo_ray(train_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
