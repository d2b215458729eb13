"""Sequence log-probabilities: only response tokens count, shifted by one, padding never matters."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.logps import masked_sum, sequence_logps, token_logps
from minift.align.preference import PreferenceDataset, collate_preferences
from minift.model import GPTConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson14
SET = settings(deadline=None, max_examples=30)
WORDS = st.text(alphabet="abcdef ", min_size=1, max_size=10)



TOK = CharTok()
MODEL = tiny_model(GPTConfig(vocab_size=24, block_size=48, n_layer=1, n_head=2, n_embd=8))
EXAMPLE = st.fixed_dictionaries({"prompt": WORDS, "chosen": WORDS, "rejected": WORDS})


def _by_hand(prompt, response, average=False):
    """log π(y|x) of one unpadded pair, from the full-sequence logits in float64, a token at a time."""
    ids, _ = TOK.encode_pair(prompt, response)
    with torch.no_grad():
        logits = MODEL(torch.tensor([ids])).logits[0].double()          # (T, V)
    logp = torch.log_softmax(logits, -1)
    start = len(TOK.encode_prompt(prompt))                               # first response token
    terms = [logp[t - 1, ids[t]] for t in range(start, len(ids))]        # predicted from the token before
    s = torch.stack(terms).sum()
    return s / len(terms) if average else s


@SET
@given(examples=st.lists(EXAMPLE, min_size=1, max_size=4), side=st.sampled_from(["left", "right"]),
       average=st.booleans())
def test_batched_scores_equal_each_pair_scored_alone_by_hand(examples, side, average):
    data = PreferenceDataset(TOK, examples, 48)
    b = collate_preferences([data[i] for i in range(len(data))], TOK.pad_id, side=side)
    with torch.no_grad():
        lp = sequence_logps(MODEL, b["ids"], b["attention_mask"], b["response_mask"], average=average)
    B = len(examples)
    assert lp.shape == (2 * B,) and b["n_pairs"] == B
    for i, ex in enumerate(examples):
        for row, side_name in ((i, "chosen"), (B + i, "rejected")):
            expected = _by_hand(ex["prompt"], ex[side_name], average)       # MODEL is float64: so is lp
            torch.testing.assert_close(lp[row], expected, atol=1e-10, rtol=1e-10)


@SET
@given(ex=EXAMPLE)
def test_the_prompt_never_counts(ex):
    # changing the last response token changes the score; the score has gradient only through
    # logits at response-predicting positions
    data = PreferenceDataset(TOK, [ex], 48)
    b = collate_preferences([data[0]], TOK.pad_id)
    T = b["ids"].shape[1]
    logits = torch.randn(2, T, 24, requires_grad=True)
    per_tok = token_logps(logits, b["ids"])
    masked_sum(per_tok, b["response_mask"][:, 1:]).sum().backward()
    used = logits.grad.abs().sum(-1) > 0                                  # (2, T) positions that matter
    resp = b["response_mask"].bool()
    expected = torch.zeros_like(used)
    expected[:, :-1] = resp[:, 1:]                                         # position t predicts token t+1
    assert torch.equal(used, expected)


def test_bad_masks_raise():
    ids = torch.tensor([[2, 5, 3, 6, 1]])
    ones = torch.ones_like(ids)
    with pytest.raises(ValueError, match="first token"):
        sequence_logps(MODEL, ids, ones, ones)
    with pytest.raises(ValueError, match="padding"):
        sequence_logps(MODEL, ids, torch.tensor([[1, 1, 1, 1, 0]]), torch.tensor([[0, 0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="shape"):
        sequence_logps(MODEL, ids, ones[:, :3], ones)
    with pytest.raises(ValueError, match="no token to score"):
        masked_sum(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(TypeError, match="prompt"):
        PreferenceDataset(TOK, [{"prompt": "a", "chosen": "b"}], 48)



def test_scores_keep_the_models_float64_and_upcast_half_precision():
    """A float64 model scores in float64 (DPO's margins stay exact); bf16 logits score in float32."""
    b = collate_preferences([PreferenceDataset(TOK, [{"prompt": "ab", "chosen": "cab", "rejected": "b"}], 48)[0]],
                            TOK.pad_id)
    assert next(MODEL.parameters()).dtype == torch.float64
    with torch.no_grad():
        logits = MODEL(b["ids"], attention_mask=b["attention_mask"]).logits      # (2, T, V)
        assert sequence_logps(MODEL, b["ids"], b["attention_mask"], b["response_mask"]).dtype == torch.float64
    half = token_logps(logits.bfloat16(), b["ids"])
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, token_logps(logits.bfloat16().double(), b["ids"]).float())
