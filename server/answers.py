"""Final answers: extract them, normalise them, compare them, and spot them inside free text.

Used by the Meta-Reflection leak guard (``server/hints.py``) and by answer-checking rewards::

    >>> extract_final_answer("so 12+7-5 = \\\\boxed{14}.")
    '14'
    >>> normalize_answer("\\\\dfrac{2}{4}"), normalize_answer("1,000.0"), normalize_answer("50\\\\%")
    ('0.5', '1000', '50')
    >>> answers_match("\\\\frac{1}{2}", "0.5"), answers_match("x^2+1", "1+x^2")
    (True, True)
    >>> mentions_answer("The answer is 42.", "42"), mentions_answer("Check 142 again", "42")
    (True, False)

Two paths. A fast pure-Python one handles what answers usually are: integers, decimals (trailing
``.0``), thousands separators (``1,000``, ``1{,}000``), signs (``-``, ``−``), fractions (``a/b``,
``\\frac{a}{b}``, ``\\dfrac``, ``\\tfrac``), percentages, ``$``/``\\(..\\)`` wrappers, ``\\text{}``
units and ``x = ...`` prefixes. When both sides are numbers it decides alone (exact rational
equality). Anything else (``x^2+1``, ``\\frac{\\pi}{2}``, intervals) goes to `math_verify
<https://github.com/huggingface/Math-Verify>`_ (``parse``/``verify``, sympy underneath), with its
signal-based timeout where that is allowed (main thread) and a length cap elsewhere.

All of it reads untrusted text (responses, labels, generated reflections), so every scan is linear
in the input: no pattern may backtrack over a run it already failed on (``\\s*:?\\s*`` over 20,000
spaces took 23 s), and brace matching is one pass (``brace_matches``), not a scan per ``\\boxed{``.
tests/server/test_answers.py times each at its worst input.
"""

from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction
from functools import lru_cache

__all__ = [
    "answers_match",
    "brace_matches",
    "extract_boxed",
    "extract_final_answer",
    "mentions_answer",
    "normalize_answer",
    "parse_number",
    "strip_thinking",
]

log = logging.getLogger(__name__)

# math_verify is only asked about strings this short (sympy on long input can take seconds).
MATH_VERIFY_MAX_CHARS = 200
MATH_VERIFY_TIMEOUT_S = 5  # sympy on a loaded 2-core machine took over 2 s for \\sqrt{8}
# Longer digit strings are not read as numbers: int() of a long string is quadratic, and Python
# refuses over 4,300 digits (a ValueError, i.e. a 500). No final answer is that long.
MAX_NUMBER_CHARS = 200

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_SPACES = re.compile(r"\s*")
_NONSPACE = re.compile(r"\S")
# A number as written in text: thousands-separated or plain digits, decimals.
_NUM = r"(?:\d{1,3}(?:(?:,|\{,\})\d{3})+|\d+)(?:\.\d+)?|\.\d+"
# "(?=(\s*))\1" is an atomic "\s*" (Python < 3.11 has no possessive quantifiers): a whitespace
# run is consumed once and never given back. "\s*:?\s*" split a run of n spaces n ways
# (quadratic: 20,000 spaces took 23 s), and even one backtracking "\s*" rescans the run.
_ANSWER_PHRASE = re.compile(
    r"answer(?=(\s*))\1(?:is|:|=|would\s+be|should\s+be)(?=(\s*))\2(?::(?=(\s*))\3)?"
    r"(?P<ans>\$[^$\n]{1,80}\$"  # $...$
    r"|\\\([^\n]{1,80}?\\\)"  # \(...\)
    r"|[-−]?(?:" + _NUM + r")(?:\s*/\s*\d+)?(?![\d,])"  # 1,000 / -3.5 / 1/2
    r"|[^\s,;!?]{1,80})",  # anything else up to a space
    flags=re.IGNORECASE,
)
_NUMBER_TOKEN = re.compile(
    r"(?P<sign>[-−]\s?)?(?<![\d.])(?P<num>" + _NUM + r")(?![\d])(?P<pct>\s?\\?%)?"
)
_LATEX_FRAC = re.compile(
    r"(?P<sign>[-−]\s?)?\\[dt]?frac\s*(?:\{\s*(?P<a>\d+)\s*\}|(?P<a1>\d))\s*(?:\{\s*(?P<b>\d+)\s*\}|(?P<b1>\d))"
)
_SLASH_FRAC = re.compile(r"(?P<sign>[-−]\s?)?(?<![\d.])(?P<a>\d+)\s*/\s*(?P<b>\d+)(?![\d.])")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# A whitespace run before or after a symbol. Anchored at the run's start (lookbehind), so a long run
# is tried once, not from each of its positions (``\s*([^\w\s])\s*`` was quadratic).
_SPACE_AROUND_SYMBOL = re.compile(r"(?<!\s)\s+(?=[^\w\s])|(?<=[^\w\s])\s+")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


# ---- extraction --------------------------------------------------------------------------------


def brace_matches(text: str) -> dict[int, int]:
    """``{index of "{": index of its matching "}"}`` for every closed brace, in one pass.

    A brace's match depends only on the text after it, so one stack over the whole text gives
    the same pairs as counting depth from each opening brace (which is quadratic in nested or
    unclosed input).
    """
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def extract_boxed(text: str, pairs: dict[int, int] | None = None) -> list[str]:
    """Contents of every outermost ``\\boxed{...}`` / ``\\fbox{...}`` in order, nested braces
    respected (a box inside a box stays in its outer box's text: returning both would copy
    nested text once per level, quadratic memory on ``\\boxed{`` repeated).

    Empty boxes (a prompt's "put your final answer within \\boxed{}") and unclosed ones are skipped.
    ``pairs``: ``brace_matches(text)`` when the caller has it already.
    """
    out: list[str] = []
    covered = -1  # end of the last box taken: boxes starting before it are nested in it
    for m in _BOXED.finditer(text):  # lazily: no list of every match held at once
        if pairs is None:
            pairs = brace_matches(text)
        close = pairs.get(m.end() - 1)
        if close is not None and m.start() > covered and _NONSPACE.search(text, m.end(), close):
            out.append(text[m.end() : close].strip())
            covered = close
    return out


def strip_thinking(text: str) -> str:
    """``text`` without its ``<think>...</think>`` blocks (and the whitespace after each), stripped.

    Same result as ``re.sub(r"<think>.*?</think>\\s*", "", text, flags=re.DOTALL)``, in one pass:
    that pattern rescans to the end of the text from every unclosed ``<think>``.
    """
    parts, pos = [], 0
    while (start := text.find("<think>", pos)) >= 0:
        end = text.find("</think>", start + len("<think>"))
        if end < 0:
            break  # no later <think> can close either
        parts.append(text[pos:start])
        pos = _SPACES.match(text, end + len("</think>")).end()
    parts.append(text[pos:])
    return "".join(parts).strip()


def _last_answer_phrase(text: str) -> re.Match | None:
    """The last "answer is X" match (as ``finditer`` would find them). Candidates come from
    ``str.find`` on the lower-cased text: a regex search over megabytes without a match is one
    long C call that holds the GIL, ``find`` is a fast scan and the loop yields between calls."""
    lower = text.lower()
    if len(lower) != len(text):  # a character whose lower case is longer: indices differ
        return next(reversed(list(_ANSWER_PHRASE.finditer(text))), None)
    last, pos = None, lower.find("answer")
    while pos >= 0:
        m = _ANSWER_PHRASE.match(text, pos)
        if m is not None:
            last, pos = m, m.end()
        else:
            pos += 1
        pos = lower.find("answer", pos)
    return last


def extract_final_answer(text: str | None, *, last_number: bool = False) -> str | None:
    """The final answer a solution states, as written (not normalised), or None.

    Order: the last non-empty ``\\boxed{}``; else the last "answer is X" / "answer: X" phrase;
    else, with ``last_number=True``, the last number in the text (GSM8K style).
    """
    if not text:
        return None
    boxed = extract_boxed(text)
    if boxed:
        return boxed[-1]
    phrase = _last_answer_phrase(text)
    if phrase is not None:
        ans = phrase.group("ans").strip().rstrip(".")
        if ans.startswith("$") and ans.endswith("$"):
            ans = ans.strip("$").strip()
        elif ans.startswith("\\(") and ans.endswith("\\)"):
            ans = ans[2:-2].strip()
        if ans:
            return ans
    if last_number:
        numbers = [m.group(0) for m in _NUMBER_TOKEN.finditer(text)]
        if numbers:
            return numbers[-1].strip()
    return None


# ---- normalisation -----------------------------------------------------------------------------


def _strip_wrappers(s: str) -> str:
    """Peel ``$$..$$``, ``$..$``, ``\\(..\\)``, ``\\[..\\]`` and a whole-string ``\\boxed{..}``, any
    number of layers. Works on indices (no copy per layer), so ``"$" * n`` is linear."""
    i, j = 0, len(s)
    pairs: dict[int, int] | None = None
    while True:
        while i < j and s[i].isspace():
            i += 1
        while j > i and s[j - 1].isspace():
            j -= 1
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if (
                j - i >= len(left) + len(right)
                and s.startswith(left, i)
                and s.endswith(right, i, j)
            ):
                i, j = i + len(left), j - len(right)
                break
        else:
            m = _BOXED.match(s, i, j)
            if m is None or s[j - 1] != "}":
                return s[i:j]
            pairs = brace_matches(s) if pairs is None else pairs
            if pairs.get(m.end() - 1) != j - 1 or not _NONSPACE.search(s, m.end(), j - 1):
                return s[i:j]
            i, j = m.end(), j - 1


def _clean(s: str) -> str:
    """LaTeX spacing/sizing noise out, ``\\dfrac`` -> ``\\frac``, units and ``x =`` off."""
    s = _strip_wrappers(s)
    s = s.replace("−", "-").replace("\\%", "%").replace("{,}", ",").replace("\\$", "")
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:|quad|qquad)", "", s)
    s = s.replace("\\ ", " ").replace("~", " ")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s)  # degrees
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.strip().rstrip(".").strip()
    m = re.fullmatch(r"[A-Za-z]\s*=\s*(.+)", s)  # "x = 5" -> "5"
    if m:
        s = m.group(1)
    # "5 cm", "12 dollars": drop a trailing unit word after a number
    m = re.fullmatch(r"([-+]?[\d.,/]+)\s+[A-Za-z]+\.?", s)
    if m:
        s = m.group(1)
    return re.sub(r"\s+", "", s)


def _fraction_str(value: Fraction) -> str:
    """Integers as ``42``, terminating decimals as ``0.125``, others as ``1/3``."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        digits += 1
    sign = "-" if value < 0 else ""
    n = abs(scaled.numerator)
    whole, frac = divmod(n, 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def parse_number(s: str | None) -> Fraction | None:
    """The exact value of an answer that is a plain number, fraction or percentage, else None.

    A percentage gives its number (``50%`` -> 50): whether 50% also means 0.5 is
    ``answers_match``'s business.
    """
    if not s:
        return None
    s = _clean(s).removesuffix("%")
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    if _PLAIN_NUMBER.fullmatch(s):
        return Fraction(s)
    m = re.fullmatch(r"([+-]?)(\d+)/(\d+)", s) or re.fullmatch(
        r"([+-]?)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))", s
    )
    if m:
        groups = [g for g in m.groups()[1:] if g is not None]
        a, b = int(groups[0]), int(groups[1])
        if b == 0:
            return None
        value = Fraction(a, b)
        return -value if m.group(1) == "-" else value
    return None


def normalize_answer(s: str | None) -> str:
    """A canonical string: numbers as ``42`` / ``0.5`` / ``1/3``, else cleaned LaTeX without spaces.

    ``normalize_answer(a) == normalize_answer(b)`` implies ``answers_match(a, b)``; the converse
    needs ``answers_match`` (percentages, symbolic equivalence).
    """
    if not s:
        return ""
    value = parse_number(s)
    if value is not None:
        return _fraction_str(value)
    cleaned = _clean(s)
    m = re.fullmatch(r"\(?([A-Za-z])\)?", cleaned)  # multiple choice "(B)" -> "B"
    if m:
        return m.group(1).upper()
    return cleaned


# ---- comparison --------------------------------------------------------------------------------


def _is_percent(s: str) -> bool:
    return "%" in s or "percent" in s.lower()


def answers_match(pred: str | None, gold: str | None) -> bool:
    """True when ``pred`` states the same answer as ``gold``.

    Numbers compare exactly as rationals (``0.5 == \\frac{1}{2} == 1/2``, ``1,000 == 1000.0``); a
    percentage on either side also matches its hundredth (``50% == 0.5``). Non-numbers are equal
    when their normalised strings are (case-insensitive for plain words), else when math_verify
    says so.
    """
    if not pred or not gold:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is not None and g is not None:
        if p == g:
            return True
        if _is_percent(pred) and p / 100 == g:
            return True
        return _is_percent(gold) and g / 100 == p
    np_, ng = normalize_answer(pred), normalize_answer(gold)
    if not np_ or not ng:
        return False
    if np_ == ng or (np_.isalpha() and np_.lower() == ng.lower()):
        return True
    return _math_verify(np_, ng)


@lru_cache(maxsize=4096)
def _math_verify(pred: str, gold: str) -> bool:
    if len(pred) > MATH_VERIFY_MAX_CHARS or len(gold) > MATH_VERIFY_MAX_CHARS:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:  # pragma: no cover - math-verify is a dependency
        return False
    # signal.alarm timeouts only work in the main thread; elsewhere run without (short inputs).
    timeout = (
        MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    )
    logger = logging.getLogger("math_verify")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns on every call made without a timeout
    try:
        gold_p = parse(f"${gold}$", parsing_timeout=timeout)
        pred_p = parse(f"${pred}$", parsing_timeout=timeout)
        if not gold_p or not pred_p:
            return False
        return bool(verify(gold_p, pred_p, timeout_seconds=timeout))
    except Exception:
        log.debug("math_verify failed on %r vs %r", pred, gold, exc_info=True)
        return False
    finally:
        logger.setLevel(level)


# ---- leak detection ----------------------------------------------------------------------------


def _signed(value: Fraction, sign: str | None) -> Fraction:
    return -value if sign and sign.strip() else value


def number_values(text: str) -> list[Fraction]:
    """Every number ``text`` writes, as values: standalone numbers (never digits inside a longer
    number: ``142`` holds no ``42``), ``a/b`` and ``\\frac{a}{b}`` as fractions *and* as their two
    parts, percentages as written and as hundredths. A ``-`` right after a digit is subtraction,
    not a sign."""
    text = text.replace("−", "-")
    values: list[Fraction] = []

    def sign_of(m: re.Match) -> str | None:
        sign = m.group("sign")
        if sign and m.start() > 0 and re.match(r"[\w)}\]]", text[m.start() - 1]):
            return None  # "5-3": binary minus
        return sign

    for m in _LATEX_FRAC.finditer(text):
        if len(m.group()) > MAX_NUMBER_CHARS:
            continue
        a, b = int(m.group("a") or m.group("a1")), int(m.group("b") or m.group("b1"))
        if b:
            values.append(_signed(Fraction(a, b), sign_of(m)))
    for m in _SLASH_FRAC.finditer(text):
        if len(m.group()) > MAX_NUMBER_CHARS:
            continue
        a, b = int(m.group("a")), int(m.group("b"))
        if b:
            values.append(_signed(Fraction(a, b), sign_of(m)))
    for m in _NUMBER_TOKEN.finditer(text):
        if len(m.group("num")) > MAX_NUMBER_CHARS:
            continue
        value = _signed(Fraction(m.group("num").replace("{,}", "").replace(",", "")), sign_of(m))
        values.append(value)
        if m.group("pct"):
            values.append(value / 100)
    return values


def mentions_answer(text: str | None, gold: str | None) -> bool:
    """True when ``text`` states the answer ``gold`` (the leak test of Meta-Reflection).

    Deliberately conservative (a false alarm costs one reflection, a miss leaks the answer):

    1. a ``\\boxed{}`` or an "answer is X" phrase in ``text`` that ``answers_match`` gold;
    2. numeric gold: any number written in ``text`` with gold's value (see ``number_values``:
       ``42``, ``42.0``, ``1,000``, ``\\frac{1}{2}`` for 0.5, ``50%`` for 0.5); a non-negative gold
       also matches its negation (``-42`` still shows 42); digits inside a longer number do not;
    3. other gold (``x^2+1``): its normalised form inside the normalised text, not glued to
       letters or digits; single-letter gold (multiple choice) only through rule 1.
    """
    if not text or not gold or not normalize_answer(gold):
        return False
    for candidate in extract_boxed(text):
        if answers_match(candidate, gold):
            return True
    stated = extract_final_answer(text)
    if stated is not None and answers_match(stated, gold):
        return True
    value = parse_number(gold)
    if value is not None:
        targets = {value, -value} if value >= 0 else {value}
        if _is_percent(gold):
            targets |= {value / 100, -value / 100} if value >= 0 else {value / 100}
        return any(v in targets for v in number_values(text))
    g = normalize_answer(gold)
    if len(g) < 2:
        return False
    # spaces around symbols go (``x^2 + 1`` -> ``x^2+1``), spaces between words stay
    haystack = _SPACE_AROUND_SYMBOL.sub("", _clean_text(text))
    for m in re.finditer(re.escape(g), haystack):
        before = haystack[m.start() - 1] if m.start() else ""
        after = haystack[m.end()] if m.end() < len(haystack) else ""
        glued = (g[0].isalnum() and before.isalnum()) or (g[-1].isalnum() and after.isalnum())
        if not glued:
            return True
    return False


def _clean_text(text: str) -> str:
    """``_clean`` for running text: same LaTeX rewrites, no whole-string rules."""
    text = text.replace("−", "-").replace("\\%", "%")
    text = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:|quad|qquad)", "", text)
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    return re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", text)
