"""Lesson 07 exercise: the two functions prefix tuning is made of (attention that also sees a
prefix, and the reparameterisation that produces the prefix), then the assignment: the same
attention for a padded batch, one generation step with a KV cache, and the whole attention layer
of a block with its cache; and part 5's table-to-text input line.

Fill in the functions below (delete each `raise NotImplementedError`), then grade your file with
`minift check 07`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional; `@`, indexing, torch.cat, masked_fill, softmax
are all fine); do not call minift in the run_* functions.

The try_* functions at the bottom are complete starters for the README's "try" exercises; they use
minift. Run one with `python lessons/07_prefix_tuning/exercise.py try_attention_share`.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_prefix_attention(q, k, v, prefix_k, prefix_v):
    """Causal self-attention in which every query also sees P prefix keys and values
    (Li & Liang, 2021), for one block:

        K' = [prefix_k ; k],  V' = [prefix_v ; v]    stacked along time: P + T keys and values
        score(t, j) = q_t · K'_j / √D                 one score per query t and key j
        query t sees every prefix key (j < P) and the real keys 0..t (j = P + s, s ≤ t)
        out_t = Σ_j softmax_j(score(t, j) over what t sees) · V'_j

    q, k, v: (B, H, T, D) float tensors; prefix_k, prefix_v: (B, H, P, D), where P may be 0 (then
    this is plain causal attention). Returns (B, H, T, D).

    Watch out: a causal triangle laid over the (T, P + T) scores must start at the prefix's end,
    not at the top-left corner.
    """
    raise NotImplementedError("run_prefix_attention: not written yet; lessons/07_prefix_tuning/README.md, "
                              "\"The maths\", equation (7.1), says what it computes")


def run_prefix_mlp(embedding, W1, b1, W2, b2, n_layer, n_head):
    """The paper's reparameterisation of the prefix, and how its output is cut into the keys and
    values of every block:

        row_i = W2 · tanh(W1 · e_i + b1) + b2        e_i = row i of embedding (P'_θ); row_i has L·2·C numbers
        row_i = [ block 0: keys (C) | values (C) | block 1: keys | values | ... ],  C = H·D,
                each C-long piece made of H heads of D numbers each
        out(l, j, h, i, d) = row_i at index ((2l + j)·H + h)·D + d     (j = 0 keys, 1 values; all from 0)

    embedding: (P, k), W1: (m, k), b1: (m,), W2: (L·2·C, m), b2: (L·2·C,), all in nn.Linear
    layout. n_layer L and n_head H are ints; C = (rows of W2) / (2L), D = C / H.
    Returns out: (L, 2, H, P, D), the layout GPT.forward's prefix_kv reads (entry l, 0 holds block
    l's keys, (H, P, D); entry l, 1 its values).
    """
    raise NotImplementedError("run_prefix_mlp: not written yet; lessons/07_prefix_tuning/README.md, "
                              "\"The maths\", equation (7.5), says what it computes")


# ---- Assignment: prefix attention with padding and a KV cache ----
# Part 1 (4 points), part 2 (3 points) and part 3 (3 points); the README's section of that name
# has the maths (equations (7.6) to (7.10)) and says how each part is graded.

def run_prefix_attention_padded(q, k, v, prefix_k, prefix_v, attention_mask):
    """Part 1. One block's prefix attention for a padded batch:

        m_b,s = attention_mask(b, s)  ∈ {0, 1}: 1 = real token, 0 = padding (on any side)
        query t of row b sees:  every prefix key j < P,
                                the keys s ≤ t with m_b,s = 1,
                                and its own key t (which matters only when t is padding)
        out_t = Σ over what t sees of softmax(q_t · key / √D) · value

    q, k, v: (B, H, T, D); prefix_k, prefix_v: (B, H, P, D), P ≥ 0; attention_mask: (B, T) of
    0/1. Returns (B, H, T, D). A padding key never receives weight, whatever numbers it holds
    (they are finite but may be huge); a padding query's row is not graded, but it must be finite
    (no NaN), also when P = 0 and no real key comes before it.
    """
    raise NotImplementedError("run_prefix_attention_padded: not written yet; lessons/07_prefix_tuning/README.md, "
                              "\"Assignment: prefix attention with padding and a KV cache\", equation (7.6), "
                              "says what it computes")


def run_prefix_decode_step(q, k, v, cache_k, cache_v, prefix_k, prefix_v, attention_mask):
    """Part 2. One generation step with a KV cache and a prefix:

        cache_k' = [cache_k ; k],  cache_v' = [cache_v ; v]      the cache grows by the new token only
        out = Σ over what the new token sees of softmax(q · key / √D) · value,  over [prefix ; cache']
        the new token (position L) sees every prefix key, the cached keys s < L with m_s = 1, and itself

    q, k, v: (B, H, 1, D), the new token's; cache_k, cache_v: (B, H, L, D), the L tokens before it
    (L may be 0); prefix_k, prefix_v: (B, H, P, D); attention_mask: (B, L + 1) of 0/1 over the
    cached tokens and the new one. Returns the triple (out (B, H, 1, D), cache_k' (B, H, L + 1, D),
    cache_v' (B, H, L + 1, D)). The prefix is supplied again at every step and never stored in
    the cache; do not change any input in place.
    """
    raise NotImplementedError("run_prefix_decode_step: not written yet; lessons/07_prefix_tuning/README.md, "
                              "\"Assignment: prefix attention with padding and a KV cache\", equation (7.8), "
                              "says what it computes")


def run_prefix_attention_layer(x, W_attn, b_attn, W_proj, b_proj, n_head, prefix_k, prefix_v, cache_k, cache_v,
                               attention_mask):
    """Part 3. A block's whole attention layer, with its cache and a prefix, for T new tokens:

        [q | k | v] = x W_attnᵀ + b_attn          (B, T, 3C): three C-wide pieces, in that order
        each piece cut into H = n_head heads of D = C / H numbers: channel h·D + d is head h's entry d
        cache_k' = [cache_k ; k],  cache_v' = [cache_v ; v]       (B, H, L + T, D)
        new token i sits at position L + i and attends as in part 1, with m = attention_mask (B, L + T)
        heads put back side by side: o (B, T, C),   y = o W_projᵀ + b_proj

    x: (B, T, C), T ≥ 1; W_attn: (3C, C), b_attn: (3C,), W_proj: (C, C), b_proj: (C,) (nn.Linear
    layout); n_head: int; prefix_k, prefix_v: (B, H, P, D); cache_k, cache_v: (B, H, L, D), L ≥ 0;
    attention_mask: (B, L + T) of 0/1. Returns the triple (y (B, T, C), cache_k', cache_v'). Run on
    all T tokens at once or in two calls (the second with the first's cache), it gives the same.
    """
    raise NotImplementedError("run_prefix_attention_layer: not written yet; lessons/07_prefix_tuning/README.md, "
                              "\"Assignment: prefix attention with padding and a KV cache\", equation (7.10), "
                              "says what it computes")


# ---- Part 5, generation: the table-to-text input ----

def run_linearize_table(fields):
    """A one-record table as one line of text, the input of part 5's table-to-text runs (an
    E2E-style record, written so that a decoder-only model can read it):

        [(a_1, v_1), ..., (a_n, v_n)]  ->  "a_1 : v_1 | a_2 : v_2 | ... | a_n : v_n"

    fields: a non-empty sequence of (attribute, value) pairs of strings, or a dict (its items, in
    its order). The fields keep the given order; each attribute and value loses the spaces around
    it (not the ones inside: "Old Mill" stays two words). Returns the line, a str.
    """
    raise NotImplementedError("run_linearize_table: not written yet; lessons/07_prefix_tuning/README.md, "
                              "\"Prefix tuning on generation\", equation (7.11), says what it computes")


# ---- starters for the README's "try" exercises (complete; they use minift) ----

def try_attention_share(init_ids=None, n_prefix=10, n_sentences=64):
    """Exercise 6: the share of attention each block puts on an UNTRAINED prefix, mean over heads
    and the real tokens of `n_sentences` dev sentences. init_ids=None: a random prefix (the 'at
    init' column of part 3); "text": the base model's own keys/values of the walkthrough's first
    n_prefix training tokens (its "init" row); or a list of token ids of your own. A few seconds."""
    from minift import world
    from minift.heads import TokenClassifier, encode_ner
    from minift.peft.prefix import PrefixConfig, apply_prefix, prefix_attention_mass
    from minift.pretrain import load_base
    from minift.tasks import collate_fn
    torch.manual_seed(0)
    base, tok = load_base()
    if init_ids == "text":                                             # the walkthrough's 'init' tokens
        text = " ".join(" ".join(e["tokens"]) for e in world.task("ner", "train")[:2])
        init_ids = tok.encode(" " + text)[:n_prefix]
    clf = TokenClassifier(base, len(world.NER_TAGS))
    apply_prefix(clf, PrefixConfig(n_prefix=n_prefix, reparam=init_ids is None, init_ids=init_ids))
    clf.eval()
    items = encode_ner(tok, world.task("ner", "val")[:n_sentences], world.NER_TAGS, 128)
    batch = collate_fn(tok.pad_id)([{"idx": it["idx"], "labels": it["labels"]} for it in items])
    with torch.no_grad():
        share = prefix_attention_mass(clf.body, batch["idx"], batch["attention_mask"])   # (L, H)
    print(f"prefix P={n_prefix}, {'random' if init_ids is None else 'from real tokens'}: share of attention on the "
          f"prefix per block: " + "  ".join(f"block {i} {s.mean():.2f}" for i, s in enumerate(share)))
    return share


def try_prefix_mlp_width(hidden=128, steps=100, lr=1e-2, seed=0, init_ids=None):
    """Exercise 8: train one prefix model, PrefixConfig(n_prefix=10, hidden=hidden), on lesson
    05/06's NER task (the walkthrough's data, steps, batch and seed) and print its dev and test
    F1; compare with the `--seeds 5` table. About 20 s of CPU time at 100 steps; pass steps=20
    for a quick look (its F1 means little). init_ids: a list of token ids to start from."""
    from minift import course
    from minift.heads import ner_splits
    from minift.peft.prefix import PrefixConfig
    from minift.pretrain import load_base
    _, tok = load_base()
    cfg = PrefixConfig(n_prefix=10, hidden=hidden, init_ids=init_ids)
    bench = course.Bench({"prefix": cfg}, tok, ner_splits(tok, 128, None, dev_key="dev"), steps=steps, batch=8, width=10)
    r = bench.train_and_measure("prefix", lr, seed=seed)
    bench.report(r)
    print(f"method parameters while training: {r['n_adapter']:,} (they fold to 10 x L 2 C all the same)")
    return r


def try_generation(method="prefix", task="table-to-text", steps=150, lr=None, n_prefix=10, reparam=True,
                   n_test=50, seed=0):
    """Exercise 10: train one model as part 5 of the walkthrough does (batch 8, AdamW, warmup +
    cosine, the loss on the response) and print ROUGE-L, exact match and two greedy generations on
    the first `n_test` test examples. method: "prefix" (PrefixConfig(n_prefix, reparam)), "lora"
    (r = 4 on W_q, W_v) or "full"; task: "table-to-text" or "summarization"; lr None: part 5's rate
    for the method. About 35 s of CPU time at 150 steps (full fine-tuning a little more)."""
    from minift.align.sft import SFTConfig, train_sft
    from minift.evals import generate_responses, table_to_text_pairs
    from minift.peft.io import apply_config
    from minift.peft.lora import LoRAConfig
    from minift.peft.prefix import PrefixConfig
    from minift.pretrain import load_base
    from minift.tasks import exact_match_score, rouge_l_score, sft_pairs
    from minift.train import TrainConfig
    cfg, rate = {"prefix": (PrefixConfig(n_prefix=n_prefix, reparam=reparam), 1e-2),
                 "lora": (LoRAConfig(r=4, alpha=8, targets=("attn.c_attn",), qkv=("q", "v")), 1e-2),
                 "full": (None, 3e-4)}[method]
    pairs = table_to_text_pairs if task == "table-to-text" else (lambda split: sft_pairs("summarization", split))
    torch.manual_seed(seed)
    base, tok = load_base()
    model = apply_config(base, cfg)
    if cfg is None:
        for p in model.parameters():
            p.requires_grad_(True)
    hist = train_sft(model, pairs("train"), SFTConfig(), TrainConfig(steps=steps, batch_size=8, lr=lr or rate,
                                                                     seed=seed, progress=False), tok=tok)
    test = pairs("test")[:n_test]
    got = generate_responses(model, tok, [q for q, _ in test], max_new_tokens=64)
    gold = [r for _, r in test]
    print(f"{task}, {method} at lr {lr or rate:g}, {steps} steps: final loss {hist[-1]['loss']:.3f}, ROUGE-L "
          f"{rouge_l_score(got, gold):.3f}, exact match {exact_match_score(got, gold):.3f} on {n_test} test examples")
    for g, r in list(zip(got, gold))[:2]:
        print(f"  gold {r!r}\n  got  {g!r}")
    return got


if __name__ == "__main__":         # python lessons/07_prefix_tuning/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
