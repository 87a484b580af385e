"""Versioned weights with atomic swaps.

Every request holds a read lease for its whole duration (student scoring, teacher scoring and
hint generation of one request all see one version). A swap first loads the new checkpoint
beside the old one (no lease needed, serving goes on), then waits for in-flight requests to
finish while holding new ones back, installs the new weights, bumps the version and lets traffic
resume. A failed load changes nothing, and a checkpoint with a non-float or non-finite tensor is
refused before the engine loads it (``check_tensors``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from server.engines.base import TeacherEngine, WeightsError
from server.errors import ServiceError


def resolve_weights_path(root: str, path: str) -> Path:
    """Resolve ``path`` inside ``root``; traversal (``..``) and symlink escapes are a 403."""
    root_real = Path(os.path.realpath(root))
    try:
        candidate = Path(os.path.realpath(root_real / path))
    except ValueError:  # an embedded NUL byte
        raise ServiceError(422, "weights path contains a NUL byte", field="path") from None
    if candidate != root_real and root_real not in candidate.parents:
        raise ServiceError(403, f"weights path {path!r} escapes TC_WEIGHTS_ROOT", field="path")
    try:
        is_dir = candidate.is_dir()
    except OSError:  # e.g. a name longer than the filesystem allows
        is_dir = False
    if not is_dir:
        raise ServiceError(
            422, f"weights path {path!r} is not a folder under TC_WEIGHTS_ROOT", field="path"
        )
    return candidate


FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def check_tensors(folder: str) -> None:
    """Every tensor of the folder's ``*.safetensors`` is floating point and finite.

    transformers casts an int32 checkpoint to the serving dtype without a word, and a NaN
    checkpoint loads fine: both would then serve garbage or NaN under a new weights_version.
    Read one tensor at a time (memory: the largest tensor, not the checkpoint).
    """
    import torch
    from safetensors import SafetensorError, safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open is no mapping
                    dtype = f.get_slice(name).get_dtype()
                    if dtype not in FLOAT_DTYPES:
                        raise WeightsError(
                            f"{file.name}: tensor {name} is {dtype}; weights must be floating "
                            f"point ({', '.join(FLOAT_DTYPES)})"
                        )
                    tensor = f.get_tensor(name)
                    if not bool(torch.isfinite(tensor).all()):
                        bad = int((~torch.isfinite(tensor)).sum())
                        raise WeightsError(
                            f"{file.name}: tensor {name} has {bad} non-finite values (NaN or "
                            "Infinity) of " + str(tensor.numel())
                        )
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{file.name} is not a readable safetensors file: {exc}") from exc


class WeightsGate:
    def __init__(self, version: int = 0):
        self.version = version
        self._readers = 0
        self._swapping = False
        self._changed = asyncio.Condition()
        self._swap_lock = asyncio.Lock()

    @asynccontextmanager
    async def reading(self, min_version: int | None = None) -> AsyncIterator[int]:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._swapping)
            if min_version is not None and self.version < min_version:
                raise ServiceError(
                    409,
                    f"loaded weights_version {self.version} is older than min_weights_version {min_version}",
                    type="stale_weights",
                    field="min_weights_version",
                )
            self._readers += 1
            version = self.version
        try:
            yield version
        finally:
            async with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    async def swap(
        self, engine: TeacherEngine, path: str, version: int | None
    ) -> tuple[int, float]:
        """Load the checkpoint folder ``path`` (checked before any engine sees it) and swap it in."""

        async def prepare() -> object:
            try:
                await asyncio.to_thread(check_tensors, path)
                return await engine.prepare_weights(path)
            except WeightsError as exc:
                raise ServiceError(422, str(exc), type="weights_load_failed", field="path") from exc

        return await self.swap_with(prepare, engine.swap_weights, version)

    async def swap_with(
        self,
        prepare: Callable[[], Awaitable[object]],
        install: Callable[[object], Awaitable[None]],
        version: int | None,
    ) -> tuple[int, float]:
        """The one swap, for a folder (``swap``) or a push (server/weights_push.py): after the
        version check ``prepare()`` builds the weights beside the serving ones, then, with no
        request in flight, ``install`` puts them in place under the new version."""
        async with self._swap_lock:
            if version is not None and version <= self.version:
                raise ServiceError(
                    409,
                    f"version {version} must be greater than the loaded weights_version {self.version}",
                    type="stale_weights",
                    field="version",
                )
            started = time.perf_counter()
            prepared = await prepare()
            async with self._changed:
                self._swapping = True
                await self._changed.wait_for(lambda: self._readers == 0)
            try:
                await install(prepared)
                self.version = version if version is not None else self.version + 1
            finally:
                async with self._changed:
                    self._swapping = False
                    self._changed.notify_all()
            return self.version, time.perf_counter() - started
