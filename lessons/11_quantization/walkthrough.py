"""Lesson 11: int8 quantization: absmax vs zero point, granularity, outliers and LLM.int8().

Prints, top to bottom:

  1. absmax vs zero-point int8, per tensor / per row / per block of 64, on the real weights of the
     shipped base model and on a real post-GELU activation: the relative error ‖x̂ - x‖ / ‖x‖ of
     each, and the bits per value each scheme stores;
  2. outlier features: the largest |activation| per feature column at the inputs of the base model's
     linear layers, and what one large column does to vector-wise int8 of a layer's input;
  3. the whole model in int8 (`Int8Linear` for every linear layer): perplexity and fact recall of
     the float model, plain vector-wise int8 and LLM.int8() (threshold 6), first on the base model,
     then on the same model with emergent-style outliers planted in (two hidden features scaled up
     x20, then x150, in the LayerNorms that feed c_attn and c_fc, and scaled down as much in those
     layers' weights: the float function is unchanged, the int8 one is not);
  4. what the int8 model stores.

    python lessons/11_quantization/walkthrough.py          # or: minift run 11
    python lessons/11_quantization/walkthrough.py --fast   # fewer windows and probes (the tests)

Everything it uses lives in the library (minift/quant/int8.py, minift/quant/qlora.py:
quantize_model, minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 15
FAST_SECONDS = 9

import copy
import math

import torch

from minift import course
from minift.pretrain import forgetting_probe, load_base
from minift.quant.int8 import GRANULARITIES, Int8Linear, int8_matmul, quantize_absmax, quantize_zeropoint
from minift.quant.qlora import QLoRAConfig, quantize_model
from minift.report import header, table

# --fast, the base-model check, one thread, the clock: minift/course.py
args = course.start("11", course.parser(__doc__, "fewer evaluation windows and fact probes (seconds)"))
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives
torch.set_grad_enabled(False)
PROBE = dict(n_windows=2, n_facts=12) if FAST else dict(n_windows=16, n_facts=72)
OUTLIER_FEATURES, OUTLIER_SCALE = (5, 77), 20.0          # part 2; part 3 also tries x150
PLANT_SCALES = (20.0, 150.0)

base, tok = load_base(device=DEV)
C = base.config.n_embd


def rel_err(xh, x):
    return float(torch.linalg.vector_norm(xh - x) / torch.linalg.vector_norm(x))


def layer_inputs(model, text_batch):
    """The input of every linear layer of the model for one batch (forward hooks)."""
    seen, hooks = {}, []
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and n != "lm_head":
            hooks.append(m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0])))
    model(text_batch)
    for h in hooks:
        h.remove()
    return seen


from minift import world  # noqa: E402
from minift.tasks import LMDataset  # noqa: E402

val = LMDataset(tok, world.pretrain_corpus("val"), 128)
batch = torch.stack([val[i]["idx"] for i in range(4)]).to(DEV)          # (4, 128) real text
inputs = layer_inputs(base, batch)

# ==============================================================================================
header("1. absmax vs zero point, per tensor / row / block: relative error on real tensors")
tensors = {f"h.{i}.{n}.weight": base.get_submodule(f"transformer.h.{i}.{n}").weight
           for i in (0, 3) for n in ("attn.c_attn", "mlp.c_fc", "mlp.c_proj")}
tensors["wte.weight"] = base.transformer.wte.weight
gelu_out = inputs["transformer.h.1.mlp.c_proj"].reshape(-1, 4 * C)     # a post-GELU activation (tokens, 4C)
tensors["h.1 GELU output (activation)"] = gelu_out
rows = []
for name, x in tensors.items():
    cells = [name, f"{tuple(x.shape)}", f"{float(x.min()):+.2f} .. {float(x.max()):+.2f}"]
    for g in GRANULARITIES:
        for q in (quantize_absmax, quantize_zeropoint):
            cells.append(f"{rel_err(q(x, g, 64).dequantize(), x):.4f}")
    rows.append(cells)
table(["tensor", "shape", "range"] + [f"{g} {k}" for g in GRANULARITIES for k in ("absmax", "zeropt")], rows)
W = tensors["h.0.mlp.c_fc.weight"]
print(f"bits per value stored for h.0.mlp.c_fc ({W.numel():,} values): per tensor 8 + {32 / W.numel():.5f}, "
      f"per row 8 + 32 / {W.shape[1]} = {8 + 32 / W.shape[1]:.3f}, per block of 64: 8 + 32 / 64 = 8.5 "
      f"(zero point adds its 32-bit z per group: 8 + 64 / 64 = 9 per block).")

# ==============================================================================================
header("2. Outlier features: the largest |x| per feature column at each layer's input")
rows = []
for n, x in inputs.items():
    col = x.reshape(-1, x.shape[-1]).abs().amax(0)                       # (in,) max |x| per feature
    top = col.topk(3)
    rows.append((n.replace("transformer.", ""), f"{float(col.median()):.2f}", f"{float(top.values[0]):.2f}",
                 ", ".join(f"{int(i)}" for i in top.indices), f"{int((col > 6.0).sum())}"))
table(("layer input", "median max|x|", "largest", "top-3 features", "features > 6"), rows)

x = inputs["transformer.h.2.mlp.c_fc"].reshape(-1, C)                     # (tokens, C) after ln_2
Wfc = base.transformer.h[2].mlp.c_fc.weight
exact = x.double() @ Wfc.double().T
x_out = x.clone()
x_out[:, list(OUTLIER_FEATURES)] *= OUTLIER_SCALE                        # two features x20 ...
W_out = Wfc.clone()
W_out[:, list(OUTLIER_FEATURES)] /= OUTLIER_SCALE                        # ... the weight /20: same product
rows = []
for label, xx, WW in (("as trained", x, Wfc), (f"features {OUTLIER_FEATURES} x{OUTLIER_SCALE:g}, weight /{OUTLIER_SCALE:g}", x_out, W_out)):
    float_err = rel_err((xx.double() @ WW.double().T), exact)
    r = [label, f"{float(xx.abs().max()):.1f}", f"{float_err:.1e}"]
    for th in (math.inf, 6.0):
        r.append(f"{rel_err(int8_matmul(xx, WW, th).double(), exact):.4f}")
    r.append(f"{int((xx.abs().amax(0) > 6.0).sum())}")
    rows.append(tuple(r))
table(("h.2.mlp.c_fc input", "max |x|", "float", "int8 (vector-wise)", "LLM.int8() (6.0)", "outlier columns"), rows)
print("the error of X W^T against the float64 product: vector-wise int8 gives each token one scale, so one large "
      "feature in a row rounds the row's other features to a few levels; LLM.int8() multiplies the columns over the "
      "threshold in float and the rest in int8.")

# ==============================================================================================
header("3. The whole model in int8: quality of float, vector-wise int8 and LLM.int8()")


def plant_outliers(model, scale):
    """Scale features OUTLIER_FEATURES of every LayerNorm that feeds a linear layer (ln_1 -> attn.c_attn,
    ln_2 -> mlp.c_fc; gain and bias) up by `scale` and the matching input columns of that layer down:
    the float function is unchanged in exact arithmetic, but the layers' inputs now have outliers."""
    m = copy.deepcopy(model)
    j = list(OUTLIER_FEATURES)
    for block in m.transformer.h:
        for ln, lin in ((block.ln_1, block.attn.c_attn), (block.ln_2, block.mlp.c_fc)):
            ln.weight[j] *= scale
            ln.bias[j] *= scale
            lin.weight[:, j] /= scale
    return m


def int8_model(model, threshold):
    m = copy.deepcopy(model)
    quantize_model(m, QLoRAConfig(quant="int8", threshold=threshold))
    return m


rows = []
variants = [("base model", base)] + [(f"outliers x{k:g} planted", plant_outliers(base, k)) for k in PLANT_SCALES]
for label, fp in variants:
    for kind, m in (("float32", fp), ("int8, vector-wise (threshold inf)", int8_model(fp, math.inf)),
                    ("LLM.int8() (threshold 6)", int8_model(fp, 6.0))):
        t0 = course.clock()                 # CPU seconds (GPU: synchronized wall): other jobs do not inflate it
        p = forgetting_probe(m, tok, **PROBE)
        rows.append((label, kind, f"{p['pretrain_ppl']:.3f}", f"{p['fact_accuracy']:.1%}", f"{course.clock() - t0:.1f}s"))
table(("model", "weights", "val ppl", "facts", "eval time"), rows)
print(f"val ppl on {PROBE['n_windows']} pretraining val windows of 128 tokens, facts on {PROBE['n_facts']} "
      f"closed-book probes (minift.pretrain.forgetting_probe). Every linear layer but the tied lm_head is an "
      f"Int8Linear: int8 weights, one scale per output row, activations quantized per token on the fly. eval time: "
      f"{course.clock_name()} seconds of the probe.")

# ==============================================================================================
header("4. What the int8 model stores")
m8 = int8_model(base, 6.0)
layers = [m for m in m8.modules() if isinstance(m, Int8Linear)]
n_w = sum(m.weight_q.numel() for m in layers)
stored = sum(m.weight_q.numel() * 1 + m.weight_scale.numel() * 4 for m in layers)
print(f"{len(layers)} Int8Linear layers hold {n_w:,} weights in {stored:,} bytes ({8 * stored / n_w:.3f} bits per "
      f"weight; float32: {4 * n_w:,} bytes, {4 * n_w / stored:.2f}x more). The embedding ({base.transformer.wte.weight.numel():,} "
      f"values, tied to the output layer) stays in float: LLM.int8() quantizes the linear layers only.")
print(f"\ndone in {course.elapsed():.1f}s")
