"""The training loop: schedule, determinism, accumulation, loss masks, eval hook, errors."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.model import GPT, GPTConfig
from minift.train import TrainConfig, evaluate_nll, lr_at, train

pytestmark = pytest.mark.core
CFG = GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8)


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a learnable pattern: each token is the previous + 1 (mod V)
    start = torch.randint(0, CFG.vocab_size, (n, 1), generator=g)
    seq = (start + torch.arange(CFG.block_size + 1)) % CFG.vocab_size
    return [{"idx": s[:-1], "targets": s[1:]} for s in seq]


@settings(deadline=None, max_examples=50)
@given(steps=st.integers(2, 200), warm=st.integers(0, 50), ratio=st.floats(0, 1))
def test_schedule_warms_up_then_decays_to_the_floor(steps, warm, ratio):
    cfg = TrainConfig(steps=steps, warmup_steps=min(warm, steps - 1), lr=1e-3, min_lr_ratio=ratio)
    lrs = [lr_at(s, cfg) for s in range(steps)]
    w = cfg.warmup_steps
    assert all(a <= b + 1e-15 for a, b in zip(lrs[:w], lrs[1:w + 1]))          # rising
    assert all(a >= b - 1e-15 for a, b in zip(lrs[w:], lrs[w + 1:]))            # then falling
    assert max(lrs) <= 1e-3 + 1e-15 and min(lrs[w:]) >= 1e-3 * ratio - 1e-15
    assert math.isclose(lr_at(steps, cfg), 1e-3 * ratio, rel_tol=1e-9, abs_tol=1e-15)


def test_seeded_runs_are_identical_and_the_loss_falls():
    def run():
        torch.manual_seed(0)
        m = GPT(CFG)
        h = train(m, _data(), TrainConfig(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, progress=False))
        return m, h
    m1, h1 = run()
    m2, h2 = run()
    assert [r["loss"] for r in h1] == [r["loss"] for r in h2]
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert h1[-1]["loss"] < 0.5 * h1[0]["loss"]


def test_accumulation_equals_one_big_batch():
    def run(bs, acc):
        torch.manual_seed(0)
        m = GPT(CFG).double()
        data = [{k: v for k, v in d.items()} for d in _data(8)]
        train(m, data, TrainConfig(steps=1, batch_size=bs, grad_accum=acc, lr=1e-2, warmup_steps=0,
                                   grad_clip=0, progress=False))
        return m
    # one step over the whole (8-item) dataset: 1 x 8 vs 4 x 2 micro-batches see the same items
    big, small = run(8, 1), run(2, 4)
    for p1, p2 in zip(big.parameters(), small.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-12, rtol=1e-10)


@settings(deadline=None, max_examples=15)
@given(k=st.integers(2, 4), b=st.integers(1, 3), keep=st.floats(0.05, 1.0), seed=st.integers(0, 2 ** 16))
def test_accumulation_with_loss_masks_takes_one_mean_over_the_steps_tokens(k, b, keep, seed):
    """k micro-batches of b rows whose loss masks keep different numbers of targets (one may keep
    none) take the same step as one batch of all k*b rows: one mean over the step's tokens."""
    g = torch.Generator().manual_seed(seed)
    data = _data(k * b, seed)
    for d in data:                                   # each row keeps a random share of its targets
        drop = torch.rand(CFG.block_size, generator=g) > keep
        d["targets"] = d["targets"].masked_fill(drop, -100)
    if all(bool((d["targets"] == -100).all()) for d in data):
        data[0]["targets"][0] = 1                   # the step needs one counted target

    def step(bs, acc):
        torch.manual_seed(0)
        m = GPT(CFG).double()
        opt = torch.optim.SGD(m.parameters(), lr=1.0)    # the update is the gradient itself
        before = [p.detach().clone() for p in m.parameters()]
        h = train(m, data, TrainConfig(steps=1, batch_size=bs, grad_accum=acc, lr=1.0, warmup_steps=0,
                                       grad_clip=0, progress=False), optimizer=opt)
        return [p0 - p.detach() for p0, p in zip(before, m.parameters())], h[0]["loss"]

    (g_big, l_big), (g_small, l_small) = step(k * b, 1), step(b, k)
    for a, c in zip(g_big, g_small):
        torch.testing.assert_close(c, a, atol=1e-12, rtol=1e-9)
    assert math.isclose(l_small, l_big, rel_tol=1e-10)
    # the step's loss is the token mean of the rows' summed NLLs, computed here from scratch
    torch.manual_seed(0)
    m = GPT(CFG).double()
    x = torch.stack([d["idx"] for d in data])
    y = torch.stack([d["targets"] for d in data])
    logits = m(x).logits
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, CFG.vocab_size), y.reshape(-1), ignore_index=-100,
                                            reduction="sum")
    assert math.isclose(l_small, nll.item() / int((y != -100).sum()), rel_tol=1e-10)


def test_a_token_mean_loss_needs_targets_in_its_batches():
    data = [{"idx": d["idx"]} for d in _data(4)]
    with pytest.raises(ValueError, match="needs batches with 'targets'"):
        train(GPT(CFG), data, TrainConfig(steps=1, batch_size=2, progress=False))


def test_frozen_parameters_do_not_move_and_masked_targets_give_no_gradient():
    torch.manual_seed(0)
    m = GPT(CFG)
    for n, p in m.named_parameters():
        p.requires_grad = "ln_f" in n
    before = {n: p.clone() for n, p in m.named_parameters()}
    data = [{"idx": d["idx"], "targets": torch.full_like(d["targets"], -100)} for d in _data(4)]
    data[0]["targets"][3] = 5
    train(m, data, TrainConfig(steps=3, batch_size=2, progress=False))
    for n, p in m.named_parameters():
        if "ln_f" not in n:
            assert torch.equal(p, before[n]), n


def test_eval_hook_and_history():
    torch.manual_seed(0)
    m = GPT(CFG)
    calls = []

    def ev(model):
        calls.append(model.training)
        return {"nll": evaluate_nll(model, _data(6, seed=1), batch_size=4)}
    h = train(m, _data(), TrainConfig(steps=6, batch_size=4, eval_every=3, progress=False), eval_fn=ev)
    assert calls == [False, False]                                  # steps 3 and 6, in eval mode
    assert [r["step"] for r in h if "eval_nll" in r] == [3, 6]
    assert all({"step", "lr", "loss", "grad_norm", "tokens", "time"} <= set(r) for r in h)


def test_uniform_model_perplexity_is_the_vocabulary_size():
    m = GPT(CFG)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()                                   # all logits 0: the uniform distribution
    assert math.isclose(math.exp(evaluate_nll(m, _data(5))), CFG.vocab_size, rel_tol=1e-5)


def test_bad_configuration_and_frozen_model_raise():
    with pytest.raises(ValueError, match="TrainConfig.steps=0"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="TrainConfig.lr=0"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"warmup_steps=11 must be in \[0, steps=10\]"):
        TrainConfig(steps=10, warmup_steps=11)
    assert TrainConfig(steps=50).warmup_steps == 5                 # default: a tenth of the run
    m = GPT(CFG)
    for p in m.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(m, _data(), TrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match="dataset is empty"):
        train(GPT(CFG), [], TrainConfig(steps=1, progress=False))


def test_history_time_excludes_the_eval_hook():
    import time as _time

    def slow_eval(model):
        _time.sleep(0.3)
        return {"x": 1.0}
    t0 = _time.perf_counter()
    h = train(GPT(CFG), _data(), TrainConfig(steps=4, batch_size=2, eval_every=1, progress=False), eval_fn=slow_eval)
    wall = _time.perf_counter() - t0
    assert h[-1]["eval_x"] == 1.0
    assert wall - h[-1]["time"] >= 4 * 0.3 - 0.02                  # the 4 evals' 1.2 s are not in "time",
    assert h[-1]["time"] > 0                                        # however slow a loaded machine makes the steps


@settings(deadline=None, max_examples=30)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=60), bs=st.integers(1, 8), k=st.integers(1, 5),
       seed=st.integers(0, 3))
def test_length_buckets_cover_every_example_once_per_epoch_and_cut_padding(lengths, bs, k, seed):
    from minift.train import BatchSampler, BucketSampler
    n = len(lengths)
    s, plain = BucketSampler(lengths, bs, seed, k), BatchSampler(n, bs, seed)
    for _ in range(3 * -(-n // (k * bs))):                       # several pools, crossing epochs
        pool = [s.next() for _ in range(k)]
        same = [plain.next() for _ in range(k)]
        assert all(len(b) == bs for b in pool)
        # a pool is exactly the next k batches of the plain shuffled stream (so epochs are kept) ...
        assert sorted(i for b in pool for i in b) == sorted(i for b in same for i in b)
        # ... regrouped into contiguous runs of the length-sorted pool: no two batches' length ranges
        # overlap, and the padded total (bs x longest, summed) is never above the plain batches'
        spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in pool)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        assert sum(max(lengths[i] for i in b) for b in pool) <= sum(max(lengths[i] for i in b) for b in same)
    again = BucketSampler(lengths, bs, seed, k)
    first = BucketSampler(lengths, bs, seed, k)
    assert [again.next() for _ in range(2 * k)] == [first.next() for _ in range(2 * k)]   # seeded


def test_length_buckets_need_items_with_idx():
    from strategies import tiny_model
    with pytest.raises(ValueError, match="length_buckets"):
        TrainConfig(length_buckets=-1)
    model = tiny_model(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="idx"):
        train(model, [torch.zeros(3)], TrainConfig(steps=1, batch_size=1, length_buckets=2, progress=False))
