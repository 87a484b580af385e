"""``python -m trainer.trl``: the runnable example, end to end in a subprocess (its own server)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("sync", ["disk", "push"])
def test_example_trains_and_writes_trl_outputs(tmp_path, sync):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "trainer.trl", "--method", "hsd", "--steps", "2"]
    cmd += ["--weights-sync", sync]
    cmd += ["--output-dir", str(out), "--per_device_train_batch_size", "8"]
    cmd += ["--num_generations", "4", "--max_completion_length", "12", "--save_steps", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "tokencredit/mean_abs_advantage" in h]
    assert [h["step"] for h in logged] == [1, 2]
    assert all(h["tokencredit/weights_version"] >= 1 for h in logged)  # hsd pushed its weights
    saved = json.loads((out / "checkpoint-2" / "tokencredit_state.json").read_text())
    assert saved["method"] == "hsd" and saved["calls"] == 2
    assert (out / "final" / "model.safetensors").exists()
    assert "Traceback" not in proc.stderr
    # disk: the checkpoint of the last push stays in the server's weights root; push: none
    pushed = list((out / "teacher_weights").glob("*/step-*"))
    assert len(pushed) == (1 if sync == "disk" else 0)
