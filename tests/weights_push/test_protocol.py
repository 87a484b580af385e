"""The pure parts of the push protocol: bucket plan, request checks, spec checks (no servers)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proto.weights_push import (
    TensorSpec,
    WeightsPushRequest,
    WeightsTransferInit,
    plan_buckets,
)
from server.errors import ServiceError
from server.weights_push import check_push

MIB = 1024 * 1024


def test_plan_buckets_fills_up_to_the_limit_and_isolates_big_tensors():
    # sizes in MiB: 1+1 fit in 2; 3 is over the limit, alone; then 0 + 2 fit in 2.
    sizes = [1 * MIB, 1 * MIB, 3 * MIB, 0, 2 * MIB]
    assert plan_buckets(sizes, 2 * MIB) == [(0, 2), (2, 3), (3, 5)]
    assert plan_buckets([], 2 * MIB) == []
    assert plan_buckets(sizes, 100 * MIB) == [(0, 5)]


def push(**kw) -> WeightsPushRequest:
    base = dict(
        group_name="g",
        push_id="p1",
        names=["a", "b"],
        dtype_names=["float32", "float32"],
        shapes=[[2, 3], [4]],
    )
    return WeightsPushRequest(**{**base, **kw})


def test_push_request_rejects_inconsistent_metadata():
    with pytest.raises(ValidationError, match="shapes has 1 entries"):
        push(shapes=[[2, 3]])
    with pytest.raises(ValidationError, match="unique"):
        push(names=["a", "a"])
    with pytest.raises(ValidationError, match="dtype_names\\[1\\]"):
        push(dtype_names=["float32", "complex64"])
    with pytest.raises(ValidationError, match="rank_offset"):
        WeightsTransferInit(
            master_address="h", master_port=1, rank_offset=2, world_size=2, group_name="g"
        )
    assert push().nbytes() == [24, 16]


def test_check_push_names_every_mismatch():
    expected = {
        "a": TensorSpec(name="a", dtype="float32", shape=[2, 3]),
        "b": TensorSpec(name="b", dtype="float32", shape=[4]),
        "c": TensorSpec(name="c", dtype="float32", shape=[1]),
    }
    with pytest.raises(ServiceError) as err:
        check_push(
            expected,
            push(
                names=["a", "b", "z"],
                dtype_names=["float32", "bfloat16", "float32"],
                shapes=[[3, 2], [4], [1]],
            ),
        )
    msg = err.value.message
    assert err.value.status == 422 and err.value.field == "names"
    for part in ("missing: c", "unexpected: z", "a [3, 2] (serving [2, 3])", "b bfloat16"):
        assert part in msg
    check_push(
        expected,
        push(names=["a", "b", "c"], dtype_names=["float32"] * 3, shapes=[[2, 3], [4], [1]]),
    )
