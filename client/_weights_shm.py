"""The trainer's end of a shared-memory push: one fresh segment in /dev/shm per push.

For replicas on the trainer's own host (backend ``shm``, docs/weights.md) the tensors need not
cross a socket: the trainer writes the packed stream (``proto.plan_buckets``' buckets back to back)
once into a new file ``SHM_DIR/tokencredit-push-{pid}-{random}`` and every replica maps the same
pages (server/weights_shm.py). The trainer never writes into a segment after the push, and unlinks
it once every replica has answered: a replica's mapping keeps the pages alive while it serves
from them, and the kernel frees them when the last mapping goes.

With ``preallocate`` (the default) the pusher allocates the next push's segment in the background
right after a push, while the trainer trains: backing fresh pages is most of a push's cost on a
VM that hands freed memory back to its host, and this takes it off the push's critical path, for
one more copy of the weights in /dev/shm between pushes. The spare is a new file that no replica
has seen; it is announced only by the next push.

A trainer killed mid-push cannot unlink its segment; the next pusher on the host removes segments
whose creator (the ``pid`` in the name) is no longer running (``sweep_orphans``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proto.weights_push import SHM_DIR, SHM_PREFIX

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
# os.pwrite moves at most about this many bytes per call on Linux.
_WRITE_CHUNK = 1 << 30


def shm_available() -> bool:
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK | os.X_OK)


def is_this_host(url: str) -> bool:
    """Whether ``url``'s host is this machine: a loopback name, this host's name, or an address
    this host can bind to (one of its own interfaces)."""
    host = urlsplit(url).hostname or "127.0.0.1"
    if host in _LOOPBACK or host in (socket.gethostname(), socket.getfqdn()):
        return True
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    except OSError:
        return False
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.bind((address[0], 0))  # only an address of this host can be bound
            return True
        except OSError:
            continue
    return False


def _new_name(kind: str) -> str:
    return f"{SHM_PREFIX}{os.getpid()}-{kind}{uuid.uuid4().hex[:16]}"


def _create(name: str) -> int:
    return os.open(
        Path(SHM_DIR) / name,
        os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
    )


def _release(fd: list[int], path: Path) -> None:
    if fd[0] >= 0:
        os.close(fd[0])
        fd[0] = -1
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Segment:
    """A new segment of ``size`` bytes; ``write`` packs tensors into it, ``unlink`` removes its
    name (idempotent). A segment nobody unlinked (a client never closed) is removed when it is
    garbage-collected or the process exits: it holds the model's size in memory."""

    def __init__(self, size: int):
        sweep_orphans()
        self.name = _new_name("")
        self.path = Path(SHM_DIR) / self.name
        self.size = size
        self._fd_box = [_create(self.name)]
        self._release = weakref.finalize(self, _release, self._fd_box, self.path)
        try:
            os.ftruncate(self._fd, size)  # the replicas check this size before they say ok
        except BaseException:
            self.unlink()
            raise

    def allocate(self) -> None:
        """Back every page now (``posix_fallocate``), so that a later ``write`` only copies: on
        this project's VM, backing fresh pages costs several times the copy (docs/weights.md)."""
        os.posix_fallocate(self._fd, 0, self.size)

    def write(self, offset: int, tensors: list[Any]) -> int:
        """Copy ``tensors``' bytes back to back from ``offset``; returns the offset after them."""
        import torch

        for t in tensors:
            raw = memoryview(t.detach().reshape(-1).view(torch.uint8).cpu().numpy())
            done = 0
            while done < len(raw):
                done += os.pwrite(self._fd, raw[done : done + _WRITE_CHUNK], offset + done)
            offset += len(raw)
        return offset

    @property
    def _fd(self) -> int:
        return self._fd_box[0]

    def unlink(self) -> None:
        self._release()


class Probe:
    """A tiny segment holding a group's name: a replica that reads it back sees this host's
    shared memory (``POST /v1/weights/transfer/init`` with backend shm)."""

    def __init__(self, group_name: str):
        self.name = _new_name("probe-")
        fd = _create(self.name)
        try:
            os.write(fd, group_name.encode())
        finally:
            os.close(fd)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(Path(SHM_DIR) / self.name)


def sweep_orphans() -> list[str]:
    """Remove this user's segments whose creating process has exited; returns their names."""
    removed = []
    try:
        entries = list(os.scandir(SHM_DIR))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(SHM_PREFIX):
            continue
        pid = entry.name[len(SHM_PREFIX) :].split("-", 1)[0]
        try:
            if not pid.isdigit() or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if _running(int(pid)):
                continue
            os.unlink(entry.path)
            removed.append(entry.name)
        except OSError:
            continue
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
