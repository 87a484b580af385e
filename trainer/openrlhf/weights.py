"""The teacher's weights over a run: which weights the pool serves, under which version.

Lifecycle (docs/openrlhf.md, "Weights"):

1. **Start / resume.** Before the run's first call, every replica loads the run's own weights:
   the base model (``TOKENCREDIT_BASE_WEIGHTS``) at step 0, or the resumed checkpoint's HF folder
   at step N, as version ``version_of(N)``. Every later call requires that version, so a pool
   that still serves an earlier run's weights is never used as if it held this run's.
2. **Publish.** After OpenRLHF saves ``{ckpt.path}/global_step{N}_hf``, every replica loads it
   as ``version_of(N)``, one after another (a rolling update), and calls then require it.
3. **Re-sync.** A replica that restarted serves its start-up model at version 0; the run's next
   call gets a 409 (`StaleWeightsError`). `resync` puts the current weights back on every
   replica that is behind, and the call is tried again.
4. **Prune.** Once every replica has loaded step N, the HF folders of earlier steps are deleted
   (about 16 GB each at 8B); the folder every replica serves is kept (a resume reloads it).

Versions are run-unique: ``version_of(step) = run_epoch * STEP_SPAN + step``, with ``run_epoch``
the process start in Unix seconds. A later start (a new run, or a resume, even from an older
checkpoint) always has larger versions than anything loaded before, so the server's rule "a new
version must be greater than the loaded one" never refuses a run's own weights.

Transports (``TOKENCREDIT_WEIGHTS_SYNC``):

- ``disk``: ``POST /v1/weights`` with a folder inside the pool's ``TC_WEIGHTS_ROOT``, one replica
  after another (`load_on`); steps 1-4 above.
- ``push``: ``push(urls, version)`` (`push.ActorGroupPush`: the actor's rank 0 broadcasts its
  current weights over ``torch.distributed`` to every replica of ``urls`` at once). Start, resume
  and publish push what the actor holds (the base model, the resumed checkpoint, the step's
  update) as ``version_of(step)``; publish runs after every step, not after checkpoints; the
  re-sync pushes to the replicas that are behind. No folder is read, so nothing is pruned.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import time
from collections.abc import Callable, Sequence

from client import TeacherClient, Timeout

log = logging.getLogger("tokencredit.openrlhf")

# Steps a run can take before its versions would reach the next second's run (10^6 steps);
# with Unix seconds as the epoch, versions stay below 2^53 (exact in JSON doubles) until 2255.
STEP_SPAN = 1_000_000
HF_FOLDER = re.compile(r"^global_step(\d+)_hf$")
# Read timeout of one replica's POST /v1/weights (load beside the old weights, then swap).
LOAD_SECONDS = 1800.0


class WeightsError(RuntimeError):
    """The run's weights could not be put on the pool; the message says what to fix."""


class TeacherWeights:
    """The run's weights on every replica (one admin client per replica)."""

    def __init__(
        self,
        urls: Sequence[str],
        prefix: str,
        *,
        base_path: str | None,
        admin_key: str | None = None,
        api_key: str | None = None,
        run_epoch: int | None = None,
        prune: bool = True,
        client_factory: Callable[[str], TeacherClient] | None = None,
        push: Callable[[Sequence[str], int], None] | None = None,
    ):
        self.urls = list(urls)
        self.prefix = prefix
        self.base_path = base_path
        self.run_epoch = int(time.time()) if run_epoch is None else run_epoch
        self.prune = prune
        self.push = push  # None: the disk transport
        make = client_factory or (
            lambda url: TeacherClient(
                url,
                api_key=api_key,
                admin_key=admin_key,
                # loading a checkpoint from shared storage takes minutes at 8B
                timeout=Timeout(LOAD_SECONDS, connect=5.0),
            )
        )
        self._clients = {url: make(url) for url in self.urls}
        self.required: int | None = None  # min_weights_version of every call
        self.path: str | None = None  # the folder every replica serves (disk; pool-relative)
        self.step: int | None = None

    def version_of(self, step: int) -> int:
        if not 0 <= step < STEP_SPAN:
            raise WeightsError(f"step {step} is outside [0, {STEP_SPAN}) for weight versions")
        return self.run_epoch * STEP_SPAN + step

    def folder_of(self, tag: str) -> str:
        """Pool-relative path of OpenRLHF's ``{ckpt.path}/{tag}_hf``."""
        name = f"{tag}_hf"
        return posixpath.join(self.prefix, name) if self.prefix else name

    # ---- lifecycle -----------------------------------------------------------------------------

    @property
    def transport(self) -> str:
        return "disk" if self.push is None else "push"

    def start(self, step: int, ckpt_path: str | None = None) -> None:
        """Load the run's weights at ``step`` (0: the base model; N: the resumed checkpoint)."""
        if self.push is not None:  # the actor holds exactly those weights now
            self._load_everywhere(None, step)
            log.info("tokencredit: run weights pushed to the pool as version %d", self.required)
            return
        if step == 0:
            if not self.base_path:
                raise WeightsError(
                    "weight syncing needs the base model's folder inside the pool's "
                    "TC_WEIGHTS_ROOT (--base-weights / TOKENCREDIT_BASE_WEIGHTS): the run "
                    "must put its own weights on the pool before its first call"
                )
            path = self.base_path
        else:
            path = self.folder_of(self._resume_tag(step, ckpt_path))
        self._load_everywhere(path, step)
        log.info("tokencredit: run weights %s on the pool as version %d", path, self.required)

    def publish(self, step: int, ckpt_path: str | None = None) -> None:
        """After OpenRLHF wrote ``global_step{step}_hf``: load it everywhere, prune older ones.
        With push: after step ``step``'s update, push the actor's weights everywhere."""
        if self.push is not None:
            self._load_everywhere(None, step)
            log.info(
                "tokencredit: teacher weights of step %d pushed as version %d", step, self.required
            )
            return
        path = self.folder_of(f"global_step{step}")
        self._load_everywhere(path, step)
        log.info("tokencredit: teacher weights %s loaded as version %d", path, self.required)
        if self.prune and ckpt_path:
            self.prune_older(ckpt_path, step)

    def resync(self) -> bool:
        """Put the current weights back on every replica behind ``required`` (after a 409)."""
        if self.required is None or (self.push is None and self.path is None):
            return False
        behind = [url for url in self.urls if self._version_at(url) < self.required]
        if self.push is not None:
            if behind:
                log.warning(
                    "tokencredit: replicas %s lost the run's weights (restarted?); pushing "
                    "version %d again",
                    behind,
                    self.required,
                )
                self.push(behind, self.required)
            return bool(behind)
        for url in behind:
            log.warning(
                "tokencredit: replica %s lost the run's weights (restarted?); reloading %s "
                "as version %d",
                url,
                self.path,
                self.required,
            )
            self.load_on(url, self.path, self.required)
        return bool(behind)

    def prune_older(self, ckpt_path: str, step: int) -> list[str]:
        """Delete ``{ckpt_path}/global_step{M}_hf`` for M < ``step`` (all replicas hold ``step``)."""
        removed = []
        try:
            names = os.listdir(ckpt_path)
        except FileNotFoundError:
            return removed
        for name in names:
            match = HF_FOLDER.match(name)
            if match and int(match.group(1)) < step:
                shutil.rmtree(os.path.join(ckpt_path, name), ignore_errors=True)
                removed.append(name)
        if removed:
            log.info("tokencredit: deleted %s (every replica serves step %d)", removed, step)
        return removed

    # ---- transport: POST /v1/weights -----------------------------------------------------------

    def load_on(self, url: str, path: str, version: int) -> None:
        self._clients[url].load_weights(path, version=version)

    def _version_at(self, url: str) -> int:
        return int(self._clients[url].readyz().weights_version)

    def _load_everywhere(self, path: str | None, step: int) -> None:
        version = self.version_of(step)
        if self.push is not None:
            # every replica not there yet at once (a retried publish skips those that are)
            behind = [url for url in self.urls if self._version_at(url) < version]
            if behind:
                self.push(behind, version)
            self.required, self.path, self.step = version, None, step
            return
        for url in self.urls:  # one replica at a time: the others keep serving
            if self._version_at(url) >= version:
                continue  # already there (a retried publish)
            self.load_on(url, path, version)
        self.required, self.path, self.step = version, path, step

    def _resume_tag(self, step: int, ckpt_path: str | None) -> str:
        tag = f"global_step{step}"
        if ckpt_path and not os.path.isdir(os.path.join(ckpt_path, f"{tag}_hf")):
            best = f"best_{tag}"  # a best checkpoint saved at that step became `latest`
            if os.path.isdir(os.path.join(ckpt_path, f"{best}_hf")):
                return best
        return tag

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
