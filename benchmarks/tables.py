"""Markdown tables for the benchmark scripts (paste straight into the README or docs)."""

from __future__ import annotations


def print_table(title: str, header: tuple, rows: list[tuple]) -> None:
    print(f"\n{title}")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for row in rows:
        print(" | ".join(f"{v:,.3g}" if isinstance(v, float) else str(v) for v in row))
