"""Lesson 00: the transformer, piece by piece.

Opens up the shipped base model (data/base/) and prints, top to bottom:

  1. the tokenizer: a TinyWorld sentence as BPE tokens and ids, the special tokens, and the
     prompt/response template with its loss mask;
  2. the model: its config, where every parameter lives, and the shape of every tensor in
     one forward pass;
  3. next-token prediction: the top-5 next tokens after "<name> lives in", and how surprised
     the model is by each token of a sentence (the loss);
  4. attention: the attention probabilities of a few heads as text heatmaps;
  5. generation: greedy and sampled continuations, and a check that the KV cache changes
     nothing.

    python lessons/00_transformer/walkthrough.py          # or: minift run 00
    python lessons/00_transformer/walkthrough.py --fast   # fewer prompts, shorter generations

Everything it uses lives in the library (minift/model.py, minift/tokenizer.py); this file
only calls it and prints.
"""
EXPECTED_SECONDS = 11    # CPU seconds on the 2-core EPYC VM the READMEs are measured on (--figures included)
FAST_SECONDS = 5

import math
import time

import torch

from minift import course, figures, world
from minift.pretrain import BASE_DIR, PROBES, VOCAB_SIZE, base_metrics, fact_accuracy, fact_probes, load_base
from minift.tokenizer import SPECIAL_TOKENS
from minift.report import header

# the arguments, the base-model check, one thread (a 1M-parameter model gains nothing from more, and on
# a busy CPU extra threads spin-wait: one thread is 10-40x faster there), the clock: minift/course.py
args = course.start("00", course.parser(__doc__, "fewer prompts and shorter generations (seconds)"))
torch.set_grad_enabled(False)          # we only look at the model in this lesson: no training
DEV = args.device                      # --device: cpu (the default, what the README quotes), cuda or cuda:N


def show(tok, i):
    """A token id as readable text: ' lives' keeps its leading space, a newline shows as \\n."""
    return repr(tok.decode([i]))[1:-1]


model, tok = load_base(device=DEV)
cfg = model.config
W = world.get_world()
p, q, r = W.people[0], W.people[1], W.people[2]          # three real TinyWorld people
she = p.pronoun.capitalize()
print(f"Loaded the base model from {BASE_DIR}/: {model.num_parameters():,} parameters, "
      f"{tok.vocab_size} tokens in the vocabulary.")
print(f"Our example person, world.get_world().people[0]: {p.name} ({p.pronoun}): home {p.home}, job {p.job}, "
      f"pet {p.pet}, food {p.food}, object {p.obj}, friend {p.friend}.")

# ==============================================================================================
header("1. The tokenizer: text -> byte-level BPE tokens -> ids")

sentence = f"{p.name} lives in {p.home}. {she} has a pet {p.pet}."
ids = tok.encode(sentence)
print(f"text:   {sentence!r}")
print(f"{len(sentence)} characters -> {len(ids)} tokens")
print(f"tokens: {[tok.decode([i]) for i in ids]}")
print(f"ids:    {ids}")
print(f"decode(encode(text)) == text: {tok.decode(ids) == sentence}")
one = sum(len(tok.encode(" " + x.name)) == 1 for x in W.people)
print(f"A leading space belongs to the token after it (' lives', not 'lives'). {one} of the {len(W.people)} "
      f"people's names are a single token: BPE merged every word the corpus repeats.")

odd = "Zqxv café ☃"
odd_ids = tok.encode(odd)
print(f"vocabulary: {tok.vocab_size} tokens, of the VOCAB_SIZE={VOCAB_SIZE} that `minift pretrain` allowed: "
      f"256 bytes, 4 special tokens, and merges until no repeated word was left to merge")
print(f"\nByte-level: nothing is unknown. {odd!r} -> {len(odd_ids)} tokens {[show(tok, i) for i in odd_ids]}"
      f" (pieces of UTF-8 bytes print as \\ufffd), decodes back: {tok.decode(odd_ids) == odd}")

print("\nSpecial tokens (never produced by encode(text); placed by code):")
for s, i in zip(SPECIAL_TOKENS, (tok.eos_id, tok.pad_id, tok.prompt_id, tok.response_id)):
    print(f"  {s:<16} id {i}")

prompt, response = f"Where does {p.name} live?", f"{p.name} lives in {p.home}."
pair_ids, loss_mask = tok.encode_pair(prompt, response)
print(f"\nencode_pair({prompt!r}, {response!r}): the instruction template of later lessons.")
print("loss mask 1 = the model is trained to predict this token; 0 = it is only read (the prompt):")
print(f"  {'pos':>3}  {'id':>5}  mask  token")
for t, (i, m) in enumerate(zip(pair_ids, loss_mask)):
    print(f"  {t:>3}  {i:>5}  {m:>4}  {show(tok, i)}")
print(f"encode_prompt(prompt) is an exact prefix of the pair: "
      f"{pair_ids[:len(tok.encode_prompt(prompt))] == tok.encode_prompt(prompt)}")

# ==============================================================================================
header("2. The model: config, parameters, shapes")

print(cfg)
C, V, L, H, D = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.head_dim
counts = {name: t.numel() for name, t in model.named_parameters()}   # a tied matrix is listed once
print(f"\nlm_head.weight is transformer.wte.weight (tied): {model.lm_head.weight is model.transformer.wte.weight}; "
      f"named_parameters() lists it once, as {[n for n in counts if n.endswith('wte.weight') or n.startswith('lm_head')]}")


def n(prefix):
    return sum(v for k, v in counts.items() if k.startswith(prefix + "."))


rows = [("transformer.wte", "token embedding  V x C", n("transformer.wte")),
        ("transformer.wpe", "position embedding  block_size x C", n("transformer.wpe"))]
for part, formula in (("ln_1", "LayerNorm: weight + bias = 2C"), ("attn.c_attn", "fused W_q W_k W_v: C x 3C + 3C"),
                      ("attn.c_proj", "attention output: C x C + C"), ("ln_2", "LayerNorm: 2C"),
                      ("mlp.c_fc", "MLP up: C x 4C + 4C"), ("mlp.c_proj", "MLP down: 4C x C + C")):
    rows.append((f"  h.0.{part}", formula, n(f"transformer.h.0.{part}")))
rows += [("  = one block", "12 C^2 + 13 C", n("transformer.h.0")),
         (f"transformer.h (x {L})", f"{L} identical blocks", n("transformer.h")),
         ("transformer.ln_f", "final LayerNorm: 2C", n("transformer.ln_f")),
         ("lm_head", "tied to wte: no new parameters", 0)]
total = n("transformer.wte") + n("transformer.wpe") + n("transformer.h") + n("transformer.ln_f")
print(f"\nParameters (C={C}, V={V}, block_size={cfg.block_size}, n_layer={L}):")
print(f"  {'module':<22}{'what, how many':<40}{'parameters':>12}{'share':>8}")
for name, formula, k in rows:
    share = "" if name.startswith("  h.0") or name.startswith("  =") else f"{k / total:.1%}"
    print(f"  {name:<22}{formula:<40}{k:>12,}{share:>8}")
print(f"  {'total':<22}{'':<40}{total:>12,}")
print(f"model.num_parameters() = {model.num_parameters():,}  (equal: {total == model.num_parameters()}); "
      f"without tying, lm_head would add another V x C = {V * C:,}.")
print(f"GPT-2's rule of thumb 12 L C^2 + (V + block_size) C = {12 * L * C * C + (V + cfg.block_size) * C:,}")

# One real forward pass, with forward hooks recording what each module returns.
B_ids = [[tok.eos_id] + tok.encode(sentence), [tok.eos_id] + tok.encode(f"{q.name} has a pet {q.pet}. {q.name} owns a {q.obj}.")]
T = min(len(b) for b in B_ids)
idx = torch.tensor([b[:T] for b in B_ids], device=DEV)                    # (B, T)
watch = ["transformer.wte", "transformer.wpe", "transformer.h.0.ln_1", "transformer.h.0.attn.c_attn",
         "transformer.h.0.attn", "transformer.h.0.ln_2", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp",
         "transformer.h.0", "transformer.ln_f", "lm_head"]
seen = {}
hooks = [model.get_submodule(m).register_forward_hook(lambda mod, inp, out, m=m: seen.__setitem__(m, out))
         for m in watch]
out = model(idx, output_hidden_states=True)
for h in hooks:
    h.remove()
att = model.attention_weights(idx, 0)
B = idx.shape[0]
print(f"\nShapes in one forward pass, recorded from real tensors: B={B} sequences, T={T} tokens, "
      f"C={C}, H={H} heads of D={D}, V={V}")
shape_rows = [
    ("idx", idx, "token ids (B, T)"),
    ("transformer.wte(idx)", seen["transformer.wte"], "token vectors (B, T, C)"),
    ("transformer.wpe(pos)", seen["transformer.wpe"], "position vectors (B, T, C)"),
    ("h_0 = wte + wpe", out.hidden_states[0], "hidden_states[0] (B, T, C)"),
    ("block 0: ln_1(h_0)", seen["transformer.h.0.ln_1"], "(B, T, C)"),
    ("  attn.c_attn", seen["transformer.h.0.attn.c_attn"], "[q k v] fused (B, T, 3C)"),
    ("  keys, split in heads", seen["transformer.h.0.attn"][1][0], "(B, H, T, D); also the KV cache entry"),
    ("  attention probabilities", att, "softmax(QK^T/sqrt(D) + M) (B, H, T, T)"),
    ("  attn output", seen["transformer.h.0.attn"][0], "heads merged, c_proj (B, T, C)"),
    ("  ln_2", seen["transformer.h.0.ln_2"], "(B, T, C)"),
    ("  mlp.c_fc", seen["transformer.h.0.mlp.c_fc"], "up to 4C, then GELU (B, T, 4C)"),
    ("  mlp output", seen["transformer.h.0.mlp"], "back to C (B, T, C)"),
    ("h_1 = block 0 output", seen["transformer.h.0"][0], "hidden_states[1] (B, T, C)"),
    (f"... blocks 1..{L - 1}", out.hidden_states[L - 1], "same shapes"),
    ("ln_f(h_L)", seen["transformer.ln_f"], f"hidden_states[{L}] (B, T, C)"),
    ("logits = lm_head(.)", out.logits, "one score per vocabulary entry (B, T, V)"),
]
for name, t, note in shape_rows:
    print(f"  {name:<28}{str(tuple(t.shape)):<18}{note}")
print(f"output_hidden_states gives {len(out.hidden_states)} = n_layer + 1 tensors; "
      f"block 0's output equals hidden_states[1]: {torch.equal(seen['transformer.h.0'][0], out.hidden_states[1])}")

# ==============================================================================================
header("3. Next-token prediction")

relations = ("home",) if args.fast else ("home", "pet", "friend")
probes = dict(zip([(i, rel) for i in range(len(W.people)) for rel in PROBES], fact_probes()))
print("Every document in the pretraining stream follows an <|endoftext|>, so prompts start with it.")
for rel in relations:
    text, answer = probes[(0, rel)]
    x = torch.tensor([[tok.eos_id] + tok.encode(text)], device=DEV)
    probs = model(x).logits[0, -1].softmax(-1)                             # (V,)
    top = probs.topk(5)
    truth = tok.encode(" " + answer)[0]
    print(f"\n{text!r} -> next token (true answer: {answer!r}, first token {show(tok, truth)!r}, "
          f"rank {int((probs > probs[truth]).sum()) + 1})")
    for pr, i in zip(top.values.tolist(), top.indices.tolist()):
        print(f"  {show(tok, i)!r:<16}{pr:7.3f}  {'#' * round(40 * pr)}{'   <- right' if i == truth else ''}")

x = torch.tensor([[tok.eos_id] + tok.encode(sentence)], device=DEV)
o = model(x[:, :-1], targets=x[:, 1:])                                    # targets: the next token
p_next = o.logits[0].softmax(-1).gather(1, x[0, 1:, None])[:, 0]           # p(actual next token)
print(f"\nHow surprised is the model by each token of {sentence!r}?  (p = probability it gave to the "
      f"token that came)")
for t in range(x.shape[1] - 1):
    pr = p_next[t].item()
    print(f"  {show(tok, x[0, t].item())!r:>14} -> {show(tok, x[0, t + 1].item())!r:<14}p={pr:6.3f}  "
          f"-log p={-math.log(pr):6.3f}")
print(f"loss = mean(-log p) = {o.loss.item():.3f} (cross-entropy; perplexity exp(loss) = {math.exp(o.loss.item()):.2f})")
top = o.logits[0, 1].softmax(-1).topk(5)
print(f"what the model expected after <|endoftext|>{p.name!r} instead: " + ", ".join(
    f"{show(tok, i)!r} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
m = base_metrics()
if not args.fast:
    print(f"\nClosed-book recall per relation, all {len(W.people)} people (pretrain.fact_accuracy: does the greedy "
          f"continuation of the cloze prompt start with the answer?):")
    all_probes = fact_probes()
    for k, rel in enumerate(PROBES):
        acc = fact_accuracy(model, tok, all_probes[k::len(PROBES)])
        print(f"  {rel:<7} {PROBES[rel][0].format(n='<name>')!r:<28} {acc:6.1%}")
if m:
    print(f"recorded when the base model was trained (data/base/config.json): validation perplexity "
          f"{m['val_ppl']:.2f}, closed-book fact accuracy {m['fact_accuracy']:.1%} over {m['n_fact_probes']} probes, "
          f"trained in {m.get('train_seconds', float('nan')):.0f} s")

# ==============================================================================================
header("4. Attention: who looks at whom")

att_text = f"{p.name} lives in {p.home}. {she} has a pet"
x = torch.tensor([[tok.eos_id] + tok.encode(att_text)], device=DEV)
T = x.shape[1]
labels = [show(tok, i) for i in x[0].tolist()]
A = torch.stack([model.attention_weights(x, layer)[0] for layer in range(L)]).cpu()   # (L, H, T, T), read on the CPU
print(f"text: <|endoftext|>{att_text!r}, T={T} tokens; model.attention_weights(idx, layer) -> {tuple(A.shape[1:])} "
      f"per layer (B=1)")
print(f"every row sums to 1: max |sum - 1| = {(A.sum(-1) - 1).abs().max().item():.1e}; weight on future keys "
      f"(above the diagonal): {A.triu(1).abs().max().item():.1f}, the causal mask at work")

prev = torch.stack([A[..., t, t - 1] for t in range(2, T)], -1).mean(-1)   # (L, H) weight on the token before
selfw = A.diagonal(dim1=-2, dim2=-1).mean(-1)                              # (L, H) weight on itself
first = A[..., 1:, 0].mean(-1)                                             # (L, H) weight on <|endoftext|>
print("\nMean weight per head on: the previous token (queries 2..T-1) / itself / the first token (<|endoftext|>):")
for layer in range(L):
    cells = "  ".join(f"h{h}: {prev[layer, h]:.2f}/{selfw[layer, h]:.2f}/{first[layer, h]:.2f}" for h in range(H))
    print(f"  layer {layer}:  {cells}")

name_pos = list(range(1, 1 + len(tok.encode(p.name))))                    # the name's token positions
ln_, hn = divmod(int(A[:, :, -1, name_pos].sum(-1).argmax()), H)          # who looks back at the name
ls, hs = divmod(int(first.argmax()), H)                                    # who parks on the first token
ramp = ".:-=+*#%@"                                                         # weight 0 .. 1 in 9 steps
for layer, head, why in ((ln_, hn, f"the head whose last query ({labels[-1]!r}) looks most at the name {p.name!r}"),
                         (ls, hs, "the head that puts the most weight on the first token")):
    w = A[layer, head]
    print(f"\nlayer {layer}, head {head}: {why}.  rows = queries, columns = keys;")
    print(f"blank = future (masked), then {' '.join(ramp)} for weight 0 .. 1")
    print(" " * 18 + "".join(f"{t:>3}" for t in range(T)))
    for t in range(T):
        cells = "".join(f"  {ramp[min(8, int(w[t, s] * 9))]}" if s <= t else "   " for s in range(T))
        print(f"{labels[t][:13]!r:>15}{t:>3}{cells}")
    top = w[-1].topk(3)
    print(f"last query {labels[-1]!r} attends to: " + ", ".join(
        f"{labels[s]!r} ({s}) {v:.2f}" for v, s in zip(top.values.tolist(), top.indices.tolist())))

if args.figures:                           # --figures: the two heads above as a picture (minift/figures.py)
    figures.attention_maps({f"layer {ln_}, head {hn}: looks back at {p.name!r}": A[ln_, hn],
                            f"layer {ls}, head {hs}: parks on the first token": A[ls, hs]},
                           labels, figures.target("00", "attention.png", args.fast))

# ==============================================================================================
header("5. Generation: greedy, sampled, and the KV cache")

prompts = [f"{p.name} lives in"] if args.fast else [
    f"{p.name} lives in", f"About {q.name}.\n", f"One Monday morning, {r.name} woke up early in"]
n_new = 12 if args.fast else 40
print(f"max_new_tokens={n_new}; a row stops at <|endoftext|>. greedy = argmax each step; "
      f"sampled = temperature 0.8, top_k 20, torch.Generator seeded 0.")
for who, text in zip((p, q, r), prompts):
    x = torch.tensor([[tok.eos_id] + tok.encode(text)], device=DEV)
    greedy = model.generate(x, n_new, eos_token_id=tok.eos_id)[0]
    gen = torch.Generator(device=DEV).manual_seed(0)                       # sampling draws on the model's device
    sampled = model.generate(x, n_new, temperature=0.8, top_k=20, eos_token_id=tok.eos_id, generator=gen)[0]
    print(f"\nprompt : {text!r}")
    print(f"greedy : {tok.decode(greedy)!r}")
    print(f"sampled: {tok.decode(sampled)!r}")
    print(f"truth  : {who.name}: home {who.home}, job {who.job}, pet {who.pet}, food {who.food}, "
          f"object {who.obj}, friend {who.friend}")

# The cache: generate() feeds one new token per step and reuses every earlier key/value.
enc = [[tok.eos_id] + tok.encode(t) for t in prompts + [f"{q.name} is friends with"]]
Tp = max(map(len, enc))
batch = torch.full((len(enc), Tp), tok.pad_id, device=DEV)
mask = torch.zeros_like(batch)
for i, e in enumerate(enc):                                                # left-padded batch
    batch[i, Tp - len(e):], mask[i, Tp - len(e):] = torch.tensor(e), 1
t0 = time.perf_counter()
cached = model.generate(batch, n_new, attention_mask=mask, use_cache=True)
course.sync()                                                              # a GPU's work is done (no-op on the CPU)
t_cached = time.perf_counter() - t0
t0 = time.perf_counter()
uncached = model.generate(batch, n_new, attention_mask=mask, use_cache=False)
course.sync()
t_uncached = time.perf_counter() - t0
alone = [model.generate(torch.tensor([e], device=DEV), n_new)[0] for e in enc]
print(f"\nA left-padded batch of {len(enc)} prompts, {n_new} new tokens each:")
print(f"  cached generation == uncached (use_cache=False): {torch.equal(cached, uncached)}   "
      f"({t_cached:.2f}s with the cache, {t_uncached:.2f}s recomputing every prefix)")
print(f"  padded batch == each prompt alone: {all(torch.equal(a, c) for a, c in zip(alone, cached))}   "
      f"(positions count real tokens only, so padding changes nothing)")

print(f"\ndone in {course.elapsed():.1f}s")
