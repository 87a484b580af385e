"""Pushing the actor's weights to the pool over ``torch.distributed`` (``TOKENCREDIT_WEIGHTS_SYNC
=push``): the teacher follows the policy without an HF checkpoint on shared storage.

The weights live in OpenRLHF's actor processes (``PolicyModelActor``, one per DeepSpeed rank);
the run's lifecycle (versions, re-sync after a 409: `weights`) lives in the trainer's process.
The two ends:

- **trainer's process**: `ActorGroupPush` is the transport `weights.TeacherWeights` calls,
  ``push(urls, version)``. It asks every rank of the actor group to take part, through OpenRLHF's
  own generic dispatch ``BaseModelActor.execute_batch(method_name, ...)`` (a Ray method), which
  calls `PUSH_METHOD` on each actor, and waits for them with ``ray.get``.
- **actor processes**: `push_actor_weights`, installed as ``BaseModelActor.<PUSH_METHOD>`` by the
  hook. It follows OpenRLHF's ``ActorPPOTrainer.broadcast_to_vllm`` (0.11.2): every rank walks the
  HF model's parameters and gathers each one (``deepspeed.zero.GatheredParameters`` under ZeRO-3,
  ``GatherReplacedLayerParams`` under tensor parallelism; both collectives need every rank); rank
  0 keeps a copy of the full tensor, and once all are gathered (so no other rank waits on it)
  sends the mapping with ``TeacherClient.push_weights(state, version)``: every replica of
  ``urls`` checks names, shapes and dtypes, receives, and swaps atomically (docs/weights.md).

Copies go to CPU memory for ``gloo`` (CPU replicas) and stay on rank 0's GPU for ``nccl`` (GPU
replicas): rank 0 then holds one extra full copy of the weights for the push, where OpenRLHF's
own broadcast sends one parameter at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from client import TeacherClient

log = logging.getLogger("tokencredit.openrlhf")

# Name of the method the hook adds to OpenRLHF's BaseModelActor (run on every actor rank).
PUSH_METHOD = "tokencredit_push_weights"

_clients_lock = threading.Lock()
_clients: dict[tuple[str, ...], TeacherClient] = {}


class ActorGroupPush:
    """``push(urls, version)``: the actor group pushes its current weights to ``urls``.

    ``group`` is OpenRLHF's ``RayActorGroup`` of the policy; ``get`` is ``ray.get`` (the one
    OpenRLHF's own module uses). Errors raised on rank 0 (a replica's 409 or 422) come back
    through ``get``; Ray's task error is an instance of the original error class.
    """

    def __init__(self, group: Any, get: Callable[[Any], Any]):
        self.group = group
        self.get = get

    def __call__(self, urls: Sequence[str], version: int) -> None:
        data = {"urls": [list(urls)], "version": [int(version)]}
        # execute_batch(method_name, all_data, start_idx, end_idx): one item, on every rank.
        refs = self.group.async_run_method("execute_batch", PUSH_METHOD, data, 0, 1)
        self.get(refs)


def push_actor_weights(actor_process: Any, urls: Sequence[str], version: int) -> int | None:
    """On every rank of the actor group: gather the policy's weights, rank 0 pushes them.

    ``actor_process`` is OpenRLHF's ``PolicyModelActor`` (its ``actor`` and ``strategy``). Returns
    the replicas' new ``weights_version`` on rank 0, None on the other ranks.
    """
    from trainer.openrlhf.plugin import get_plugin

    config = get_plugin().config
    strategy = actor_process.strategy
    ds = strategy.args.ds
    model = hf_model(actor_process.actor)
    device = None if config.push_backend == "nccl" else "cpu"  # shm and gloo send CPU tensors
    state = gathered_state(
        model,
        rank0=_is_rank_0(),
        zero3=int(getattr(ds, "zero_stage", 0)) == 3,
        tensor_parallel=int(getattr(ds, "tensor_parallel_size", 1) or 1) > 1,
        device=device,
    )
    if state is None:
        return None
    res = pool_client(urls).push_weights(
        state,
        version,
        progress=False,
        backend=config.push_backend,
        master_address=config.push_address,
    )
    log.info(
        "tokencredit: pushed %.0f MiB to %s as version %d (receive %.1f s, load %.1f s)",
        res.bytes / 2**20,
        ", ".join(urls),
        res.weights_version,
        res.receive_seconds,
        res.load_seconds,
    )
    return res.weights_version


def hf_model(actor: Any) -> torch.nn.Module:
    """The Hugging Face model inside OpenRLHF's ``Actor`` (``actor.model`` is the DeepSpeed engine
    once ``strategy.prepare`` ran; ``.module`` is the model it wraps)."""
    model = actor.model
    return getattr(model, "module", model)


def gathered_state(
    model: torch.nn.Module,
    *,
    rank0: bool,
    zero3: bool = False,
    tensor_parallel: bool = False,
    device: str | None = "cpu",
) -> dict[str, torch.Tensor] | None:
    """name -> full tensor of every parameter and persistent buffer (rank 0), None elsewhere.

    Each parameter is gathered once, even when tied (all its names map to the same copy, which
    the client then sends once). ``device`` None keeps the copy where the gathered tensor is.
    """
    names_of: dict[int, list[str]] = {}
    params: dict[int, torch.nn.Parameter] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
        params[id(param)] = param
    state: dict[str, torch.Tensor] = {}
    for key, param in params.items():
        with _gathered(param, model, zero3=zero3, tensor_parallel=tensor_parallel):
            if rank0:
                data = param.data.detach()
                copy = data.to(device, copy=True) if device else data.clone()
                for name in names_of[key]:
                    state[name] = copy
    if not rank0:
        return None
    for prefix, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                full = f"{prefix}.{name}" if prefix else name
                state[full] = buf.detach().to(device, copy=True) if device else buf.detach().clone()
    return state


def _gathered(param: Any, model: Any, *, zero3: bool, tensor_parallel: bool):
    """OpenRLHF's ``_gather_params_ctx``: the full parameter inside the context."""
    if tensor_parallel:
        import deepspeed

        return deepspeed.module_inject.layers.GatherReplacedLayerParams(
            [param], model, enabled=True
        )
    if zero3:
        import deepspeed

        return deepspeed.zero.GatheredParameters([param], enabled=True)
    return contextlib.nullcontext()


def _is_rank_0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def pool_client(urls: Sequence[str]) -> TeacherClient:
    """This process's admin client for ``urls`` (the whole pool, or the replicas a re-sync
    reaches); its groups with the replicas are kept between pushes."""
    from trainer.openrlhf.plugin import get_plugin

    key = tuple(urls)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            config = get_plugin().config
            client = TeacherClient(
                list(key), api_key=config.api_key, admin_key=config.admin_key, timeout=600.0
            )
            _clients[key] = client
        return client


def close_clients() -> None:
    """End this process's push groups (tests; a process that stops pushing)."""
    with _clients_lock:
        for client in _clients.values():
            client.close()
        _clients.clear()


def install_push_method(module: Any) -> None:
    """``module.BaseModelActor.<PUSH_METHOD>``: the actor end of a push (idempotent)."""
    cls = module.BaseModelActor
    if getattr(cls, PUSH_METHOD, None) is None:

        def tokencredit_push_weights(self, urls, version):
            return push_actor_weights(self, urls, version)

        setattr(cls, PUSH_METHOD, tokencredit_push_weights)
