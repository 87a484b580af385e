"""Receive pushed weights over a ``torch.distributed`` group and swap them in atomically.

The exchange (docs/weights.md; wire models in ``proto/weights_push.py``, fields after vLLM's
weight-transfer engine so one trainer code path feeds both):

1. ``POST /v1/weights/transfer/init`` (admin): the replica connects to the trainer's ``TCPStore``
   under ``group_name`` and builds a process group with it (gloo for CPU tensors, NCCL for CUDA),
   bounded by ``timeout_seconds``. It answers the tensors a push must carry. A new init replaces
   the old group, so a restarted trainer or a restarted replica simply joins again.
2. ``POST /v1/weights/transfer/update`` (admin): names, dtypes and shapes are checked against the
   serving model *before* a byte is received; the verdict goes to the store key
   ``ready/{push_id}/{rank}`` (``"ok"`` or the reason), which the trainer waits on before it
   broadcasts. The packed buckets (``proto.plan_buckets``) are received beside the serving weights,
   in a worker thread (the event loop keeps serving), and only then installed under the weights
   gate with the new version: no request sees a mix.

Backend ``shm`` (replicas on the trainer's host, server/weights_shm.py): the group is the store
alone; the push names a segment the trainer packed once, which the replica checks (name, size)
before its "ok", and maps only after the trainer wrote ``go/{push_id}``, i.e. once every replica
said ok.

A push that fails halfway (the trainer died, a receive timed out) installs nothing, resets the
group (the trainer must init again) and answers 422 ``weights_transfer_failed`` naming what
happened; the old version keeps serving.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from proto.weights_push import (
    TensorSpec,
    WeightsPushRequest,
    WeightsPushResponse,
    WeightsTransferInit,
    WeightsTransferInitResponse,
    plan_buckets,
)
from server.errors import ServiceError
from server.packed import tensors_from_buffer
from server.weights import WeightsGate
from server.weights_shm import Segment, check_probe, open_push_segment

log = logging.getLogger(__name__)

# Names listed in an error message before "… and N more".
_SHOWN = 5


class PushError(Exception):
    """A push could not be received or installed; the old weights keep serving."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ---- the group ---------------------------------------------------------------------------------


class PushGroup:
    """This process's end of one trainer's group: a client of its ``TCPStore`` and a process group.

    The store also carries the ready/refuse verdict of each push, so the trainer never broadcasts
    into a replica that has refused (it would hang until the timeout).
    """

    def __init__(self, init: WeightsTransferInit, store: dist.Store, pg: object | None):
        self.init = init
        self.store = store
        self.pg = pg

    @classmethod
    def join(cls, init: WeightsTransferInit, with_process_group: bool = True) -> PushGroup:
        """Connect to the store and (unless another process receives) build the group; blocking."""
        timeout = datetime.timedelta(seconds=init.timeout_seconds)
        base = dist.TCPStore(
            init.master_address,
            init.master_port,
            is_master=False,
            timeout=timeout,
            wait_for_workers=False,
        )
        store = dist.PrefixStore(init.group_name, base)
        store.set(f"joined/{init.rank_offset}", "1")  # the trainer builds its end after this
        # shm: the tensors come in a segment, the store carries the verdicts and the go.
        with_process_group = with_process_group and init.backend != "shm"
        pg = new_process_group(store, init) if with_process_group else None
        return cls(init, store, pg)

    @property
    def name(self) -> str:
        return self.init.group_name

    def signal(self, push_id: str, verdict: str) -> None:
        self.store.set(f"ready/{push_id}/{self.init.rank_offset}", verdict)

    def wait_go(self, push_id: str) -> None:
        """shm: block until the trainer read every replica's "ok" and wrote ``go/{push_id}``
        ("go", or why it called the push off); bounded by the group's timeout."""
        key = f"go/{push_id}"
        self.store.wait([key], datetime.timedelta(seconds=self.init.timeout_seconds))
        word = self.store.get(key).decode()
        if word != "go":
            raise PushError(f"the trainer called push {push_id} off: {word}")

    def receive(self, nbytes: int, device: str) -> torch.Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.pg.broadcast(buf, 0).wait()  # type: ignore[union-attr]
        return buf

    def close(self) -> None:
        # Destroying the group closes its sockets, so the peer's pending operation fails at once
        # (gloo's ``abort()`` would leave it waiting for its timeout).
        self.pg = None


def new_process_group(store: dist.Store, init: WeightsTransferInit) -> object:
    """A process group of its own (not torch's default group), so one process can hold several."""
    timeout = datetime.timedelta(seconds=init.timeout_seconds)
    rank, size = init.rank_offset, init.world_size
    if init.backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, timeout)
    if not (torch.cuda.is_available() and hasattr(dist, "ProcessGroupNCCL")):
        raise PushError("backend nccl needs CUDA on the replica; use backend gloo")
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, size, opts)


def receive_tensors(
    group: PushGroup,
    req: WeightsPushRequest,
    device: str,
    on_bucket: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """Receive ``req``'s packed buckets; returns name -> tensor (views into the bucket buffers)."""
    nbytes = req.nbytes()
    out: dict[str, torch.Tensor] = {}
    for start, end in plan_buckets(nbytes, req.packed_buffer_size_bytes):
        buf = group.receive(sum(nbytes[start:end]), device)
        out |= tensors_from_buffer(buf, req, start, end)
        if on_bucket is not None:
            on_bucket(end)
    return out


def check_push(expected: dict[str, TensorSpec], req: WeightsPushRequest) -> None:
    """Names, shapes and dtypes must match the serving model exactly; else a 422 naming them."""
    sent = dict(zip(req.names, zip(req.dtype_names, req.shapes)))
    missing = [n for n in expected if n not in sent]
    unexpected = [n for n in sent if n not in expected]
    shapes = [
        f"{n} {list(sent[n][1])} (serving {expected[n].shape})"
        for n in expected
        if n in sent and list(sent[n][1]) != expected[n].shape
    ]
    dtypes = [
        f"{n} {sent[n][0]} (serving {expected[n].dtype})"
        for n in expected
        if n in sent and sent[n][0] != expected[n].dtype
    ]
    problems = [
        (field, f"{label}: {_listing(items)}")
        for field, label, items in (
            ("names", "missing", missing),
            ("names", "unexpected", unexpected),
            ("shapes", "shape", shapes),
            ("dtype_names", "dtype", dtypes),
        )
        if items
    ]
    if problems:
        raise ServiceError(
            422,
            "tensors do not match the serving model: " + "; ".join(p for _, p in problems),
            type="weights_mismatch",
            field=problems[0][0],
        )


def _listing(items: list[str]) -> str:
    more = f" … and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


# ---- engines -----------------------------------------------------------------------------------


class PushTarget(Protocol):
    """What a push needs of an engine; ``LocalPushTarget`` serves any engine whose weights live
    in this process (hf); vLLM's receive in its worker process (``server.engines.vllm_push``)."""

    def tensor_specs(self) -> dict[str, TensorSpec]: ...

    async def join(self, init: WeightsTransferInit) -> PushGroup: ...

    async def receive(
        self, group: PushGroup, req: WeightsPushRequest, segment: Segment | None
    ) -> object: ...

    async def install(self, prepared: object) -> None: ...

    async def leave(self, group: PushGroup) -> None: ...


class LocalPushTarget:
    """Receives in a worker thread of this process; the engine installs the tensors in place."""

    def __init__(self, engine):
        self.engine = engine

    def tensor_specs(self) -> dict[str, TensorSpec]:
        return self.engine.tensor_specs()

    async def join(self, init: WeightsTransferInit) -> PushGroup:
        return await asyncio.to_thread(PushGroup.join, init)

    async def receive(
        self, group: PushGroup, req: WeightsPushRequest, segment: Segment | None
    ) -> object:
        if segment is not None:
            return await asyncio.to_thread(segment.map_tensors, req, self.engine.device)
        return await asyncio.to_thread(receive_tensors, group, req, self.engine.device)

    async def install(self, prepared: object) -> None:
        await self.engine.install_tensors(prepared)

    async def leave(self, group: PushGroup) -> None:
        group.close()


def push_target(engine) -> PushTarget:
    if engine.info.backend == "vllm":
        from server.engines.vllm_push import VLLMPushTarget

        return VLLMPushTarget(engine)
    return LocalPushTarget(engine)


# ---- the service -------------------------------------------------------------------------------


@dataclass
class _Joined:
    group: PushGroup
    target: PushTarget


class WeightsReceiver:
    """One replica's weight-transfer state: at most one joined group, one push at a time."""

    def __init__(self) -> None:
        self._joined: _Joined | None = None
        self._lock = asyncio.Lock()

    async def join(self, engine, init: WeightsTransferInit, gate: WeightsGate):
        device = engine.info.device
        if init.backend != "shm" and (init.backend == "gloo") != (device == "cpu"):
            raise ServiceError(
                422,
                f"backend {init.backend} cannot carry tensors to a replica serving on {device}: "
                "use gloo for CPU replicas and nccl for GPU replicas",
                field="backend",
            )
        if init.shm_probe is not None:
            await asyncio.to_thread(check_probe, init.shm_probe, init.group_name)
        async with self._lock:
            await self._reset("a new group is joining")
            target = push_target(engine)
            started = time.perf_counter()
            try:
                group = await target.join(init)
            except Exception as exc:
                raise ServiceError(
                    422,
                    f"could not join the trainer's group at {init.master_address}:"
                    f"{init.master_port} within {init.timeout_seconds}s: {exc}",
                    type="weights_transfer_failed",
                    field="master_address",
                ) from exc
            self._joined = _Joined(group, target)
            log.info(
                "joined weight-transfer group %s (rank %d of %d, %s) in %.2fs",
                init.group_name,
                init.rank_offset,
                init.world_size,
                init.backend,
                time.perf_counter() - started,
            )
            specs = target.tensor_specs()
            return WeightsTransferInitResponse(
                group_name=init.group_name,
                rank=init.rank_offset,
                weights_version=gate.version,
                tensors=list(specs.values()),
            )

    async def push(self, engine, req: WeightsPushRequest, gate: WeightsGate) -> WeightsPushResponse:
        async with self._lock:
            joined = self._joined
            if joined is None or joined.group.name != req.group_name:
                raise ServiceError(
                    409,
                    f"no weight-transfer group {req.group_name!r} on this replica (never joined, "
                    "or reset by a failed push or a restart): POST /v1/weights/transfer/init again",
                    type="no_transfer_group",
                    field="group_name",
                )
            group, target = joined.group, joined.target
            signalled = False
            timing: dict[str, float] = {}

            async def prepare() -> object:
                nonlocal signalled
                check_push(target.tensor_specs(), req)
                segment = await asyncio.to_thread(_segment_of, group, req)
                try:
                    await asyncio.to_thread(group.signal, req.push_id, "ok")
                    signalled = True
                    if segment is not None:  # nothing is mapped before every replica said ok
                        await asyncio.to_thread(group.wait_go, req.push_id)
                    started = time.perf_counter()
                    prepared = await target.receive(group, req, segment)
                    timing["receive"] = time.perf_counter() - started
                    return prepared
                finally:
                    if segment is not None:
                        segment.close()  # the mapping, if any, holds the pages

            try:
                version, seconds = await gate.swap_with(prepare, target.install, req.version)
            except ServiceError as exc:
                if not signalled:  # refused before receiving: the group stays usable
                    await _signal_quietly(group, req.push_id, f"refused: {exc.message}")
                    raise
                await self._reset(exc.message)
                raise
            except Exception as exc:
                if not signalled:
                    await _signal_quietly(group, req.push_id, f"refused: {exc}")
                await self._reset(str(exc))
                raise ServiceError(
                    422,
                    f"push {req.push_id} failed ({type(exc).__name__}: {exc}); weights_version "
                    f"{gate.version} keeps serving and the group is reset: init again",
                    type="weights_transfer_failed",
                ) from exc
            return WeightsPushResponse(
                weights_version=version,
                backend=group.init.backend,
                bytes=sum(req.nbytes()),
                receive_seconds=round(timing.get("receive", 0.0), 3),
                load_seconds=round(seconds, 3),
            )

    async def close(self) -> None:
        async with self._lock:
            await self._reset("the server is stopping")

    async def _reset(self, why: str) -> None:
        joined, self._joined = self._joined, None
        if joined is not None:
            log.warning("weight-transfer group %s reset: %s", joined.group.name, why)
            try:
                await joined.target.leave(joined.group)
            except Exception:
                log.exception("leaving weight-transfer group %s failed", joined.group.name)


def _segment_of(group: PushGroup, req: WeightsPushRequest) -> Segment | None:
    """The checked segment of a shm push (None for gloo/nccl); 422 naming ``shm_name``."""
    if group.init.backend == "shm":
        return open_push_segment(req)
    if req.shm_name is not None:
        raise ServiceError(
            422,
            f"this replica joined group {group.name} with backend {group.init.backend}: "
            "shm_name is for groups joined with backend shm",
            field="shm_name",
        )
    return None


async def _signal_quietly(group: PushGroup, push_id: str, verdict: str) -> None:
    try:
        await asyncio.to_thread(group.signal, push_id, verdict)
    except Exception:  # the trainer is gone; nobody is waiting for the verdict
        log.warning("could not tell the trainer that push %s was refused", push_id)
