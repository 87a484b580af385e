"""`TokenCreditConfig`: TRL's `GRPOConfig` plus the teacher service's settings.

Every field is also a command-line flag of ``python -m trainer.trl`` (``--credit-method hsd``).
Bad combinations are refused in ``__post_init__`` with a message that says what to set instead,
the way `GRPOConfig` does: the ones refused here would otherwise train on wrong credit without a
visible error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from trl import GRPOConfig

from client import PUSH_BACKENDS
from proto.advantages import METHODS
from trainer.teacher_weights import FOLLOWS_POLICY, NO_TEACHER, TEACHER_WEIGHTS

WEIGHTS_SYNC = ("disk", "push")


@dataclass
class TokenCreditConfig(GRPOConfig):
    # ---- Teacher service --------------------------------------------------------------------
    # Base URL(s) of the tokencredit server, comma-separated for replicas (the client fails over).
    teacher_url: str = field(
        default="http://127.0.0.1:8000",
        metadata={"help": "tokencredit server base URL(s), comma-separated for replicas."},
    )
    # Bearer key for scoring (TC_API_KEYS on the server) and admin key for POST /v1/weights.
    teacher_api_key: str | None = field(default=None, metadata={"help": "bearer key of the pool."})
    teacher_admin_key: str | None = field(
        default=None, metadata={"help": "admin key for POST /v1/weights (weight syncing)."}
    )
    # Read timeout of one /v1/advantages call (a generation batch is one request); connect is 5 s.
    teacher_timeout: float = field(default=600.0, metadata={"help": "read timeout (s) per call."})
    # Retries of the client's transport (connection errors, 429, 502-504, replica failover).
    teacher_retries: int = field(default=4, metadata={"help": "client transport retries."})

    # ---- Credit method ----------------------------------------------------------------------
    credit_method: str = field(
        default="grpo",
        metadata={"help": f"advantage method of /v1/advantages, one of {', '.join(METHODS)}."},
    )
    # Overrides of the method's parameters (docs/algorithms.md §1), a dict or a JSON object.
    credit_params: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "method parameters as JSON, e.g. '{\"mix\": 0.5}'."}
    )
    # Base seed of the server's peer draws; the call at step k sends credit_seed + k.
    credit_seed: int = field(default=0, metadata={"help": "base seed of the server's draws."})

    # ---- Dataset columns --------------------------------------------------------------------
    # Columns of the training dataset sent as the group's problem and references; a column the
    # dataset lacks is sent as null (methods needing it then fall back as docs/algorithms.md says).
    problem_column: str = field(default="problem", metadata={"help": "problem text column."})
    answer_column: str = field(default="answer", metadata={"help": "reference answer column."})
    solution_column: str = field(
        default="solution", metadata={"help": "reference solution column."}
    )

    # ---- Teacher weights --------------------------------------------------------------------
    # How the teacher's weights reach the server (docs/weights.md): "disk" saves a checkpoint
    # under teacher_weights_root and loads it with POST /v1/weights; "push" broadcasts the tensors
    # over a torch.distributed group (TeacherClient.push_weights), no shared folder needed. Methods
    # whose teacher follows the policy (hsd, antisd, amrsd, sdpo, rlsd) and opsd (initial policy)
    # need one of the two.
    teacher_weights_sync: str = field(
        default="disk",
        metadata={"help": 'weight syncing: "disk" (teacher_weights_root) or "push" (a group).'},
    )
    # Local path of the server's TC_WEIGHTS_ROOT (a folder both see), for "disk" syncing.
    teacher_weights_root: str | None = field(
        default=None,
        metadata={"help": "local path of the server's TC_WEIGHTS_ROOT, for disk syncing."},
    )
    # With "push": "auto" (shared memory for replicas on this host, else gloo), "shm", "gloo"
    # (CPU replicas) or "nccl" (GPU replicas); docs/weights.md.
    teacher_push_backend: str = field(
        default="auto",
        metadata={
            "help": 'push backend: "auto" (shm on this host, else gloo), "shm", "gloo", "nccl".'
        },
    )
    # Push the teacher's weights every this many optimizer steps; None: 20 for rlsd (its frozen
    # copy's re-sync period), else 1.
    teacher_sync_steps: int | None = field(
        default=None,
        metadata={"help": "push weights every k optimizer steps (default 1; rlsd 20)."},
    )
    # SDPO's EMA teacher: ema <- (1 - rate) * ema + rate * theta after every optimizer step.
    teacher_ema_rate: float = field(default=0.05, metadata={"help": "SDPO teacher EMA rate."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.credit_method not in METHODS:
            raise ValueError(
                f"credit_method={self.credit_method!r} is not a method; choose one of "
                f"{', '.join(METHODS)}"
            )
        if isinstance(self.credit_params, str):
            try:
                self.credit_params = json.loads(self.credit_params)
            except ValueError as exc:
                raise ValueError(f"credit_params is not valid JSON: {exc}") from None
        if self.credit_params is None:
            self.credit_params = {}
        if not isinstance(self.credit_params, dict):
            raise ValueError(f"credit_params must be a JSON object, got {self.credit_params!r}")
        urls = self.teacher_urls
        if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ValueError(f"teacher_url must be http(s) URL(s), got {self.teacher_url!r}")
        if self.teacher_sync_steps is None:
            self.teacher_sync_steps = 20 if self.teacher_policy == "resync" else 1
        if self.teacher_sync_steps < 1:
            raise ValueError(f"teacher_sync_steps must be >= 1, got {self.teacher_sync_steps}")
        method = self.credit_method
        if method not in NO_TEACHER and self.temperature != 1.0:
            # The server scores teacher log-probs at temperature 1 (docs/algorithms.md §3.2) and
            # TRL's policy log-probs are taken at the sampling temperature: u_t would compare two
            # different distributions.
            raise ValueError(
                f"credit_method={method!r} compares teacher and policy log-probs, which the "
                f"server takes at temperature 1.0, but temperature={self.temperature}: set "
                "temperature=1.0 (or use grpo/dr_grpo)"
            )
        if self.teacher_weights_sync not in WEIGHTS_SYNC:
            raise ValueError(
                f'teacher_weights_sync must be "disk" or "push", got {self.teacher_weights_sync!r}'
            )
        if self.teacher_push_backend not in PUSH_BACKENDS:
            raise ValueError(
                f"teacher_push_backend must be one of {', '.join(PUSH_BACKENDS)}, got "
                f"{self.teacher_push_backend!r}"
            )
        if (
            (method in FOLLOWS_POLICY or method == "opsd")
            and self.teacher_weights_sync == "disk"
            and not self.teacher_weights_root
        ):
            raise ValueError(
                f"credit_method={method!r} needs a teacher with the policy's weights "
                f"({TEACHER_WEIGHTS[method]} policy): set teacher_weights_root to the local path "
                "of the server's TC_WEIGHTS_ROOT so the trainer can load them there, or "
                'teacher_weights_sync="push" to broadcast them to the server; without either the '
                "server would score with whatever model it loaded"
            )
        if (
            self.scale_rewards != "group"
            or self.multi_objective_aggregation != "sum_then_normalize"
        ):
            # TRL's own advantage options would be dropped with TRL's advantages.
            raise ValueError(
                "scale_rewards and multi_objective_aggregation shape TRL's advantages, which "
                "tokencredit replaces: leave them at their defaults and choose the baseline with "
                "credit_method (dr_grpo: no std) or credit_params (grpo_std: unbiased, "
                "population or none)"
            )
        if not 0.0 < self.teacher_ema_rate <= 1.0:
            raise ValueError(f"teacher_ema_rate must be in (0, 1], got {self.teacher_ema_rate}")

    @property
    def teacher_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.teacher_url.split(",") if u.strip()]

    @property
    def teacher_policy(self) -> str:
        """Which weights the teacher holds: none, initial, ema, resync or current."""
        return TEACHER_WEIGHTS[self.credit_method]
