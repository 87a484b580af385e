"""The ``tokencredit`` command line against the live server (``main([...])`` in process, and one
run as a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from client import TeacherClient
from client.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def vocab(server):
    with TeacherClient(server.url) as c:
        return c.model().vocab_size


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_model(server, capsys):
    assert main(["--url", server.url, "model"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] > 0 and "grpo" in info["methods"]


def test_url_from_env_and_failure_exit_code(server, capsys, monkeypatch):
    monkeypatch.setenv("TC_URL", server.url)
    assert main(["model"]) == 0
    capsys.readouterr()
    assert main(["--url", "http://127.0.0.1:9", "--retries", "0", "model"]) == 1
    assert "ConnectError" in capsys.readouterr().err


def test_score_ids_to_jsonl_matches_client(server, tmp_path, capsys, vocab):
    seqs = [
        {"context_ids": [1, 2, 3], "target_ids": [4, 5]},
        {"context_ids": [7], "target_ids": []},
        {"context_ids": [9, 9, 9, 9], "target_ids": [1, 2, 3]},
    ]
    src = write_jsonl(tmp_path / "seqs.jsonl", seqs)
    assert main(["--url", server.url, "score", str(src), "--top-k", "2", "--entropy"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with TeacherClient(server.url) as c:
        ref = c.logprobs(seqs, top_k=2, entropy=True)
    assert len(rows) == 3
    for row, want in zip(rows, ref):
        np.testing.assert_allclose(np.float32(row["logprobs"]), want.logprobs, atol=1e-5)
        assert len(row["entropy"]) == len(want.logprobs)
        assert np.asarray(row["topk_ids"]).reshape(-1, 2).shape == want.topk_ids.shape


def test_score_texts_to_npz_and_npy(server, tmp_path, capsys):
    src = tmp_path / "texts.json"
    src.write_text(
        json.dumps([{"context": "12+7=", "target": "19"}, {"context": "3+4=", "target": "7"}])
    )
    out = tmp_path / "scores.npz"
    assert main(["--url", server.url, "score", str(src), "-o", str(out), "--entropy"]) == 0
    data = np.load(out)
    with TeacherClient(server.url) as c:
        tgt = c.tokenize("19")
        ref = c.logprobs([(c.tokenize("12+7="), tgt)], entropy=True)
    assert data["lengths"][0] == len(tgt)
    np.testing.assert_allclose(data["logprobs"][0, : len(tgt)], ref[0].logprobs, atol=1e-5)
    assert np.isnan(data["logprobs"][data["lengths"] < data["logprobs"].shape[1]][:, -1]).all()
    assert data["entropy"].shape == data["logprobs"].shape
    npy = tmp_path / "scores.npy"
    assert main(["--url", server.url, "score", str(src), "-o", str(npy)]) == 0
    assert np.load(npy).shape == data["logprobs"].shape


def _groups(vocab: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "prompt_ids": rng.integers(3, vocab, 5).tolist(),
            "problem": f"{g}+1=?",
            "reference_answer": str(g + 1),
            "reference_solution": f"{g}+1={g + 1}",
            "rollouts": [
                {"response_ids": rng.integers(3, vocab, 4).tolist(), "reward": float(i % 2)}
                for i in range(3)
            ],
        }
        for g in range(3)
    ]


def test_advantages_jsonl_and_state_file(server, tmp_path, capsys, vocab):
    groups = _groups(vocab)
    src = write_jsonl(tmp_path / "groups.jsonl", groups)
    out = tmp_path / "adv.jsonl"
    argv = ["--url", server.url, "advantages", str(src), "--method", "grpo", "-o", str(out)]
    assert main([*argv, "--groups-per-call", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    with TeacherClient(server.url) as c:
        ref = c.advantages("grpo", groups)
    assert len(rows) == len(groups)
    for row, want in zip(rows, ref.groups):
        for r, w in zip(row["rollouts"], want):
            np.testing.assert_allclose(np.float32(r["advantages"]), w.advantages, atol=1e-5)
    assert "grpo: 3 groups, 9 rollouts" in capsys.readouterr().err

    state = tmp_path / "run.state"
    base = ["--url", server.url, "advantages", str(src), "--method", "antisd", "--quiet"]
    assert main([*base, "--step", "0", "--state-file", str(state), "-o", str(out)]) == 0
    first = json.loads(state.read_text())
    assert main([*base, "--step", "1", "--state-file", str(state), "-o", str(out)]) == 0
    second = json.loads(state.read_text())
    assert len(second["warmup_history"]) == len(first["warmup_history"]) + 1


def test_hints(server, tmp_path, capsys):
    group = {
        "problem": "2+2=?",
        "reference_answer": "4",
        "rollouts": [{"text": "2+2=4", "correct": True}, {"text": "2+2=5", "correct": False}],
    }
    src = write_jsonl(tmp_path / "hints.jsonl", [group])
    assert main(["--url", server.url, "hints", str(src), "--max-tokens", "8"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in rows[0]["reflections"]] == ["hint", "critique"]


def test_bench_json(server, capsys):
    argv = ["--url", server.url, "bench", "-c", "2", "-n", "6", "--sequences", "2"]
    assert main([*argv, "--context-len", "16", "--target-len", "8", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["requests"] == 6 and res["ok"] + res["errors"] == 6 and res["ok"] > 0
    assert res["target_tokens"] == 16 * res["ok"]
    assert res["latency_ms"]["p50"] <= res["latency_ms"]["p99"]


def test_bench_table_in_a_subprocess(server):
    env = {**os.environ, "PYTHONPATH": str(REPO), "TC_URL": server.url}
    argv = [
        "bench",
        "-c",
        "2",
        "-n",
        "4",
        "--sequences",
        "1",
        "--context-len",
        "8",
        "--target-len",
        "4",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "client.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for word in ("req/s", "tok/s", "p50", "p90", "p99", "429s", "errors"):
        assert word in proc.stdout
