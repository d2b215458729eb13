"""Chat fine-tuning (minift/align/chat.py): the format is the turns' SFT pairs end to end, the loss
covers the assistant's turns only, truncation drops whole old turns, and a reply stops at the end
of its turn and reads the history."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.chat import ChatDataset, chat_prompt, encode_chat, last_turn_accuracy, reply, train_chat
from minift.model import GPTConfig
from minift.tasks import IGNORE_INDEX
from minift.train import TrainConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson03
TOK = CharTok()
TEXT = st.text(alphabet="abcdefgh ", min_size=1, max_size=6)
TURNS = st.lists(st.fixed_dictionaries({"user": TEXT, "assistant": TEXT}), min_size=1, max_size=4)


def _by_hand(turns, last_only=False):
    """The definition, token by token: <|prompt|> u <|response|> a <|endoftext|> per turn; mask 1 on a + EOS."""
    ids, mask = [], []
    for k, t in enumerate(turns):
        u = [TOK.prompt_id] + TOK.encode(t["user"]) + [TOK.response_id]
        a = TOK.encode(t["assistant"]) + [TOK.eos_id]                   # (CharTok adds no leading space)
        on = 1 if (not last_only or k == len(turns) - 1) else 0
        ids += u + a
        mask += [0] * len(u) + [on] * len(a)
    return ids, mask


@settings(deadline=None, max_examples=60)
@given(turns=TURNS, last_only=st.booleans())
def test_a_dialogue_is_its_turns_end_to_end_with_the_loss_on_the_assistant(turns, last_only):
    assert encode_chat(TOK, turns, last_turn_only=last_only) == _by_hand(turns, last_only)
    item = ChatDataset(TOK, [turns], 200, last_only)[0]
    ids, mask = _by_hand(turns, last_only)
    assert item["idx"].tolist() == ids[:-1]
    assert item["targets"].tolist() == [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]


@settings(deadline=None, max_examples=60)
@given(turns=TURNS, max_len=st.integers(10, 60))
def test_truncation_drops_whole_turns_from_the_start(turns, max_len):
    last = len(_by_hand(turns[-1:])[0])
    if last > max_len:
        with pytest.raises(ValueError, match="last turn alone"):
            encode_chat(TOK, turns, max_len)
        return
    ids, mask = encode_chat(TOK, turns, max_len)
    kept = next(k for k in range(len(turns)) if len(_by_hand(turns[k:])[0]) <= max_len)   # fewest dropped
    assert (ids, mask) == _by_hand(turns[kept:])
    history, user = turns[:-1], turns[-1]["user"]
    p = chat_prompt(TOK, history, user, max_len)
    q = [TOK.prompt_id] + TOK.encode(user) + [TOK.response_id]
    if len(q) <= max_len:
        assert p[-len(q):] == q and len(p) <= max_len
        fits = [k for k in range(len(history) + 1) if len(_by_hand(history[k:])[0]) + len(q) <= max_len]
        assert p[:-len(q)] == _by_hand(history[min(fits):])[0]       # the oldest turns go, no more than needed


def test_bad_dialogues_are_refused_with_their_index():
    with pytest.raises(ValueError, match="non-empty list of turns"):
        encode_chat(TOK, [])
    with pytest.raises(TypeError, match="dialogue 1: .*turn 0 must be a dict"):
        ChatDataset(TOK, [[{"user": "a", "assistant": "b"}], [{"user": "a"}]], 64)


def test_a_reply_stops_at_its_turn_and_training_teaches_the_history():
    """A model trained on 'x? -> x' then 'and? -> <the first turn's letter>' must read turn 1 to answer turn 2."""
    torch.manual_seed(0)
    model = tiny_model(GPTConfig(vocab_size=24, block_size=48, n_layer=2, n_head=2, n_embd=32), dtype=torch.float32)
    said = lambda c: TOK.decode(TOK.encode(c))                            # noqa: E731  (CharTok's decode is its own)
    data = [{"turns": [{"user": f"{c}?", "assistant": c * 2}, {"user": "and?", "assistant": c}], "answer": said(c)}
            for c in "abcdefgh"] * 8
    before = last_turn_accuracy(model, TOK, data[:8])
    hist = train_chat(model, data, TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=10, progress=False),
                      tok=TOK)
    assert hist[-1]["loss"] < hist[0]["loss"] / 4
    assert last_turn_accuracy(model, TOK, data[:8]) == 1.0 > before
    got = reply(model, TOK, data[0]["turns"][:1], "and?", max_new_tokens=10)
    assert got == said("a")                                               # one turn: it stopped at EOS
    # without the first turn the second question does not say which letter: at most one of 8 right
    assert last_turn_accuracy(model, TOK, data[:8], with_history=False) <= 1 / 8
