"""server/answers.py: extraction, normalisation, equivalence and the leak test, on hand-made text."""

from __future__ import annotations

import pytest

from server.answers import (
    answers_match,
    extract_boxed,
    extract_final_answer,
    mentions_answer,
    normalize_answer,
    parse_number,
    strip_thinking,
)


@pytest.mark.parametrize(
    ("text", "boxes"),
    [
        ("\\boxed{14}", ["14"]),
        ("a \\boxed{\\frac{1}{\\sqrt{2}}} b", ["\\frac{1}{\\sqrt{2}}"]),  # nested braces
        ("put it within \\boxed{}. So \\boxed{3} then \\boxed{4}", ["3", "4"]),  # empty skipped
        ("\\fbox{7}", ["7"]),
        ("\\boxed{12", []),  # unclosed
        ("no box", []),
    ],
)
def test_extract_boxed(text, boxes):
    assert extract_boxed(text) == boxes


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("12+7=19. 19-5=14. \\boxed{14}", "14"),
        # the prompt's empty box (OpenRLHF sends prompt + response) is no answer
        ("Please put your final answer within \\boxed{}.\n19-5=14, \\boxed{14}.", "14"),
        ("so the final answer is 42.", "42"),
        ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ("Answer: 1,000", "1,000"),
        ("no answer in here, only 3 and 5", None),
        ("", None),
    ],
)
def test_extract_final_answer(text, answer):
    assert extract_final_answer(text) == answer


def test_extract_final_answer_last_number():
    assert extract_final_answer("we get 3 then 5.", last_number=True) == "5"
    assert extract_final_answer("no digits", last_number=True) is None


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("42", "42"),
        ("42.0", "42"),
        ("  $42$ ", "42"),
        ("\\boxed{42}", "42"),
        ("1,000", "1000"),
        ("1{,}000.50", "1000.5"),
        ("-7", "-7"),
        ("−7", "-7"),  # unicode minus
        ("\\frac{1}{2}", "0.5"),
        ("\\dfrac{2}{4}", "0.5"),
        ("\\tfrac12", "0.5"),
        ("-\\frac{3}{6}", "-0.5"),
        ("2/6", "1/3"),
        ("0.125", "0.125"),
        ("50\\%", "50"),
        ("x = 5", "5"),
        ("5 \\text{ cm}", "5"),
        ("90^\\circ", "90"),
        ("(b)", "B"),
        ("2x", "2x"),  # not a unit
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("", ""),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_parse_number():
    assert parse_number("1/0") is None
    assert parse_number("x^2") is None
    assert parse_number("3.50") == parse_number("7/2")


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("\\frac{1}{2}", "0.5"),
        ("1/2", "0.50"),
        ("1,000", "1000"),
        ("42.0", "42"),
        ("50%", "0.5"),
        ("0.5", "50\\%"),
        ("x^2+1", "1+x^2"),  # math_verify
        ("\\frac{\\pi}{2}", "\\pi/2"),
        ("2\\sqrt{2}", "\\sqrt{8}"),
        ("Yes", "yes"),
        ("(B)", "B"),
    ],
)
def test_answers_match(pred, gold):
    assert answers_match(pred, gold)


@pytest.mark.parametrize(
    ("pred", "gold"),
    [("0.333", "1/3"), ("41", "42"), ("-42", "42"), ("", "1"), (None, "1"), ("x^2", "x^3")],
)
def test_answers_do_not_match(pred, gold):
    assert not answers_match(pred, gold)


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("The answer is 42", "42"),
        ("\\boxed{42}", "42"),
        ("so you get 42.0 here", "42"),
        ("Recheck 42nd step", "42"),  # letters may touch a number
        ("the result -42 is off", "42"),  # a non-negative gold also leaks as its negation
        ("then 5-42 gives", "42"),
        ("we reach 1,000 apples", "1000"),
        ("so it is \\frac{1}{2} of it", "0.5"),
        ("so it is \\dfrac{1}{2} of it", "0.5"),
        ("a half, 1/2, is left", "0.5"),
        ("about 50% are left", "0.5"),
        ("the result is -3 here", "-3"),
        ("Consider x^2 + 1 first", "x^2+1"),
        ("The answer is (B).", "B"),
        ("it equals \\frac{\\pi}{2}", "\\dfrac{\\pi}{2}"),
    ],
)
def test_mentions_answer_flags_leaks(text, gold):
    assert mentions_answer(text, gold)


@pytest.mark.parametrize(
    ("text", "gold"),
    [
        ("Check the step 142-100 again", "42"),  # digits inside a longer number
        ("Check 4.2 and 0.42", "42"),
        ("There are 1420 of them", "42"),
        ("Recompute 19-5 digit by digit.", "14"),
        ("subtract: 5-3 is where it goes wrong", "-3"),  # binary minus, not -3
        ("Consider 2x^2+1 first", "x^2+1"),  # glued to a digit
        ("Option B is tempting", "B"),  # single letters only via box/phrase
        ("The answer is wrong; redo the tens.", "14"),
        ("", "14"),
    ],
)
def test_mentions_answer_ignores_non_leaks(text, gold):
    assert not mentions_answer(text, gold)


def test_mentions_answer_without_gold():
    assert not mentions_answer("The answer is 42", None)
    assert not mentions_answer("The answer is 42", "  ")


# ---- linear time on hostile text ----------------------------------------------------------------
#
# Each input below took quadratic time (or crashed) before: 20,000 spaces after "answer is" froze
# the server for 23 s. At a million characters quadratic code runs for hours and linear code for
# well under a second, so a generous deadline cannot be missed by load alone. Each call runs in
# a forked child, so that a regression fails the test at the deadline instead of hanging it, and
# with 2 GiB of address space, so quadratic memory (one copy per nested box) fails it too.

N = 1_000_000
DEADLINE_S = 60.0  # linear code needs 0.1-3 s here even under load; quadratic, hours


def _extract_last_number(text):
    return extract_final_answer(text, last_number=True)


def _mentions_ab(text):
    return mentions_answer(text, "ab")


def _mentions_42(text):
    return mentions_answer(text, "42")


def _match_gold(text):
    return answers_match("42", text)


HOSTILE_TEXT = {
    "spaces after 'answer is'": (extract_final_answer, "answer is" + " " * N + ","),
    "spaces around ':' after 'answer'": (extract_final_answer, "answer" + " " * N + ":" + " " * N),
    "unclosed \\boxed{ repeated": (extract_final_answer, "\\boxed{" * (N // 7)),
    "nested \\boxed{ closed": (normalize_answer, "\\boxed{" * (N // 7) + "1" + "}" * (N // 7)),
    "nested \\boxed{ closed, extracted": (
        extract_final_answer,
        "\\boxed{" * (N // 7) + "1" + "}" * (N // 7),
    ),
    "nested \\boxed{ closed (leak check)": (
        _mentions_42,
        "\\boxed{" * (N // 7) + "1" + "}" * (N // 7),
    ),
    "unclosed <think> repeated": (strip_thinking, "<think>" * (N // 7)),
    "<think> closed once at the end": (strip_thinking, "<think>" * (N // 7) + "</think>"),
    "$ wrappers": (normalize_answer, "$" * N),
    "\\( wrappers": (normalize_answer, "\\(" * (N // 4) + "\\)" * (N // 4)),
    "spaces before a symbol (leak check)": (_mentions_ab, " " * N + "x"),
    "unclosed boxes (leak check)": (_mentions_ab, "\\boxed{ " * (N // 8)),
    "a million digits (leak check)": (_mentions_42, "1" * N),
    "a million digits as the label": (_match_gold, "1" * N),
    "a million-digit fraction": (_mentions_42, "1" * (N // 2) + "/" + "3" * (N // 2)),
    "thousands separators": (_extract_last_number, "1," * (N // 2)),
    "'answer is 1' repeated": (extract_final_answer, "answer is 1" * (N // 11)),
    "\\text{ unclosed repeated": (_match_gold, "\\text{" * (N // 6)),
}


CHILD_MEMORY_BYTES = 2 * 2**30  # quadratic copies fail with MemoryError, not the machine's OOM


def _call_in_child(fn, text, conn):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_BYTES, CHILD_MEMORY_BYTES))
    try:
        fn(text)
        conn.send(None)
    except BaseException as exc:  # reported to the parent, which fails the test with it
        conn.send(f"{type(exc).__name__}: {exc}"[:500])


@pytest.mark.parametrize("name", list(HOSTILE_TEXT))
def test_parsers_are_linear_on_hostile_text(name):
    import multiprocessing as mp

    fn, text = HOSTILE_TEXT[name]
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_call_in_child, args=(fn, text, child))
    proc.start()
    finished = parent.poll(DEADLINE_S)
    if not finished:
        proc.kill()
    proc.join()
    assert finished, f"{name}: not done after {DEADLINE_S:.0f} s on {len(text):,} characters"
    error = parent.recv()
    assert error is None, f"{name}: {error}"


def test_strip_thinking_matches_the_regex_it_replaces():
    import re

    reference = re.compile(r"<think>.*?</think>\s*", flags=re.DOTALL)
    for text in (
        "<think>a</think> b",
        "x <think>a</think>\n\n<think>b</think>c",
        "<think>open",
        "a<think>b</think>",
        "<think><think>b</think> c </think> d",
        "</think> <think>",
        "",
    ):
        assert strip_thinking(text) == reference.sub("", text).strip(), text


def test_nested_and_wrapped_boxes_unwrap():
    assert normalize_answer("$\\boxed{\\boxed{ 14 }}$") == "14"
    assert normalize_answer("\\boxed{1} + \\boxed{2}") != "1"
    assert extract_boxed("\\boxed{a{b}c} \\boxed{d") == ["a{b}c"]
    assert extract_boxed("\\boxed{\\boxed{3}} \\boxed{4}") == ["\\boxed{3}", "4"]  # outermost
    assert extract_final_answer("so \\boxed{\\boxed{3}}") == "\\boxed{3}"
    assert answers_match(extract_final_answer("so \\boxed{\\boxed{3}}"), "3")
