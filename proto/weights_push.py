"""Pushing weights over a ``torch.distributed`` group: the handshake, the push, the bucket plan.

The fields follow vLLM's weight-transfer engine (``init_weight_transfer_engine`` takes
``master_address``, ``master_port``, ``rank_offset``, ``world_size``; ``update_weights`` takes
``names``, ``dtype_names``, ``shapes`` and streams the tensors *packed* into uint8 buffers of
``packed_buffer_size_bytes``), so a trainer that feeds vLLM can feed tokencredit with the same
metadata. docs/weights.md describes the whole exchange.

The bucket plan is part of the protocol: sender and receiver cut the same tensor list into the
same buckets from the metadata alone, so only raw bytes travel over the group.

For replicas on the trainer's own host the bytes need not travel at all (backend ``shm``, the
analogue of vLLM's IPC weight-transfer engine): the trainer writes the packed stream once into a
fresh file ``SHM_DIR/tokencredit-push-...`` (the buckets back to back: tensor ``i`` starts at the
sum of the sizes before it) and names it in the push; every replica maps the same pages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from proto.base import WireModel

# Bytes per element of the dtypes a push may carry (names as vLLM writes them: no "torch.").
DTYPE_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
# vLLM's default packed buffer is 1 GiB; a smaller one halves nothing on a GPU but keeps a CPU
# replica's receive buffer (it holds a whole model beside the serving one) from spiking.
DEFAULT_BUCKET_BYTES = 256 * 1024 * 1024
GROUP_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
# Shared-memory segments live in SHM_DIR under names with this prefix, nowhere else: a replica
# opens only ``SHM_DIR / name`` for a name matching SHM_NAME_PATTERN (no path, no dot-dot).
SHM_DIR = "/dev/shm"
SHM_PREFIX = "tokencredit-push-"
SHM_NAME_PATTERN = r"^tokencredit-push-[A-Za-z0-9_\-]{1,100}$"


class WeightsTransferInit(WireModel):
    """``POST /v1/weights/transfer/init`` (admin): join the trainer's group as ``rank_offset``.

    The trainer (rank 0) hosts a ``torch.distributed.TCPStore`` at ``master_address:master_port``;
    the replica connects to it under the prefix ``group_name``. One group per replica (world size
    2) lets replicas join late and rejoin after a restart without touching the others.
    """

    master_address: str = Field(min_length=1, max_length=253, description="Trainer's host.")
    master_port: int = Field(ge=1, le=65535, description="Port of the trainer's TCPStore.")
    rank_offset: int = Field(default=1, ge=1, description="This replica's rank in the group.")
    world_size: int = Field(default=2, ge=2, description="Trainer + receiving replicas.")
    group_name: str = Field(
        pattern=GROUP_NAME_PATTERN, description="Store prefix of this group; new per join."
    )
    backend: Literal["gloo", "nccl", "shm"] = Field(
        default="gloo",
        description="`gloo` (CPU tensors), `nccl` (CUDA tensors) or `shm` (a replica on the "
        "trainer's host: the tensors come in a shared-memory segment; the group only carries "
        "the verdicts).",
    )
    shm_probe: str | None = Field(
        default=None,
        pattern=SHM_NAME_PATTERN,
        description="Backend `shm` only (required there): a segment in /dev/shm holding "
        "`group_name`, proving the replica sees the trainer's shared memory.",
    )
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Bound on the rendezvous and on every receive of a later push.",
    )

    @model_validator(mode="after")
    def check_rank(self) -> WeightsTransferInit:
        if self.rank_offset >= self.world_size:
            raise ValueError(
                f"rank_offset {self.rank_offset} must be below world_size {self.world_size}"
            )
        if (self.backend == "shm") != (self.shm_probe is not None):
            raise PydanticCustomError(
                "shm_probe",
                "shm_probe is required with backend shm, and only there",
                {"field": "shm_probe"},
            )
        return self


class TensorSpec(WireModel):
    name: str = Field(min_length=1)
    dtype: str
    shape: list[int]


class WeightsTransferInitResponse(WireModel):
    group_name: str
    rank: int
    weights_version: int
    tensors: list[TensorSpec] = Field(
        description="What a push must carry: every name, with the serving dtype and shape."
    )


class WeightsPushRequest(WireModel):
    """``POST /v1/weights/transfer/update`` (admin): receive one push and swap atomically.

    ``names``/``dtype_names``/``shapes`` list the tensors in the order they are streamed (vLLM's
    ``update_info``). The server checks them against the serving model, then writes ``"ok"`` (or
    the reason it refuses) to the store key ``{group_name}/ready/{push_id}/{rank}``; the trainer
    broadcasts only after reading ``"ok"``.
    """

    group_name: str = Field(pattern=GROUP_NAME_PATTERN)
    push_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    names: list[str] = Field(min_length=1)
    dtype_names: list[str]
    shapes: list[list[int]]
    version: int | None = Field(
        default=None, ge=0, description="New weights_version; default: current + 1. Must increase."
    )
    packed_buffer_size_bytes: int = Field(
        default=DEFAULT_BUCKET_BYTES,
        ge=1024 * 1024,
        le=16 * 1024**3,
        description="Bucket size of the packed stream (see `plan_buckets`).",
    )
    shm_name: str | None = Field(
        default=None,
        pattern=SHM_NAME_PATTERN,
        description="Groups joined with backend `shm` only (required there): the segment in "
        "/dev/shm holding the packed tensors, back to back, exactly `sum(nbytes)` bytes. Mapped "
        "only after every replica said ok; the trainer unlinks it once every replica answered.",
    )

    @model_validator(mode="after")
    def check_lists(self) -> WeightsPushRequest:
        n = len(self.names)
        for field in ("dtype_names", "shapes"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"{field} has {len(getattr(self, field))} entries, names has {n}")
        if len(set(self.names)) != n:
            raise ValueError("names must be unique")
        for i, (dtype, shape) in enumerate(zip(self.dtype_names, self.shapes)):
            if dtype not in DTYPE_BYTES:
                raise ValueError(
                    f"dtype_names[{i}] {dtype!r} is not one of {', '.join(DTYPE_BYTES)}"
                )
            if any(d < 0 for d in shape):
                raise ValueError(f"shapes[{i}] has a negative dimension")
        return self

    def nbytes(self) -> list[int]:
        return [tensor_nbytes(d, s) for d, s in zip(self.dtype_names, self.shapes)]


class WeightsPushResponse(WireModel):
    weights_version: int
    backend: Literal["gloo", "nccl", "shm"] = Field(
        description="What carried the tensors: the backend the replica's group was joined with."
    )
    bytes: int = Field(description="Bytes received.")
    receive_seconds: float = Field(description="From the first to the last bucket.")
    load_seconds: float = Field(description="Whole push: checks, receive, drain and swap.")


def tensor_nbytes(dtype: str, shape: list[int]) -> int:
    n = DTYPE_BYTES[dtype]
    for d in shape:
        n *= d
    return n


def plan_buckets(nbytes: list[int], bucket_bytes: int) -> list[tuple[int, int]]:
    """Cut tensors ``0..n-1`` (in stream order) into buckets ``[start, end)``.

    A bucket takes tensors while their total stays within ``bucket_bytes``; a tensor larger than
    that gets a bucket of its own. Empty tensors ride along in whichever bucket they fall in.
    """
    buckets: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, n in enumerate(nbytes):
        if i > start and size + n > bucket_bytes:
            buckets.append((start, i))
            start, size = i, 0
        size += n
    if nbytes:
        buckets.append((start, len(nbytes)))
    return buckets
