"""Properties of the GPT: causality, caching, padding, batching, the SDPA path vs a naive loop,
determinism, gradients, GPT-2 loading, and the errors bad input gets."""
import json
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.checkpoint import load_gpt2, save_tensors
from minift.model import GPT, GPTConfig
from strategies import gpt_configs, reference_forward, tiny_model

pytestmark = [pytest.mark.core, pytest.mark.lesson00]
SET = settings(deadline=None, max_examples=25)


def _ids(cfg, B, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, T), generator=g)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_sdpa_path_equals_naive_attention_loop(cfg, data):
    m = tiny_model(cfg)
    T = data.draw(st.integers(1, cfg.block_size))
    idx = _ids(cfg, 2, T, data.draw(st.integers(0, 99)))
    sd = {k[len("transformer."):]: v for k, v in m.state_dict().items() if k.startswith("transformer.")}
    ref = reference_forward(cfg, sd, idx)
    torch.testing.assert_close(m(idx).logits, ref, atol=1e-10, rtol=1e-10)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_causality_future_tokens_do_not_change_the_past(cfg, data):
    m = tiny_model(cfg)
    T = data.draw(st.integers(2, cfg.block_size))
    t = data.draw(st.integers(0, T - 2))
    a = _ids(cfg, 1, T, data.draw(st.integers(0, 99)))
    b = a.clone()
    b[0, t + 1:] = (b[0, t + 1:] + 1) % cfg.vocab_size                  # change every token after t
    torch.testing.assert_close(m(a).logits[:, : t + 1], m(b).logits[:, : t + 1], atol=1e-10, rtol=1e-10)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_padding_left_and_right_give_the_same_logits(cfg, data):
    m = tiny_model(cfg)
    n = data.draw(st.integers(1, cfg.block_size - 1))
    pad = data.draw(st.integers(1, cfg.block_size - n))
    x = _ids(cfg, 1, n, data.draw(st.integers(0, 99)))
    alone = m(x).logits                                                  # (1, n, V)
    filler = torch.full((1, pad), data.draw(st.integers(0, cfg.vocab_size - 1)))
    ones, zeros = torch.ones(1, n, dtype=torch.long), torch.zeros(1, pad, dtype=torch.long)
    left = m(torch.cat([filler, x], 1), attention_mask=torch.cat([zeros, ones], 1)).logits[:, pad:]
    right = m(torch.cat([x, filler], 1), attention_mask=torch.cat([ones, zeros], 1)).logits[:, :n]
    torch.testing.assert_close(left, alone, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(right, alone, atol=1e-10, rtol=1e-10)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_batched_equals_per_example(cfg, data):
    m = tiny_model(cfg)
    lens = data.draw(st.lists(st.integers(1, cfg.block_size), min_size=2, max_size=4))
    T = max(lens)
    rows = [_ids(cfg, 1, n, i)[0] for i, n in enumerate(lens)]
    idx = torch.zeros(len(lens), T, dtype=torch.long)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, : len(r)], mask[i, : len(r)] = r, 1
    batched = m(idx, attention_mask=mask).logits
    for i, r in enumerate(rows):
        torch.testing.assert_close(batched[i, : len(r)], m(r[None]).logits[0], atol=1e-10, rtol=1e-10)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_cached_forward_equals_full_forward(cfg, data):
    m = tiny_model(cfg)
    T = data.draw(st.integers(2, cfg.block_size))
    split = data.draw(st.integers(1, T - 1))
    idx = _ids(cfg, 2, T, data.draw(st.integers(0, 99)))
    full = m(idx).logits
    first = m(idx[:, :split], use_cache=True)
    second = m(idx[:, split:], past_kv=first.past_kv)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-10, rtol=1e-10)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_cached_generation_equals_uncached(cfg, data):
    m = tiny_model(cfg)
    T = data.draw(st.integers(1, cfg.block_size - 1))
    new = data.draw(st.integers(1, cfg.block_size - T))
    idx = _ids(cfg, 2, T, data.draw(st.integers(0, 99)))
    cached = m.generate(idx, new, use_cache=True)
    assert torch.equal(cached, m.generate(idx, new, use_cache=False))
    # greedy: each new token is the argmax of the full forward over everything before it
    seq = torch.cat([idx, cached], 1)
    assert torch.equal(m(seq[:, :-1]).logits[:, T - 1:].argmax(-1), cached)


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_generation_with_padding_equals_each_row_alone(cfg, data):
    m = tiny_model(cfg)
    lens = data.draw(st.lists(st.integers(1, cfg.block_size - 2), min_size=2, max_size=3))
    T, new = max(lens), data.draw(st.integers(1, 2))
    side = data.draw(st.sampled_from(["left", "right"]))
    idx = torch.zeros(len(lens), T, dtype=torch.long)
    mask = torch.zeros_like(idx)
    rows = [_ids(cfg, 1, n, 7 + i)[0] for i, n in enumerate(lens)]
    for i, r in enumerate(rows):
        sl = slice(T - len(r), T) if side == "left" else slice(0, len(r))
        idx[i, sl], mask[i, sl] = r, 1
    out = m.generate(idx, new, attention_mask=mask)
    for i, r in enumerate(rows):
        assert torch.equal(out[i], m.generate(r[None], new)[0])


def test_generation_stops_at_eos_and_pads_after_it():
    cfg = GPTConfig(vocab_size=12, block_size=16, n_layer=1, n_head=1, n_embd=8)
    m = tiny_model(cfg)
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    free = m.generate(idx, 6)[0].tolist()
    k = next(i for i, t in enumerate(free) if t not in free[:i] and (i > 0 or len(set(free)) == 1))
    eos = free[k]                                          # a token row 0 emits first at step k
    out = m.generate(idx[:1], 6, eos_token_id=eos, pad_token_id=0)
    assert out[0, : k + 1].tolist() == free[: k + 1]       # unchanged up to and including the EOS
    assert out.shape[1] == k + 1                           # then it stops (the only row is done)
    both = m.generate(idx, 6, eos_token_id=eos, pad_token_id=0)
    assert both[0, : k + 1].tolist() == free[: k + 1] and bool((both[0, k + 1:] == 0).all())


def test_sampling_is_reproducible_with_a_generator_and_respects_top_k():
    cfg = GPTConfig(vocab_size=30, block_size=20, n_layer=1, n_head=2, n_embd=8)
    m = tiny_model(cfg)
    idx = torch.tensor([[1, 2, 3]])
    a = m.generate(idx, 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = m.generate(idx, 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    k1 = m.generate(idx, 10, temperature=5.0, top_k=1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(k1, m.generate(idx, 10))                         # top_k=1 is greedy


@SET
@given(cfg=gpt_configs(), data=st.data())
def test_prefix_kv_is_visible_and_cached_generation_agrees(cfg, data):
    m = tiny_model(cfg)
    P = data.draw(st.integers(1, 3))
    T = data.draw(st.integers(1, cfg.block_size - 1))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    prefix = tuple((torch.randn(1, cfg.n_head, P, cfg.head_dim, generator=g, dtype=torch.float64),
                    torch.randn(1, cfg.n_head, P, cfg.head_dim, generator=g, dtype=torch.float64))
                   for _ in range(cfg.n_layer))
    idx = _ids(cfg, 2, T, 3)
    with_prefix = m(idx, prefix_kv=prefix).logits
    assert (with_prefix - m(idx).logits).abs().max() > 1e-6              # the prefix is attended to
    new = cfg.block_size - T
    assert torch.equal(m.generate(idx, new, prefix_kv=prefix),
                       m.generate(idx, new, prefix_kv=prefix, use_cache=False))
    # a zero-length prefix is an exact no-op
    empty = tuple((torch.zeros(1, cfg.n_head, 0, cfg.head_dim, dtype=torch.float64),) * 2
                  for _ in range(cfg.n_layer))
    torch.testing.assert_close(m(idx, prefix_kv=empty).logits, m(idx).logits, atol=1e-12, rtol=1e-12)


def test_inputs_embeds_equals_token_ids_and_hidden_states_are_returned():
    cfg = GPTConfig(vocab_size=20, block_size=10, n_layer=3, n_head=2, n_embd=8)
    m = tiny_model(cfg)
    idx = _ids(cfg, 2, 7, 0)
    a = m(idx, output_hidden_states=True)
    b = m(inputs_embeds=m.transformer.wte(idx), output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits)
    assert len(a.hidden_states) == cfg.n_layer + 1
    torch.testing.assert_close(m.lm_head(a.hidden_states[-1]), a.logits)  # last one feeds the head


def test_seeded_runs_are_deterministic_and_every_parameter_gets_a_gradient():
    cfg = GPTConfig(vocab_size=20, block_size=10, n_layer=2, n_head=2, n_embd=8, dropout=0.1)

    def run():
        torch.manual_seed(3)
        m = GPT(cfg).train()
        idx = _ids(cfg, 2, 10, 1)
        loss = m(idx, idx).loss
        loss.backward()
        return m, loss

    m1, l1 = run()
    m2, l2 = run()
    assert l1.item() == l2.item()
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters()):
        assert p1.grad is not None and p1.grad.abs().sum() > 0, f"{n} got no gradient"
        assert torch.equal(p1.grad, p2.grad), n


def test_loss_ignores_minus_100_targets():
    cfg = GPTConfig(vocab_size=20, block_size=10, n_layer=1, n_head=2, n_embd=8)
    m = tiny_model(cfg)
    idx = _ids(cfg, 1, 6, 0)
    tgt = idx.clone()
    tgt[0, :3] = -100
    logp = torch.log_softmax(m(idx).logits.double(), -1)[0]
    expected = -logp[torch.arange(3, 6), idx[0, 3:]].mean()
    torch.testing.assert_close(m(idx, tgt).loss.double(), expected, atol=1e-10, rtol=1e-10)


def test_all_ignored_targets_give_zero_loss_with_a_graph():
    m = tiny_model(GPTConfig(vocab_size=20, block_size=10, n_layer=1, n_head=2, n_embd=8))
    idx = _ids(m.config, 1, 6, 0)
    loss = m(idx, torch.full_like(idx, -100)).loss
    assert loss.item() == 0.0 and loss.requires_grad


def test_attention_weights_are_causal_distributions_that_reproduce_the_block():
    cfg = GPTConfig(vocab_size=20, block_size=10, n_layer=2, n_head=2, n_embd=8)
    m = tiny_model(cfg)
    idx = _ids(cfg, 2, 7, 0)
    w = m.attention_weights(idx, layer=1)                                 # (B, H, T, T)
    assert w.shape == (2, 2, 7, 7)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 7, dtype=w.dtype))
    assert bool((w.triu(1) == 0).all())                                  # nothing from the future
    # weights @ V, projected, is what the block's attention adds to the residual stream
    blk = m.transformer.h[1]
    h = m(idx, output_hidden_states=True).hidden_states[1]
    x = blk.ln_1(h)
    v = blk.attn.c_attn(x).split(8, dim=2)[2].view(2, 7, 2, 4).transpose(1, 2)
    y = blk.attn.c_proj((w @ v).transpose(1, 2).reshape(2, 7, 8))
    torch.testing.assert_close(y, blk.attn(x)[0], atol=1e-10, rtol=1e-10)
    with pytest.raises(ValueError, match="layer=2 must be in"):
        m.attention_weights(idx, layer=2)


def test_gpt2_module_names():
    names = set(dict(GPT(GPTConfig(n_layer=2)).named_parameters(remove_duplicate=False)))
    for n in ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.1.ln_1.weight",
              "transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.bias",
              "transformer.h.1.ln_2.bias", "transformer.h.1.mlp.c_fc.weight",
              "transformer.h.1.mlp.c_proj.weight", "transformer.ln_f.weight", "lm_head.weight"]:
        assert n in names, n
    m = GPT(GPTConfig())
    assert m.lm_head.weight is m.transformer.wte.weight                  # tied


def _write_hf_gpt2(folder, cfg, seed=0, prefix=""):
    """A GPT-2 checkpoint in the Hugging Face layout: Conv1D weights (in, out), attn.bias buffers."""
    g = torch.Generator().manual_seed(seed)
    C, V = cfg.n_embd, cfg.vocab_size
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    sd = {"wte.weight": r(V, C), "wpe.weight": r(cfg.block_size, C),
          "ln_f.weight": 1 + r(C), "ln_f.bias": r(C)}
    for l in range(cfg.n_layer):
        p = f"h.{l}."
        sd.update({p + "ln_1.weight": 1 + r(C), p + "ln_1.bias": r(C), p + "ln_2.weight": 1 + r(C),
                   p + "ln_2.bias": r(C), p + "attn.c_attn.weight": r(C, 3 * C), p + "attn.c_attn.bias": r(3 * C),
                   p + "attn.c_proj.weight": r(C, C), p + "attn.c_proj.bias": r(C),
                   p + "mlp.c_fc.weight": r(C, 4 * C), p + "mlp.c_fc.bias": r(4 * C),
                   p + "mlp.c_proj.weight": r(4 * C, C), p + "mlp.c_proj.bias": r(C),
                   p + "attn.bias": torch.tril(torch.ones(1, 1, cfg.block_size, cfg.block_size))})
    save_tensors({prefix + k: v for k, v in sd.items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "vocab_size": V, "n_positions": cfg.block_size, "n_embd": C,
                   "n_layer": cfg.n_layer, "n_head": cfg.n_head, "layer_norm_epsilon": 1e-5,
                   "activation_function": "gelu_new"}, f)
    return {k: v for k, v in sd.items() if not k.endswith(".attn.bias")}


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_load_gpt2_gives_the_logits_the_checkpoint_defines(tmp_path, prefix):
    cfg = GPTConfig(vocab_size=31, block_size=12, n_layer=2, n_head=2, n_embd=8)
    sd = _write_hf_gpt2(str(tmp_path), cfg, prefix=prefix)
    m = load_gpt2(str(tmp_path)).eval()
    idx = _ids(cfg, 2, 9, 5)
    ref = reference_forward(cfg, sd, idx, conv1d=True)                  # x @ W, as Conv1D defines
    torch.testing.assert_close(m(idx).logits.double(), ref, atol=1e-4, rtol=1e-4)


def test_load_gpt2_matches_transformers_when_installed(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = GPTConfig(vocab_size=31, block_size=12, n_layer=2, n_head=2, n_embd=8)
    _write_hf_gpt2(str(tmp_path), cfg)
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path)).eval()
    idx = _ids(cfg, 2, 9, 5)
    torch.testing.assert_close(load_gpt2(str(tmp_path)).eval()(idx).logits, hf(idx).logits,
                               atol=1e-4, rtol=1e-4)


# ---- bad input ---------------------------------------------------------------------------------

@pytest.fixture
def small():
    return tiny_model(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=8))


def test_bad_inputs_raise_clear_errors(small):
    with pytest.raises(ValueError, match="exceeds the context block_size=8"):
        small(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token id 20 outside \[0, vocab_size=20\)"):
        small(torch.tensor([[1, 20]]))
    with pytest.raises(ValueError, match="token id -1"):
        small(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="integer tensor"):
        small(torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"attention_mask must have shape .*\(1, 3\)"):
        small(torch.zeros(1, 3, dtype=torch.long), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match=r"targets must have shape"):
        small(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="exactly one of idx"):
        small()
    with pytest.raises(ValueError, match="prefix_kv has 2 layers"):
        small(torch.zeros(1, 3, dtype=torch.long), prefix_kv=[(torch.zeros(1, 2, 1, 4),) * 2] * 2)
    with pytest.raises(ValueError, match="prefix_kv\\[0\\] keys must have shape"):
        small(torch.zeros(1, 3, dtype=torch.long), prefix_kv=[(torch.zeros(1, 3, 1, 4),) * 2])
    with pytest.raises(ValueError, match="exceeds the context"):
        small.generate(torch.zeros(1, 5, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="temperature"):
        small.generate(torch.zeros(1, 2, dtype=torch.long), 1, temperature=-1)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_layers'\]"):
        GPTConfig.from_dict({"n_layers": 2})
    with pytest.raises(ValueError, match="n_embd=10 must be divisible by n_head=4"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="n_layer=0"):
        GPTConfig(n_layer=0)
    assert GPTConfig.from_dict(GPTConfig(n_layer=3).to_dict()) == GPTConfig(n_layer=3)
