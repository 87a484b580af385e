"""Weights pushed to real hf replicas (server/weights_push.py, client/_weights_push.py), over
gloo and through shared memory (``backend``). What depends on the transport (the bytes' path,
versions swapped under readers, a trainer lost mid-push, one replica refusing while another
waits) runs on both; what the replica decides before any byte moves (a state that does not fit,
a stale version, a wrong key), a restart's rejoin and the async client's wiring run on one, shm
once more for the misfit. What only shared memory has (segments, paths, mappings) is tested in
test_push_shm.py.

Every test reads the replicas' current version and pushes above it, so the tests run in any
order against the same two servers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from client import (
    ConflictError,
    PermissionDeniedError,
    TeacherClient,
    UnprocessableEntityError,
)
from client._weights_shm import sweep_orphans
from client.launcher import REPO_ROOT, ServerProcess

from .conftest import ADMIN_KEY, API_KEY, perturbed, segments_of

SEQS = [
    {"context_ids": [1, 2, 3, 4], "target_ids": [5, 6, 7, 8, 9]},
    {"context_ids": [10, 11], "target_ids": [12, 13, 14]},
]


BOTH = pytest.mark.parametrize("backend", ["gloo", "shm"])
GLOO = pytest.mark.parametrize("backend", ["gloo"])


def client(urls, **kw) -> TeacherClient:
    return TeacherClient(urls, api_key=API_KEY, admin_key=ADMIN_KEY, max_concurrency=1, **kw)


def scores(tc: TeacherClient, url: str) -> tuple[int, list[np.ndarray]]:
    with client(url) as one:
        res = one.logprobs(SEQS)
    return res.weights_version, [s.logprobs for s in res]


def version_of(url: str) -> int:
    with client(url) as one:
        return one.readyz().weights_version


@BOTH
def test_push_reaches_both_replicas_and_equals_the_same_weights_from_disk(
    replicas, model, weights_root, backend
):
    urls = [r.url for r in replicas]
    state = perturbed(model, seed=1)
    version = max(version_of(u) for u in urls) + 1
    with client(urls) as tc:
        res = tc.push_weights(state, version, backend=backend)
    assert res.weights_version == version and res.backend == backend
    assert res.bytes == sum(t.numel() * t.element_size() for t in state.values())
    pushed = [scores(None, u) for u in urls]
    assert [v for v, _ in pushed] == [version, version]
    for a, b in zip(pushed[0][1], pushed[1][1]):
        np.testing.assert_array_equal(a, b)  # both replicas got the same bytes
    original = _with_state(model, dict(model.named_parameters()))
    assert np.abs(pushed[0][1][0] - original[0]).max() > 1e-2  # the push changed the scores

    # The same weights through the disk path on replica 1: identical numbers, float32.
    reference = _with_state(model, state, save_to=weights_root / "push-vs-disk")
    with client(urls[1]) as one:
        one.load_weights("push-vs-disk", version + 1)
    disk_version, from_disk = scores(None, urls[1])
    assert disk_version == version + 1
    for a, b in zip(pushed[0][1], from_disk):
        np.testing.assert_array_equal(a, b)
    assert reference is not None

    # A module (tied LM head included in its state_dict) pushes the same as its parameters.
    with client(urls[0]) as one:
        one.push_weights(reference, version + 1, backend=backend)
    module_version, from_module = scores(None, urls[0])
    assert module_version == version + 1
    for a, b in zip(from_module, from_disk):
        np.testing.assert_array_equal(a, b)


def _with_state(model, state, save_to: Path | None = None):
    """A copy of ``model`` holding ``state``; saved as a checkpoint under ``save_to`` if given.
    Without ``save_to`` returns its local log-probs of SEQS[0] (naive full softmax)."""
    import copy

    copy_ = copy.deepcopy(model)
    missing, unexpected = copy_.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if save_to is not None:
        copy_.save_pretrained(save_to)
        return copy_
    seq = SEQS[0]
    with torch.no_grad():
        logp = copy_(torch.tensor([seq["context_ids"] + seq["target_ids"]])).logits[0]
        logp = logp.log_softmax(-1)
    n = len(seq["context_ids"])
    return [np.array([logp[n - 1 + j, t].item() for j, t in enumerate(seq["target_ids"])])]


@BOTH
def test_scoring_during_repeated_pushes_never_mixes_versions(replicas, model, backend):
    """A reader thread scores the same sequences without pause while the trainer pushes five
    versions; every answer must equal that version's reference numbers (versions differ by far
    more than batching noise), and versions never go backwards."""
    url = replicas[0].url
    seen: list[tuple[int, list[np.ndarray]]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        with client(url) as tc:
            while not stop.is_set():
                try:
                    res = tc.logprobs(SEQS)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    return
                seen.append((res.weights_version, [s.logprobs for s in res]))

    reference: dict[int, list[np.ndarray]] = {}
    start = version_of(url)
    thread = threading.Thread(target=reader)
    with client(url) as tc:
        reference[start] = scores(tc, url)[1]
        thread.start()
        try:
            for k in range(1, 6):
                v = start + k
                tc.push_weights(perturbed(model, seed=10 * v, scale=0.2), v, backend=backend)
                got_v, ref = scores(tc, url)
                assert got_v == v
                reference[v] = ref
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(60)
    assert not errors, errors
    versions = [v for v, _ in seen]
    assert len(set(versions)) >= 3, f"the reader saw too few versions: {sorted(set(versions))}"
    assert versions == sorted(versions)
    for a in reference:
        for b in reference:
            if a < b:
                assert np.abs(reference[a][0] - reference[b][0]).max() > 1e-2
    for v, lps in seen:
        for got, want in zip(lps, reference[v]):
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("backend", "fault"),
    [("gloo", f) for f in ("wrong_shape", "missing_tensor", "wrong_dtype", "extra")]
    + [("shm", "wrong_shape")],
)
def test_a_push_that_does_not_fit_is_refused_before_anything_changes(
    replicas, model, fault, backend
):
    url = replicas[0].url
    state = perturbed(model, seed=7)
    name = "model.layers.0.mlp.down_proj.weight"
    if fault == "wrong_shape":
        state[name] = state[name][:, :-1].contiguous()
    elif fault == "missing_tensor":
        del state[name]
    elif fault == "wrong_dtype":
        state[name] = state[name].to(torch.float16)
    else:
        state["model.layers.0.mlp.extra_bias"] = torch.zeros(3)
    with client(url) as tc:
        before = scores(tc, url)
        with pytest.raises(UnprocessableEntityError) as err:
            tc.push_weights(state, before[0] + 1, cast=False, backend=backend)
        assert err.value.type == "weights_mismatch"
        assert ("extra_bias" if fault == "extra" else name) in str(err.value)
        after = scores(tc, url)
        assert after[0] == before[0]
        for a, b in zip(before[1], after[1]):
            np.testing.assert_array_equal(a, b)
        # The group survives a refusal: the next push on it goes through.
        res = tc.push_weights(perturbed(model, seed=8), before[0] + 1, backend=backend)
        assert res.weights_version == before[0] + 1


@GLOO
def test_a_stale_version_is_refused_with_409(replicas, model, backend):
    url = replicas[0].url
    with client(url) as tc:
        current = version_of(url)
        with pytest.raises(ConflictError) as err:
            tc.push_weights(perturbed(model, seed=9), current, backend=backend)
        assert err.value.field == "version"
        assert version_of(url) == current


@GLOO
def test_a_wrong_admin_key_is_refused_and_changes_nothing(replicas, model, backend):
    url = replicas[0].url
    before = scores(None, url)
    for admin_key in ("not-the-admin-key", None):  # None: the API key, which is not an admin key
        tc = TeacherClient(url, api_key=API_KEY, admin_key=admin_key)
        with tc, pytest.raises(PermissionDeniedError):
            tc.push_weights(perturbed(model, seed=10), before[0] + 1, timeout=10, backend=backend)
    after = scores(None, url)
    assert after[0] == before[0]
    np.testing.assert_array_equal(before[1][0], after[1][0])


@BOTH
@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_a_trainer_lost_mid_push_leaves_the_old_weights_serving(replicas, model, how, backend):
    """The trainer stops after the first of two buckets: SIGKILLed (the replica sees the
    connection close) or hung (the replica's receive, or its wait for the go, times out after
    3 s). Either way the old version keeps serving, the group is reset, and a new trainer joins
    and pushes. A killed shm trainer leaves its segment; the next pusher on the host removes it."""
    replica = replicas[1]
    url = replica.url
    before = scores(None, url)
    log = Path(replica.log_path).read_text
    resets = log().count("reset")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("push_then_stall.py")
    args = [url, ADMIN_KEY, API_KEY, str(before[0] + 1), "3", backend]
    trainer = subprocess.Popen(
        [sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        line = trainer.stdout.readline()
        assert line.startswith("STALLED"), line
        sent, total = map(int, line.split()[1::2])
        assert 0 < sent < total
        if how == "killed":
            trainer.send_signal(signal.SIGKILL)
            trainer.wait(30)
            assert len(segments_of(trainer.pid)) == (backend == "shm")
        # Scoring goes on (old weights) while the replica waits for the missing bucket.
        assert _same(scores(None, url), before)
        deadline = time.monotonic() + 30
        while log().count("reset") == resets:
            assert time.monotonic() < deadline, "the replica never reset its group"
            time.sleep(0.2)
        assert _same(scores(None, url), before)
        with client(url) as tc:  # a new trainer joins and pushes
            res = tc.push_weights(perturbed(model, seed=11), before[0] + 1, backend=backend)
            assert res.weights_version == before[0] + 1
        if how == "killed":
            assert segments_of(trainer.pid) == []  # swept by that push
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(30)
        sweep_orphans()


def _same(a, b) -> bool:
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))


@GLOO
def test_a_restarted_replica_rejoins_at_the_next_push(
    tmp_path, weights_root, model, replica_env, backend
):
    """The trainer keeps its client; the replica restarts on the same port (a fresh process
    with no group): the next push joins it again and goes through."""
    env = replica_env(weights_root)
    proc = ServerProcess(env=env, log_path=tmp_path / "a.log").start()
    try:
        with client(proc.url) as tc:
            assert (
                tc.push_weights(perturbed(model, seed=12), 5, backend=backend).weights_version == 5
            )
            proc.stop()
            proc = ServerProcess(env=env, port=proc.port, log_path=tmp_path / "b.log").start()
            assert (
                tc.push_weights(perturbed(model, seed=13), 6).weights_version == 6
            )  # same backend
            assert scores(tc, proc.url)[0] == 6
    finally:
        proc.stop()


def test_nccl_to_a_cpu_replica_is_refused_at_join(replicas, model):
    url = replicas[0].url
    before = version_of(url)
    with client(url) as tc, pytest.raises(UnprocessableEntityError) as err:
        tc.push_weights(perturbed(model, seed=14), before + 1, backend="nccl", timeout=10)
    assert err.value.field == "backend"
    assert version_of(url) == before


@GLOO
def test_the_async_client_pushes_too(replicas, model, backend):
    import asyncio

    from client import AsyncTeacherClient

    urls = [r.url for r in replicas]
    version = max(version_of(u) for u in urls) + 1

    async def run():
        async with AsyncTeacherClient(urls, api_key=API_KEY, admin_key=ADMIN_KEY) as tc:
            res = await tc.push_weights(perturbed(model, seed=15), version, backend=backend)
            scored = await tc.logprobs(SEQS, min_weights_version=version)
            return res, scored

    res, scored = asyncio.run(run())
    assert res.weights_version == version and scored.weights_version == version
    assert res.backend == backend
    assert [version_of(u) for u in urls] == [version, version]


@BOTH
def test_when_one_replica_refuses_none_moves_on_and_none_waits_for_its_timeout(
    replicas, model, backend
):
    """Replica 0 is ahead, so it refuses version v (409) while replica 1 accepts it and waits
    for buckets (gloo) or for the go (shm): the trainer closes every group (gloo) or calls the
    push off in the store (shm), replica 1's wait fails at once, and both keep what they had.
    Without that, replica 1 would wait out the 60 s timeout."""
    urls = [r.url for r in replicas]
    v = max(version_of(u) for u in urls) + 1
    with client(urls[0]) as tc:
        tc.push_weights(perturbed(model, seed=16), v + 5, backend=backend)
    before = scores(None, urls[1])
    started = time.monotonic()
    with client(urls) as tc, pytest.raises(ConflictError):
        tc.push_weights(perturbed(model, seed=17), before[0] + 1, timeout=60, backend=backend)
    assert time.monotonic() - started < 45
    assert version_of(urls[0]) == v + 5
    assert _same(scores(None, urls[1]), before)
