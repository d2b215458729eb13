"""Bad input never gives a quiet wrong answer (issue 18), for every loss and masked reduction:

1. whatever a masked position holds (NaN, ±inf, 1e30, any float) changes neither the result nor
   the gradients w.r.t. the real inputs, and the gradient at the masked positions is 0: the same
   call with zeros there is the reference;
2. NaN or inf at a real position of a loss's input raises ValueError naming that argument (never a
   finite loss with NaN gradients, never NaN rows).

Assertions are on minift's own wording ("<argument> holds NaN or inf"), never on torch's."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.align.contrastive import info_nce, pool
from minift.align.distill import distill_loss, divergence_per_position, hard_loss, kd_loss
from minift.align.dpo import dpo_loss, preference_metrics
from minift.align.logps import masked_mean, masked_sum
from minift.align.multitask import per_example_nll
from minift.align.ppo import gae, ppo_policy_loss, ppo_value_loss, whiten
from minift.align.reward import reward_loss, reward_metrics
from minift.evals import best_threshold, retrieval_at_1, threshold_accuracy
from minift.heads import TokenClassifier
from minift.model import GPT, GPTConfig, IGNORE_INDEX
from minift.tasks import accuracy

pytestmark = pytest.mark.core
SET = settings(deadline=None, max_examples=25)
NAN, INF = float("nan"), float("inf")
# what a padded position may hold: the specials, and one more float32 drawn by hypothesis (any: nan
# and ±inf included), spread over the entries by the case's seed
SPECIALS = [NAN, INF, -INF, 1e30, -1e30, 3e38]
BAD = st.sampled_from([NAN, INF, -INF])


# ---- the two shapes of property ----------------------------------------------------------------

@st.composite
def cases(draw, shape, pad_dims=2, row_needs_one=True):
    """(seed, pad, fills): a random-input seed, pad (shape[:pad_dims]) True where a position is
    masked out (every row keeps at least one real position), and a fill value for every entry."""
    lead = shape[:pad_dims]
    n = math.prod(lead)
    pad = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(lead)
    rows = pad.reshape(-1, lead[-1])
    for r in range(rows.shape[0] if row_needs_one else 1):
        rows[r, draw(st.integers(0, lead[-1] - 1))] = False                # a real position per row
    pad = rows.reshape(lead)
    seed = draw(st.integers(0, 2**16))
    table = torch.tensor(SPECIALS + [draw(st.floats(width=32))], dtype=torch.float64)
    fills = table[torch.randint(0, len(table), shape, generator=torch.Generator().manual_seed(seed))]
    return seed, pad, fills


def _run(fn, inputs: dict, pad: dict, fill: dict | None, grads=()):
    """fn(**inputs) with each padded tensor's masked positions set to fill (None: to 0); returns
    (outputs, {name: gradient of a weighted sum of the outputs})."""
    ins = {}
    for k, x in inputs.items():
        if k in pad:
            p = pad[k].reshape(pad[k].shape + (1,) * (x.dim() - pad[k].dim())).expand_as(x)
            x = torch.where(p, (fill[k] if fill is not None else torch.zeros(())).to(x.dtype), x)
        ins[k] = x.clone().requires_grad_(k in grads)
    out = fn(**ins)
    outs = out if isinstance(out, tuple) else (out,)
    g = torch.Generator().manual_seed(1)
    total = sum((o * torch.rand(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    if grads:
        total.backward()
    return outs, {k: ins[k].grad for k in grads}


def assert_padding_is_ignored(fn, inputs: dict, pad: dict, fill: dict, grads=()):
    """Filled padding gives the result and the gradients of zero padding, and 0 gradient on the padding."""
    want, want_g = _run(fn, inputs, pad, None, grads)
    got, got_g = _run(fn, inputs, pad, fill, grads)
    for w, o in zip(want, got):
        torch.testing.assert_close(o, w, atol=1e-6, rtol=1e-6)
    for k in grads:
        torch.testing.assert_close(got_g[k], want_g[k], atol=1e-6, rtol=1e-6)
        if k in pad:
            p = pad[k].reshape(pad[k].shape + (1,) * (got_g[k].dim() - pad[k].dim())).expand_as(got_g[k])
            assert bool((got_g[k][p] == 0).all()), f"gradient w.r.t. {k} is not 0 at padding"


def _randn(seed, *shape, dtype=torch.float32, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def _bad_at_a_real_position(x: torch.Tensor, real: torch.Tensor, k: int, value: float) -> torch.Tensor:
    """x with `value` in ONE entry, at the k-th (mod count) real position (real: x's shape, or its
    leading dims; the trailing index is k mod the size too)."""
    idx = tuple(torch.nonzero(real)[k % int(real.sum())].tolist()) + tuple(k % n for n in x.shape[real.dim():])
    x = x.clone()
    x[idx] = value
    return x


# ---- 1. padding never matters ------------------------------------------------------------------

@SET
@given(c=cases((3, 5)), average=st.booleans())
def test_masked_sum_and_mean_ignore_padding(c, average):
    seed, pad, fill = c
    x = {"values": _randn(seed, 3, 5), "mask": (~pad).long()}
    assert_padding_is_ignored(lambda values, mask: masked_sum(values, mask, average), x, {"values": pad},
                              {"values": fill}, ["values"])
    assert_padding_is_ignored(masked_mean, x, {"values": pad}, {"values": fill}, ["values"])


@SET
@given(c=cases((2, 4)))
def test_whiten_ignores_padding(c):
    seed, pad, fill = c
    x = {"x": _randn(seed, 2, 4, dtype=torch.float64, scale=3.0), "mask": (~pad).double()}
    assert_padding_is_ignored(whiten, x, {"x": pad}, {"x": fill}, ["x"])


@SET
@given(c=cases((3, 5)), gamma=st.floats(0, 1), lam=st.floats(0, 1))
def test_gae_ignores_padding(c, gamma, lam):
    seed, pad, fill = c
    x = {"rewards": _randn(seed, 3, 5, dtype=torch.float64), "values": _randn(seed + 1, 3, 5, dtype=torch.float64),
         "mask": (~pad).double()}
    fn = lambda rewards, values, mask: gae(rewards, values, mask, gamma, lam)          # noqa: E731
    assert_padding_is_ignored(fn, x, {"rewards": pad, "values": pad}, {"rewards": fill, "values": -fill},
                              ["rewards", "values"])


@SET
@given(c=cases((2, 5)), clip=st.floats(0.05, 0.5))
def test_ppo_losses_ignore_padding(c, clip):
    seed, pad, fill = c
    f64 = dict(dtype=torch.float64)
    x = {"logp": -_randn(seed, 2, 5, **f64).abs(), "old_logp": -_randn(seed + 1, 2, 5, **f64).abs(),
         "adv": _randn(seed + 2, 2, 5, **f64), "mask": (~pad).double()}
    fn = lambda logp, old_logp, adv, mask: ppo_policy_loss(logp, old_logp, adv, mask, clip)   # noqa: E731
    names = ["logp", "old_logp", "adv"]
    assert_padding_is_ignored(fn, x, dict.fromkeys(names, pad), {"logp": fill, "old_logp": -fill, "adv": fill},
                              names)
    x = {"v": _randn(seed, 2, 5, **f64), "old_v": _randn(seed + 1, 2, 5, **f64),
         "returns": _randn(seed + 2, 2, 5, **f64), "mask": (~pad).double()}
    fn = lambda v, old_v, returns, mask: ppo_value_loss(v, old_v, returns, mask, clip)         # noqa: E731
    names = ["v", "old_v", "returns"]
    assert_padding_is_ignored(fn, x, dict.fromkeys(names, pad), {"v": fill, "old_v": -fill, "returns": fill}, names)


@SET
@given(c=cases((2, 3, 4)), divergence=st.sampled_from(["forward", "reverse", "jsd"]), T=st.floats(0.5, 4.0))
def test_distill_loss_ignores_padding(c, divergence, T):
    seed, pad, fill = c
    x = {"student_logits": _randn(seed, 2, 3, 4, scale=2.0), "teacher_logits": _randn(seed + 1, 2, 3, 4, scale=2.0),
         "mask": ~pad}
    def fn(student_logits, teacher_logits, mask):
        return distill_loss(student_logits, teacher_logits, mask, T, divergence)
    assert_padding_is_ignored(fn, x, {"student_logits": pad, "teacher_logits": pad},
                              {"student_logits": fill, "teacher_logits": -fill}, ["student_logits"])


@SET
@given(c=cases((2, 3, 4)))
def test_hard_losses_ignore_unlabelled_positions(c):
    seed, pad, fill = c
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (2, 3), generator=g).masked_fill(pad, IGNORE_INDEX)
    x = {"student_logits": _randn(seed, 2, 3, 4, scale=2.0), "labels": labels}
    assert_padding_is_ignored(hard_loss, x, {"student_logits": pad}, {"student_logits": fill}, ["student_logits"])
    y = {"logits": _randn(seed, 2, 3, 4, scale=2.0), "targets": labels}
    assert_padding_is_ignored(per_example_nll, y, {"logits": pad}, {"logits": fill}, ["logits"])


@SET
@given(c=cases((3, 4, 2)), pooling=st.sampled_from(["mean", "last"]))
def test_pooling_ignores_padding(c, pooling):
    seed, pad, fill = c
    x = {"h": _randn(seed, 3, 4, 2), "attention_mask": (~pad).long()}
    fn = lambda h, attention_mask: pool(h, attention_mask, pooling)                     # noqa: E731
    assert_padding_is_ignored(fn, x, {"h": pad}, {"h": fill}, ["h"])


def test_nothing_to_predict_is_zero_whatever_the_logits_hold():
    # every target ignored: the loss is 0 (an empty sum), not logits.sum() * 0, which NaN makes NaN
    cfg = GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=4)
    torch.manual_seed(0)
    gpt = GPT(cfg)
    with torch.no_grad():
        gpt.lm_head.weight[0] = NAN                                        # tied: logits[..., 0] is NaN
    idx = torch.tensor([[1, 2, 3]])
    loss = gpt(idx, targets=torch.full_like(idx, IGNORE_INDEX)).loss
    assert torch.isfinite(loss) and loss.item() == 0.0
    tc = TokenClassifier(GPT(cfg), n_classes=3)
    with torch.no_grad():
        tc.head.weight[0] = NAN
    out = tc(idx, attention_mask=torch.tensor([[1, 1, 0]]), labels=torch.tensor([[-100, -100, 2]]))   # 2 on padding
    assert torch.isfinite(out.loss) and out.loss.item() == 0.0


# ---- 2. NaN or inf at a real position raises, naming the argument ------------------------------

def _raises_naming(name):
    return pytest.raises(ValueError, match=rf"(^|\W){name} holds NaN or inf")


def test_distill_loss_with_a_nan_teacher_raises():
    # was: loss 0.0 and every student gradient NaN
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5)
    t[0, 1, 2] = NAN
    with _raises_naming("teacher_logits"):
        distill_loss(s, t)
    with _raises_naming("teacher_logits"):
        distill_loss(s, t, torch.ones(2, 3, dtype=torch.bool))
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 1] = False                                                     # the NaN is padding: fine
    loss = distill_loss(s, t, mask)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(s.grad).all()) and bool((s.grad[0, 1] == 0).all())


def test_reward_loss_with_a_nan_reward_raises():
    # was: NaN rows, silently
    rc, rr = torch.tensor([1.0, NAN, 0.5]), torch.tensor([0.0, 0.2, 0.1])
    with _raises_naming("r_chosen"):
        reward_loss(rc, rr)
    with _raises_naming("r_rejected"):
        reward_loss(rr, rc)
    with _raises_naming("r_chosen"):
        reward_metrics(rc, rr)


@SET
@given(c=cases((2, 3, 4), row_needs_one=False), k=st.integers(0, 23), bad=BAD,
       which=st.sampled_from(["student_logits", "teacher_logits"]),
       fn=st.sampled_from(["distill_loss", "kd_loss", "divergence_per_position"]))
def test_distillation_losses_raise_on_nan_at_a_real_position(c, k, bad, which, fn):
    seed, pad, _ = c
    x = {"student_logits": _randn(seed, 2, 3, 4), "teacher_logits": _randn(seed + 1, 2, 3, 4)}
    real = ~pad
    if fn == "divergence_per_position":
        real = torch.ones_like(pad)                                        # no mask: every position is real
    x[which] = _bad_at_a_real_position(x[which], real, k, bad)
    labels = torch.zeros(2, 3, dtype=torch.long)
    with _raises_naming(which):
        if fn == "distill_loss":
            distill_loss(x["student_logits"], x["teacher_logits"], real)
        elif fn == "kd_loss":
            kd_loss(x["student_logits"], x["teacher_logits"], labels, real, alpha=0.5)
        else:
            divergence_per_position(x["student_logits"], x["teacher_logits"])


@SET
@given(c=cases((2, 3, 4), row_needs_one=False), k=st.integers(0, 23), bad=BAD)
def test_hard_label_losses_raise_on_nan_at_a_labelled_position(c, k, bad):
    seed, pad, _ = c
    labels = torch.zeros(2, 3, dtype=torch.long).masked_fill(pad, IGNORE_INDEX)
    logits = _bad_at_a_real_position(_randn(seed, 2, 3, 4), ~pad, k, bad)
    with _raises_naming("student_logits"):
        hard_loss(logits, labels)
    with _raises_naming("logits"):
        per_example_nll(logits, labels)


@SET
@given(c=cases((2, 4), row_needs_one=False), k=st.integers(0, 7), bad=BAD,
       which=st.sampled_from(["a", "b", "c"]))
def test_ppo_pieces_raise_on_nan_at_a_real_position(c, k, bad, which):
    seed, pad, _ = c
    m = (~pad).double()
    xs = [_randn(seed + i, 2, 4, dtype=torch.float64) for i in range(3)]
    i = "abc".index(which)
    xs[i] = _bad_at_a_real_position(xs[i], ~pad, k, bad)
    names = {"ppo_policy_loss": ["logp", "old_logp", "adv"], "ppo_value_loss": ["v", "old_v", "returns"],
             "gae": ["rewards", "values"], "whiten": ["x"]}
    for fn, args in ((ppo_policy_loss, xs), (ppo_value_loss, xs), (gae, xs[:2]), (whiten, xs[:1])):
        if i < len(args):
            with _raises_naming(names[fn.__name__][i]):
                fn(*args, m)


@SET
@given(k=st.integers(0, 11), bad=BAD, which=st.integers(0, 3))
def test_preference_losses_and_metrics_raise_on_nan(k, bad, which):
    xs = [_randn(j, 3) for j in range(4)]
    xs[which] = _bad_at_a_real_position(xs[which], torch.ones(3, dtype=torch.bool), k, bad)
    names = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
    with _raises_naming(names[which]):
        dpo_loss(*xs, beta=0.1)
    if which < 2:
        with _raises_naming(["r_chosen", "r_rejected"][which]):
            reward_loss(xs[0], xs[1])
        with _raises_naming(["chosen_rewards", "rejected_rewards"][which]):
            preference_metrics(xs[0], xs[1])


@SET
@given(k=st.integers(0, 11), bad=BAD, which=st.sampled_from(["a", "b", "negatives"]))
def test_info_nce_raises_on_nan(k, bad, which):
    x = {"a": _randn(0, 3, 4), "b": _randn(1, 3, 4), "negatives": _randn(2, 2, 4)}
    x[which] = _bad_at_a_real_position(x[which], torch.ones(x[which].shape[0], dtype=torch.bool), k, bad)
    with _raises_naming(which):
        info_nce(x["a"], x["b"], 0.1, x["negatives"])


def test_metrics_raise_on_nan_instead_of_counting_it_as_wrong():
    s = torch.tensor([0.1, NAN, 0.7])
    y = torch.tensor([0, 1, 1])
    with _raises_naming("scores"):
        best_threshold(s, y)
    with _raises_naming("scores"):
        threshold_accuracy(s, y, 0.5)
    q = torch.randn(3, 4)
    q[1, 2] = INF
    with _raises_naming("queries"):
        retrieval_at_1(q, torch.randn(3, 4))
    with _raises_naming("preds"):
        accuracy([0.0, NAN, 1.0], [0, 1, 1])
