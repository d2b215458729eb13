"""DPO and its variants: the loss at the reference, the mirror, the gradient's direction, the formulas
in float64, the reference from a frozen copy or from disabled adapters, training, and bad input."""
import copy
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.dpo import DPOConfig, dpo_loss, dpo_step, preference_metrics, reference_logps, score_pairs, train_dpo
from minift.align.logps import sequence_logps
from minift.align.preference import PreferenceDataset, collate_preferences
from minift.evals import evaluate_preferences
from minift.model import GPTConfig
from minift.peft.lora import LoRAConfig, apply_lora, lora_layers
from minift.train import TrainConfig
from strategies import CharTok, tiny_model

pytestmark = pytest.mark.lesson15
SET = settings(deadline=None, max_examples=40)
CFG = GPTConfig(vocab_size=24, block_size=48, n_layer=1, n_head=2, n_embd=8)
LOGP = st.floats(-30, 0, allow_nan=False, width=64)
BETA = st.sampled_from([0.01, 0.1, 0.5, 2.0])
LOSS = st.sampled_from(["sigmoid", "ipo", "hinge"])


def _four(draw_lists):
    return [torch.tensor(x, dtype=torch.float64) for x in draw_lists]


logps4 = st.integers(1, 6).flatmap(lambda B: st.lists(st.lists(LOGP, min_size=B, max_size=B), min_size=4,
                                                       max_size=4)).map(_four)


def _by_formula(pc, pr, rc, rr, beta, loss_type, eps=0.0):
    """Per pair, in float64 with math (not torch): the losses of the module docstring."""
    out = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist()):
        h = (a - c) - (b - d)
        if loss_type == "sigmoid":
            soft = lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))   # log(1 + e^x) = −log σ(−x)
            out.append((1 - eps) * soft(-beta * h) + eps * soft(beta * h))
        elif loss_type == "ipo":
            out.append((h - 1 / (2 * beta)) ** 2)
        else:
            out.append(max(0.0, 1 - beta * h))
    return torch.tensor(out, dtype=torch.float64)


# ---- the loss -------------------------------------------------------------------------------------

@SET
@given(x=logps4, beta=BETA, eps=st.sampled_from([0.0, 0.1, 0.3]))
def test_policy_equal_to_reference_gives_log2_and_zero_rewards(x, beta, eps):
    c, r = x[0], x[1]
    loss, rw, rl = dpo_loss(c, r, c.clone(), r.clone(), beta, label_smoothing=eps)
    assert torch.allclose(loss, torch.full_like(loss, math.log(2)), atol=1e-12)
    assert torch.equal(rw, torch.zeros_like(rw)) and torch.equal(rl, torch.zeros_like(rl))
    assert torch.allclose(dpo_loss(c, r, c, r, beta, "ipo")[0], torch.full_like(c, 1 / (4 * beta ** 2)))
    assert torch.equal(dpo_loss(c, r, c, r, beta, "hinge")[0], torch.ones_like(c))


@SET
@given(x=logps4, beta=BETA, loss_type=LOSS)
def test_each_variant_matches_its_formula_in_float64(x, beta, loss_type):
    loss, rw, rl = dpo_loss(*x, beta, loss_type)
    assert torch.allclose(loss, _by_formula(*x, beta, loss_type), rtol=1e-10, atol=1e-10)
    pc, pr, rc, rr = (t.tolist() for t in x)
    assert torch.allclose(rw, torch.tensor([beta * (a - b) for a, b in zip(pc, rc)], dtype=torch.float64))
    assert torch.allclose(rl, torch.tensor([beta * (a - b) for a, b in zip(pr, rr)], dtype=torch.float64))


@SET
@given(x=logps4, beta=BETA, eps=st.sampled_from([0.05, 0.2, 0.45]))
def test_label_smoothing_zero_is_the_plain_loss_and_eps_matches_cdpo(x, beta, eps):
    plain = dpo_loss(*x, beta)[0]
    assert torch.equal(dpo_loss(*x, beta, label_smoothing=0.0)[0], plain)
    assert torch.allclose(dpo_loss(*x, beta, label_smoothing=eps)[0], _by_formula(*x, beta, "sigmoid", eps),
                          rtol=1e-10, atol=1e-10)


@SET
@given(x=logps4, beta=BETA, loss_type=LOSS)
def test_swapping_chosen_and_rejected_mirrors_the_loss(x, beta, loss_type):
    pc, pr, rc, rr = x
    swapped, sw, sl = dpo_loss(pr, pc, rr, rc, beta, loss_type)
    h = (pc - rc) - (pr - rr)
    # the loss at −h, by formula: the same pairs with the policy margin negated
    assert torch.allclose(swapped, _by_formula(pr, pc, rr, rc, beta, loss_type), atol=1e-10)
    if loss_type == "sigmoid":                                 # log(1 + e^{βh}) − log(1 + e^{−βh}) = βh
        assert torch.allclose(swapped - dpo_loss(*x, beta)[0], beta * h, atol=1e-9)
    _, rw, rl = dpo_loss(*x, beta, loss_type)
    assert torch.equal(sw, rl) and torch.equal(sl, rw)


@SET
@given(x=logps4, beta=BETA, loss_type=LOSS, eps=st.sampled_from([0.0, 0.2]))
def test_gradient_raises_chosen_and_lowers_rejected_logp(x, beta, loss_type, eps):
    eps = eps if loss_type == "sigmoid" else 0.0
    pc, pr = x[0].clone().requires_grad_(True), x[1].clone().requires_grad_(True)
    rc, rr = x[2].clone().requires_grad_(True), x[3].clone().requires_grad_(True)
    dpo_loss(pc, pr, rc, rr, beta, loss_type, eps)[0].sum().backward()
    h = ((x[0] - x[2]) - (x[1] - x[3])).tolist()
    sig = lambda z: 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))
    for i, hi in enumerate(h):
        if loss_type == "sigmoid":
            g = -beta * ((1 - eps) * sig(-beta * hi) - eps * sig(beta * hi))
        elif loss_type == "ipo":
            g = 2 * (hi - 1 / (2 * beta))
        else:
            g = -beta if 1 - beta * hi > 0 else 0.0
        assert pc.grad[i].item() == pytest.approx(g, rel=1e-9, abs=1e-12)
        assert pr.grad[i].item() == pytest.approx(-g, rel=1e-9, abs=1e-12)
        # descent (−grad) raises log π(y_w) and lowers log π(y_l) wherever the loss still pulls:
        # always for DPO without smoothing, below the target 1/(2β) for IPO, inside the margin for hinge
        if (loss_type == "sigmoid" and eps == 0) or (loss_type == "ipo" and hi < 1 / (2 * beta)) or \
                (loss_type == "hinge" and beta * hi < 1):
            assert pc.grad[i] < 0 < pr.grad[i]
    # the reference's gradient is the mirror image (it enters h with the opposite sign): never used,
    # the reference is scored under no_grad
    assert torch.allclose(rc.grad, -pc.grad) and torch.allclose(rr.grad, -pr.grad)


def test_sigmoid_loss_is_stable_for_huge_margins():
    pc, pr = torch.tensor([0.0, -1e4]), torch.tensor([-1e4, 0.0])
    z = torch.zeros(2)
    loss = dpo_loss(pc, pr, z, z, beta=1.0)[0]
    assert torch.isfinite(loss).all()
    assert loss[0].item() == pytest.approx(0.0, abs=1e-30) and loss[1].item() == pytest.approx(1e4)


def test_preference_metrics_count_ties_apart():
    m = preference_metrics(torch.tensor([1.0, 0.0, 2.0, -1.0]), torch.tensor([0.0, 0.0, 3.0, -1.0]))
    assert m == {"accuracy": 0.25, "ties": 0.5, "margin": pytest.approx(0.0)}


# ---- the reference, the policy, training ------------------------------------------------------------


TOK = CharTok()
EXAMPLES = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in
            [("ab", "cd", "dc"), ("ba", "dd", "cc"), ("aab", "cdc", "e"), ("f", "abc", "cba"), ("bb", "a", "b"),
             ("ca", "ee", "ff"), ("d", "fa", "af"), ("ef", "bcd", "dcb")]]


def _batch(examples=EXAMPLES, side="right"):
    data = PreferenceDataset(TOK, examples, CFG.block_size)
    return collate_preferences([data[i] for i in range(len(data))], TOK.pad_id, side=side)


def _lora_policy(seed=1):
    """A LoRA policy on the tiny model whose B is random: it differs from its base."""
    policy = tiny_model(CFG)
    apply_lora(policy, LoRAConfig(r=2, alpha=4.0, qkv=None))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_layers(policy):
            m.lora_B.copy_(0.5 * torch.randn(m.lora_B.shape, generator=g, dtype=torch.float64))
    return policy


@pytest.mark.parametrize("average", [False, True])
def test_frozen_copy_and_disabled_adapters_give_the_same_reference(average):
    base = tiny_model(CFG)
    policy = _lora_policy()
    b = _batch()
    from_copy = reference_logps(base, b, average)
    from_adapters = reference_logps(None, b, average, policy=policy)
    assert torch.allclose(from_copy, from_adapters, atol=1e-12)
    with torch.no_grad():
        own = sequence_logps(policy, b["ids"], b["attention_mask"], b["response_mask"], average)
    assert not torch.allclose(own, from_copy)                  # the adapters do change the policy ...
    assert not from_adapters.requires_grad                     # ... and the reference carries no graph
    # and a DPO step computes the same loss with either reference
    cfg = DPOConfig(beta=0.5, average_logps=average)
    l1, m1 = dpo_step(policy, base, b, cfg)
    l2, m2 = dpo_step(policy, None, b, cfg)
    assert torch.allclose(l1, l2, atol=1e-12) and m1 == pytest.approx(m2)


def test_reference_is_scored_with_dropout_off_and_mode_restored():
    cfg = GPTConfig(vocab_size=24, block_size=48, n_layer=1, n_head=2, n_embd=8, dropout=0.5)
    ref = tiny_model(cfg).train()
    b = _batch()
    a, c = reference_logps(ref, b), reference_logps(ref, b)
    assert torch.equal(a, c) and ref.training                  # deterministic (eval) and back to train mode
    with torch.no_grad():
        ev = sequence_logps(ref.eval(), b["ids"], b["attention_mask"], b["response_mask"])
    assert torch.equal(a, ev)


RUN4 = TrainConfig(steps=4, batch_size=4, lr=1e-2, progress=False)


def test_train_dpo_with_either_reference_and_with_or_without_precompute_agree():
    hist = []
    for ref_kind, pre in (("copy", True), ("copy", False), ("adapters", True), ("adapters", False)):
        policy = _lora_policy()
        ref = tiny_model(CFG) if ref_kind == "copy" else None
        cfg = DPOConfig(beta=0.5, precompute_ref=pre)
        hist.append([h["loss"] for h in train_dpo(policy, EXAMPLES, cfg, RUN4, ref=ref, tok=TOK)])
    shared = score_pairs(tiny_model(CFG), TOK, EXAMPLES)       # one precomputation, shared between runs
    hist.append([h["loss"] for h in train_dpo(_lora_policy(), EXAMPLES, DPOConfig(beta=0.5), RUN4, ref=tiny_model(CFG),
                                              tok=TOK, ref_logps=shared)])
    for h in hist[1:]:                                         # log-probs are float32 (logps.py): batching
        assert h == pytest.approx(hist[0], rel=1e-5)           # the reference differently rounds differently
    assert hist[0][0] != pytest.approx(math.log(2))           # the random adapter already moved the policy


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_train_dpo_learns_the_training_preferences_and_leaves_the_reference_alone(loss_type):
    ref = tiny_model(CFG)
    ref_state = {k: v.clone() for k, v in ref.state_dict().items()}
    policy = copy.deepcopy(ref)
    before = evaluate_preferences(policy, ref, TOK, EXAMPLES)
    assert before["ties"] == 1.0 and before["accuracy"] == 0.0 and before["margin"] == 0.0
    cfg = DPOConfig(beta=0.5, loss_type=loss_type)
    hist = train_dpo(policy, EXAMPLES, cfg, TrainConfig(steps=40, batch_size=8, lr=1e-2, progress=False), ref=ref, tok=TOK,
                     eval_fn=lambda m: evaluate_preferences(m, ref, TOK, EXAMPLES, cfg.average_logps))
    assert hist[0]["loss"] == pytest.approx({"sigmoid": math.log(2), "ipo": 1.0, "hinge": 1.0}[loss_type])
    assert hist[-1]["loss"] < hist[0]["loss"]
    after = evaluate_preferences(policy, ref, TOK, EXAMPLES, average=cfg.average_logps)
    assert after["accuracy"] == 1.0 and after["margin"] > 0 and hist[-1]["eval_accuracy"] == 1.0
    assert all(torch.equal(v, ref_state[k]) for k, v in ref.state_dict().items())


def test_nll_weight_adds_the_chosen_answers_nll_per_token():
    ref, policy = tiny_model(CFG), tiny_model(CFG, seed=3)
    b = _batch()
    B = b["n_pairs"]
    plain, _ = dpo_step(policy, ref, b, DPOConfig(beta=0.5))
    with_nll, m = dpo_step(policy, ref, b, DPOConfig(beta=0.5, nll_weight=0.7))
    # NLL of the chosen answers by hand: every response token of the chosen rows, one at a time
    logits = policy(b["ids"][:B], attention_mask=b["attention_mask"][:B]).logits.double().log_softmax(-1)
    terms = [-logits[i, t - 1, b["ids"][i, t]] for i in range(B) for t in range(1, b["ids"].shape[1])
             if b["response_mask"][i, t]]
    nll = torch.stack(terms).mean()
    assert with_nll.item() == pytest.approx(plain.item() + 0.7 * nll.item(), rel=1e-5)
    assert m["nll"] == pytest.approx(nll.item(), rel=1e-5)


def test_one_small_step_increases_the_margin_on_a_real_model():
    ref = tiny_model(CFG)
    policy = copy.deepcopy(ref)
    for p in policy.parameters():
        p.requires_grad_(True)
    b = _batch()
    B = b["n_pairs"]

    def margin():
        with torch.no_grad():
            lp = sequence_logps(policy, b["ids"], b["attention_mask"], b["response_mask"])
        return (lp[:B] - lp[B:]).sum()
    m0 = margin()
    loss, _ = dpo_step(policy, ref, b, DPOConfig(beta=0.1))
    loss.backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 1e-3 * p.grad
    assert margin() > m0                                       # first order: Δh = η β σ(−βh) |∇h|² > 0


def test_score_pairs_and_evaluate_preferences_by_hand():
    ref, policy = tiny_model(CFG), tiny_model(CFG, seed=3)
    s = score_pairs(policy, TOK, EXAMPLES)
    b = _batch(side="left")
    with torch.no_grad():
        lp = sequence_logps(policy, b["ids"], b["attention_mask"], b["response_mask"])
    assert s.shape == (2, len(EXAMPLES)) and torch.allclose(s.flatten(), lp, atol=1e-12)
    r = score_pairs(ref, TOK, EXAMPLES)
    m = evaluate_preferences(policy, ref, TOK, EXAMPLES)
    h = (s[0] - r[0]) - (s[1] - r[1])
    assert m["accuracy"] == pytest.approx(float((h > 0).double().mean()))
    assert m["logp_accuracy"] == pytest.approx(float((s[0] > s[1]).double().mean()))
    assert m == evaluate_preferences(policy, r, TOK, EXAMPLES)  # precomputed reference log-probs
    assert m == evaluate_preferences(s, r, TOK, EXAMPLES)       # and precomputed policy log-probs


def test_train_dpo_is_deterministic_for_a_seed():
    runs = []
    for _ in range(2):
        policy, ref = tiny_model(CFG), tiny_model(CFG)
        runs.append([h["loss"] for h in train_dpo(policy, EXAMPLES, DPOConfig(),
                                                   TrainConfig(steps=3, batch_size=3, lr=1e-2, progress=False),
                                                   ref=ref, tok=TOK)])
    assert runs[0] == runs[1]


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_inputs_raise_naming_the_argument():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="share one shape"):
        dpo_loss(x, torch.zeros(2), x, x, 0.1)
    with pytest.raises(ValueError, match="share one shape"):
        dpo_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 0.1)
    with pytest.raises(ValueError, match="B >= 1"):
        dpo_loss(*(torch.zeros(0),) * 4, 0.1)
    with pytest.raises(TypeError, match="policy_rejected_logps must be a floating-point"):
        dpo_loss(x, torch.zeros(3, dtype=torch.long), x, x, 0.1)
    with pytest.raises(TypeError, match="ref_chosen_logps"):
        dpo_loss(x, x, [0.0, 0.0, 0.0], x, 0.1)
    with pytest.raises(ValueError, match="ref_rejected_logps holds NaN"):
        dpo_loss(x, x, x, torch.tensor([0.0, float("nan"), 0.0]), 0.1)
    for beta in (0, -0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="beta="):
            dpo_loss(x, x, x, x, beta)
    with pytest.raises(ValueError, match="loss_type='kto' must be one of"):
        dpo_loss(x, x, x, x, 0.1, loss_type="kto")
    for eps in (-0.1, 0.5, 1.0):
        with pytest.raises(ValueError, match="label_smoothing="):
            dpo_loss(x, x, x, x, 0.1, label_smoothing=eps)
    with pytest.raises(ValueError, match="conservative DPO, defined for loss_type='sigmoid' only"):
        dpo_loss(x, x, x, x, 0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="same shape|share one shape"):
        preference_metrics(torch.zeros(2), torch.zeros(3))


def test_bad_configs_and_references_raise():
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(loss_type="dpo")
    assert DPOConfig(loss_type="ipo").average_logps is True and DPOConfig().average_logps is False
    policy, run = tiny_model(CFG), TrainConfig(steps=1, progress=False)
    with pytest.raises(TypeError, match="train_cfg a TrainConfig"):
        train_dpo(policy, EXAMPLES, DPOConfig(), {"steps": 1}, ref=tiny_model(CFG), tok=TOK)
    with pytest.raises(TypeError, match="cfg must be a DPOConfig"):
        train_dpo(policy, EXAMPLES, {"beta": 0.1}, run, ref=tiny_model(CFG), tok=TOK)
    with pytest.raises(ValueError, match="ref is the policy itself"):
        train_dpo(policy, EXAMPLES, DPOConfig(), run, ref=policy, tok=TOK)
    with pytest.raises(ValueError, match="ref=None needs a PEFT policy"):
        train_dpo(policy, EXAMPLES, DPOConfig(), run, ref=None, tok=TOK)
    with pytest.raises(ValueError, match=r"ref_logps must be \(2, N\)=\(2, 8\)"):
        train_dpo(policy, EXAMPLES, DPOConfig(), run, ref=tiny_model(CFG), tok=TOK, ref_logps=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reference_logps: give ref"):
        reference_logps(None, _batch())
    with pytest.raises(ValueError, match=r"precomputed log-probs must be \(2, N\)=\(2, 8\)"):
        evaluate_preferences(policy, torch.zeros(2, 3), TOK, EXAMPLES)
    with pytest.raises(ValueError, match="policy must be a model"):
        evaluate_preferences(torch.zeros(2, 8), None, TOK, EXAMPLES)
    with pytest.raises(ValueError, match="DPOConfig.nll_weight"):
        DPOConfig(nll_weight=-1.0)


# ---- the conformance checks can fail --------------------------------------------------------------

def test_lesson15_checks_catch_known_bugs():
    """Three classic bugs, each caught by the checks that should catch it, and by no other."""
    import types

    import torch.nn.functional as F

    from minift.conformance import FAIL, PASS, run_checks

    def loss(pc, pr, rc, rr, beta, loss_type="sigmoid", label_smoothing=0.0):
        h = (pc - rc) - (pr - rr)
        if loss_type == "ipo":
            return (h - 1 / beta) ** 2                                 # bug 1: IPO's target 1/β, not 1/(2β)
        if loss_type == "hinge":
            return torch.relu(1 - beta * h)
        z = beta * h                                                   # bug 2: log(sigmoid) overflows to -inf
        return -(1 - label_smoothing) * torch.log(torch.sigmoid(z)) - label_smoothing * F.logsigmoid(-z)

    def rewards(pc, pr, rc, rr, beta):
        return torch.stack([pc - rc, pr - rr])                         # bug 3: β forgotten
    results = {r.name: r.status for r in run_checks(types.SimpleNamespace(run_dpo_loss=loss, run_dpo_rewards=rewards),
                                                    only="lesson15")}
    failed = {n for n, s in results.items() if s == FAIL}
    must = {"ipo_matches_formula", "dpo_at_reference", "dpo_swap_mirrors", "dpo_sigmoid_stable_for_large_margins",
            "dpo_rewards_are_beta_log_ratios"}
    may = {"dpo_sigmoid_matches_formula", "cdpo_matches_formula"}     # only if they draw β h below −88
    assert must <= failed <= must | may
    assert results["hinge_matches_formula"] == PASS and results["dpo_gradient"] == PASS
