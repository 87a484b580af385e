"""``tokencredit``: the command line of the client.

    tokencredit --url http://teacher-0:8000 --url http://teacher-1:8000 model
    tokencredit score seqs.jsonl -o scores.npz --top-k 5 --entropy
    tokencredit advantages groups.jsonl --method antisd --step 12 --state-file run.state -o adv.jsonl
    tokencredit hints groups.jsonl -o reflections.jsonl
    tokencredit bench --concurrency 8 --requests 200 --sequences 4 --context-len 128 --target-len 64

Servers come from ``--url`` (repeat it for replicas), else ``TC_URL`` (comma-separated), else
http://127.0.0.1:8000; the key from ``--api-key``, else ``TC_API_KEY``. Input ``-`` reads stdin;
output goes to stdout unless ``-o`` names a file. Exit status: 0 done, 1 the service failed
(the error and its request id go to stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from client._client import SPLITTABLE_METHODS, AsyncTeacherClient, TeacherClient
from client._config import RetryPolicy, Timeout
from client._errors import RateLimitError, TokenCreditError
from client._types import LogprobsResult, RolloutCredit
from proto import METHODS

# ---- input and output -----------------------------------------------------------------------


def read_records(path: str) -> list[dict[str, Any]]:
    """Objects from a JSONL file, a JSON list, or a JSON object holding one list
    (``{"sequences": [...]}`` / ``{"groups": [...]}``); ``-`` is stdin."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(text)
    elif stripped.startswith("{") and not _is_jsonl(stripped):
        doc = json.loads(text)
        lists = [v for k, v in doc.items() if k in ("sequences", "groups") and isinstance(v, list)]
        records = lists[0] if lists else [doc]
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: every record must be a JSON object")
    return records


def _is_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        json.loads(lines[0])
    except ValueError:
        return False
    return True


class _Output:
    def __init__(self, path: str | None):
        self.path = path
        self._file: TextIO | None = None

    def __enter__(self) -> TextIO:
        self._file = open(self.path, "w") if self.path else sys.stdout
        return self._file

    def __exit__(self, *exc: Any) -> None:
        if self.path and self._file:
            self._file.close()


def _list(a: Any) -> Any:
    return None if a is None else np.asarray(a).tolist()


def _padded(rows: list[np.ndarray], fill: float | int, dtype: Any) -> np.ndarray:
    """Ragged rows (T_i, ...) as one (N, T_max, ...) array with ``fill`` after each row's end."""
    rows = [np.asarray(r) for r in rows]
    t_max = max((len(r) for r in rows), default=0)
    tail = rows[0].shape[1:] if rows else ()
    out = np.full((len(rows), t_max, *tail), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def write_scores(
    result: LogprobsResult, path: str | None, target_ids: list[list[int]] | None
) -> None:
    """JSONL (stdout or .jsonl), one JSON document (.json), a padded logprobs matrix (.npy, NaN
    after each row's end) or every array padded plus ``lengths`` (.npz)."""
    seqs = result.sequences
    suffix = Path(path).suffix if path else ""
    if suffix == ".npy":
        np.save(path, _padded([s.logprobs for s in seqs], np.nan, np.float32))
        return
    if suffix == ".npz":
        arrays = {
            "logprobs": _padded([s.logprobs for s in seqs], np.nan, np.float32),
            "lengths": np.array([len(s.logprobs) for s in seqs], dtype=np.int64),
            "weights_version": np.array(result.weights_version),
        }
        if seqs and seqs[0].entropy is not None:
            arrays["entropy"] = _padded([s.entropy for s in seqs], np.nan, np.float32)
        if seqs and seqs[0].topk_ids is not None:
            arrays["topk_ids"] = _padded([s.topk_ids for s in seqs], -1, np.int64)
            arrays["topk_logprobs"] = _padded([s.topk_logprobs for s in seqs], np.nan, np.float32)
        np.savez(path, **arrays)
        return
    rows = []
    for i, s in enumerate(seqs):
        row = {
            "logprobs": _list(s.logprobs),
            "entropy": _list(s.entropy),
            "topk_ids": _list(s.topk_ids),
            "topk_logprobs": _list(s.topk_logprobs),
        }
        if target_ids is not None:
            row["target_ids"] = target_ids[i]
        rows.append(row)
    with _Output(path) as out:
        if suffix == ".json":
            doc = {
                "weights_version": result.weights_version,
                "entropy_kind": result.entropy_kind,
                "usage": result.usage.model_dump(),
                "results": rows,
            }
            json.dump(doc, out)
            out.write("\n")
        else:
            for row in rows:
                out.write(json.dumps(row) + "\n")


def _credit_row(r: RolloutCredit) -> dict[str, Any]:
    row: dict[str, Any] = {"advantages": _list(r.advantages)}
    if r.details is not None:
        d = r.details
        row["details"] = {
            "student_logprobs": _list(d.student_logprobs),
            "teacher_logprobs": _list(d.teacher_logprobs),
            "signal": _list(d.signal),
            "teacher_context": d.teacher_context,
            "peer_index": d.peer_index,
            "masked": d.masked,
            "reflection": d.reflection.model_dump() if d.reflection is not None else None,
        }
    return row


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---- commands -------------------------------------------------------------------------------


def cmd_model(tc: TeacherClient, args: argparse.Namespace) -> int:
    print(tc.model().model_dump_json(indent=2))
    return 0


def cmd_score(tc: TeacherClient, args: argparse.Namespace) -> int:
    records = read_records(args.input)
    sequences, targets = [], None
    texts = any("context" in r or "target" in r for r in records)
    if texts:
        targets = []
    for i, r in enumerate(records):
        if "context_ids" in r:
            sequences.append(
                {"context_ids": r["context_ids"], "target_ids": r.get("target_ids", [])}
            )
            if targets is not None:
                targets.append(list(r.get("target_ids", [])))
        elif "context" in r:
            ctx = tc.tokenize(r["context"])
            tgt = tc.tokenize(r["target"]) if r.get("target") else []
            sequences.append({"context_ids": ctx, "target_ids": tgt})
            targets.append(tgt)
        else:
            raise ValueError(
                f"record {i}: give context_ids/target_ids (token ids) or context/target (texts)"
            )
    result = tc.logprobs(
        sequences,
        top_k=args.top_k,
        entropy=args.entropy,
        temperature=args.temperature,
        min_weights_version=args.min_weights_version,
        max_request_tokens=args.max_request_tokens,
    )
    write_scores(result, args.output, targets)
    u = result.usage
    print(
        f"scored {u.sequences} sequences, {u.target_tokens} target tokens "
        f"(weights_version {result.weights_version}, {result.chunks} request(s))",
        file=sys.stderr,
    )
    return 0


def cmd_advantages(tc: TeacherClient, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    groups = read_records(args.input)
    params = json.loads(args.params) if args.params else {}
    state = None
    state_path = Path(args.state_file) if args.state_file else None
    if state_path and state_path.exists() and state_path.read_text().strip():
        state = json.loads(state_path.read_text())
    # Only a method whose numbers do not depend on the rest of the batch may be sent in parts;
    # a stateful one (antisd) must see the whole step in one call (one gate update per step).
    per_call = args.groups_per_call if args.method in SPLITTABLE_METHODS else len(groups)
    results, new_state, stats = [], state, []
    with tqdm(total=len(groups), unit="group", disable=args.quiet, file=sys.stderr) as bar:
        for part in _chunks(groups, max(1, per_call)):
            res = tc.advantages(
                args.method,
                part,
                params=params,
                step=args.step,
                state=state,
                seed=args.seed,
                return_details=args.details,
                min_weights_version=args.min_weights_version,
            )
            results.extend(res.groups)
            new_state = res.state if res.state is not None else new_state
            stats.append(res.stats)
            bar.update(len(part))
    with _Output(args.output) as out:
        for g in results:
            out.write(json.dumps({"rollouts": [_credit_row(r) for r in g]}) + "\n")
    if state_path and new_state is not None:
        state_path.write_text(json.dumps(new_state) + "\n")
    rollouts, tokens = sum(s.rollouts for s in stats), sum(s.tokens for s in stats)
    print(
        f"{args.method}: {len(results)} groups, {rollouts} rollouts, {tokens} tokens",
        file=sys.stderr,
    )
    return 0


def cmd_hints(tc: TeacherClient, args: argparse.Namespace) -> int:
    groups = read_records(args.input)
    res = tc.hints(groups, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    with _Output(args.output) as out:
        for g in res.groups:
            out.write(json.dumps({"reflections": [r.model_dump() for r in g.reflections]}) + "\n")
    return 0


# ---- bench ----------------------------------------------------------------------------------


async def _bench(args: argparse.Namespace, urls: list[str] | None) -> dict[str, Any]:
    retry = RetryPolicy(retries=args.retries)
    async with AsyncTeacherClient(
        urls,
        api_key=args.api_key,
        timeout=Timeout(args.timeout, connect=min(5.0, args.timeout)),
        retry=retry,
        encoding=args.encoding,
        max_request_tokens=None,
        limits=httpx.Limits(
            max_connections=args.concurrency, max_keepalive_connections=args.concurrency
        ),
    ) as tc:
        info = await tc.model()
        rng = np.random.default_rng(args.seed)
        sequences = [
            {
                "context_ids": rng.integers(0, info.vocab_size, args.context_len),
                "target_ids": rng.integers(0, info.vocab_size, args.target_len),
            }
            for _ in range(args.sequences)
        ]
        latencies: list[float] = []
        counts = {
            "ok": 0,
            "errors": 0,
            "rate_limited": 0,
            "target_tokens": 0,
            "processed_tokens": 0,
        }
        errors: dict[str, int] = {}
        started = time.perf_counter()
        deadline = started + args.duration if args.duration else math.inf
        remaining = [args.requests if args.requests else math.inf]

        async def worker() -> None:
            while time.perf_counter() < deadline and remaining[0] > 0:
                remaining[0] -= 1
                t0 = time.perf_counter()
                try:
                    res = await tc.logprobs(sequences, top_k=args.top_k, entropy=args.entropy)
                except RateLimitError:
                    counts["rate_limited"] += 1
                    counts["errors"] += 1
                    continue
                except TokenCreditError as exc:
                    counts["errors"] += 1
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - t0)
                counts["ok"] += 1
                counts["target_tokens"] += res.usage.target_tokens
                counts["processed_tokens"] += res.usage.processed_tokens

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    lat_ms = np.array(latencies) * 1000.0
    pct = {f"p{q}": float(np.percentile(lat_ms, q)) if len(lat_ms) else None for q in (50, 90, 99)}
    return {
        "replicas": tc.base_urls,
        "concurrency": args.concurrency,
        "shape": {
            "sequences": args.sequences,
            "context_len": args.context_len,
            "target_len": args.target_len,
            "top_k": args.top_k,
            "entropy": args.entropy,
            "encoding": args.encoding,
        },
        "requests": counts["ok"] + counts["errors"],
        **counts,
        "error_types": errors,
        "seconds": elapsed,
        "requests_per_s": counts["ok"] / elapsed if elapsed else 0.0,
        "target_tokens_per_s": counts["target_tokens"] / elapsed if elapsed else 0.0,
        "processed_tokens_per_s": counts["processed_tokens"] / elapsed if elapsed else 0.0,
        "latency_ms": {**pct, "max": float(lat_ms.max()) if len(lat_ms) else None},
    }


def _format_bench(r: dict[str, Any]) -> str:
    s = r["shape"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lat = r["latency_ms"]
    lines = [
        f"tokencredit bench: {len(r['replicas'])} replica(s), concurrency {r['concurrency']}, "
        f"{s['sequences']} seq x ({s['context_len']} context + {s['target_len']} target) tokens, "
        f"top_k {s['top_k']}, entropy {s['entropy']}, {s['encoding']}",
        "",
        f"{'requests':>9} {'ok':>7} {'errors':>7} {'429s':>6} {'seconds':>8} {'req/s':>8} "
        f"{'target tok/s':>13} {'processed tok/s':>16}",
        f"{r['requests']:>9} {r['ok']:>7} {r['errors']:>7} {r['rate_limited']:>6} "
        f"{r['seconds']:>8.2f} {r['requests_per_s']:>8.2f} {r['target_tokens_per_s']:>13.0f} "
        f"{r['processed_tokens_per_s']:>16.0f}",
        "",
        f"{'latency ms':>10} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}",
        f"{'':>10} {ms(lat['p50']):>8} {ms(lat['p90']):>8} {ms(lat['p99']):>8} {ms(lat['max']):>8}",
    ]
    if r["error_types"]:
        lines += ["", "errors: " + ", ".join(f"{k} x{v}" for k, v in r["error_types"].items())]
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace, urls: list[str] | None) -> int:
    if not args.duration and not args.requests:
        args.requests = 100
    result = asyncio.run(_bench(args, urls))
    print(json.dumps(result) if args.json else _format_bench(result))
    return 0 if result["ok"] else 1


# ---- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokencredit",
        description="Client of the tokencredit teacher-scoring service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Servers: --url (repeatable), else TC_URL, else http://127.0.0.1:8000.",
    )
    p.add_argument("--url", action="append", help="server base URL; repeat for replicas")
    p.add_argument("--api-key", help="API key (default: TC_API_KEY)")
    p.add_argument("--timeout", type=float, default=120.0, help="read timeout, seconds")
    p.add_argument(
        "--retries", type=int, default=None, help="retries per request (default 4; bench 0)"
    )
    p.add_argument("--encoding", choices=("base64", "json"), default="base64")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("model", help="print the served model's metadata")

    s = sub.add_parser("score", help="log-probs of target tokens (POST /v1/logprobs)")
    s.add_argument(
        "input", help='JSON/JSONL of {"context_ids","target_ids"} or {"context","target"}'
    )
    s.add_argument("-o", "--output", help=".jsonl/.json (default stdout), .npy or .npz")
    s.add_argument("--top-k", type=int, default=0)
    s.add_argument("--entropy", action="store_true")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--min-weights-version", type=int)
    s.add_argument("--max-request-tokens", type=int, default=32768)

    a = sub.add_parser("advantages", help="per-token advantages (POST /v1/advantages)")
    a.add_argument("input", help="JSONL, one request-shaped group per line")
    a.add_argument("-o", "--output", help="JSONL out, one group per line (default stdout)")
    a.add_argument("--method", required=True, choices=METHODS)
    a.add_argument("--step", type=int, default=0, help="the trainer's global step")
    a.add_argument("--state-file", help="JSON state read before and written after (antisd)")
    a.add_argument("--params", help="JSON object of parameter overrides")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--details", action="store_true", help="include return_details")
    a.add_argument("--min-weights-version", type=int)
    a.add_argument(
        "--groups-per-call",
        type=int,
        default=64,
        help="groups per request for splittable methods (others go in one request)",
    )
    a.add_argument("--quiet", action="store_true", help="no progress bar")

    h = sub.add_parser("hints", help="AMR-SD reflections (POST /v1/hints)")
    h.add_argument("input", help="JSONL, one hint group per line")
    h.add_argument("-o", "--output", help="JSONL out (default stdout)")
    h.add_argument("--max-tokens", type=int, default=256)
    h.add_argument("--temperature", type=float, default=0.7)
    h.add_argument("--seed", type=int, default=0)

    b = sub.add_parser("bench", help="load test: throughput and latency of /v1/logprobs")
    b.add_argument("--concurrency", "-c", type=int, default=8, help="requests in flight")
    b.add_argument("--duration", "-d", type=float, help="seconds to run")
    b.add_argument("--requests", "-n", type=int, help="requests to send (default 100)")
    b.add_argument("--sequences", type=int, default=4, help="sequences per request")
    b.add_argument("--context-len", type=int, default=128)
    b.add_argument("--target-len", type=int, default=64)
    b.add_argument("--top-k", type=int, default=0)
    b.add_argument("--entropy", action="store_true")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    urls = args.url or None
    try:
        if args.command == "bench":
            if args.retries is None:
                args.retries = 0  # count 429s instead of hiding them
            return cmd_bench(args, urls)
        retry = RetryPolicy() if args.retries is None else RetryPolicy(retries=args.retries)
        with TeacherClient(
            urls,
            api_key=args.api_key,
            timeout=Timeout(args.timeout, connect=min(5.0, args.timeout)),
            retry=retry,
            encoding=args.encoding,
        ) as tc:
            command = {
                "model": cmd_model,
                "score": cmd_score,
                "advantages": cmd_advantages,
                "hints": cmd_hints,
            }[args.command]
            return command(tc, args)
    except TokenCreditError as exc:
        print(f"tokencredit: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"tokencredit: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
