"""PPO-RLHF: GAE against plain loops, the clipped losses and where their gradient vanishes,
whitening, sampling from exactly the scored logits, the loop raises a reward and is deterministic,
bad input raises."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings, strategies as st

from minift.align.ppo import (PPOConfig, gae, kl_penalty, ppo_policy_loss, ppo_value_loss, rollout, sample,
                              train_ppo, whiten)
from minift.model import GPTConfig
from minift.peft.common import adapter_layers
from minift.peft.lora import LoRAConfig, apply_lora
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson14
SET = settings(deadline=None, max_examples=30)
CFG = GPTConfig(vocab_size=24, block_size=24, n_layer=1, n_head=2, n_embd=8)



TOK = CharTok()


@st.composite
def episodes(draw):
    """rewards, values (B, N) float64 and a mask whose rows are a run of 1s from column 0 (length >= 1)."""
    B, N = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    f = st.floats(-3, 3)
    r = np.array(draw(st.lists(f, min_size=B * N, max_size=B * N))).reshape(B, N)
    v = np.array(draw(st.lists(f, min_size=B * N, max_size=B * N))).reshape(B, N)
    lens = draw(st.lists(st.integers(1, N), min_size=B, max_size=B))
    mask = np.array([[1.0] * n + [0.0] * (N - n) for n in lens])
    return r, v, mask, lens


def _t(a):
    return torch.tensor(a, dtype=torch.float64)


@SET
@given(ep=episodes(), gamma=st.sampled_from([1.0, 0.9, 0.5]))
def test_gae_lambda_one_is_discounted_return_minus_value(ep, gamma):
    r, v, mask, lens = ep
    adv, ret = gae(_t(r), _t(v), _t(mask), gamma, 1.0)
    for b, n in enumerate(lens):
        for t in range(n):
            G = sum(gamma ** (k - t) * r[b, k] for k in range(t, n))       # the plain discounted return
            assert abs(adv[b, t].item() - (G - v[b, t])) < 1e-9
            assert abs(ret[b, t].item() - G) < 1e-9
        assert (adv[b, n:] == 0).all() and (ret[b, n:] == 0).all()


@SET
@given(ep=episodes(), gamma=st.sampled_from([1.0, 0.9]))
def test_gae_lambda_zero_is_the_td_residual(ep, gamma):
    r, v, mask, lens = ep
    adv, _ = gae(_t(r), _t(v), _t(mask), gamma, 0.0)
    for b, n in enumerate(lens):
        for t in range(n):
            v_next = v[b, t + 1] if t + 1 < n else 0.0                      # nothing after the last token
            assert abs(adv[b, t].item() - (r[b, t] + gamma * v_next - v[b, t])) < 1e-9


@SET
@given(ep=episodes(), clip=st.sampled_from([0.1, 0.2, 0.5]))
def test_at_ratio_one_clipped_and_unclipped_agree_and_the_gradient_is_the_advantage(ep, clip):
    adv, lp, mask, _ = ep
    logp = _t(lp).requires_grad_(True)
    loss = ppo_policy_loss(logp, _t(lp), _t(adv), _t(mask), clip)
    n = mask.sum()
    assert abs(loss.item() - (-(adv * mask).sum() / n)) < 1e-9           # −mean A: ρ = 1, no clip
    loss.backward()
    assert np.allclose(logp.grad.numpy(), -adv * mask / n, atol=1e-12)   # d(ρ A)/dlogp = ρ A


@SET
@given(ep=episodes(), clip=st.sampled_from([0.1, 0.2]), data=st.data())
def test_clip_activates_exactly_outside_the_interval_on_the_side_that_matters(ep, clip, data):
    adv, old, mask, _ = ep
    B, N = adv.shape
    ratio = np.array(data.draw(st.lists(st.floats(0.5, 1.5), min_size=B * N, max_size=B * N))).reshape(B, N)
    adv = np.where(np.abs(adv) < 1e-3, 1.0, adv)                            # a sign for every token
    ratio = np.where(np.abs(np.abs(ratio - 1) - clip) < 1e-6, 1.0, ratio)   # no ties at the boundary
    logp = _t(old + np.log(ratio)).requires_grad_(True)
    loss = ppo_policy_loss(logp, _t(old), _t(adv), _t(mask), clip)
    loss.backward()
    n = mask.sum()
    clipped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    expected_grad = np.where(clipped, 0.0, -ratio * adv) * mask / n
    assert np.allclose(logp.grad.numpy(), expected_grad, atol=1e-9)
    objective = np.minimum(ratio * adv, np.clip(ratio, 1 - clip, 1 + clip) * adv)
    assert abs(loss.item() + (objective * mask).sum() / n) < 1e-9


@SET
@given(ep=episodes(), data=st.data(), clip=st.sampled_from([0.1, 0.5]))
def test_value_loss_is_the_clipped_max(ep, data, clip):
    v, ret, mask, _ = ep
    old = v + np.array(data.draw(st.lists(st.floats(-1, 1), min_size=v.size, max_size=v.size))).reshape(v.shape)
    got = ppo_value_loss(_t(v), _t(old), _t(ret), _t(mask), clip).item()
    vc = old + np.clip(v - old, -clip, clip)
    per = np.maximum((v - ret) ** 2, (vc - ret) ** 2)
    assert abs(got - 0.5 * (per * mask).sum() / mask.sum()) < 1e-9


@SET
@given(ep=episodes())
def test_whitening_and_the_kl_estimator(ep):
    x, y, mask, _ = ep
    w = whiten(_t(x), _t(mask)).numpy()
    real = mask.astype(bool)
    assert (w[~real] == 0).all()
    if real.sum() > 1 and x[real].std() > 1e-3:
        var = x[real].var()                                                # biased, as whitening uses
        assert abs(w[real].mean()) < 1e-9 and abs(w[real].std() - np.sqrt(var / (var + 1e-8))) < 1e-9
    assert np.allclose(kl_penalty(_t(x), _t(y)).numpy(), x - y)
    assert (kl_penalty(_t(x), _t(x)) == 0).all()


def _prompts(n, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("abcdefg"), rng.integers(1, 6))) for _ in range(n)]


def test_sampling_logprobs_equal_a_rescored_forward_and_each_unpadded_row():
    policy = tiny_model(CFG, 1).float()
    ref = tiny_model(CFG, 2).float()
    rm = lambda ids, attention_mask: attention_mask.sum(1).float()     # noqa: E731 (any scalar scorer)
    r = rollout(policy, ref, rm, TOK, _prompts(6), 8, torch.Generator().manual_seed(0))
    assert r["tokens"].shape == r["mask"].shape == r["sample_logp"].shape
    assert torch.allclose(r["sample_logp"], r["logp"], atol=1e-5)
    for b in range(6):                                                   # independent: one row, no padding
        prompt = TOK.encode_prompt(_prompts(6)[b])
        resp = [t for t, m in zip(r["tokens"][b].tolist(), r["mask"][b].tolist()) if m]
        with torch.no_grad():
            logp = torch.log_softmax(policy(torch.tensor([prompt + resp])).logits[0].double(), -1)
        want = [logp[len(prompt) + j - 1, t].item() for j, t in enumerate(resp)]
        assert np.allclose(r["sample_logp"][b, :len(resp)].numpy(), want, atol=1e-5)
        assert (r["mask"][b, :len(resp)] == 1).all() and (r["mask"][b, len(resp):] == 0).all()
        assert TOK.eos_id not in resp[:-1]                                 # stops at the first EOS


def test_sampling_draws_from_exactly_softmax_of_the_logits():
    policy = tiny_model(CFG, 3).float()
    p = {"ids": torch.tensor([TOK.encode_prompt("ab")] * 4000)}
    p["attention_mask"] = torch.ones_like(p["ids"])
    toks, _, _ = sample(policy, p["ids"], p["attention_mask"], 1, TOK.eos_id, TOK.pad_id,
                        torch.Generator().manual_seed(0))
    with torch.no_grad():
        probs = torch.softmax(policy(p["ids"][:1]).logits[0, -1].double(), -1).numpy()
    freq = np.bincount(toks[:, 0].numpy(), minlength=CFG.vocab_size) / 4000
    assert np.abs(freq - probs).max() < 4 * np.sqrt(probs.max() / 4000) + 1e-3   # 4 standard errors


class _FirstTokenReward(nn.Module):
    """+1 when the response's first token is below 12 (about half the vocabulary), else 0: learnable."""

    def __init__(self, P):
        super().__init__()
        self.P = P

    def forward(self, ids, attention_mask=None):
        return (ids[:, self.P] < 12).float()


def _run(seed=0, steps=12, kl_coef=0.0, minibatch_size=8, ppo_epochs=2):
    policy = tiny_model(CFG, 4).float()
    for p in policy.parameters():
        p.requires_grad_(True)
    ref = copy.deepcopy(policy)
    prompts = ["abc"] * 16                                               # one prompt length: P is fixed
    cfg = PPOConfig(steps=steps, batch_size=16, minibatch_size=minibatch_size, ppo_epochs=ppo_epochs, lr=3e-3,
                    kl_coef=kl_coef, max_new_tokens=3, seed=seed)
    hist = train_ppo(policy, prompts, cfg, ref=ref, reward_model=_FirstTokenReward(len(TOK.encode_prompt("abc"))),
                     tok=TOK, progress=False)
    return policy, ref, hist


def test_ppo_raises_a_learnable_reward_logs_real_token_statistics_and_is_deterministic():
    policy, ref, hist = _run()
    first, last = np.mean([h["score"] for h in hist[:3]]), np.mean([h["score"] for h in hist[-3:]])
    assert last > first + 0.2, (first, last)
    for h in hist:
        assert h["sample_logp_err"] < 1e-5
        assert 0 <= h["clip_frac"] <= 1 and h["entropy"] >= 0 and 1 <= h["length"] <= 3
    # approx_kl is k1 = mean(log π_old − log π_new) before each minibatch step: unbiased, but of either
    # sign once earlier minibatches have moved π. With one minibatch and one epoch, every step's only
    # minibatch sees π_old itself: k1 and the clipped share are exactly 0.
    one = _run(steps=2, minibatch_size=16, ppo_epochs=1)[2]
    assert all(abs(h["approx_kl"]) < 1e-6 and h["clip_frac"] == 0 for h in one), one
    assert all(math.isfinite(h["approx_kl"]) for h in hist)
    base = tiny_model(CFG, 4).float()
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), base.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), base.state_dict().values()))
    a, b = _run(steps=3)[2], _run(steps=3)[2]                             # the same seed: the same run
    assert [(h["score"], round(h["kl"], 6)) for h in a] == [(h["score"], round(h["kl"], 6)) for h in b]
    assert [(h["score"], round(h["kl"], 6)) for h in a] == [(h["score"], round(h["kl"], 6)) for h in hist[:3]]


def test_a_lora_policy_with_ref_none_trains_as_against_a_frozen_copy_of_its_base():
    """ref=None scores π_ref with the policy's adapters disabled: the same run as with a separate
    frozen copy of the base (LoRA never moves the base), without the copy; a plain function rewards."""
    P = len(TOK.encode_prompt("abc"))
    reward = lambda ids, attention_mask=None: (ids[:, P] < 12).double()    # noqa: E731  (not a module)
    runs = []
    for ref_none in (True, False):
        base = tiny_model(CFG, 4)                                          # float64: equal to 1e-10
        ref = None if ref_none else copy.deepcopy(base)
        policy = copy.deepcopy(base)
        apply_lora(policy, LoRAConfig(r=2, alpha=4, qkv=None, include_head=False))
        with torch.no_grad():
            for _, m in adapter_layers(policy):
                m.lora_B.normal_(0, 0.1)                                    # π ≠ π_ref from the first step
        cfg = PPOConfig(steps=3, batch_size=8, minibatch_size=4, ppo_epochs=2, lr=3e-3, kl_coef=0.2, max_new_tokens=3)
        hist = train_ppo(policy, ["abc"] * 8, cfg, ref=ref, reward_model=reward, tok=TOK, progress=False)
        runs.append(([(h["score"], h["kl"], h["policy_loss"]) for h in hist], policy))
    (a, pa), (b, pb) = runs
    assert abs(a[0][1]) > 1e-3                                             # the KL term is really there
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-10, atol=1e-12)
    for (n, x), (_, y) in zip(pa.named_parameters(), pb.named_parameters()):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=n)
    with pytest.raises(ValueError, match="ref=None needs a PEFT policy"):
        train_ppo(tiny_model(CFG, 4), ["abc"] * 8, cfg, ref=None, reward_model=reward, tok=TOK, progress=False)



def test_lora_ppo_starts_at_zero_kl_and_moves_only_the_adapters_and_the_value_head():
    """Lesson 14 part 6's LoRA run: with B = 0 the first rollout's policy IS π_ref (KL exactly 0); PPO
    then moves A, B and the value head and leaves every base weight bit for bit as it was."""
    P = len(TOK.encode_prompt("abc"))
    reward = lambda ids, attention_mask=None: (ids[:, P] < 12).float()     # noqa: E731
    base = tiny_model(CFG, 5).float()
    policy = copy.deepcopy(base)
    apply_lora(policy, LoRAConfig(r=2, alpha=4, qkv=None, include_head=False))
    vhead = nn.Linear(CFG.n_embd, 1)
    nn.init.zeros_(vhead.weight)
    nn.init.zeros_(vhead.bias)
    cfg = PPOConfig(steps=3, batch_size=8, minibatch_size=4, ppo_epochs=2, lr=3e-2, kl_coef=0.2, max_new_tokens=3)
    hist = train_ppo(policy, ["abc"] * 8, cfg, ref=None, reward_model=reward, tok=TOK, value_head=vhead,
                     progress=False)
    assert hist[0]["kl"] == 0.0                                            # B = 0: π = π_ref exactly
    assert hist[-1]["kl"] != 0.0                                           # ... and then it moved
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_A" in n or "lora_B" in n for n in trained)
    kept = dict(base.named_parameters())
    for n, p in policy.named_parameters():
        if n in trained:
            continue
        assert torch.equal(p, kept[n]), n                                  # the base never moves
    assert any(bool(p.ne(0).any()) for n, p in policy.named_parameters() if "lora_B" in n)
    assert bool(vhead.weight.ne(0).any()) or bool(vhead.bias.ne(0).any())

def test_adaptive_kl_coefficient_moves_toward_the_target():
    policy = tiny_model(CFG, 4).float()
    for p in policy.parameters():
        p.requires_grad_(True)
    ref = copy.deepcopy(policy)
    cfg = PPOConfig(steps=3, batch_size=8, minibatch_size=8, ppo_epochs=1, lr=1e-3, kl_coef=0.1, target_kl=1e3,
                    horizon=16, max_new_tokens=3)
    hist = train_ppo(policy, ["abc"] * 8, cfg, ref=ref, reward_model=_FirstTokenReward(len(TOK.encode_prompt("abc"))),
                     tok=TOK, progress=False)
    # KL far below the target: the error is clipped at −0.2, so β shrinks by 1 − 0.2 · 8 / 16 = 0.9 each time
    assert np.allclose([h["kl_coef"] for h in hist], [0.1, 0.09, 0.081])


def test_bad_inputs_raise():
    for kw, msg in [({"steps": 0}, "steps"), ({"minibatch_size": 64}, "minibatch_size"), ({"clip": 0}, "clip"),
                    ({"lam": 1.5}, "lam"), ({"kl_coef": -1}, "kl_coef"), ({"target_kl": 0}, "target_kl"),
                    ({"batch_size": 2.5}, "batch_size")]:
        with pytest.raises(ValueError, match=msg):
            PPOConfig(**kw)
    m = torch.ones(2, 3)
    with pytest.raises(ValueError, match="shape of mask"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), m)
    with pytest.raises(ValueError, match="no real token"):
        ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating-point"):
        ppo_value_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, 3), m)
    with pytest.raises(ValueError, match="gamma"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), m, gamma=2.0)
    policy = tiny_model(CFG).float()
    rm = _FirstTokenReward(5)
    with pytest.raises(ValueError, match="separate frozen copy"):
        train_ppo(policy, ["a"] * 8, PPOConfig(batch_size=8, minibatch_size=8), ref=policy, reward_model=rm, tok=TOK)
    with pytest.raises(ValueError, match="fewer than"):
        train_ppo(policy, ["a"] * 3, PPOConfig(batch_size=8, minibatch_size=8), ref=copy.deepcopy(policy),
                  reward_model=rm, tok=TOK)
    with pytest.raises(TypeError, match="PPOConfig"):
        train_ppo(policy, ["a"] * 8, {"steps": 1}, ref=copy.deepcopy(policy), reward_model=rm, tok=TOK)
    frozen = tiny_model(CFG).float()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        train_ppo(frozen, ["a"] * 8, PPOConfig(batch_size=8, minibatch_size=8), ref=copy.deepcopy(frozen),
                  reward_model=rm, tok=TOK)


def test_evaluate_policy_counts_exact_answers_and_greedy_is_deterministic():
    from minift.evals import evaluate_policy
    policy = tiny_model(CFG, 5).float()
    rm = lambda ids, attention_mask: attention_mask.sum(1).float()     # noqa: E731
    ex = [{"prompt": p, "chosen": "x", "rejected": "y"} for p in _prompts(8, seed=3)]
    first = evaluate_policy(policy, policy, rm, TOK, ex, max_new_tokens=4, greedy=True)
    assert first["kl"] == 0.0 and len(first["responses"]) == 8
    # make the greedy answer the chosen one on even rows and the rejected one on odd rows
    ex = [{"prompt": e["prompt"], "chosen": r if i % 2 == 0 else "\x00", "rejected": r if i % 2 else "\x00"}
          for i, (e, r) in enumerate(zip(ex, first["responses"]))]
    again = evaluate_policy(policy, policy, rm, TOK, ex, max_new_tokens=4, greedy=True)
    assert again["responses"] == first["responses"]
    assert again["chosen"] == 0.5 and again["rejected"] == 0.5
