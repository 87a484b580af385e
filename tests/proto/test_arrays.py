"""Packed-array codec and request validation of the wire models."""

from __future__ import annotations

import base64

import numpy as np
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from proto import AdvantagesRequest, LogprobsRequest, PackedArray, decode_packed, encode_packed


@pytest.mark.parametrize("dtype", ["float32", "float16", "int32"])
@given(data=st.data())
def test_round_trip_exact(dtype, data):
    np_dtype = {"float32": np.float32, "float16": np.float16, "int32": np.int32}[dtype]
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
    elements = (
        st.integers(-(2**31), 2**31 - 1)
        if dtype == "int32"
        else st.floats(width=16 if dtype == "float16" else 32, allow_nan=False)
    )
    array = data.draw(hnp.arrays(np_dtype, shape, elements=elements))
    decoded = decode_packed(encode_packed(array, dtype))
    assert decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_bfloat16_rounds_to_nearest():
    values = np.array([1.0, -2.5, 3.140625, 1e-3, 65504.0], dtype=np.float32)
    decoded = decode_packed(encode_packed(values, "bfloat16"))
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, values, rtol=2**-8)
    assert decoded[0] == 1.0 and decoded[1] == -2.5


def test_little_endian_c_order_layout():
    packed = encode_packed(np.array([[1, 2], [3, 4]], dtype=np.int32))
    raw = base64.b64decode(packed["data"])
    assert raw == b"\x01\0\0\0\x02\0\0\0\x03\0\0\0\x04\0\0\0"
    assert packed["shape"] == [2, 2]


def test_length_checked_against_shape():
    with pytest.raises(pydantic.ValidationError, match="needs 12 bytes"):
        PackedArray(dtype="int32", shape=[3], data=base64.b64encode(b"\0" * 8).decode())
    with pytest.raises(ValueError, match="not valid base64"):
        decode_packed({"dtype": "int32", "shape": [1], "data": "!!!!!!!!"[:8]})


def test_request_arrays_accept_both_forms():
    packed = encode_packed(np.array([5, 6, 7], dtype=np.int32))
    a = LogprobsRequest.model_validate({"sequences": [{"context_ids": packed, "target_ids": [1]}]})
    b = LogprobsRequest.model_validate(
        {"sequences": [{"context_ids": [5, 6, 7], "target_ids": [1]}]}
    )
    np.testing.assert_array_equal(a.sequences[0].context_ids, b.sequences[0].context_ids)


def test_unknown_fields_rejected():
    with pytest.raises(pydantic.ValidationError, match="extra"):
        LogprobsRequest.model_validate(
            {"sequences": [{"context_ids": [1], "target_ids": []}], "nope": 1}
        )


def test_rollout_length_mismatch_names_field():
    body = {
        "method": "grpo",
        "groups": [
            {"rollouts": [{"response_ids": [1, 2], "reward": 1, "teacher_logprobs": [0.0]}]}
        ],
    }
    with pytest.raises(pydantic.ValidationError) as info:
        AdvantagesRequest.model_validate(body)
    error = info.value.errors()[0]
    assert error["type"] == "length_mismatch" and error["ctx"]["field"] == "teacher_logprobs"
