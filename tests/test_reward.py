"""Reward model: the score is read at the last real token whatever the padding, the Bradley–Terry
loss and its metrics, training learns a learnable preference, bad input raises."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.preference import PreferenceDataset, collate_preferences
from minift.align.reward import RewardConfig, RewardModel, reward_loss, reward_metrics, train_reward_model
from minift.evals import evaluate_reward_model
from minift.model import GPTConfig
from minift.train import TrainConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson14
SET = settings(deadline=None, max_examples=25)
CFG = GPTConfig(vocab_size=24, block_size=16, n_layer=1, n_head=2, n_embd=8)



TOK = CharTok()


def _rm(seed=0):
    torch.manual_seed(seed)
    rm = RewardModel(tiny_model(CFG, seed)).double().eval()
    with torch.no_grad():
        rm.head.weight.normal_(0, 1.0)
        rm.head.bias.fill_(0.3)
    return rm


RM = _rm()
seqs = st.lists(st.integers(0, CFG.vocab_size - 1), min_size=1, max_size=CFG.block_size)


def _by_hand(rm, seq):
    """w · h_L[last] + b of one unpadded sequence, from the body's hidden states."""
    with torch.no_grad():
        h = rm.body(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0, -1]    # (C,)
        return float(h @ rm.head.weight[0] + rm.head.bias[0])


@SET
@given(rows=st.lists(seqs, min_size=1, max_size=4), side=st.sampled_from(["left", "right"]),
       fill=st.integers(0, CFG.vocab_size - 1))
def test_reward_is_read_at_the_last_real_token_whatever_the_padding_and_the_batch(rows, side, fill):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), fill, dtype=torch.long)       # the pad id can be any token, even eos
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        cols = slice(0, len(r)) if side == "right" else slice(T - len(r), T)
        ids[i, cols] = torch.tensor(r)
        mask[i, cols] = 1
    with torch.no_grad():
        got = RM(ids, attention_mask=mask)
    assert got.shape == (len(rows),)
    expected = [_by_hand(RM, r) for r in rows]
    assert np.allclose(got.numpy(), expected, atol=1e-9)


def test_reward_ignores_a_pad_or_eos_id_inside_the_real_tokens():
    # the real sequence ends with the pad id and contains eos: only the mask says where it ends
    seq = [5, TOK.eos_id, 7, TOK.pad_id]
    ids = torch.tensor([seq + [TOK.pad_id, TOK.pad_id]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.no_grad():
        assert math.isclose(float(RM(ids, attention_mask=mask)[0]), _by_hand(RM, seq), abs_tol=1e-9)


def _softplus64(x):
    return np.logaddexp(0.0, x)


@SET
@given(rc=st.lists(st.floats(-50, 50), min_size=1, max_size=6), data=st.data(), margin=st.floats(0, 3))
def test_bradley_terry_loss_is_minus_log_sigmoid_of_the_margin_reduced_difference(rc, data, margin):
    rr = data.draw(st.lists(st.floats(-50, 50), min_size=len(rc), max_size=len(rc)))
    c, r = torch.tensor(rc, dtype=torch.float64), torch.tensor(rr, dtype=torch.float64)
    got = reward_loss(c, r, margin).numpy()
    d = np.array(rc) - np.array(rr) - margin
    assert np.allclose(got, _softplus64(-d), atol=1e-12, rtol=1e-12)        # −log σ(d) = log(1 + e^{−d})
    # swapping the sides: L(d) − L(−d) = −d (exactly what the logistic model says)
    if margin == 0:
        assert np.allclose(got - reward_loss(r, c).numpy(), -d, atol=1e-9)


def test_bradley_terry_loss_special_values_and_gradient():
    c = torch.tensor([0.0, 1000.0, -1000.0, 2.0], dtype=torch.float64, requires_grad=True)
    r = torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    loss = reward_loss(c, r)
    assert math.isclose(loss[0].item(), math.log(2))                      # equal rewards: log 2
    assert loss[1].item() == 0.0 and math.isclose(loss[2].item(), 1000.0)   # no overflow either way
    loss.sum().backward()
    sig = 1 / (1 + np.exp(np.clip((c - r).detach().numpy(), -700, 700)))     # dL/dr_c = −σ(−d)
    assert np.allclose(c.grad.numpy(), -sig)
    assert (c.grad <= 0).all()                                              # raising r_chosen never hurts
    m = reward_loss(c.detach(), r, margin=1.0)
    assert (m >= loss.detach()).all() and (m[[0, 2, 3]] > loss.detach()[[0, 2, 3]]).all()   # a margin asks more


def test_metrics_count_ties_separately():
    c = torch.tensor([1.0, 2.0, 0.0, 5.0])
    r = torch.tensor([0.0, 2.0, 1.0, 5.0])
    m = reward_metrics(c, r)
    assert m == {"accuracy": 0.25, "ties": 0.5, "margin": 0.0}
    const = reward_metrics(torch.zeros(3), torch.zeros(3))
    assert const["accuracy"] == 0.0 and const["ties"] == 1.0                # a constant RM is not at chance


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="r_chosen and r_rejected"):
        reward_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="r_chosen and r_rejected"):
        reward_loss(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        reward_loss(torch.zeros(3, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="margin"):
        reward_loss(torch.zeros(3), torch.zeros(3), margin=-1.0)
    with pytest.raises(TypeError, match="minift GPT"):
        RewardModel(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no real token"):
        RM(torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="no examples"):
        train_reward_model(tiny_model(CFG), [], RewardConfig(), TrainConfig(steps=1), tok=TOK)
    with pytest.raises(TypeError, match="RewardConfig"):
        train_reward_model(tiny_model(CFG), [], {"margin": 0.0}, TrainConfig(steps=1), tok=TOK)
    with pytest.raises(ValueError, match="margin"):
        RewardConfig(margin=-1.0)


def test_training_learns_a_learnable_preference_and_leaves_the_base_alone():
    rng = np.random.default_rng(0)
    ex = [{"prompt": "".join(rng.choice(list("abc"), 3)), "chosen": "dd", "rejected": "ee"} for _ in range(32)]
    base = tiny_model(CFG).float()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    rm, hist = train_reward_model(base, ex, RewardConfig(), TrainConfig(steps=30, batch_size=8, lr=3e-3, progress=False),
                                  tok=TOK)
    assert hist[-1]["loss"] < hist[0]["loss"]
    m = evaluate_reward_model(rm, TOK, ex[:8])
    assert m["accuracy"] == 1.0 and m["ties"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    # normalised: mean 0, std 1 over the training responses
    b = collate_preferences([PreferenceDataset(TOK, ex, CFG.block_size)[i] for i in range(32)], TOK.pad_id)
    with torch.no_grad():
        r = rm(b["ids"], attention_mask=b["attention_mask"])
    assert abs(float(r.mean())) < 1e-4 and abs(float(r.std()) - 1) < 1e-4
