"""Prompt tuning: a soft prompt through inputs_embeds. Length 0 is the base model, a text init is the
text typed in front (so the real tokens' positions shift by n), the loss is never shifted, cached
generation, padding on either side, only the prompt trains, a text prompt's file, bad input. (Disable,
files, removal: tests/test_method_contract.py.)"""
import json
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from minift.heads import SequenceClassifier, TokenClassifier
from minift.model import GPT, IGNORE_INDEX, GPTConfig
from minift.peft.common import count_adapter_parameters, disable_adapters
from minift.peft.io import load_adapter, save_adapter
from minift.peft.lora import LoRAConfig, apply_lora
from minift.peft.prompt import (PromptConfig, SoftPrompt, apply_prompt, nearest_tokens, prepend_soft_prompt,
                                prompt_state_dict)
from minift.train import TrainConfig, train
from strategies import gpt_configs, tiny_model

pytestmark = pytest.mark.lesson08
CFG = GPTConfig(vocab_size=24, block_size=16, n_layer=2, n_head=2, n_embd=8)


def _idx(B=2, T=6, seed=0, V=CFG.vocab_size):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _randomize(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in prompt_state_dict(model).values():
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


class _Tok:
    """A stand-in tokenizer: one id per character, ids from 1."""

    def encode(self, text):
        return [1 + (ord(c) % 20) for c in text]


def test_a_length_zero_prompt_is_the_base_model():
    """The only exact no-op of prompt tuning (any real prompt moves the model, and disable_adapters gives
    the base back: tests/test_method_contract.py)."""
    model = tiny_model(CFG)
    idx = _idx()
    base = model(idx).logits
    x, mask, tgt = prepend_soft_prompt(model.transformer.wte(idx), torch.zeros(0, CFG.n_embd, dtype=torch.float64),
                                       torch.ones_like(idx), torch.zeros_like(idx))
    assert torch.equal(model(inputs_embeds=x, attention_mask=mask).logits, model(idx, attention_mask=mask).logits)
    assert torch.equal(model(inputs_embeds=x).logits, base)


@settings(deadline=None, max_examples=25)
@given(cfg=gpt_configs(max_block=16), m=st.integers(1, 5), n=st.integers(1, 7), T=st.integers(1, 4),
       pad=st.sampled_from(["none", "left", "right"]), seed=st.integers(0, 50))
def test_a_text_init_is_the_text_typed_in_front_so_real_tokens_sit_at_n_onwards(cfg, m, n, T, pad, seed):
    """P_i = W_te[t_(i mod m)]: the prompted model's logits at the real tokens equal the base model's
    on [t_0 .. t_(n-1 mod m) ; idx] at positions n .. n+T-1. Positions therefore shift by n."""
    if n + T + 1 > cfg.block_size:
        n = cfg.block_size - T - 1
    model = tiny_model(cfg, seed=seed)
    text = torch.randint(0, cfg.vocab_size, (m,), generator=torch.Generator().manual_seed(seed)).tolist()
    rule = [text[i % m] for i in range(n)]                            # cut, or the text repeated, to n tokens
    idx = _idx(2, T, seed, cfg.vocab_size)
    typed = model(torch.cat([torch.tensor([rule] * 2), idx], dim=1)).logits[:, n:]
    apply_prompt(model, PromptConfig(n_tokens=n, init="text", init_ids=text))
    assert torch.equal(model.soft_prompt.prompt, model.transformer.wte.weight[rule])
    mask = None
    if pad != "none":                                                 # one pad slot on the chosen side
        filler = torch.zeros(2, 1, dtype=torch.long)
        idx = torch.cat([filler, idx], 1) if pad == "left" else torch.cat([idx, filler], 1)
        mask = torch.ones_like(idx)
        mask[:, 0 if pad == "left" else -1] = 0
    got = model(idx, attention_mask=mask).logits
    assert got.shape == (2, idx.shape[1], cfg.vocab_size)              # the caller never sees the prompt
    real = got[:, 1:] if pad == "left" else got[:, :T]
    assert torch.allclose(real, typed, atol=1e-10, rtol=0)


@settings(deadline=None, max_examples=20)
@given(n=st.integers(1, 5), T=st.integers(2, 8), seed=st.integers(0, 100))
def test_the_loss_is_the_loss_of_the_stripped_logits_computed_by_hand(n, T, seed):
    model = tiny_model(CFG)
    apply_prompt(model, PromptConfig(n_tokens=n, init="vocab", seed=seed))
    _randomize(model, seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, CFG.vocab_size, (3, T), generator=g)
    targets = torch.randint(0, CFG.vocab_size, (3, T), generator=g)
    targets[torch.rand(3, T, generator=g) < 0.3] = IGNORE_INDEX
    targets[0, 0] = 5                                                 # at least one counted target
    mask = torch.ones_like(idx)
    mask[1, -1] = 0                                                   # a right-padded row
    targets[1, -1] = IGNORE_INDEX
    out = model(idx, targets, attention_mask=mask)
    assert out.logits.shape == (3, T, CFG.vocab_size)
    logp = torch.log_softmax(out.logits.double(), dim=-1)             # by hand, on what the caller got back
    keep = targets != IGNORE_INDEX
    by_hand = -logp[keep].gather(1, targets[keep][:, None]).mean()
    assert torch.allclose(out.loss, by_hand, atol=1e-12)


@settings(deadline=None, max_examples=15)
@given(init=st.sampled_from(["random", "vocab"]), n=st.integers(1, 4), side=st.sampled_from(["left", "right"]),
       seed=st.integers(0, 100))
def test_cached_generation_equals_uncached_with_the_prompt_and_padding_on_either_side(init, n, side, seed):
    model = tiny_model(CFG, seed=seed)
    apply_prompt(model, PromptConfig(n_tokens=n, init=init, seed=seed))
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, CFG.vocab_size, (5,), generator=g), torch.randint(0, CFG.vocab_size, (3,), generator=g)
    idx = torch.zeros(2, 5, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.long)
    idx[0], mask[0] = a, 1
    cols = slice(0, 3) if side == "right" else slice(2, 5)
    idx[1, cols], mask[1, cols] = b, 1
    N = CFG.block_size - n - 5
    cached = model.generate(idx, N, attention_mask=mask, use_cache=True)
    uncached = model.generate(idx, N, attention_mask=mask, use_cache=False)
    assert torch.equal(cached, uncached)
    alone = model.generate(b[None], N, use_cache=True)                # the padded row = the row alone
    assert torch.equal(cached[1], alone[0])


def test_generation_from_a_text_prompt_equals_generating_after_the_typed_text():
    model = tiny_model(CFG, seed=3)
    text = [3, 7, 11]
    idx = _idx(2, 4, seed=5)
    typed = model.generate(torch.cat([torch.tensor([text] * 2), idx], 1), 6)
    apply_prompt(model, PromptConfig(n_tokens=3, init="text", init_ids=text))
    assert torch.equal(model.generate(idx, 6), typed)


@pytest.mark.parametrize("head", [SequenceClassifier, TokenClassifier])
def test_task_heads_see_the_real_tokens_only_and_padding_side_does_not_matter(head):
    torch.manual_seed(0)
    clf = head(tiny_model(CFG), 3).double().eval()
    apply_prompt(clf, PromptConfig(n_tokens=4, init="random"))
    _randomize(clf)
    seq = _idx(1, 5, seed=2)
    pad = torch.zeros(1, 2, dtype=torch.long)
    right, left = torch.cat([seq, pad], 1), torch.cat([pad, seq], 1)
    ones, zeros = torch.ones(1, 5, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long)
    y = clf(seq).logits
    yr = clf(right, attention_mask=torch.cat([ones, zeros], 1)).logits
    yl = clf(left, attention_mask=torch.cat([zeros, ones], 1)).logits
    if head is TokenClassifier:
        assert yr.shape == (1, 7, 3)
        yr, yl = yr[:, :5], yl[:, 2:]
    assert torch.allclose(yr, y, atol=1e-10) and torch.allclose(yl, y, atol=1e-10)


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    return [{"idx": torch.randint(0, 24, (8,), generator=g), "labels": torch.tensor(i % 2)} for i in range(n)]


def _clf_loss(model, batch):
    return model(batch["idx"], labels=batch["labels"]).loss, {}


def test_only_the_prompt_and_the_head_train_and_frozen_weights_stay_bit_identical():
    torch.manual_seed(0)
    clf = SequenceClassifier(GPT(CFG), 2)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    names = apply_prompt(clf, PromptConfig(n_tokens=3, init="vocab"))
    assert names == ["body.soft_prompt"]
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable == {"body.soft_prompt.prompt", "head.weight", "head.bias"}
    assert count_adapter_parameters(clf) == 3 * CFG.n_embd
    b = _data()[0]
    _clf_loss(clf, {"idx": b["idx"][None], "labels": b["labels"][None]})[0].backward()
    assert {n for n, p in clf.named_parameters() if p.grad is not None} == trainable
    clf.zero_grad(set_to_none=True)
    P0 = clf.body.soft_prompt.prompt.detach().clone()
    train(clf, _data(), TrainConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=0, progress=False), loss_fn=_clf_loss)
    for n, p in clf.named_parameters():
        if n not in trainable:
            assert torch.equal(p, before[n]), f"frozen {n} changed"
            assert p.grad is None
    assert not torch.equal(clf.body.soft_prompt.prompt, P0)


def test_a_text_prompt_file_carries_its_token_ids_so_loading_needs_no_tokenizer(tmp_path):
    model = tiny_model(CFG, dtype=torch.float32)
    names = apply_prompt(model, PromptConfig(n_tokens=5, init="text", init_text="hello"), tokenizer=_Tok())
    _randomize(model)
    y = model(_idx()).logits
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter.json").read_text())
    assert meta["methods"][0]["config"]["init_ids"] == _Tok().encode("hello")
    fresh = tiny_model(CFG, dtype=torch.float32)
    assert load_adapter(fresh, tmp_path) == names                     # no tokenizer given
    assert torch.equal(fresh(_idx()).logits, y)


def test_a_classifier_round_trips_with_its_head_and_composes_with_lora(tmp_path):
    torch.manual_seed(0)
    clf = TokenClassifier(tiny_model(CFG, dtype=torch.float32), 3).eval()
    body = {k: v.clone() for k, v in clf.body.state_dict().items()}
    apply_lora(clf, LoRAConfig(r=2))
    apply_prompt(clf, PromptConfig(n_tokens=2, init="random", include_head=True))
    _randomize(clf)
    with torch.no_grad():
        clf.head.weight.normal_()
        for n, p in clf.named_parameters():
            if "lora_B" in n:
                p.normal_()
    y = clf(_idx()).logits
    save_adapter(clf, tmp_path)
    fresh = TokenClassifier(GPT(CFG), 3).eval()
    fresh.body.load_state_dict(body)
    load_adapter(fresh, tmp_path)
    assert torch.equal(fresh(_idx()).logits, y)


def test_nearest_tokens_of_a_text_prompt_are_the_text():
    model = tiny_model(CFG)
    text = [2, 9, 4, 17]
    apply_prompt(model, PromptConfig(n_tokens=6, init="text", init_ids=text))
    cos, ids = nearest_tokens(model.soft_prompt.prompt, model.transformer.wte.weight, k=2)
    assert ids[:, 0].tolist() == [2, 9, 4, 17, 2, 9]
    assert torch.allclose(cos[:, 0], torch.ones(6, dtype=torch.float64)) and (cos[:, 1] < 1 - 1e-6).all()


def test_vocab_and_random_inits():
    model = tiny_model(CFG)
    wte = model.transformer.wte.weight.detach().clone()
    apply_prompt(model, PromptConfig(n_tokens=5, init="vocab", seed=1))
    P = model.soft_prompt.prompt.detach()
    rows = [int(((wte - p).abs().sum(1) == 0).nonzero()[0]) for p in P]     # every row IS a vocabulary row
    assert len(set(rows)) == 5                                              # ... and distinct ones
    big = GPTConfig(vocab_size=24, block_size=600, n_layer=1, n_head=2, n_embd=64)
    m2 = tiny_model(big)
    apply_prompt(m2, PromptConfig(n_tokens=512, init="random", seed=0))
    std = m2.soft_prompt.prompt.detach().std().item()
    assert math.isclose(std, m2.transformer.wte.weight.detach().std().item(), rel_tol=0.02)   # the table's scale


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match=r"n_tokens=16 must be < block_size=16"):
        apply_prompt(GPT(CFG), PromptConfig(n_tokens=16))
    model = GPT(CFG).eval()
    apply_prompt(model, PromptConfig(n_tokens=10))
    with pytest.raises(ValueError, match=r"soft prompt n_tokens=10 \+ sequence length 7 = 17 must fit block_size=16"):
        model(_idx(1, 7))
    model(_idx(1, 6))                                                   # 10 + 6 = 16 fits
    with pytest.raises(ValueError, match=r"6 \+ max_new_tokens 2 \+ 10 positions taken by a prefix or soft prompt"):
        model.generate(_idx(1, 6), 2)                                   # up front, before any step
    past = model(_idx(1, 6), use_cache=True).past_kv                    # a forward past the end, cached
    with pytest.raises(ValueError, match=r"soft prompt n_tokens=10 \+ sequence length 7 \(cached \+ new\) must fit"):
        model(_idx(1, 1), past_kv=past)
    with pytest.raises(ValueError, match=r"idx holds token id 99 outside \[0, vocab_size=24\)"):
        model(torch.tensor([[1, 99]]))                                  # the caller's terms, not an IndexError
    with pytest.raises(ValueError, match=r"give exactly one of idx \(token ids\) or inputs_embeds"):
        model()
    with pytest.raises(TypeError, match=r"idx must be an integer tensor"):
        model([[1, 2]])
    with pytest.raises(ValueError, match=r"already has a soft prompt"):
        apply_prompt(model, PromptConfig(n_tokens=2))
    with pytest.raises(ValueError, match=r"needs the tokenizer"):
        apply_prompt(GPT(CFG), PromptConfig(n_tokens=2, init="text", init_text="hello"))
    with pytest.raises(ValueError, match=r"token id 30 outside \[0, vocab_size=24\)"):
        apply_prompt(GPT(CFG), PromptConfig(n_tokens=2, init="text", init_ids=[1, 30]))
    with pytest.raises(ValueError, match=r"contains no GPT"):
        apply_prompt(torch.nn.Linear(2, 2), PromptConfig(n_tokens=2))
    with pytest.raises(TypeError, match=r"cfg must be a PromptConfig"):
        apply_prompt(GPT(CFG), LoRAConfig())
    assert isinstance(model.soft_prompt, SoftPrompt)


def test_generate_counts_the_soft_prompt_against_the_context_up_front():
    model = tiny_model(CFG, seed=3)
    idx = _idx(2, 6, seed=1)                                            # 6 + 10 = block_size 16: fits alone
    model.generate(idx, 10)
    apply_prompt(model, PromptConfig(n_tokens=3, init="random"))
    with pytest.raises(ValueError, match="3 positions taken by a prefix or soft prompt"):
        model.generate(idx, 10)                                         # 3 + 6 + 10 > 16, before any step
    assert model.generate(idx, 7).shape == (2, 7)                       # 3 + 6 + 7 = 16 fits
    with disable_adapters(model):
        assert model.generate(idx, 10).shape == (2, 10)                 # disabled: the prompt takes nothing
