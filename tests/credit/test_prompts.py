"""proto.prompts.fill: one pass, bounded uses, size known before the prompt is built."""

from __future__ import annotations

import time

import pytest

from proto import prompts
from proto.prompts import MAX_PLACEHOLDER_USES, PromptTooLarge, fill


def test_a_placeholder_inside_a_filled_value_is_left_alone():
    out = fill(prompts.HSD_TEACHER, problem="P {answer}", peer="peer {answer} {peer}", answer="42")
    assert out.startswith("P {answer}\n\nCorrect solution:\n\npeer {answer} {peer}\n\n")
    assert out.count("42") == 1


def test_other_braces_are_kept():
    assert fill("{problem} \\boxed{} {x} {{problem}}", problem="a") == "a \\boxed{} {x} {a}"
    assert prompts.student_message("1+1").endswith("\\boxed{}.")


def test_uses_are_bounded():
    fill("{a}" * MAX_PLACEHOLDER_USES, a="x")
    with pytest.raises(PromptTooLarge) as err:
        fill("{a}" * (MAX_PLACEHOLDER_USES + 1), a="x")
    assert err.value.placeholder == "a"
    fill("{unknown}" * 100, a="x")  # only filled placeholders count


def test_size_is_exact_and_checked_before_building():
    template, values = "{a}-{b}-{a}", {"a": "xyz", "b": "{a}"}
    out = fill(template, max_chars=len("xyz-{a}-xyz"), **values)
    assert out == "xyz-{a}-xyz"
    with pytest.raises(PromptTooLarge) as err:
        fill(template, max_chars=len(out) - 1, **values)
    assert err.value.placeholder == "a"  # the largest contributor


def test_a_huge_value_is_refused_without_building():
    value = "v" * 50_000_000
    started = time.perf_counter()
    with pytest.raises(PromptTooLarge, match="characters"):
        fill("{a}" * MAX_PLACEHOLDER_USES, max_chars=10_000, a=value)
    assert time.perf_counter() - started < 1.0  # 400 MB never allocated
