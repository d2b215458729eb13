"""format_example(..., style=): the instruction prompt with its instruction, with the task name only,
and with the input only (lesson 03, part 6). The default must stay the full prompt, byte for byte."""
import pytest
from hypothesis import given, settings, strategies as st

from minift import world
from minift.evals import mixture
from minift.tasks import INSTRUCTION_STYLES, format_example

pytestmark = pytest.mark.lesson03

TEXT = st.text(alphabet="abcdefghij XYZ.,'", min_size=1, max_size=10)
DEMO = st.fixed_dictionaries({"input": TEXT, "output": TEXT, "reason": TEXT})
EXAMPLE = st.fixed_dictionaries({"task": st.sampled_from(list(world.INSTRUCTION_TYPES)), "definition": TEXT,
                                 "positive": DEMO, "negative": DEMO, "input": TEXT, "output": TEXT})


def test_default_is_the_full_natural_instructions_prompt():
    ex = {"task": "town_of_person", "definition": "Say the town.", "input": "Tiken", "output": "Hazelwick",
          "positive": {"input": "Rasen", "output": "Stonehaven", "reason": "R lives there."},
          "negative": {"input": "Trikel", "output": "Puvar", "reason": "Not a town."}}
    want = ("Definition: Say the town.\n"
            "Positive example. Input: Rasen Output: Stonehaven Reason: R lives there.\n"
            "Negative example. Input: Trikel Output: Puvar Reason: Not a town.\n"
            "Now do the task. Input: Tiken", "Hazelwick")
    assert format_example("instructions", ex) == want
    assert format_example("instructions", ex, style="full") == want
    assert format_example("instructions", ex, style="name") == ("Task: town_of_person\nInput: Tiken", "Hazelwick")
    assert format_example("instructions", ex, style="plain") == ("Input: Tiken", "Hazelwick")


@settings(deadline=None, max_examples=40)
@given(ex=EXAMPLE)
def test_stripped_prompts_keep_the_instance_and_the_response(ex):
    full, resp = format_example("instructions", ex)
    for style in ("name", "plain"):
        p, r = format_example("instructions", ex, style=style)
        assert r == resp == ex["output"]
        assert full.endswith(p.split("\n")[-1])                   # the same "Input: ..." line ends both
        assert len(p) < len(full)
    assert format_example("instructions", ex, style="plain")[0] == "Input: " + ex["input"]
    assert format_example("instructions", ex, style="name")[0] == f"Task: {ex['task']}\nInput: {ex['input']}"


def test_every_real_example_strips_to_its_input():
    for split in ("train", "test"):
        for ex in world.task("instructions", split):
            assert format_example("instructions", ex, style="plain") == ("Input: " + ex["input"], ex["output"])
            name = format_example("instructions", ex, style="name")[0]
            assert name.startswith(f"Task: {ex['task']}\n") and "Definition" not in name


def test_mixture_still_formats_in_full():
    """the default path (lesson 03's default run, every other lesson) is unchanged."""
    pairs = mixture(["instructions"], "train", 5)
    assert all(p.startswith("Definition: ") and "\nNow do the task. Input: " in p for p, _ in pairs)


@pytest.mark.parametrize("task,style", [("instructions", "none"), ("instructions", "PLAIN"), ("qa_closed", "plain"),
                                        ("sentiment", "name")])
def test_bad_style_or_task_raises(task, style):
    ex = world.task(task, "train")[0]
    with pytest.raises(ValueError, match="style="):
        format_example(task, ex, style=style)


def test_styles_listed():
    assert INSTRUCTION_STYLES == ("full", "name", "plain")
