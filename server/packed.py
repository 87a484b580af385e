"""The packed stream of a weights push, unpacked: tensors back to back in one uint8 buffer.

vLLM's packed layout (proto/weights_push.py): tensor ``i`` of the request starts where tensor
``i - 1`` ends. A gloo push carries it bucket by bucket (``proto.plan_buckets``), a shm push as one
segment; both read tensors out of a buffer with ``tensors_from_buffer``.
"""

from __future__ import annotations

import torch

from proto.weights_push import WeightsPushRequest

TORCH_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def tensors_from_buffer(
    buf: torch.Tensor, req: WeightsPushRequest, start: int, end: int
) -> dict[str, torch.Tensor]:
    """Tensors ``start..end-1`` of ``req``, packed from byte 0 of ``buf``: views into it (no
    copy), except a tensor whose offset is not a multiple of its element size (``view(dtype)``
    needs an aligned start), which is copied."""
    nbytes = req.nbytes()
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for i in range(start, end):
        raw = buf[offset : offset + nbytes[i]]
        dtype = TORCH_DTYPES[req.dtype_names[i]]
        if offset % dtype.itemsize:
            raw = raw.clone()
        out[req.names[i]] = raw.view(dtype).view(req.shapes[i])
        offset += nbytes[i]
    return out
