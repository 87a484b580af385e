"""The trainer's end of a weights push: one ``torch.distributed`` group per replica.

    >>> with TeacherClient(["http://teacher-0:8000", "http://teacher-1:8000"],
    ...                    admin_key="...") as tc:                        # doctest: +SKIP
    ...     for step in range(steps):
    ...         train_step(model)
    ...         tc.push_weights(model, version=step + 1)   # every replica, or none, moves on

The trainer is rank 0 of every group and hosts the rendezvous (a ``TCPStore`` on
``master_address:master_port``); each replica joins its own group (``POST
/v1/weights/transfer/init``, world size 2), so a replica that starts late or restarts joins at the
next push without disturbing the others. A push announces vLLM-style metadata (``names``,
``dtype_names``, ``shapes``) to every replica (``POST /v1/weights/transfer/update``), waits for
each replica's verdict in the store, then broadcasts the tensors packed into uint8 buckets
(``proto.plan_buckets``), each bucket sent to all replicas at once. If any replica refuses, no
bucket is sent and every group is closed: the replicas keep their old version and the next push
joins again. docs/weights.md has the protocol and the numbers.

Replicas on this host can take the tensors through shared memory instead (backend ``shm``,
client/_weights_shm.py): the group then only carries the verdicts, the trainer packs the buckets
into one fresh segment after every replica said ok, writes ``go/{push_id}`` and each replica maps
the segment. Backend ``auto`` (the default) picks ``shm`` when every replica is on this host and
the tensors are on the CPU, ``gloo`` otherwise (or when a replica cannot see this host's
/dev/shm).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from client._errors import APIStatusError, WeightsPushError
from client._weights_shm import Probe, Segment, is_this_host, shm_available
from proto.weights_push import (
    DEFAULT_BUCKET_BYTES,
    WeightsPushRequest,
    WeightsPushResponse,
    WeightsTransferInit,
    WeightsTransferInitResponse,
    plan_buckets,
)

# Pushes at least this big show a progress bar when ``progress`` is left at None.
PROGRESS_MIN_BYTES = 256 * 1024 * 1024
# How often the trainer looks at the store and at the pending HTTP answer while it waits.
_POLL_SECONDS = 0.01

BACKENDS = ("auto", "gloo", "nccl", "shm")

# post(url, path, body, timeout_seconds) -> decoded JSON of a 2xx answer (or a client error raised)
PostFn = Callable[[str, str, dict, float], Any]
ProgressFn = Callable[[int, int], None]


@dataclass
class _Link:
    url: str
    group_name: str
    pg: Any
    info: WeightsTransferInitResponse


def _local_address_towards(url: str) -> str:
    """The address of this host on the route to ``url`` (what the replica must connect back to)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    if host in ("localhost", "127.0.0.1", "::1"):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))  # UDP: no packet is sent, the kernel only picks the route
        return s.getsockname()[0]


def state_dict_of(model_or_state_dict: Any) -> dict[str, Any]:
    """name -> tensor from a ``torch.nn.Module`` (its ``state_dict()``) or a mapping."""
    if isinstance(model_or_state_dict, Mapping):
        return dict(model_or_state_dict)
    state_dict = getattr(model_or_state_dict, "state_dict", None)
    if not callable(state_dict):
        raise TypeError("push_weights takes a torch.nn.Module or a mapping of name -> tensor")
    return dict(state_dict())


class WeightsPusher:
    """Holds the rendezvous store and a group per replica; ``push`` sends one version to all.

    Args:
        urls: replica base URLs (the client's pool).
        post: sends one admin POST to one replica (the client's transport).
        master_address: address the replicas connect back to; default: this host's address on
            the route to the first replica (127.0.0.1 for a local one).
        master_port: port of the store; 0 picks a free one.
        backend: ``"auto"`` (``shm`` for CPU tensors and replicas all on this host, else
            ``gloo``), ``"gloo"`` (CPU tensors), ``"nccl"`` (CUDA tensors; replicas on GPUs) or
            ``"shm"`` (replicas on this host, sharing its /dev/shm).
        timeout: seconds bounding the rendezvous and every broadcast, on both ends.
        preallocate: shm only: after a push, allocate the next push's segment in the background
            (client/_weights_shm.py); costs one more copy of the weights in /dev/shm.
    """

    def __init__(
        self,
        urls: list[str],
        post: PostFn,
        *,
        master_address: str | None = None,
        master_port: int = 0,
        backend: str = "auto",
        timeout: float = 60.0,
        preallocate: bool = True,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.urls = list(urls)
        self.post = post
        self.master_address = master_address or _local_address_towards(self.urls[0])
        self.master_port = master_port
        self.backend = backend
        self.timeout = timeout
        self.preallocate = preallocate
        self._store: Any = None
        self._links: dict[str, _Link] = {}
        # shm: the next push's segment, allocated in the background after a push (a new file,
        # not announced yet, so no replica maps it).
        self._spare: Segment | None = None
        self._spare_thread: threading.Thread | None = None

    # ---- groups -------------------------------------------------------------------------------

    def _ensure_store(self) -> Any:
        import torch.distributed as dist

        if self._store is None:
            self._store = dist.TCPStore(
                "0.0.0.0",
                self.master_port,
                is_master=True,
                wait_for_workers=False,
                timeout=datetime.timedelta(seconds=self.timeout),
            )
            self.master_port = self._store.port
        return self._store

    def connect(self, url: str) -> _Link:
        """Make ``url`` join a fresh group with this trainer (replacing any group it had)."""
        import torch.distributed as dist

        group_name = f"tc-{uuid.uuid4().hex[:16]}"
        store = dist.PrefixStore(group_name, self._ensure_store())
        probe = Probe(group_name) if self.backend == "shm" else None
        init = WeightsTransferInit(
            master_address=self.master_address,
            master_port=self.master_port,
            rank_offset=1,
            world_size=2,
            group_name=group_name,
            backend=self.backend,
            timeout_seconds=self.timeout,
            shm_probe=probe.name if probe is not None else None,
        )
        try:
            with cf.ThreadPoolExecutor(1) as pool:
                answer = pool.submit(
                    self.post,
                    url,
                    "/v1/weights/transfer/init",
                    init.model_dump(exclude_none=True),
                    self.timeout + 30,
                )
                # Build our end only once the replica is in (a refused init must not leave us
                # waiting for it in the rendezvous until the timeout).
                self._wait(store, "joined/1", answer, f"{url} joining the group")
                pg = None
                if self.backend != "shm":  # shm: the store alone carries the verdicts
                    pg = _process_group(store, 0, 2, self.backend, self.timeout)
                info = WeightsTransferInitResponse.model_validate(answer.result())
        finally:
            if probe is not None:
                probe.unlink()
        link = _Link(url, group_name, pg, info)
        self._links[url] = link
        return link

    def _wait(self, store: Any, key: str, answer: cf.Future, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while not store.check([key]):
            if answer.done():
                answer.result()  # the replica answered an error: raise it
                if store.check([key]):
                    return
                raise WeightsPushError(f"{what}: answered without writing {key!r} to the store")
            if time.monotonic() > deadline:
                raise WeightsPushError(f"{what}: no answer within {self.timeout}s")
            time.sleep(_POLL_SECONDS)

    def close(self) -> None:
        """Close every group and the store (the replicas reset their end at their next push),
        and remove the spare segment."""
        self.settle()
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.unlink()
        for link in self._links.values():
            link.pg = None
        self._links.clear()
        self._store = None

    def settle(self) -> None:
        """Wait for background work: the allocation of the next shm push's segment."""
        thread, self._spare_thread = self._spare_thread, None
        if thread is not None:
            thread.join()

    def _segment(self, size: int) -> Segment:
        """A new segment of ``size`` bytes: the spare allocated after the last push if it fits."""
        self.settle()
        spare, self._spare = self._spare, None
        if spare is not None and spare.size == size:
            return spare
        if spare is not None:
            spare.unlink()
        return Segment(size)

    def _allocate_spare(self, size: int) -> None:
        def allocate() -> None:
            segment = None
            try:
                segment = Segment(size)
                segment.allocate()
            except OSError:  # /dev/shm full: the next push allocates (and reports) it itself
                if segment is not None:
                    segment.unlink()
                return
            self._spare = segment

        self._spare_thread = threading.Thread(target=allocate, name="tc-shm-spare", daemon=True)
        self._spare_thread.start()

    def drop(self, url: str) -> None:
        link = self._links.pop(url, None)
        if link is not None:
            # Destroying the group closes its sockets, so the replica's pending receive fails at
            # once (``abort()`` would leave it waiting for its timeout); nothing else may hold it.
            link.pg = None

    # ---- push ---------------------------------------------------------------------------------

    def push(
        self,
        model_or_state_dict: Any,
        version: int | None = None,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cast: bool = True,
        progress: bool | ProgressFn | None = None,
    ) -> WeightsPushResponse:
        """Send one set of weights to every replica; see `TeacherClient.push_weights`."""
        state = state_dict_of(model_or_state_dict)
        links = self._connect_all(state)
        tensors = _select(state, links[0].info, cast=cast)
        if version is None:
            version = max(link.info.weights_version for link in links) + 1
        names = list(tensors)
        req = WeightsPushRequest(
            group_name=links[0].group_name,  # replaced per replica below
            push_id=uuid.uuid4().hex,
            names=names,
            dtype_names=[str(t.dtype).removeprefix("torch.") for t in tensors.values()],
            shapes=[list(t.shape) for t in tensors.values()],
            version=version,
            packed_buffer_size_bytes=bucket_bytes,
            shm_name=None,  # set per push by _push_in for shm
        )
        for attempt in (1, 2):
            try:
                res = self._push(links, tensors, req, progress)
                if self.backend == "shm" and self.preallocate:
                    self._allocate_spare(sum(req.nbytes()))
                return res
            except APIStatusError as exc:
                self._drop_all(links)
                if exc.type != "no_transfer_group" or attempt == 2:
                    raise
                # A replica restarted (or reset its group after a failed push): join again.
                links = [self.connect(url) for url in self.urls]
            except BaseException:
                self._drop_all(links)
                raise
        raise AssertionError("unreachable")

    def _connect_all(self, state: dict[str, Any]) -> list[_Link]:
        """Every replica's link, joining those without one; resolves backend ``auto`` at the
        first push (``shm`` if it fits, falling back to ``gloo`` if a replica refuses it)."""
        if self.backend == "auto":
            self.backend = "shm" if self._shm_fits(state) else "gloo"
            try:
                return [self._links.get(url) or self.connect(url) for url in self.urls]
            except APIStatusError as exc:
                if self.backend != "shm" or exc.field not in ("shm_probe", "backend"):
                    raise
                # A replica that does not see this host's /dev/shm (another container, say),
                # or that predates backend shm: every replica goes over gloo instead (the store
                # stays: it serves any backend).
                for url in list(self._links):
                    self.drop(url)
                self.backend = "gloo"
        return [self._links.get(url) or self.connect(url) for url in self.urls]

    def _shm_fits(self, state: dict[str, Any]) -> bool:
        tensors_on_cpu = all(
            getattr(getattr(t, "device", None), "type", "cpu") == "cpu" for t in state.values()
        )
        return tensors_on_cpu and shm_available() and all(is_this_host(u) for u in self.urls)

    def _drop_all(self, links: list[_Link]) -> None:
        # A replica may be waiting for buckets that will never come: closing our end fails its
        # receive at once (it resets and keeps its old weights); the next push joins again.
        for link in links:
            self.drop(link.url)

    def _push(
        self,
        links: list[_Link],
        tensors: dict[str, Any],
        req: WeightsPushRequest,
        progress: bool | ProgressFn | None,
    ) -> WeightsPushResponse:
        pool = cf.ThreadPoolExecutor(len(links))
        try:
            return self._push_in(pool, links, tensors, req, progress)
        except BaseException:
            # Free any replica still waiting for buckets before waiting for its answer.
            self._drop_all(links)
            raise
        finally:
            pool.shutdown(wait=True)

    def _push_in(
        self,
        pool: cf.ThreadPoolExecutor,
        links: list[_Link],
        tensors: dict[str, Any],
        req: WeightsPushRequest,
        progress: bool | ProgressFn | None,
    ) -> WeightsPushResponse:
        nbytes = req.nbytes()
        segment = self._segment(sum(nbytes)) if self.backend == "shm" else None
        try:
            if segment is not None:
                req = req.model_copy(update={"shm_name": segment.name})
            return self._announce_and_send(pool, links, tensors, req, progress, segment)
        finally:
            if segment is not None:
                # Every replica answered (or failed): those that took the push mapped it, and
                # their mappings keep the pages as long as they serve from them.
                segment.unlink()

    def _announce_and_send(
        self,
        pool: cf.ThreadPoolExecutor,
        links: list[_Link],
        tensors: dict[str, Any],
        req: WeightsPushRequest,
        progress: bool | ProgressFn | None,
        segment: Segment | None,
    ) -> WeightsPushResponse:
        import torch.distributed as dist

        nbytes = req.nbytes()
        total = sum(nbytes)
        # Announce to every replica at once; each checks, then waits for the buckets.
        answers = []
        for link in links:
            body = req.model_copy(update={"group_name": link.group_name}).model_dump()
            http_timeout = self.timeout * (
                2 + len(plan_buckets(nbytes, req.packed_buffer_size_bytes))
            )
            answers.append(
                pool.submit(self.post, link.url, "/v1/weights/transfer/update", body, http_timeout)
            )
        stores = [dist.PrefixStore(link.group_name, self._ensure_store()) for link in links]
        go = f"go/{req.push_id}"
        try:
            for link, store, answer in zip(links, stores, answers):
                key = f"ready/{req.push_id}/1"
                self._wait(store, key, answer, f"{link.url} checking the push")
                verdict = store.get(key).decode()
                if verdict != "ok":
                    if answer.exception(timeout=self.timeout) is not None:
                        answer.result()  # the replica's own error (409 stale, 422 mismatch ...)
                    raise WeightsPushError(f"{link.url} refused the push: {verdict}")
            if segment is not None:
                self._pack(segment, tensors, req, progress)
                for store in stores:
                    store.set(go, "go")
        except BaseException as exc:
            if segment is not None:  # replicas that said ok wait for the go: call it off
                for store in stores:
                    _set_quietly(store, go, f"called off by the trainer ({type(exc).__name__})")
            raise
        if segment is None:
            self._broadcast(links, tensors, req, progress)
        results = [
            WeightsPushResponse.model_validate(a.result(timeout=self.timeout * 4)) for a in answers
        ]
        for link, res in zip(links, results):
            link.info = link.info.model_copy(update={"weights_version": res.weights_version})
        return WeightsPushResponse(
            weights_version=min(r.weights_version for r in results),
            backend=results[0].backend,
            bytes=total,
            receive_seconds=max(r.receive_seconds for r in results),
            load_seconds=max(r.load_seconds for r in results),
        )

    def _pack(
        self,
        segment: Segment,
        tensors: dict[str, Any],
        req: WeightsPushRequest,
        progress: bool | ProgressFn | None,
    ) -> None:
        """shm: the buckets back to back into the segment, once for every replica."""
        nbytes = req.nbytes()
        total = sum(nbytes)
        values = list(tensors.values())
        bar = _progress_bar(progress, total)
        offset = 0
        try:
            for start, end in plan_buckets(nbytes, req.packed_buffer_size_bytes):
                offset = segment.write(offset, values[start:end])
                bar(offset, total)
        finally:
            bar(-1, total)

    def _broadcast(
        self,
        links: list[_Link],
        tensors: dict[str, Any],
        req: WeightsPushRequest,
        progress: bool | ProgressFn | None,
    ) -> None:
        """gloo/nccl: each bucket to every replica's group at once."""
        nbytes = req.nbytes()
        total = sum(nbytes)
        bar = _progress_bar(progress, total)
        sent = 0
        try:
            values = list(tensors.values())
            in_flight: tuple[list, Any] | None = None  # (works, buffer) of the previous bucket
            for start, end in plan_buckets(nbytes, req.packed_buffer_size_bytes):
                buf = _pack(values[start:end])  # packs while the previous bucket is on the wire
                if in_flight is not None:
                    sent += _finish(*in_flight)
                    bar(sent, total)
                in_flight = ([link.pg.broadcast(buf, 0) for link in links], buf)
            if in_flight is not None:
                sent += _finish(*in_flight)
                bar(sent, total)
        finally:
            bar(-1, total)


def _select(
    state: dict[str, Any], info: WeightsTransferInitResponse, *, cast: bool
) -> dict[str, Any]:
    """The tensors to send, in the replica's order: tied aliases the replica does not list are
    left out; anything else the replica does not expect is sent (and refused by it, by name).
    With ``cast``, floating tensors go over in the replica's dtype, as ``save_pretrained(dtype=)``
    would write them."""
    import torch

    expected = {s.name: s for s in info.tensors}
    storages = {}
    for name, t in state.items():
        if name in expected and isinstance(t, torch.Tensor):
            storages[(t.data_ptr(), tuple(t.shape))] = name
    out: dict[str, Any] = {}
    for name in [*(n for n in expected if n in state), *(n for n in state if n not in expected)]:
        t = state[name]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        if name not in expected and storages.get((t.data_ptr(), tuple(t.shape))) not in (
            None,
            name,
        ):
            continue  # a tied alias of a tensor that is sent
        t = t.detach()
        if cast and name in expected and t.is_floating_point():
            t = t.to(getattr(torch, expected[name].dtype))
        out[name] = t.contiguous()
    return out


def _set_quietly(store: Any, key: str, value: str) -> None:
    with contextlib.suppress(Exception):  # the store is gone: the replicas' wait fails anyway
        store.set(key, value)


def _finish(works: list, buf: Any) -> int:
    for work in works:
        work.wait()
    return int(buf.numel())


def _pack(tensors: list[Any]) -> Any:
    """One uint8 buffer holding the tensors' bytes back to back (vLLM's packed layout)."""
    import torch

    flat = [t.reshape(-1).view(torch.uint8) for t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


def _process_group(store: Any, rank: int, size: int, backend: str, timeout: float) -> Any:
    import torch
    import torch.distributed as dist

    td = datetime.timedelta(seconds=timeout)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, size, td)
    if not torch.cuda.is_available():
        raise WeightsPushError("backend nccl needs CUDA on the trainer")
    opts = dist.ProcessGroupNCCL.Options()
    opts._timeout = td
    return dist.ProcessGroupNCCL(store, rank, size, opts)


def _progress_bar(progress: bool | ProgressFn | None, total: int) -> ProgressFn:
    """``bar(sent, total)`` after every bucket, ``bar(-1, total)`` at the end."""
    if callable(progress):
        user = progress
        return lambda sent, total: None if sent < 0 else user(sent, total)
    if progress is False or (progress is None and total < PROGRESS_MIN_BYTES):
        return lambda sent, total: None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="push weights")

    def update(sent: int, total: int) -> None:
        if sent < 0:
            bar.close()
        else:
            bar.update(sent - bar.n)

    return update
