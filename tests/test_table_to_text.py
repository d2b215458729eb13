"""Lesson 07, part 5: the table-to-text input line (tasks.linearize_table) and TinyWorld's
table-to-text set (evals.table_to_text_examples): the line reads back, the set's texts state exactly
the record's facts in the world's relation order, and val/test people never occur in a training record."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from minift import world
from minift.evals import TABLE_PROMPT, table_to_text_examples, table_to_text_pairs
from minift.tasks import linearize_table

pytestmark = pytest.mark.lesson07

_PHRASE = st.lists(st.text(alphabet="abAB'-", min_size=1, max_size=4), min_size=1, max_size=3).map(" ".join)
_PADDED = st.tuples(st.sampled_from(("", " ", "  ")), _PHRASE, st.sampled_from(("", " "))).map("".join)


def test_linearize_table_the_e2e_line():
    assert linearize_table([("name", "Mara"), ("home", " Old Mill "), ("pet", "field mouse")]) == \
        "name : Mara | home : Old Mill | pet : field mouse"
    assert linearize_table({"b": "2", "a": "1"}) == "b : 2 | a : 1"                # a dict keeps its order
    assert linearize_table([("x", "y")]) == "x : y"


@settings(max_examples=60, deadline=None)
@given(fields=st.lists(st.tuples(_PADDED, _PADDED), min_size=1, max_size=6))
def test_linearize_table_reads_back_in_order(fields):
    line = linearize_table(fields)
    parts = line.split(" | ")
    assert len(parts) == len(fields)
    assert [tuple(p.split(" : ")) for p in parts] == [(a.strip(), v.strip()) for a, v in fields]
    assert not line.startswith(" ") and not line.endswith(" ")


@pytest.mark.parametrize("fields,err", [
    ([], ValueError), ("name : Mara", ValueError), ([("name",)], ValueError), ([("name", "Ma|ra")], ValueError),
    ([("na:me", "Mara")], ValueError), ([("name", "  ")], ValueError), ([("name", 3)], TypeError),
    ([(None, "Mara")], TypeError), (5, ValueError)])
def test_linearize_table_rejects_what_cannot_be_read_back(fields, err):
    with pytest.raises(err, match="linearize_table"):
        linearize_table(fields)


def test_table_to_text_sizes_and_format():
    sizes = {s: len(table_to_text_examples(s)) for s in world.SPLITS}
    assert sizes == {"train": 1500, "val": 200, "test": 200}
    for ex in table_to_text_examples("val"):
        (first, name), *rest = ex["fields"]
        rels = [r for r, _ in rest]
        assert first == "name" and 2 <= len(rest) <= 5 and len(set(rels)) == len(rels)
        assert set(rels) <= set(world.RELATIONS)
        assert ex["table"] == " | ".join(f"{a} : {v}" for a, v in ex["fields"])


def test_table_to_text_states_the_record_in_relation_order():
    people = {p.name: p for p in world.get_world().people}
    for split in world.SPLITS:
        for ex in table_to_text_examples(split)[:300]:
            (_, name), *rest = ex["fields"]
            facts = dict(rest)
            p = people[name]
            assert all(facts[r] == p.fact(r) for r in facts)                     # the record is true
            sentences = re.split(r"(?<=\.) ", ex["text"])
            ordered = [r for r in world.RELATIONS if r in facts]
            assert len(sentences) == len(ordered)
            for sent, r in zip(sentences, ordered):                              # one sentence per field
                assert name in sent and facts[r] in sent and sent.endswith(".")


def test_table_to_text_holds_people_out_and_never_repeats_a_record():
    names = {s: {ex["fields"][0][1] for ex in table_to_text_examples(s)} for s in world.SPLITS}
    w = world.get_world()
    for s in world.SPLITS:
        assert names[s] <= {p.name for p in w.people_in(s)}
    assert not names["train"] & (names["val"] | names["test"])
    keys = [(ex["fields"][0][1], frozenset(r for r, _ in ex["fields"][1:]))
            for s in world.SPLITS for ex in table_to_text_examples(s)]
    assert len(keys) == len(set(keys))


def test_table_to_text_is_deterministic_and_a_copy():
    a = table_to_text_examples("test")
    a[0]["text"] = "changed"
    b = table_to_text_examples("test")
    assert b[0]["text"] != "changed" and b == table_to_text_examples("test")
    prompt, response = table_to_text_pairs("test")[0]
    assert prompt == f"{TABLE_PROMPT}\n{b[0]['table']}" and response == b[0]["text"]
    with pytest.raises(ValueError, match="split"):
        table_to_text_examples("dev")
