"""What only the shared-memory transport has (server/weights_shm.py, client/_weights_shm.py):
the automatic choice, one mapping shared by the replicas and released at the next push, and the
strict checks on the segment a push names, spoken on the wire by a hand-written trainer.

The protocol behaviour it shares with gloo (numbers equal to the disk path, refusals, a lost
trainer, a restarted replica, two replicas at once) runs with both in test_push_hf.py; the
``no_segment_left_behind`` fixture (conftest.py) checks after every test that nothing stays in
/dev/shm.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.distributed as dist

from client import UnprocessableEntityError
from client.launcher import ServerProcess
from proto.weights_push import SHM_DIR, SHM_PREFIX

from .conftest import ADMIN_KEY, perturbed, segments_of
from .test_push_hf import client, scores, version_of

HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}  # an admin key is also an API key


def mapped_segments(pid: int) -> set[str]:
    """Names of the tokencredit segments process ``pid`` has mapped (unlinked ones included)."""
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        if path.startswith(f"{SHM_DIR}/{SHM_PREFIX}"):
            names.add(path.removeprefix(f"{SHM_DIR}/").removesuffix(" (deleted)"))
    return names


def test_auto_picks_shm_on_this_host_and_replicas_serve_from_one_mapping(replicas, model):
    """Both replicas serve from the same segment (views, no copy); the next push releases it.
    Between pushes the trainer holds one spare segment, which no replica maps before the next
    push announces it."""
    urls = [r.url for r in replicas]
    pids = [r.proc.pid for r in replicas]
    version = max(version_of(u) for u in urls) + 1
    with client(urls) as tc:  # backend left to "auto": every replica is on 127.0.0.1
        res = tc.push_weights(perturbed(model, seed=30), version)
        assert res.backend == "shm"
        first = [mapped_segments(pid) for pid in pids]
        assert len(first[0]) == 1 and first[0] == first[1], first
        assert not (Path(SHM_DIR) / next(iter(first[0]))).exists()  # unlinked, still mapped
        tc._pusher.settle()  # the spare is allocated in the background
        spare = segments_of(os.getpid())
        assert len(spare) == 1 and spare[0] not in first[0]
        assert all(spare[0] not in mapped_segments(pid) for pid in pids)

        res = tc.push_weights(perturbed(model, seed=31), version + 1)
        second = [mapped_segments(pid) for pid in pids]
    assert res.weights_version == version + 1
    assert len(second[0]) == 1 and second[0] == second[1], second
    assert second[0].isdisjoint(first[0])  # the old weights' pages are gone with them
    assert second[0] == set(spare)  # the next push went into the spare
    assert [scores(None, u)[0] for u in urls] == [version + 1] * 2


class HandTrainer:
    """A trainer written from docs/weights.md alone (store, probe, init, update, go): what any
    other trainer would send, bad requests included."""

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, headers=HEADERS, timeout=60)
        self.store = dist.TCPStore(
            "127.0.0.1", 0, is_master=True, wait_for_workers=False,
            timeout=datetime.timedelta(seconds=30),
        )  # fmt: skip
        self.files: list[Path] = []

    def file(self, kind: str, data: bytes = b"") -> str:
        name = f"{SHM_PREFIX}{os.getpid()}-{kind}-{uuid.uuid4().hex[:8]}"
        path = Path(SHM_DIR) / name
        path.write_bytes(data)
        self.files.append(path)
        return name

    def init(self, group: str, **fields) -> httpx.Response:
        body = {
            "master_address": "127.0.0.1",
            "master_port": self.store.port,
            "group_name": group,
            "timeout_seconds": 10,
            **fields,
        }
        return self.http.post("/v1/weights/transfer/init", json=body)

    def update(
        self, group: str, tensors: list[dict], version: int, push_id: str = "p", **fields
    ) -> httpx.Response:
        body = {
            "group_name": group,
            "push_id": push_id,
            "names": [t["name"] for t in tensors],
            "dtype_names": [t["dtype"] for t in tensors],
            "shapes": [t["shape"] for t in tensors],
            "version": version,
            **fields,
        }
        return self.http.post("/v1/weights/transfer/update", json=body)

    def close(self) -> None:
        self.http.close()
        for path in self.files:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)


@pytest.fixture
def trainer(replicas):
    t = HandTrainer(replicas[0].url)
    yield t
    t.close()


def refused(res: httpx.Response, field: str, status: int = 422) -> str:
    assert res.status_code == status, res.text
    assert res.json()["error"]["field"] == field, res.json()
    return res.json()["error"]["message"]


def test_init_refuses_a_probe_that_is_missing_foreign_or_wrong(trainer, replicas):
    group = f"tc-test-{uuid.uuid4().hex[:8]}"
    refused(trainer.init(group, backend="shm"), "shm_probe")  # shm needs a probe
    refused(trainer.init(group, backend="shm", shm_probe="../../etc/passwd"), "shm_probe")
    refused(trainer.init(group, backend="shm", shm_probe=f"{SHM_PREFIX}nobody"), "shm_probe")
    wrong = trainer.file("probe", b"another-group")  # a /dev/shm that is not the trainer's
    message = refused(trainer.init(group, backend="shm", shm_probe=wrong), "shm_probe")
    assert "gloo" in message
    gloo_probe = trainer.file("probe", group.encode())
    refused(trainer.init(group, backend="gloo", shm_probe=gloo_probe), "shm_probe")


def test_a_push_names_only_a_checked_segment_and_a_hand_written_trainer_can_push(
    trainer, replicas, model
):
    """Every bad ``shm_name`` is a 422 naming the field, before the replica says ok, and the
    old weights keep serving; then a correct push, from the documented wire alone, goes in."""
    url = trainer.url
    before = scores(None, url)
    group = f"tc-test-{uuid.uuid4().hex[:8]}"
    probe = trainer.file("probe", group.encode())
    joined = trainer.init(group, backend="shm", shm_probe=probe)
    assert joined.status_code == 200, joined.text
    tensors = joined.json()["tensors"]
    state = perturbed(model, seed=32)
    packed = b"".join(
        state[t["name"]].to(getattr(torch, t["dtype"])).contiguous().numpy().tobytes()
        for t in tensors
    )
    version = before[0] + 1

    outside = trainer.file("outside", b"x")
    bad_names = ["/etc/passwd", "../../etc/passwd", f"{SHM_PREFIX}{os.getpid()}-never-created"]
    link = Path(SHM_DIR) / f"{SHM_PREFIX}{os.getpid()}-link"
    link.symlink_to(Path(SHM_DIR) / outside)  # a link is never followed, even inside /dev/shm
    trainer.files.append(link)
    folder = Path(SHM_DIR) / f"{SHM_PREFIX}{os.getpid()}-folder"
    folder.mkdir()
    trainer.files.append(folder)
    short = trainer.file("short", packed[:-4])
    for name in [*bad_names, link.name, folder.name, short]:
        refused(trainer.update(group, tensors, version, shm_name=name), "shm_name")
    refused(trainer.update(group, tensors, version), "shm_name")  # a shm group needs one
    assert f"need {len(packed)}" in refused(
        trainer.update(group, tensors, version, shm_name=short), "shm_name"
    )
    assert _same(scores(None, url), before)

    segment = trainer.file("segment", packed)
    push_id = uuid.uuid4().hex
    store = dist.PrefixStore(group, trainer.store)
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(trainer.update, group, tensors, version, push_id, shm_name=segment)
        deadline = time.monotonic() + 30
        while not store.check([f"ready/{push_id}/1"]):  # the replica's verdict
            assert time.monotonic() < deadline, "the replica never said ok"
            time.sleep(0.05)
        assert store.get(f"ready/{push_id}/1") == b"ok"
        assert scores(None, url)[0] == before[0]  # nothing used before the go
        store.set(f"go/{push_id}", "go")
        res = answer.result(60)
    assert res.status_code == 200, res.text
    assert res.json()["backend"] == "shm" and res.json()["weights_version"] == version
    pushed = scores(None, url)
    assert pushed[0] == version
    with client(url) as tc:  # the same bytes through the client: the same numbers
        tc.push_weights(state, version + 1, backend="shm")
    again = scores(None, url)
    assert again[0] == version + 1
    for a, b in zip(pushed[1], again[1]):
        np.testing.assert_array_equal(a, b)


def _same(a, b) -> bool:
    return a[0] == b[0] and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))


# Runs the server in a mount namespace of its own with a fresh /dev/shm: a replica that does not
# share the trainer's shared memory (another container, as far as the trainer can tell).
OWN_DEV_SHM = ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev/shm && exec "$@"', "sh"]


def test_auto_falls_back_to_gloo_for_a_replica_with_a_dev_shm_of_its_own(
    tmp_path, weights_root, model, replica_env
):
    probe = subprocess.run([*OWN_DEV_SHM, "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(
            "needs mount namespaces (unshare -m, as root) to give a replica its own /dev/shm"
        )
    env = replica_env(weights_root)
    with ServerProcess(env=env, log_path=tmp_path / "own-shm.log", wrapper=OWN_DEV_SHM) as proc:
        version = version_of(proc.url)
        with client(proc.url) as tc, pytest.raises(UnprocessableEntityError) as err:
            tc.push_weights(perturbed(model, seed=33), version + 1, backend="shm")
        assert err.value.field == "shm_probe"
        assert version_of(proc.url) == version
        with client(proc.url) as tc:  # backend auto: the URL is local, the probe says no
            res = tc.push_weights(perturbed(model, seed=34), version + 1)
        assert res.backend == "gloo" and res.weights_version == version + 1
        assert scores(None, proc.url)[0] == version + 1
