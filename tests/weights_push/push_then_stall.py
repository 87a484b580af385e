"""A trainer that pushes to one replica and stops after the first bucket: the test then SIGKILLs
it (``kill``) or lets the replica's receive time out (``stall``). Prints STALLED when stopped.

    python tests/weights_push/push_then_stall.py URL ADMIN_KEY API_KEY VERSION TIMEOUT [BACKEND]

With backend shm the stop comes while the trainer packs the segment: every replica said ok and
waits for the go.
"""

from __future__ import annotations

import sys
import time

from safetensors.torch import load_file

from client import TeacherClient
from client.launcher import REPO_ROOT

DEFAULT_MODEL_DIR = REPO_ROOT / "server" / "default_model"  # a trainer imports nothing of server

url, admin_key, api_key, version, timeout = sys.argv[1:6]
backend = sys.argv[6] if len(sys.argv) > 6 else "gloo"
# The embedded model's tensors, halved (safetensors alone: importing transformers is slow).
state = {
    name: t * 0.5 for name, t in load_file(str(DEFAULT_MODEL_DIR / "model.safetensors")).items()
}


def stall(sent: int, total: int) -> None:
    print(f"STALLED {sent} of {total}", flush=True)
    time.sleep(600)


with TeacherClient(url, api_key=api_key, admin_key=admin_key) as tc:
    tc.push_weights(
        state,
        int(version),
        bucket_bytes=1024 * 1024,
        progress=stall,
        timeout=float(timeout),
        backend=backend,
    )
