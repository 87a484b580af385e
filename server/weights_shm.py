"""A replica's side of the shared-memory push: open the trainer's segment, map it, view tensors.

Backend ``shm`` (docs/weights.md) serves replicas on the trainer's own host: the trainer packs the
tensors once into a fresh file ``SHM_DIR/tokencredit-push-...`` and names it in the push. A
replica opens only that directory and only names matching ``SHM_NAME_PATTERN`` (the request model
already refuses anything else), never follows a link, and checks that the file is a regular file
of exactly the packed size before it says ok. The file is held open from that check to the map,
so the bytes mapped are the bytes checked even after the trainer unlinks the name.

The mapping is private copy-on-write (``MAP_PRIVATE``): reading shares the trainer's pages (no
copy; all replicas on the host serve from the same physical memory), and nothing a replica might
write reaches the trainer or another replica. The tensors are views into it; the mapping lives as
long as one of them does (``torch.frombuffer`` holds the ``mmap``), so once the replica drops the
old weights at its next swap, and the trainer has unlinked the name, the kernel frees the pages.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from pathlib import Path

import torch

from proto.weights_push import SHM_DIR, SHM_NAME_PATTERN, WeightsPushRequest
from server.errors import ServiceError
from server.packed import tensors_from_buffer


class Segment:
    """An open, checked segment; ``map_tensors`` views the request's tensors in it."""

    def __init__(self, name: str, fd: int, size: int):
        self.name = name
        self.fd = fd
        self.size = size

    @classmethod
    def open(cls, name: str, field: str, size: int | None = None) -> Segment:
        """Open ``SHM_DIR/name`` read-only; a 422 naming ``field`` if it is not a regular file
        there (of ``size`` bytes when given)."""
        if not re.match(SHM_NAME_PATTERN, name):  # the wire model checks too; never trust one
            raise ServiceError(422, f"{field} {name!r} is not a tokencredit segment", field=field)
        path = Path(SHM_DIR) / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise ServiceError(
                422,
                f"{field} {name!r}: cannot open {path} ({exc.strerror}); a shm push needs the "
                f"replica on the trainer's host, sharing its {SHM_DIR}: use backend gloo otherwise",
                field=field,
            ) from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ServiceError(422, f"{field} {name!r} is not a regular file", field=field)
            if size is not None and info.st_size != size:
                raise ServiceError(
                    422,
                    f"{field} {name!r} holds {info.st_size} bytes; the tensors listed need {size}",
                    field=field,
                )
        except BaseException:
            os.close(fd)
            raise
        return cls(name, fd, info.st_size)

    def read(self) -> bytes:
        return os.pread(self.fd, self.size, 0)

    def map_tensors(self, req: WeightsPushRequest, device: str) -> dict[str, torch.Tensor]:
        """name -> tensor, views into a private mapping of the segment (copied to ``device``
        unless it is the CPU)."""
        if self.size == 0:
            buf = torch.empty(0, dtype=torch.uint8)
        else:
            mapped = mmap.mmap(self.fd, self.size, flags=mmap.MAP_PRIVATE)
            buf = torch.frombuffer(mapped, dtype=torch.uint8)
        tensors = tensors_from_buffer(buf, req, 0, len(req.names))
        if device != "cpu":
            tensors = {n: t.to(device) for n, t in tensors.items()}
        return tensors

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_push_segment(req: WeightsPushRequest) -> Segment:
    """The segment of a shm push, checked against the size the request's tensors need."""
    if req.shm_name is None:
        raise ServiceError(
            422, "this replica joined with backend shm: the push needs shm_name", field="shm_name"
        )
    return Segment.open(req.shm_name, "shm_name", sum(req.nbytes()))


def check_probe(name: str, group_name: str) -> None:
    """At join: the probe segment must hold ``group_name`` (the replica sees the trainer's
    shared memory, not a same-named file in a /dev/shm of its own)."""
    with Segment.open(name, "shm_probe") as probe:
        if probe.size > 1024 or probe.read() != group_name.encode():
            raise ServiceError(
                422,
                f"shm_probe {name!r} does not hold this group's name: this replica does not see "
                f"the trainer's {SHM_DIR}; use backend gloo",
                field="shm_probe",
            )
