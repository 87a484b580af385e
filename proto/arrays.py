"""Numeric arrays on the wire: JSON lists or packed base64 arrays.

A packed array is ``{"dtype": "float32"|"float16"|"bfloat16"|"int32", "shape": [...],
"data": "<base64 of little-endian bytes, C order>"}``. Decoding checks
``len(bytes) == prod(shape) * itemsize``. Request fields typed ``FloatArray`` / ``IdArray`` accept
either form and hold a NumPy array after validation (float64 / int64), so the server never sees
the difference. Float arrays must be finite in both forms (a packed NaN is as much a 422 as a
JSON ``NaN``), and ``encode_array`` refuses to put a non-finite number in a response.

>>> arr = decode_packed(encode_packed(np.arange(3, dtype=np.float32)))
>>> arr.tolist()
[0.0, 1.0, 2.0]
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Discriminator, Field, PlainSerializer, Tag, model_validator

from proto.base import WireModel

PackedDtype = Literal["float32", "float16", "bfloat16", "int32"]
ITEMSIZE: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "int32": 4}
FLOAT_DTYPES = ("float32", "float16", "bfloat16")


class PackedArray(WireModel):
    """An n-dimensional array as base64 of its little-endian bytes in C order."""

    dtype: PackedDtype
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=8)
    data: str = Field(description="base64 (standard alphabet, padded) of the raw bytes")

    @model_validator(mode="after")
    def check_length(self) -> PackedArray:
        expected = math.prod(self.shape) * ITEMSIZE[self.dtype]
        # base64 length check first: cheap, and avoids decoding garbage twice.
        if len(self.data) != 4 * math.ceil(expected / 3):
            raise ValueError(
                f"packed array data has {len(self.data)} base64 characters; dtype {self.dtype} with "
                f"shape {self.shape} needs {expected} bytes ({4 * math.ceil(expected / 3)} characters)"
            )
        return self

    def to_numpy(self) -> np.ndarray:
        return decode_packed(self)


def decode_packed(packed: PackedArray | dict[str, Any]) -> np.ndarray:
    """Decode a packed array into NumPy (bfloat16 becomes float32; others keep their dtype)."""
    if isinstance(packed, dict):
        packed = PackedArray.model_validate(packed)
    try:
        raw = base64.b64decode(packed.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"packed array data is not valid base64: {exc}") from None
    expected = math.prod(packed.shape) * ITEMSIZE[packed.dtype]
    if len(raw) != expected:
        raise ValueError(
            f"packed array has {len(raw)} bytes; dtype {packed.dtype} with shape {packed.shape} "
            f"needs {expected}"
        )
    if packed.dtype == "bfloat16":
        # bfloat16 is the top half of a float32: widen by shifting the 16 bits up.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(packed.shape)
    dtype = {"float32": "<f4", "float16": "<f2", "int32": "<i4"}[packed.dtype]
    return np.frombuffer(raw, dtype=dtype).reshape(packed.shape)


def encode_packed(array: np.ndarray, dtype: PackedDtype | None = None) -> dict[str, Any]:
    """Pack a NumPy array: floats as float32 and integers as int32 unless ``dtype`` says otherwise."""
    array = np.asarray(array)
    if dtype is None:
        dtype = "int32" if np.issubdtype(array.dtype, np.integer) else "float32"
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(array, dtype="<f4").view(np.uint32)
        # round to nearest even on the dropped 16 bits
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        raw = rounded.astype("<u2").tobytes()
    else:
        np_dtype = {"float32": "<f4", "float16": "<f2", "int32": "<i4"}[dtype]
        raw = np.ascontiguousarray(array, dtype=np_dtype).tobytes()
    return {
        "dtype": dtype,
        "shape": list(array.shape),
        "data": base64.b64encode(raw).decode("ascii"),
    }


def _as_1d(value: list | PackedArray, kind: str) -> np.ndarray:
    if isinstance(value, PackedArray):
        if kind == "int" and value.dtype != "int32":
            raise ValueError(f"token ids must be packed as int32, got {value.dtype}")
        if kind == "float" and value.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"float arrays must be packed as float32/float16/bfloat16, got {value.dtype}"
            )
        if len(value.shape) != 1:
            raise ValueError(f"expected a 1-D array, got shape {value.shape}")
        array = value.to_numpy()
        if kind == "float":
            _check_finite(array)
    else:
        try:
            array = np.asarray(value, dtype=np.float64 if kind == "float" else np.int64)
        except OverflowError:  # a JSON integer beyond int64 (a 422, not a 500)
            raise ValueError("integers must lie in the signed 64-bit range") from None
    return array.astype(np.float64 if kind == "float" else np.int64, copy=False)


class NonFiniteError(ValueError):
    """A float array holds NaN or Infinity: no JSON reader accepts those, packed or not."""


def _check_finite(array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(
            f"entry {i} is {float(array.flat[i])!r}: numbers must be finite (no NaN or Infinity)"
        )


def _to_float_array(value: list[float] | PackedArray) -> np.ndarray:
    return _as_1d(value, "float")


def _to_id_array(value: list[int] | PackedArray) -> np.ndarray:
    return _as_1d(value, "int")


def _serialize(array: np.ndarray) -> list:
    return np.asarray(array).tolist()


# Request-side arrays: accept a JSON list or a packed array; hold a 1-D NumPy array afterwards.
# JSON lists inherit ``strict`` and ``allow_inf_nan=False`` from WireModel (proto/base.py).
def _form(value: Any) -> str:
    return "packed" if isinstance(value, dict | PackedArray) else "list"


# The discriminator picks one branch by the input's shape, so a bad packed array is reported as
# a packed-array error (not also as "Input should be a valid list").
FloatArray = Annotated[
    Annotated[
        Annotated[list[float], Tag("list")] | Annotated[PackedArray, Tag("packed")],
        Discriminator(_form),
    ],
    AfterValidator(_to_float_array),
    PlainSerializer(_serialize, return_type=list[float]),
]
IdArray = Annotated[
    Annotated[
        Annotated[list[int], Tag("list")] | Annotated[PackedArray, Tag("packed")],
        Discriminator(_form),
    ],
    AfterValidator(_to_id_array),
    PlainSerializer(_serialize, return_type=list[int]),
]

# Response-side arrays: JSON lists, or packed when the request asked for ``encoding: base64``.
FloatArrayOut = list[float] | PackedArray
FloatMatrixOut = list[list[float]] | PackedArray
IdMatrixOut = list[list[int]] | PackedArray

Encoding = Literal["json", "base64"]


def encode_array(array: np.ndarray, encoding: Encoding) -> list | dict[str, Any]:
    """One response array in the encoding the request asked for.

    Raises ``NonFiniteError`` for a packed float array with NaN or Infinity: base64 would hide it
    from the server's JSON encoder, which refuses non-finite numbers in lists (and names them).
    """
    if encoding == "base64":
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            _check_finite(array)
        return encode_packed(array)
    return np.asarray(array).tolist()
