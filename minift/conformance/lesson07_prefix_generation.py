"""Lesson 07, part 5 (prefix tuning on generation): the reference `run_*` function and its checks.

    run_linearize_table(fields)     a one-record table as one line, "a_1 : v_1 | ... | a_n : v_n",
                                    the input of lesson 07's table-to-text runs (E2E-style)

computed by minift's own `minift/tasks.py: linearize_table`. The checks, registered with
lesson="lesson07", build the expected line here, character by character, never by calling minift.
"""
from __future__ import annotations

from hypothesis import strategies as st

from minift.tasks import linearize_table

from .harness import property_check


def run_linearize_table(fields) -> str:
    """fields: a non-empty sequence of (attribute, value) string pairs, or a dict (in its order).
    Returns "a_1 : v_1 | a_2 : v_2 | ... | a_n : v_n", each attribute and value stripped of the
    whitespace around it, in the given order."""
    return linearize_table(fields)


# ---- the checks ----------------------------------------------------------------------------------

_WORD = st.text(alphabet="abzAZ'-", min_size=1, max_size=5)
_PHRASE = st.lists(_WORD, min_size=1, max_size=3).map(" ".join)           # "Old Mill", "a b-c"
_PAD = st.sampled_from(("", " ", "  "))
_PADDED = st.tuples(_PAD, _PHRASE, _PAD).map("".join)                     # "  Old Mill "
_FIELDS = st.lists(st.tuples(_PADDED, _PADDED), min_size=1, max_size=5)


def _expected(fields) -> str:
    """The line from first principles: walk the fields in order, strip each attribute and value
    by hand, and put ' : ' inside a field and ' | ' between fields."""
    def strip(s: str) -> str:
        i, j = 0, len(s)
        while i < j and s[i] == " ":
            i += 1
        while j > i and s[j - 1] == " ":
            j -= 1
        return s[i:j]
    line = ""
    for n, (a, v) in enumerate(fields):
        if n:
            line += " | "
        line += strip(a) + " : " + strip(v)
    return line


def _text(y, what: str) -> str:
    if not isinstance(y, str):
        raise AssertionError(f"{what} must return a str, got {type(y).__name__}: {y!r}")
    return y


@property_check("run_linearize_table", lesson=7, examples=60, fields=_FIELDS,
                explicit=[dict(fields=[("name", "Mara"), ("pet", "cat"), ("home", "Ashford")]),
                          dict(fields=[(" name", "Mara "), ("home ", "  Old Mill")])])
def linearize_table_matches_format(linearize, fields):
    """linearize_table([(a_1, v_1), ..., (a_n, v_n)]) is "a_1 : v_1 | ... | a_n : v_n" exactly: the
    fields in the given order (not sorted), each attribute and value stripped of surrounding spaces
    (inner spaces kept), ' : ' inside a field and ' | ' between fields, nothing before or after."""
    want = _expected(fields)
    got = _text(linearize([tuple(f) for f in fields]), f"run_linearize_table({fields!r})")
    if got != want:
        raise AssertionError(f"run_linearize_table({fields!r}) = {got!r}, expected {want!r}")


@property_check("run_linearize_table", lesson=7, examples=40, fields=_FIELDS,
                explicit=[dict(fields=[("food", "plum cake"), ("name", "Dorar")])])
def linearize_table_reads_back(linearize, fields):
    """The line reads back: split on ' | ' and then on ' : ', it gives the stripped (attribute,
    value) pairs in their order; a dict of the same (distinct) attributes gives the same line."""
    got = _text(linearize([tuple(f) for f in fields]), f"run_linearize_table({fields!r})")
    back = [tuple(part.split(" : ")) for part in got.split(" | ")]
    want = [(a.strip(), v.strip()) for a, v in fields]
    if back != want:
        raise AssertionError(f"run_linearize_table({fields!r}) = {got!r} reads back as {back!r}, expected {want!r}")
    as_dict = {}
    for a, v in fields:
        as_dict.setdefault(a, v)
    if len(as_dict) == len(fields):
        from_dict = _text(linearize(as_dict), f"run_linearize_table({as_dict!r})")
        if from_dict != got:
            raise AssertionError(f"run_linearize_table(a dict) = {from_dict!r}, but the same fields as a list of "
                                 f"pairs give {got!r}: a dict's fields are its items, in its order")
