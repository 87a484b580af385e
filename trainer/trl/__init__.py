"""Per-token credit from tokencredit inside TRL's `GRPOTrainer` (pinned ``trl==1.16.0``).

    from trainer.trl import TokenCreditConfig, TokenCreditGRPOTrainer

`TokenCreditGRPOTrainer` replaces TRL's sequence advantages with ``POST /v1/advantages``'s
per-token ones; `TokenCreditConfig` adds the server, method and weight-syncing settings to
`GRPOConfig`. ``python -m trainer.trl --method hsd --steps 100`` runs it on the embedded model's
arithmetic task. See docs/trl.md.
"""

from trainer.trl.batch import AlignmentError, advantages_tensor, build_groups
from trainer.trl.config import TokenCreditConfig
from trainer.trl.trainer import CHECKPOINT_FILE, TeacherCreditError, TokenCreditGRPOTrainer

__all__ = [
    "CHECKPOINT_FILE",
    "AlignmentError",
    "TeacherCreditError",
    "TokenCreditConfig",
    "TokenCreditGRPOTrainer",
    "advantages_tensor",
    "build_groups",
]
