"""Byte-level BPE: round trip for any Unicode, prompt tokens are a prefix, positional loss masks."""
import pytest
from hypothesis import given, settings, strategies as st

from minift.tokenizer import SPECIAL_TOKENS, Tokenizer

pytestmark = [pytest.mark.core, pytest.mark.lesson00]
SET = settings(deadline=None, max_examples=60)
CORPUS = ["Mara lives in Brookfield. She works as a baker.", "Tobin has a cat named Pip.",
          "The river in Old Mill is wide and slow.", "Zoë sagte: «Grüße!» 你好 🙂"] * 20


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=300)


def test_special_tokens_have_distinct_ids(tok):
    ids = [tok.eos_id, tok.pad_id, tok.prompt_id, tok.response_id]
    assert len(set(ids)) == 4 and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode([tok.eos_id]) == SPECIAL_TOKENS[0]


@SET
@given(text=st.text(max_size=60))
def test_round_trip_for_arbitrary_unicode(tok, text):
    assert tok.decode(tok.encode(text)) == text


@SET
@given(prompt=st.text(max_size=30), response=st.text(max_size=30))
def test_prompt_tokens_are_an_exact_prefix_and_mask_marks_the_response(tok, prompt, response):
    ids, mask = tok.encode_pair(prompt, response)
    p = tok.encode_prompt(prompt)
    assert ids[: len(p)] == p
    assert len(mask) == len(ids)
    assert mask == [0] * len(p) + [1] * (len(ids) - len(p))
    assert ids[-1] == tok.eos_id and mask[-1] == 1                     # EOS trained, by position
    assert tok.decode(ids[len(p):-1]).strip() == response.strip()
    assert tok.decode(ids[len(p):-1]) == (response if response[:1].isspace() or not response else " " + response)


def test_a_response_word_is_encoded_as_it_follows_a_space_in_running_text(tok):
    ids, mask = tok.encode_pair("Question: what pet?", "parrot")
    first = mask.index(1)
    assert ids[first:-1] == tok.encode(" parrot") and ids[first:-1] != tok.encode("parrot")


def test_save_load_round_trip_and_bad_files(tok, tmp_path):
    path = str(tmp_path / "tok.json")
    tok.save(path)
    again = Tokenizer.load(path)
    assert again.encode("Mara lives in Brookfield.") == tok.encode("Mara lives in Brookfield.")
    assert again.eos_id == tok.eos_id
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizers JSON file"):
        Tokenizer.load(str(bad))
    with pytest.raises(ValueError, match="not found"):
        Tokenizer.load(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="vocab_size=100 must be at least 260"):
        Tokenizer.train(CORPUS, vocab_size=100)
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(b"bytes")
