"""OpenRLHF plugin: per-token advantages from a tokencredit pool, without a fork of OpenRLHF.

OpenRLHF has no advantage-estimator hook, so the plugin wraps
``RemoteExperienceMaker.compute_advantages_and_returns`` in the trainer's Ray actor (installed by
Ray's ``worker_process_setup_hook``, `hook.setup`), sends each step's token ids, rewards and the
actor's log-probs to ``POST /v1/advantages`` and writes the answer into the experiences
(`experiences` has the alignment rule). ``python -m trainer.openrlhf.launch`` starts Ray with the
hook and runs ``openrlhf.cli.train_ppo_ray``. Pinned to OpenRLHF 0.11.2. Guide: docs/openrlhf.md.

Modules: `config` (TOKENCREDIT_* variables), `checks` (refused settings), `experiences`
(alignment, groups), `sharded` (a step over every replica), `weights` (the teacher's weights over
a run), `plugin` (the wrappers, per-process state), `hook` (patch on import), `launch` (the CLI),
`reward_func` (OpenRLHF reward function for a keyed pool).
"""

OPENRLHF_VERSION = "0.11.2"  # the version whose classes the hook patches

from trainer.openrlhf.checks import UnsupportedConfig  # noqa: E402
from trainer.openrlhf.config import ConfigError, PluginConfig  # noqa: E402
from trainer.openrlhf.experiences import AlignmentError, Batch, Row, build_batch, rows_of  # noqa: E402
from trainer.openrlhf.plugin import NonFiniteAdvantages, TeacherCredit  # noqa: E402

__all__ = [
    "OPENRLHF_VERSION",
    "AlignmentError",
    "Batch",
    "ConfigError",
    "NonFiniteAdvantages",
    "PluginConfig",
    "Row",
    "TeacherCredit",
    "UnsupportedConfig",
    "build_batch",
    "rows_of",
]
