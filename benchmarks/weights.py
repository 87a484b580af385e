"""Teacher weights to every replica: the disk path against the push, over gloo and through shared
memory.

    nice -n 10 python benchmarks/weights.py                  # embedded model + random ~0.5B Qwen3
    nice -n 10 python benchmarks/weights.py --skip-large     # embedded model only

Measured: seconds from "the trainer has new weights" (a ``state_dict`` in memory) to "every
replica answers a scoring request with the new version" (``min_weights_version`` = new version).

  disk: ``save_pretrained`` into TC_WEIGHTS_ROOT, then ``POST /v1/weights`` on each replica in turn
        (``TeacherClient.load_weights``: a rolling reload from safetensors), then one scoring call
        per replica.
  gloo: ``TeacherClient.push_weights(backend="gloo")`` (one group per replica, packed buckets
        broadcast to every replica at once over TCP loopback), then one scoring call per replica.
  shm:  ``TeacherClient.push_weights(backend="shm")`` (the buckets written once into a fresh
        /dev/shm segment that every replica maps; the group only carries the verdicts), then one
        scoring call per replica: its first forward pass faults the mapped pages in. After a push
        the pusher allocates the next push's segment in the background (as a trainer trains);
        that runs on into the scoring calls (timed), and the benchmark waits for it before the
        next timed step.
  The first push of each backend also joins the groups (and, for shm, allocates its segment
  inside the push: the cold cost); it is reported apart from the steady state.

Replicas are real servers (hf backend, CPU, float32, one torch thread each) on this machine, so
trainer and replicas share its cores and memory; a 0.5B run needs about 12 GB free (each replica
holds the new weights beside the serving ones before the swap). Prints a markdown table; read the
ratios, timings on a shared machine vary between runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_scoring import build_random_qwen3  # Qwen3-0.6B shape, random weights
from tables import print_table

from client import TeacherClient
from client.launcher import ServerProcess, start_all
from server.settings import DEFAULT_MODEL_DIR

ADMIN_KEY = "bench-admin"
BACKENDS = ("gloo", "shm")


def replicas_up(model: str, root: Path, n: int, threads: int) -> list[ServerProcess]:
    env = {
        "TC_MODEL": model,
        "TC_BACKEND": "hf",
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_LOG_LEVEL": "warning",
        "TC_ADMIN_KEYS": ADMIN_KEY,
        "TC_WEIGHTS_ROOT": str(root),
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    procs = [
        ServerProcess(env=env, log_path=root / f"replica-{i}.log", ready_timeout=900)
        for i in range(n)
    ]
    return start_all(procs)


def new_weights(model, seed: int) -> dict[str, torch.Tensor]:
    """The trainer's next policy: every parameter moved by a little seeded noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen), alpha=1e-3)
    return model


def answered(urls: list[str], version: int) -> None:
    """One scoring call per replica that only a replica at ``version`` or later may answer."""
    for url in urls:
        with TeacherClient(url, admin_key=ADMIN_KEY) as tc:
            res = tc.logprobs(
                [{"context_ids": [1, 2], "target_ids": [3]}], min_weights_version=version
            )
            assert res.weights_version >= version


def settle(tc: TeacherClient) -> None:
    """Let the shm pusher finish allocating the next push's segment (which it does in the
    background after a push, while a trainer would train) before the next timed step, so that
    it slows no measured path."""
    if tc._pusher is not None:
        tc._pusher.settle()


def bench(label: str, model_dir: str, n_replicas: int, repeats: int, threads: int) -> list[tuple]:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="tc-bench-weights-") as tmp:
        root = Path(tmp)
        procs = replicas_up(model_dir, root, n_replicas, threads)
        try:
            urls = [p.url for p in procs]
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
            version = 0
            disk: list[float] = []
            pushes: dict[str, list[float]] = {b: [] for b in BACKENDS}
            clients = {b: TeacherClient(urls, admin_key=ADMIN_KEY, timeout=1800) for b in BACKENDS}
            try:
                for r in range(repeats):
                    version += 1
                    new_weights(model, seed=3 * r)
                    settle(clients["shm"])
                    started = time.perf_counter()
                    model.save_pretrained(root / f"v{version}")
                    clients["gloo"].load_weights(f"v{version}", version)
                    answered(urls, version)
                    disk.append(time.perf_counter() - started)
                    shutil.rmtree(root / f"v{version}")  # keep the page cache to one checkpoint

                    for i, backend in enumerate(BACKENDS, start=1):
                        version += 1
                        new_weights(model, seed=3 * r + i)
                        settle(clients[backend])
                        started = time.perf_counter()
                        clients[backend].push_weights(
                            model, version, progress=False, timeout=600, backend=backend
                        )
                        answered(urls, version)
                        pushes[backend].append(time.perf_counter() - started)
            finally:
                for tc in clients.values():
                    tc.close()
            d = statistics.median(disk)
            row = [label, f"{nbytes / 2**20:,.0f} MiB", n_replicas, f"{d:.2f}"]
            for backend in BACKENDS:
                first, *rest = pushes[backend]  # the first push includes joining the groups
                p = statistics.median(rest or [first])
                row += [f"{first:.2f}", f"{p:.2f}", f"**{d / p:.1f}x**"]
            return [tuple(row)]
        finally:
            for proc in procs:
                proc.stop()


# ---- what bounds each path: bytes per second between two processes on this machine ---------

LINK_BYTES = 512 * 2**20


def _gloo_end(rank: int, port: int, out) -> None:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=300)
    store = dist.TCPStore("127.0.0.1", port, is_master=rank == 0, timeout=timeout)
    pg = dist.ProcessGroupGloo(store, rank, 2, timeout)
    buf = (
        torch.ones(LINK_BYTES, dtype=torch.uint8)
        if rank == 0
        else torch.empty(LINK_BYTES, dtype=torch.uint8)
    )
    pg.barrier().wait()
    started = time.perf_counter()
    pg.broadcast(buf, 0).wait()
    if rank == 1:
        out.put(time.perf_counter() - started)


def gloo_seconds() -> float:
    import multiprocessing as mp

    from client.launcher import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_gloo_end, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    seconds = out.get(timeout=600)
    for p in procs:
        p.join()
    return seconds


def shm_write_seconds() -> float:
    """What a shm push pays per byte on the trainer's side: one write into a new segment."""
    from client._weights_shm import Segment

    data = torch.ones(LINK_BYTES, dtype=torch.uint8)
    segment = Segment(LINK_BYTES)
    try:
        started = time.perf_counter()
        segment.write(0, [data])
        return time.perf_counter() - started
    finally:
        segment.unlink()


def link_rows() -> list[tuple]:
    rows = []
    for label, seconds in (
        ("gloo broadcast, 2 processes, loopback", gloo_seconds()),
        ("shm: writing a /dev/shm segment, 1 process", shm_write_seconds()),
    ):
        rows.append((label, f"{LINK_BYTES / 2**20 / seconds:,.0f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="updates per path (median)")
    parser.add_argument("--skip-large", action="store_true", help="skip the random 0.5B model")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--skip-embedded", action="store_true", help="only the random 0.5B model")
    parser.add_argument("--links-only", action="store_true", help="only the link table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print_table(
        f"What bounds the push: MiB/s moving {LINK_BYTES >> 20} MiB between two processes",
        ("link", "MiB/s"),
        link_rows(),
    )
    if args.links_only:
        return
    rows = []
    if not args.skip_embedded:
        rows += bench("embedded", str(DEFAULT_MODEL_DIR), args.replicas, args.repeats, args.threads)
    if not args.skip_large:
        with tempfile.TemporaryDirectory(prefix="tc-bench-qwen3-") as tmp:
            build_random_qwen3(Path(tmp), "0.5b", torch.float32, max_len=4096)
            rows += bench("random 0.5B", tmp, args.replicas, args.repeats, args.threads)
    print_table(
        f"Seconds from new weights in the trainer to every replica answering with them "
        f"(median of {args.repeats}; cpu, float32, {os.cpu_count()} cores)",
        (
            "model",
            "weights",
            "replicas",
            "disk",
            "gloo, first (joins)",
            "gloo",
            "disk / gloo",
            "shm, first (joins)",
            "shm",
            "disk / shm",
        ),
        rows,
    )


if __name__ == "__main__":
    main()
