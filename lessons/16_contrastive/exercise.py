"""Lesson 16 exercise: the two functions a contrastive sentence encoder is made of (the InfoNCE loss,
and the pooling that turns a GPT's hidden states into one vector per sentence), then the
assignment: a contrastive training step.

Fill in the two warm-up functions, then the assignment's two (delete each
`raise NotImplementedError`), and grade your file with `minift check 16`. How grading works
(points, counterexamples, your own copy, --impl, --pytest, minift verify): lessons/README.md,
"Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional: normalize, cross_entropy, log_softmax, @, .T,
torch.autograd.grad); do not call minift's functions. The assignment hands you a minift GPT:
calling that model is the point (the README says how).

The "try it" exercise of the README starts from `try_temperature` at the bottom (it calls minift,
which is fine there): `python lessons/16_contrastive/exercise.py try_temperature 0.5`.
"""

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_info_nce(a, b, temperature=0.05, negatives=None, symmetric=False):
    """InfoNCE with in-batch negatives over cosine similarities (SimCSE's loss), equations (16.3)
    to (16.6) of the README:

        sim(u, v) = u·v / (‖u‖ ‖v‖)
        ℓ_i = -log  exp(sim(a_i, b_i)/τ) / [Σ_j exp(sim(a_i, b_j)/τ) + Σ_k exp(sim(a_i, n_k)/τ)]
        L   = (1/N) Σ_i ℓ_i
        symmetric=True:  (L + L_{b -> a}) / 2, where L_{b -> a} lets each b_i pick its a_i among
                         the a_j only (the negatives are candidates for the anchors alone)

    a, b: (N, C) float tensors, row i of b the positive of row i of a (every other row of b is a
    negative for a_i); negatives: None or (M, C); temperature τ > 0. Returns a 0-dim tensor.
    It is a cross-entropy over the N + M candidates of each anchor whose right answer for anchor
    i is candidate i. All-equal embeddings give log(N + M) one-way, and (log(N + M) + log N) / 2
    symmetric (the b -> a direction has N candidates).
    """
    raise NotImplementedError("run_info_nce: not written yet; lessons/16_contrastive/README.md, "
                              "\"The maths\", equation (16.3), says what it computes")


def run_sentence_embedding(h, attention_mask, pooling="last"):
    """One vector per sequence from hidden states h (B, T, C) and attention_mask m (B, T), 1 = real
    token, 0 = padding (on either side), equations (16.1) and (16.2) of the README:

        pooling="last":  e_b = h_{b, t*}   with t* the largest t where m_{b,t} = 1
        pooling="mean":  e_b = Σ_t m_{b,t} h_{b,t} / Σ_t m_{b,t}        the mean over real tokens

    Returns (B, C). Whatever h holds at padded positions must not change the result.
    """
    raise NotImplementedError("run_sentence_embedding: not written yet; lessons/16_contrastive/README.md, "
                              "\"The maths\", equation (16.1), says what it computes")


# ---- Assignment: A contrastive training step ----
# lessons/16_contrastive/README.md, "Assignment: A contrastive training step": part A (3 points),
# part B (4 points). You may call your own run_info_nce and run_sentence_embedding above.

def run_embed_batch(model, idx, attention_mask, pooling="last"):
    """Part A: one embedding per sentence from a GPT, equation (16.7) of the README, then (16.1) or
    (16.2):

        H   = GPT_θ(idx, mask)                the last hidden states, after ln_f, (B, T, C), the
                                              model run WITH the attention mask
        e_b = H_{b, t*_b}                     t*_b the last t with m_bt = 1      (pooling "last")
        e_b = Σ_t m_bt H_bt / Σ_t m_bt                                           (pooling "mean")

    model: a minift GPT; idx: (B, T) int64 token ids; attention_mask: (B, T), 1 = real token,
    0 = pad, pads on either side (any ids may sit at the pads). Returns (B, C), differentiable in
    the model's parameters. A sentence's embedding must not depend on its padding.
    """
    raise NotImplementedError("run_embed_batch: not written yet; lessons/16_contrastive/README.md, "
                              "\"Assignment: A contrastive training step\", equation (16.7), says what it computes")


def run_contrastive_step(model, batch, temperature, lr, symmetric=False):
    """Part B: one contrastive training step, equations (16.8) to (16.10) of the README.

    batch: {"idx": (2N + M, T), "attention_mask": (2N + M, T), "n_pairs": N}; rows 0 .. N − 1 are the
    anchors a_i, rows N .. 2N − 1 their positives b_i (row N + i goes with row i), the last M rows
    hard negatives n_k (M may be 0). With e_r the last-token embedding of row r:

        L = InfoNCE(a, b, n, τ)           (16.4), or (16.6) when symmetric (negatives for a only)
        θ ← θ − lr ∇_θ L                  every parameter with requires_grad; the gradient of this
                                          batch's L alone (whatever .grad held before)

    Returns L before the step, a 0-dim tensor.
    """
    raise NotImplementedError("run_contrastive_step: not written yet; lessons/16_contrastive/README.md, "
                              "\"Assignment: A contrastive training step\", equation (16.9), says what it computes")


# ---- try it ------------------------------------------------------------------------------------

def try_temperature(tau=0.5, steps=40, batch=48, seed=0):
    """Train lesson 16's main recipe (supervised + hard negatives, full fine-tuning, last-token
    pooling, peak lr 1e-3) from the shipped base at temperature `tau`, then print what part 2 and
    part 3 of the walkthrough print for it: paraphrase accuracy, R@1, the mean cosines, and the
    accuracy on each kind of test pair (paraphrase, near-copy negative, other negative).
    About as long as the walkthrough's main recipe plus one evaluation. Returns the evaluation dict."""
    from minift import world
    from minift.align.contrastive import ContrastiveConfig, train_contrastive
    from minift.evals import PAIR_KINDS, evaluate_embeddings, pair_kind, supervised_pairs
    from minift.pretrain import load_base
    from minift.train import TrainConfig

    torch.manual_seed(seed)
    model, tok = load_base()
    cfg = ContrastiveConfig(temperature=float(tau), pooling="last", dropout=0.0)
    hist = train_contrastive(model, supervised_pairs("train"), cfg,
                             TrainConfig(steps=int(steps), batch_size=int(batch), lr=1e-3, seed=seed, progress=False),
                             tok=tok)
    r = evaluate_embeddings(model, tok, "last")
    sims, labels = r["test_sims"], r["test_labels"]
    print(f"τ = {tau}: final loss {hist[-1]['loss']:.3f}; threshold {r['threshold']:.3f}, val acc {r['val_acc']:.3f}, "
          f"test acc {r['test_acc']:.3f}, R@1 {r['retrieval_at_1']:.3f}, R@1 fact {r['retrieval_fact_at_1']:.3f}, "
          f"cos para {float(sims[labels == 1].mean()):.3f}, cos non {float(sims[labels == 0].mean()):.3f}")

    kinds = [pair_kind(ex) for ex in world.task("paraphrase", "test")]
    right = ((sims > r["threshold"]).long() == labels).tolist()
    for g in PAIR_KINDS:
        ok = [x for x, k in zip(right, kinds) if k == g]
        print(f"  {g} ({len(ok)}): {sum(ok) / len(ok):.3f} right")
    return r


if __name__ == "__main__":         # python lessons/16_contrastive/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
