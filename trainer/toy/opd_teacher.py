"""Build OPD's teacher: the embedded model trained further with GRPO, a stronger checkpoint.

    python -m trainer.toy.opd_teacher /tmp/tokencredit-opd-teacher     # ~10-20 min on 2 cores

OPD distils from a stronger model (docs/algorithms.md §4.2); with the student as its own teacher the
reverse KL is 0 and OPD does nothing by construction. This trains a copy of the initial policy
with the toy loop (GRPO, lr 1e-4, ``steps`` steps) on a training stream no comparison seed uses
(seed 1000) and saves it with ``save_pretrained``. ``trainer.toy.compare`` serves it from a
separate server without a weights root, so no push can ever overwrite it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from trainer.toy.loop import Config, main

TEACHER_SEED = 1000  # the comparison uses seeds 0..4


def build(folder: Path, model: str = "", steps: int = 200, progress: bool = True) -> dict:
    folder = Path(folder)
    cfg = Config(
        method="grpo",
        model=model,
        seed=TEACHER_SEED,
        steps=steps,
        eval_every=steps,
        save_model=str(folder),
        run_dir=tempfile.mkdtemp(prefix="tokencredit-opd-teacher-"),
        progress=progress,
    )
    summary = main(cfg)
    (folder / "teacher_summary.json").write_text(
        json.dumps({k: summary[k] for k in ("steps", "seed", "initial", "final")}, indent=2)
    )
    return summary


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m trainer.toy.opd_teacher", description=__doc__)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default="")
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    s = build(a.folder, a.model, a.steps)
    print(json.dumps({k: s[k] for k in ("initial", "final")}, indent=2))
