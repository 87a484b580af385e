"""Weights pushes into the vLLM backend: the worker process joins the trainer's group.

vLLM's model lives in its worker process, so that is where the group is joined and the tensors
are received (``collective_rpc`` into ``PushWorkerMixin``, which ``server.engines.vllm``'s
``WorkerExtension`` inherits), as vLLM's own weight-transfer engine does. The API process keeps a
client of the trainer's store only to write the ready/refuse verdict (server/weights_push.py).

The receive runs in a thread of the worker, so the engine core goes on scoring while the bytes
arrive; the API process polls it (``collective_rpc`` calls are short). The received tensors are
staged beside the serving weights and handed to the worker's ``reload_weights`` (the model's
``load_weights`` plus vLLM's post-load processing) only at install time, which the weights gate calls with no request in flight; then the prefix cache is reset
(cached KV blocks were computed with the old weights).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from proto.weights_push import TensorSpec, WeightsPushRequest, WeightsTransferInit
from server.weights_push import PushError, PushGroup, receive_tensors
from server.weights_shm import Segment, open_push_segment

log = logging.getLogger(__name__)

# How often the API process asks the worker whether a receive has finished.
_POLL_SECONDS = 0.05


class VLLMPushTarget:
    """``server.weights_push.PushTarget`` for ``VLLMEngine`` (checks against the checkpoint's
    tensor names and shapes, which are what ``load_weights`` takes, in the serving dtype)."""

    def __init__(self, engine):
        self.engine = engine

    def tensor_specs(self) -> dict[str, TensorSpec]:
        dtype = self.engine.info.dtype
        return {
            name: TensorSpec(name=name, dtype=dtype, shape=list(shape))
            for name, shape in self.engine._tensor_shapes.items()
        }

    async def _rpc(self, method: str, *args):
        results = await self.engine._llm.collective_rpc(method, args=args)
        return results[0]

    async def join(self, init: WeightsTransferInit) -> PushGroup:
        # The worker's end (the process group) first; it writes "joined" to the store. A shm
        # group has no process group: the worker maps each push's segment by its name.
        if init.backend != "shm":
            await self._rpc("tokencredit_push_join", init.model_dump())
        return await asyncio.to_thread(PushGroup.join, init, False)

    async def receive(
        self, group: PushGroup, req: WeightsPushRequest, segment: Segment | None
    ) -> object:
        # A segment is opened again (and checked again) by name in the worker, another process.
        await self._rpc("tokencredit_push_receive", req.model_dump())
        while True:
            state, detail = await self._rpc("tokencredit_push_status")
            if state == "done":
                return req.push_id
            if state == "failed":
                raise PushError(detail)
            await asyncio.sleep(_POLL_SECONDS)

    async def install(self, prepared: object) -> None:
        await self._rpc("tokencredit_push_install", prepared)
        await self.engine.reset_prefix_cache()

    async def leave(self, group: PushGroup) -> None:
        await self._rpc("tokencredit_push_leave")
        group.close()


class PushWorkerMixin:
    """Worker-side methods, run by ``collective_rpc`` in vLLM's worker process."""

    _tc_push_group: PushGroup | None = None
    _tc_push_thread: threading.Thread | None = None
    _tc_push_result: tuple[str, str] = ("idle", "")
    _tc_push_staged: tuple[str, dict] | None = None

    def tokencredit_push_join(self, init: dict) -> None:
        self.tokencredit_push_leave()
        self._tc_push_group = PushGroup.join(WeightsTransferInit.model_validate(init))

    def tokencredit_push_receive(self, req: dict) -> None:
        request = WeightsPushRequest.model_validate(req)
        if self._tc_push_group is None and request.shm_name is None:
            raise RuntimeError("no weight-transfer group joined in the worker")
        if self._tc_push_thread is not None and self._tc_push_thread.is_alive():
            raise RuntimeError("a push is already being received")
        self._tc_push_staged = None
        self._tc_push_result = ("running", "")
        device = str(next(self.model_runner.get_model().parameters()).device)
        group = self._tc_push_group

        def run() -> None:
            started = time.perf_counter()
            try:
                if request.shm_name is not None:
                    with open_push_segment(request) as segment:
                        tensors = segment.map_tensors(request, device)
                else:
                    tensors = receive_tensors(group, request, device)
            except Exception as exc:
                self._tc_push_result = ("failed", f"{type(exc).__name__}: {exc}")
                return
            self._tc_push_staged = (request.push_id, tensors)
            self._tc_push_result = ("done", f"{time.perf_counter() - started:.3f}")

        self._tc_push_thread = threading.Thread(target=run, name="tokencredit-push", daemon=True)
        self._tc_push_thread.start()

    def tokencredit_push_status(self) -> tuple[str, str]:
        return self._tc_push_result

    def tokencredit_push_install(self, push_id: str) -> None:
        staged, self._tc_push_staged = self._tc_push_staged, None
        if staged is None or staged[0] != push_id:
            raise RuntimeError(f"push {push_id} is not staged in the worker")
        # reload_weights, not model.load_weights: on CPU the loaded linear weights were repacked
        # (their parameters are empty), and reload_weights restores and re-processes them.
        self.reload_weights(weights_iterator=iter(staged[1].items()), is_checkpoint_format=True)
        repack_cpu_embeddings(self.model_runner.get_model())

    def tokencredit_push_leave(self) -> None:
        group, self._tc_push_group = self._tc_push_group, None
        self._tc_push_staged = None
        if group is not None:
            group.close()
        thread = self._tc_push_thread
        if thread is not None:
            thread.join(timeout=5)  # a receive on a closed group fails at once
        self._tc_push_result = ("idle", "")


def repack_cpu_embeddings(model) -> None:
    """On CPU, vLLM 0.32 packs embedding / LM-head weights into oneDNN handles at load time and
    re-packs only layers that received tensors: a tied LM head would keep the old weights. Re-pack
    every unquantized embedding from its (already updated) weight (see ``WorkerExtension``)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        UnquantizedEmbeddingMethod,
        VocabParallelEmbedding,
    )
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if isinstance(module, VocabParallelEmbedding) and isinstance(
            method, UnquantizedEmbeddingMethod
        ):
            method.process_weights_after_loading(module)
