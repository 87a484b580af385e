"""Which weights each method's teacher holds, and pushing a policy to the teacher server.

Shared by the trainers (``trainer/toy``, ``trainer/trl``). Teacher weights per method come from
docs/algorithms.md §1 ("teacher weights" column):

    none:     no teacher forward, nothing to push (GRPO, Dr.GRPO)
    initial:  the fixed initial policy (OPSD), or the served model as an external teacher (OPD);
              never follows the policy
    ema:      an EMA of the policy (SDPO)
    resync:   a frozen copy re-synced every N steps (RLSD)
    current:  the current policy, pushed every k steps (HSD, AntiSD, AMR-SD)

A push takes the ``POST /v1/weights`` path (``sync="disk"``): ``save_pretrained`` into a folder
under the server's ``TC_WEIGHTS_ROOT`` (a filesystem both sides see), then ``client.load_weights``
with the path relative to that root; or ``sync="push"``: ``client.push_weights`` broadcasts the
tensors to every replica over a ``torch.distributed`` group (docs/weights.md). Later scoring calls pass the returned version as
``min_weights_version``, so a replica still on older weights answers 409 instead of scoring with
them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from client import TeacherClient

TEACHER_WEIGHTS = {
    "grpo": "none",
    "dr_grpo": "none",
    "opd": "initial",
    "opsd": "initial",
    "sdpo": "ema",
    "rlsd": "resync",
    "hsd": "current",
    "antisd": "current",
    "amrsd": "current",
}

# Methods whose teacher is (a copy of) the policy being trained: their teacher must follow it.
FOLLOWS_POLICY = frozenset(
    m for m, w in TEACHER_WEIGHTS.items() if w in ("ema", "resync", "current")
)
# Methods that never run a teacher forward: student log-probs and teacher weights are unused.
NO_TEACHER = frozenset(m for m, w in TEACHER_WEIGHTS.items() if w == "none")


class WeightPusher:
    """Saves checkpoints under the server's weights root and loads them with ``POST /v1/weights``
    (``sync="disk"``), or broadcasts the weights to every replica with
    ``TeacherClient.push_weights`` (``sync="push"``: no weights root needed; docs/weights.md).

    Keeps only the newest checkpoint folder: the server holds the weights in memory once loaded.
    """

    def __init__(
        self,
        client: TeacherClient,
        weights_root: str | Path | None,
        run_name: str,
        sync: str = "disk",
        push_backend: str | None = None,
    ):
        self.client = client
        self.root = Path(weights_root) if weights_root else None
        self.run_name = run_name
        self.sync = sync
        self.push_backend = push_backend  # None: the client's default ("auto": shm or gloo)
        self.version: int | None = None
        self._last: Path | None = None
        self.seconds = 0.0
        self.pushes = 0

    @property
    def enabled(self) -> bool:
        return self.sync == "push" or self.root is not None

    def push(self, model, tokenizer, tag: str) -> int | None:
        """Save ``model`` (and ``tokenizer``) as ``<root>/<run_name>/<tag>`` and load it on every
        replica; returns the new ``weights_version`` (None when pushing is off)."""
        if not self.enabled:
            return None
        started = time.perf_counter()
        if self.sync == "push":
            res = self.client.push_weights(model, progress=False, backend=self.push_backend)
            self.version = res.weights_version
            self.seconds += time.perf_counter() - started
            self.pushes += 1
            return self.version
        rel = Path(self.run_name) / tag
        folder = self.root / rel
        model.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        res = self.client.load_weights(str(rel))
        if self._last is not None and self._last != folder:
            shutil.rmtree(self._last, ignore_errors=True)
        self._last = folder
        self.version = res.weights_version
        self.seconds += time.perf_counter() - started
        self.pushes += 1
        return self.version
