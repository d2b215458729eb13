"""minift against the libraries it follows, on identical weights, where they are installed: peft (LoRA both
ways, prompt tuning, prefix tuning, LoftQ), bitsandbytes (NF4 and its Linear4bit, int8 rows, LLM.int8()), trl
(the DPO losses) and pyreft (LoReFT).
(transformers' GPT-2: tests/test_model.py.)

None of them is a dependency of minift, and CI installs none of them, so each test skips without its
library. To run them (CPU builds suffice):

    pip install transformers peft bitsandbytes trl && python -m pytest -q tests/test_interop.py

pyreft 0.1.0 pins transformers 4.45.1 and, through it, another torch; its intervention imports without
them: `pip install --no-deps pyreft pyvene` beside the others (pyvene imports matplotlib).

They last passed with transformers 5.25.0, peft 0.21.2, bitsandbytes 0.50.2, trl 1.16.0 and pyreft 0.1.0
(torch 2.13.0, CPU).

Two disagreements found this way are bitsandbytes', not ours. Its CPU int8_mm_dequant (0.50.2) scales
LLM.int8()'s int32 sums by 6.200124e-05, not 1 / 127² = 6.2000124e-05 (test_llm_int8_is_bitsandbytes_linear8bitlt).
Its CPU `dequantize_4bit` (0.50.2) returns
wrong values for many weights whose rows do not hold whole blocks (8 x 96 in blocks of 64: errors up to 2;
64 x 32 in blocks of 64; 16 x 256 in blocks of 512), and the right ones in every case tried whose rows do,
while its stored codes and absmax are right and equal ours. So ours is compared with bitsandbytes' storage
decoded by the format's definition, and with its dequantize_4bit only where rows hold whole blocks.
"""
import math

import pytest
import torch

from minift.align.dpo import DPOConfig, dpo_loss
from minift.align.logps import sequence_logps
from minift.checkpoint import load_gpt2
from minift.model import GPTConfig
from minift.peft.io import export_peft, import_peft
from minift.peft.lora import LoRAConfig, apply_lora
from minift.peft.common import disable_adapters
from minift.peft.prefix import PrefixConfig, apply_prefix, prefix_modules
from minift.peft.prompt import PromptConfig, apply_prompt, prompt_layers
from minift.peft.reft import loreft, orthonormal_rows
from minift.quant.int8 import int8_matmul, quantize_absmax
from minift.quant.nf4 import CODES, dequantize_nf4, quantize_nf4, unpack_4bit
from minift.quant.qlora import loftq
from test_model import _ids, _write_hf_gpt2

CFG = GPTConfig(vocab_size=31, block_size=12, n_layer=2, n_head=2, n_embd=8)


def _hf_gpt2(folder):
    """A random GPT-2 in the Hugging Face layout, loaded by both: (minift's GPT, transformers' GPT2LMHeadModel)."""
    transformers = pytest.importorskip("transformers")
    _write_hf_gpt2(folder, CFG)
    return load_gpt2(folder).eval(), transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def _word_tokenizer(transformers):
    """A transformers tokenizer over CFG's vocabulary: <pad>, <eos>, then the words a .. z (ids 2 .. 27)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["<pad>", "<eos>"] + [chr(ord("a") + i) for i in range(26)]
    wl = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    wl.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=wl, eos_token="<eos>", pad_token="<pad>")


# ---- peft ----------------------------------------------------------------------------------------

LORAS = {
    "plain": LoRAConfig(r=2, alpha=4, targets=("attn.c_attn", "mlp.c_fc"), qkv=None),
    "q,v slices": LoRAConfig(r=2, alpha=4, targets=("attn.c_attn",), qkv=("q", "v")),
    "rsLoRA": LoRAConfig(r=4, alpha=4, targets=("attn.c_proj",), qkv=None, use_rslora=True),
    "DoRA": LoRAConfig(r=2, alpha=4, targets=("attn.c_attn", "mlp.c_proj"), qkv=None, use_dora=True),
}


@pytest.mark.lesson05
@pytest.mark.parametrize("name", sorted(LORAS))
def test_lora_written_by_export_peft_gives_the_same_logits_in_peft(name, tmp_path):
    """export_peft's folder, loaded by peft's PeftModel.from_pretrained onto transformers' GPT-2 with the
    same base weights, gives minift's logits (the q,v slices as a block-diagonal LoRA of c_attn)."""
    peft = pytest.importorskip("peft")
    ours, hf = _hf_gpt2(str(tmp_path / "base"))
    apply_lora(ours, LORAS[name])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                      # B = 0 at init: give every tensor a value
        for n, p in ours.named_parameters():
            if "lora_" in n:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) + (1.0 if "magnitude" in n else 0.0))
    export_peft(ours, str(tmp_path / "adapter"))
    theirs = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    idx = _ids(CFG, 2, 9, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, theirs(idx).logits)


@pytest.mark.lesson05
@pytest.mark.parametrize("kind", ["plain", "rsLoRA", "DoRA"])
def test_lora_saved_by_peft_gives_the_same_logits_in_minift(kind, tmp_path):
    """A LoRA that peft builds (random A and B, Conv1D's fan_in_fan_out) and saves, read by import_peft onto
    minift's GPT with the same base weights, gives peft's logits."""
    peft = pytest.importorskip("peft")
    ours, hf = _hf_gpt2(str(tmp_path / "base"))
    conf = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True,
                           init_lora_weights=False, use_rslora=kind == "rsLoRA", use_dora=kind == "DoRA")
    torch.manual_seed(0)
    theirs = peft.get_peft_model(hf, conf).eval()
    theirs.save_pretrained(str(tmp_path / "adapter"))
    assert len(import_peft(ours, str(tmp_path / "adapter"))) == 2 * CFG.n_layer
    idx = _ids(CFG, 2, 9, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, theirs(idx).logits)


@pytest.mark.lesson08
@pytest.mark.parametrize("n,text", [(5, "a b"), (3, "c d e f g"), (4, "h i j k")])
def test_prompt_tuning_starts_and_runs_as_peft(n, text, tmp_path):
    """peft's prompt tuning with a text init (the text's embeddings, cut to n or repeated to fill n) and
    minift's init="text" on the same token ids start from the same P; the models give the same logits
    for the real tokens (peft's also cover the n virtual ones, in front): P takes positions 0 .. n-1."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    ours, hf = _hf_gpt2(str(tmp_path / "base"))
    tok = _word_tokenizer(transformers)
    tok.save_pretrained(str(tmp_path / "tok"))
    theirs = peft.get_peft_model(hf, peft.PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init="TEXT", prompt_tuning_init_text=text,
        tokenizer_name_or_path=str(tmp_path / "tok"))).eval()
    apply_prompt(ours, PromptConfig(n_tokens=n, init="text", init_ids=tok(text)["input_ids"]))
    (_, layer), = prompt_layers(ours)
    assert torch.equal(layer.prompt.detach(), theirs.prompt_encoder["default"].embedding.weight.detach())
    idx = _ids(CFG, 2, CFG.block_size - n, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx).logits, theirs(input_ids=idx).logits[:, n:])


@pytest.mark.lesson07
def test_prefix_tuning_has_peft_layout_and_peft_shifts_the_positions(tmp_path):
    """minift's prefix as peft's prefix-tuning embedding, P rows of L · 2 · C (block l's keys, then its
    values, H heads of D each), gives in peft the logits of minift's base model with those keys and values
    as a KV cache of P tokens: the same layout. peft passes the prefix as past key values, so its real
    tokens take positions P .. P+T-1; minift's prefix takes no position (prefix.py), and differs."""
    peft = pytest.importorskip("peft")
    ours, hf = _hf_gpt2(str(tmp_path / "base"))
    P = 3
    apply_prefix(ours, PrefixConfig(n_prefix=P, reparam=False, init_std=0.5))
    (_, enc), = prefix_modules(ours)
    kv = enc.key_values().detach()                                            # (L, 2, H, P, D)
    theirs = peft.get_peft_model(hf, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).eval()
    with torch.no_grad():
        theirs.prompt_encoder["default"].embedding.weight.copy_(kv.permute(3, 0, 1, 2, 4).reshape(P, -1))
        idx = _ids(CFG, 2, CFG.block_size - P, 5)
        B = idx.shape[0]
        cache = tuple((k[None].expand(B, -1, -1, -1), v[None].expand(B, -1, -1, -1)) for k, v in kv)
        with disable_adapters(ours):
            as_cache = ours(idx, past_kv=cache).logits                        # positions P .. P+T-1
        torch.testing.assert_close(as_cache, theirs(input_ids=idx).logits)
        assert not torch.allclose(ours(idx).logits, as_cache, atol=1e-3)    # minift: positions 0 .. T-1


# ---- bitsandbytes --------------------------------------------------------------------------------

# (rows, columns, block): rows holding whole blocks, blocks spanning rows, and a last block cut short
NF4_CASES = [(8, 64, 64), (3, 64, 64), (16, 128, 128), (16, 256, 256), (24, 40, 64), (8, 96, 256), (32, 128, 512)]


def _bnb():
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    return bnb_f


@pytest.mark.lesson12
@pytest.mark.parametrize("rows,cols,block", NF4_CASES)
@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_stores_what_bitsandbytes_stores(rows, cols, block, double_quant):
    """quantize_nf4 and bitsandbytes' quantize_4bit(quant_type="nf4") on one weight: the same packed bytes
    (high nibble first) and, without double quantization, the same absmax; with it, the same storage
    (one int8-sized code per block, one float32 per 256 blocks). The 16 values agree to float32 rounding
    (ours from Φ⁻¹, theirs a printed table), and ŵ = NF4[q] · absmax of either's storage agrees."""
    F = _bnb()
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows * cols + block))
    q, st = F.quantize_4bit(w, blocksize=block, quant_type="nf4", compress_statistics=double_quant)
    s = quantize_nf4(w, block, double_quant)
    assert torch.equal(s.packed.reshape(-1), q.reshape(-1))
    torch.testing.assert_close(CODES["nf4"](), st.code, atol=2 * torch.finfo(torch.float32).eps, rtol=0)
    if double_quant:
        assert s.absmax_q.numel() == st.absmax.numel() and st.absmax.element_size() == s.absmax_q.element_size()
        assert s.absmax_scales.numel() == st.state2.absmax.numel() and st.state2.blocksize == s.dq_block_size
        return
    assert torch.equal(s.absmax, st.absmax)
    codes = unpack_4bit(q.reshape(-1), w.numel()).long()                 # high nibble first, as ours
    theirs = (st.code[codes] * st.absmax.repeat_interleave(block)[: w.numel()]).reshape(w.shape)   # by definition
    torch.testing.assert_close(dequantize_nf4(s), theirs)
    if cols % block == 0:                                      # see the module docstring
        torch.testing.assert_close(dequantize_nf4(s), F.dequantize_4bit(q, st))


@pytest.mark.lesson11
def test_int8_rows_are_bitsandbytes_vectorwise_quantization():
    """quantize_absmax(w, "row") is LLM.int8()'s row-wise absmax quantization: the same int8 codes as
    bitsandbytes' int8_vectorwise_quant, and a scale of (its row absmax) / 127."""
    F = _bnb()
    w = 3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    q, row_absmax = F.int8_vectorwise_quant(w)[:2]
    t = quantize_absmax(w, "row")
    assert torch.equal(t.q, q)
    torch.testing.assert_close(t.scale.reshape(-1), row_absmax / 127)


@pytest.mark.lesson12
@pytest.mark.parametrize("n_out,n_in,batch", [(32, 64, 3), (32, 128, 1), (64, 256, 5), (96, 512, 2), (8, 64, 4)])
def test_nf4_linear_is_bitsandbytes_linear4bit(n_out, n_in, batch):
    """QLoRA's frozen layer (NF4Linear, blocks of 64, no double quantization) is bitsandbytes' Linear4bit
    on the same nn.Linear: the same packed bytes, and its output within float32 rounding of a dot product
    (each sums the same products in its own order), bias included.
    Its layer runs in training mode, where its CPU path dequantizes and multiplies in float32. In eval
    mode, on a CPU with AVX512-BF16, it repacks the weight and multiplies in bfloat16 (0.5% off), and
    refuses out_features that are not a multiple of 32 (an AssertionError; bitsandbytes 0.50.2)."""
    bnb = pytest.importorskip("bitsandbytes")
    from minift.quant.ops import NF4Linear
    g = torch.Generator().manual_seed(n_out * n_in)
    lin = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g))
        lin.bias.copy_(torch.randn(n_out, generator=g))
    x = torch.randn(batch, n_in, generator=g)
    theirs = bnb.nn.Linear4bit(n_in, n_out, bias=True, compute_dtype=torch.float32, compress_statistics=False,
                               quant_type="nf4")
    theirs.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False, compress_statistics=False,
                                      quant_type="nf4", blocksize=64)
    theirs.bias = torch.nn.Parameter(lin.bias.detach().clone())
    theirs = theirs.to("cpu").train()
    ours = NF4Linear(lin, block_size=64, double_quant=False)
    assert torch.equal(theirs.weight.data.reshape(-1), ours.packed.reshape(-1))
    with torch.no_grad():
        diff = (ours(x) - theirs(x)).abs()                     # (batch, out)
        # two float32 sums of the same n_in products, each within n_in·eps·Σ|x_k ŵ_k| of the exact one
        bound = 2 * n_in * torch.finfo(torch.float32).eps * (x.abs() @ ours.dequantized_weight().abs().T + lin.bias.abs())
    assert (diff <= bound).all(), f"worst difference {diff.max():.3g} where the rounding bound is {bound.min():.3g}"

@pytest.mark.lesson11
@pytest.mark.parametrize("seed", range(6))
def test_llm_int8_is_bitsandbytes_linear8bitlt(seed):
    """Int8Linear's product (int8_matmul on the stored codes) is bitsandbytes' Linear8bitLt in eval mode:
    the same weight codes, the same outlier columns in float, the same int8 codes for the rest. Inputs sit
    on grids (k / 32 and k / 64, integer k, a ±127 code in every row) where rounding has no ties: it
    computes x · (127 / absmax) on float16-cast activations, we x / (absmax / 127), and off the grid a code
    can differ by one.

    Found this way: its CPU int8_mm_dequant (bitsandbytes 0.50.2) rescales the int32 sums by 6.200124e-05
    where 1 / 127² = 6.2000124e-05, so its int8 part comes out 1.8e-5 too large (relative). The test
    reads that factor from bitsandbytes and checks that it is all that differs. Two more differences,
    not tested: its row scale of x skips only the outlier *elements* (|x| >= 6), so a smaller entry of an
    outlier column still sets its row's scale (x = [[1, 2, 9], [.5, 1, 4]]: its scales are 2 and 4, the
    paper's and ours 2 and 1); and in training mode its CPU path dequantizes W and multiplies in float."""
    bnb = pytest.importorskip("bitsandbytes")
    g = torch.Generator().manual_seed(seed)
    N, n_in, n_out = 1 + seed, 24 + 8 * seed, 5 + seed

    def grid(rows, cols, step):                               # k · step, k in [-126, 126], one ±127 per row
        k = torch.randint(-126, 127, (rows, cols), generator=g).float()
        k[torch.arange(rows), torch.randint(0, cols, (rows,), generator=g)] = 127.0
        return k * step

    x = grid(N, n_in, 1 / 32)                                  # |x| <= 3.97 < 6
    O = torch.zeros(n_in, dtype=torch.bool)
    O[torch.randperm(n_in, generator=g)[: seed % 3]] = True    # outlier features: every entry > 6
    sign = 2 * (torch.rand(N, int(O.sum()), generator=g) > 0.5).float() - 1
    x[:, O] = (7 + torch.randint(0, 40, (N, int(O.sum())), generator=g) / 8) * sign
    W = grid(n_out, n_in, 1 / 64)
    layer = bnb.nn.Linear8bitLt(n_in, n_out, bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(W.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu").eval()
    wq = quantize_absmax(W, "row")
    assert torch.equal(layer.weight.data, wq.q)

    ours = int8_matmul(x, None, 6.0, W_q=wq)
    in_float = int8_matmul(x * O, None, 6.0, W_q=wq)           # X[:, O] Ŵ[:, O]ᵀ alone
    in_int8 = int8_matmul(x * ~O, None, math.inf, W_q=wq)      # s_x s_wᵀ ⊙ Q_x Q_wᵀ over ~O alone
    torch.testing.assert_close(ours, in_float + in_int8)
    one = torch.ones(1, 1, dtype=torch.int32)                  # its rescale of an int32 sum of 1 by 127 · 127
    factor = float(torch.ops.bitsandbytes.int8_mm_dequant(one, torch.full((1,), 127.0), torch.full((1,), 127.0),
                                                          dtype=torch.float32))
    assert abs(factor - 1) < 3e-5
    torch.testing.assert_close(layer(x.clone()).float(), in_float + factor * in_int8, atol=1e-6, rtol=1e-6)
    if O.any():                                                # the decomposition matters on these inputs
        assert (ours - int8_matmul(x, None, math.inf, W_q=wq)).abs().max() > 1e-2


def _peft_loftq_on_the_cpu():
    """peft's loftq_init, run on the CPU: it moves the weight to "xpu" or "cuda" unconditionally, so its
    source is run with that one line changed, and nothing else."""
    lu = pytest.importorskip("peft.utils.loftq_utils")
    _bnb()
    import inspect
    import textwrap
    src = textwrap.dedent(inspect.getsource(lu.loftq_init))
    line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    if src.count(line) != 1:
        pytest.skip("this peft's loftq_init picks its device another way")
    ns = dict(vars(lu))
    exec(src.replace(line, 'compute_device = "cpu"'), ns)
    return ns["loftq_init"]


@pytest.mark.lesson12
@pytest.mark.parametrize("rows,cols", [(64, 128), (96, 64), (32, 256)])
@pytest.mark.parametrize("iters", [1, 2, 5])
def test_loftq_is_pefts_at_alpha_equal_to_r_and_pefts_ignores_the_scaling(rows, cols, iters):
    """loftq with s = 1 and NF4 in blocks of 64 (no double quantization) gives peft's loftq_init: the same A
    (Σ_r^½ V_rᵀ), B (U_r Σ_r^½) and quantized base. peft puts the same A and B in its layer whatever its
    scaling s = α / r; minift divides both by √s so that s B A is the rank-r fit at any α. At α = 2r, one
    iteration of peft's then leaves exactly plain quantization's error (R − 2 R_r has R's norm, since the
    best rank-r part R_r of R is orthogonal to R − R_r), and more leave a larger one (peft 0.21.2;
    huggingface/peft#1982). Rows hold whole blocks (the module docstring)."""
    peft_loftq = _peft_loftq_on_the_cpu()
    w = 0.02 * torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows + cols + iters))
    nf4 = lambda t: dequantize_nf4(quantize_nf4(t, 64)).reshape(t.shape)   # noqa: E731
    q_peft, A_peft, B_peft = peft_loftq(w.clone(), num_bits=4, reduced_rank=4, num_iter=iters)
    ours = loftq(w, 4, 1.0, nf4, iters)
    assert ours["best"] == iters                               # each iterate better: minift keeps the last, as peft
    torch.testing.assert_close(ours["A"], A_peft, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["B"], B_peft, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(nf4(ours["target"]), q_peft, atol=1e-7, rtol=0)
    err = lambda q, s, B, A: float(torch.linalg.matrix_norm(w - (q + s * B @ A)))   # noqa: E731
    twice = loftq(w, 4, 2.0, nf4, iters)                       # α = 2r: the same fit, s B A
    assert abs(err(nf4(twice["target"]), 2.0, twice["B"], twice["A"]) - ours["errors"][-1]) < 1e-5
    plain, theirs = ours["errors"][0], err(q_peft, 2.0, B_peft, A_peft)    # peft's A and B in a layer with s = 2
    assert (abs(theirs - plain) < 1e-5 if iters == 1 else theirs > plain + 1e-3), (
        "peft's LoftQ init no longer leaves plain quantization's error at alpha = 2r: if peft now divides by "
        "the scaling (huggingface/peft#1982), lesson 12's README and this test should say so")


# ---- trl -----------------------------------------------------------------------------------------

@pytest.mark.lesson15
@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_losses_are_trls_on_its_own_batch(loss_type, tmp_path):
    """trl's DPOTrainer builds a batch from two preference pairs (its tokenization, EOS, padding and
    completion mask) and computes its loss with a policy and a reference GPT-2; minift's sequence_logps
    and dpo_loss on the same ids and masks, with the same weights in minift's GPT, give the same loss.
    IPO on per-token averages in both (DPOConfig's default for IPO). trl's bf16 default is turned off:
    it would run the forward passes under bf16 autocast. (trl 1.16's "sigmoid" has no label smoothing,
    so conservative DPO is not compared.)"""
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    tok = _word_tokenizer(transformers)
    folders = {}
    for role, seed in (("policy", 0), ("ref", 1)):
        folders[role] = str(tmp_path / role)
        _write_hf_gpt2(folders[role], CFG, seed=seed)
    pairs = datasets.Dataset.from_dict({"prompt": ["a b", "c"], "chosen": [" d e", " f"], "rejected": [" g", " h i j"]})
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), beta=0.3, loss_type=[loss_type], report_to="none",
                         per_device_train_batch_size=2, use_cpu=True, bf16=False, fp16=False)
    trainer = trl.DPOTrainer(model=transformers.GPT2LMHeadModel.from_pretrained(folders["policy"]),
                             ref_model=transformers.GPT2LMHeadModel.from_pretrained(folders["ref"]), args=args,
                             train_dataset=pairs, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))                 # rows: the chosen, then the rejected
    trainer.model.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch)
        average = DPOConfig(loss_type=loss_type).average_logps
        ids, mask, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
        pol, ref = (sequence_logps(load_gpt2(folders[r]).eval(), ids, mask, completion, average)
                    for r in ("policy", "ref"))
        B = ids.shape[0] // 2
        ours = dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], 0.3, loss_type)[0].mean()
    torch.testing.assert_close(ours, theirs)


# ---- pyreft --------------------------------------------------------------------------------------

@pytest.mark.lesson10
def test_loreft_is_pyrefts_intervention():
    """pyreft's LoreftIntervention holding minift's R (as its rotate_layer, Rᵀ: C x r, orthonormal columns),
    W and b (its learned_source) edits hidden states as minift's loreft: h + Rᵀ (W h + b − R h)."""
    pyreft = pytest.importorskip("pyreft")
    C, r = 16, 4
    g = torch.Generator().manual_seed(0)
    R = orthonormal_rows(torch.randn(r, C, generator=g))                     # (r, C), R Rᵀ = I
    W, b = torch.randn(r, C, generator=g), torch.randn(r, generator=g)
    theirs = pyreft.LoreftIntervention(embed_dim=C, low_rank_dimension=r, dtype=torch.float32)
    theirs.load_state_dict({"weight": W, "bias": b, "rotate_layer": R.T.contiguous()})
    h = torch.randn(3, 5, C, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(loreft(h, R, W, b), theirs(h))
