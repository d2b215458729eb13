"""Lesson 18 exercise: mixture weights, the mixture sampler, forgetting, backward transfer, and the
per-example loss.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 18`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

The sampler is graded on its properties, not on a particular random stream: any generator will
do, as long as the same seed gives the same draws.

Rules: plain Python and PyTorch (math, torch.Generator, torch.multinomial, torch.randperm,
torch.log_softmax ...). Do not call minift. Return tensors.

The "try it" exercise of the README starts from `try_replay` at the bottom (it calls minift, which
is fine there): `python lessons/18_multitask_sequential/exercise.py try_replay equal`.
"""
import math  # noqa: F401  (math.inf is a valid temperature)

import torch  # noqa: F401


def run_mixture_weights(sizes, temperature=1.0, cap=None):
    """Temperature-scaled mixing (T5, Raffel et al. 2020; mT5, Xue et al. 2021) of K task sets,
    equation (18.1) of the README:

        p_i = min(n_i, K_cap)^(1/T) / Σ_j min(n_j, K_cap)^(1/T)

    sizes: (K,) integer tensor of set sizes n_i >= 1; temperature: T > 0, or math.inf for equal
    mixing (every p_i = 1/K); cap: None (no cap) or an int K_cap >= 1 (T5's "limit K").
    T = 1 and no cap: examples-proportional, p_i = n_i / Σ n. Returns (K,) float64 summing to 1.
    For huge n_i and small T, work in log space: (1/T) log min(n_i, K_cap), shifted by its maximum.
    """
    raise NotImplementedError("run_mixture_weights: not written yet; lessons/18_multitask_sequential/README.md, "
                              "\"The maths\", equation (18.1), says what it computes")


def run_sample_mixture(weights, sizes, n, seed):
    """Draw n (task, example) pairs from K task sets, equations (18.2) and (18.3) of the README:

        task_k    ~ Categorical(w / Σ w)                 independently for k = 1 .. n
        example_k = the task's next index in its current epoch: a fresh random permutation of
                    0 .. n_i − 1, replaced by a new one when used up

    So after c draws of task i (size n_i) each of its examples was drawn ⌊c/n_i⌋ or ⌈c/n_i⌉ times,
    and a task of weight 0 is never drawn. weights w: (K,) float >= 0, not all 0; sizes: (K,) int
    >= 1; n: int >= 1; seed: int: the same seed must give the same draws (use a torch.Generator).
    Returns (n, 2) int64: column 0 the task index, column 1 the example index.
    """
    raise NotImplementedError("run_sample_mixture: not written yet; lessons/18_multitask_sequential/README.md, "
                              "\"The maths\", equation (18.2), says what it computes")


def run_forgetting(R):
    """Forgetting (Chaudhry et al., 2018, "Riemannian Walk") of a score matrix, equation (18.6) of
    the README.

    R: (K, K) float, R_ij = score of task j after stage i (task j is trained at stage j, higher is
    better; stages and tasks counted from 0). For every task j < K − 1:

        f_j = max_{l < K−1} R_lj − R_{K−1, j}          (the best it ever was, minus where it ends)

    Returns (K − 1,) with R's dtype.
    """
    raise NotImplementedError("run_forgetting: not written yet; lessons/18_multitask_sequential/README.md, "
                              "\"The maths\", equation (18.6), says what it computes")


def run_backward_transfer(R):
    """Backward transfer (Lopez-Paz & Ranzato, 2017, GEM) of a (K, K) score matrix R (R_ij = score of
    task j after stage i), equation (18.7) of the README:

        BWT = 1/(K−1) Σ_{j < K−1} (R_{K−1, j} − R_jj)        < 0: later stages cost earlier tasks

    Returns a scalar tensor () with R's dtype. With per-task adapters (every column frozen after
    its stage) it is exactly 0.
    """
    raise NotImplementedError("run_backward_transfer: not written yet; lessons/18_multitask_sequential/README.md, "
                              "\"The maths\", equation (18.7), says what it computes")


def run_example_loss(logits, targets):
    """The per-example language-model loss a multitask batch is trained with, equation (18.4) of the
    README. With R_b = the positions t of example b whose target y_bt is not -100, and B' the number
    of examples whose R_b is not empty:

        L = (1/B') Σ_b (1/|R_b|) Σ_{t ∈ R_b} −log softmax(z_bt)_{y_bt}        z_bt: the logits at (b, t)

    Each example counts once, however many targets it has: a 128-token text window and a 1-token
    answer weigh the same (the token mean would give the window 128 times the answer's say). The
    targets are already aligned with the logits (target t is the token to predict at position t).
    logits: (B, T, V) float32; targets: (B, T) int64 with -100 where no loss is taken. Returns a
    scalar tensor ().
    """
    raise NotImplementedError("run_example_loss: not written yet; lessons/18_multitask_sequential/README.md, "
                              "\"The maths\", equation (18.4), says what it computes")


# ---- try it ------------------------------------------------------------------------------------

def try_replay(replay_mix="proportional", pretrain_stage=False, rho=0.25, steps=40):
    """Part 3 of the walkthrough, with your changes: full fine-tuning through domain -> closed-book
    QA -> summarization (each `steps` steps x batch 4 at 1e-3), a fraction rho of every later
    stage's examples replayed from the earlier stages, mixed by `replay_mix` ("proportional",
    "equal" or "temperature"). pretrain_stage=True adds a first, one-step stage on the pretraining
    corpus, so that later stages replay pretraining text too, and scores "pretrain ppl" as that
    stage's column. Prints the score matrix, the forgetting of each stage's column and the
    examples drawn per stage. Under a minute of CPU. Returns run_stages' result."""
    from minift import world
    from minift.align.multitask import Column, MixtureConfig, Stage, forgetting, run_stages, stage_matrix
    from minift.evals import evaluate_task, mixture
    from minift.pretrain import fact_accuracy, load_base, probe_subset
    from minift.report import table
    from minift.tasks import LMDataset, SFTDataset, collate_fn, perplexity
    from minift.train import evaluate_nll

    model, tok = load_base()
    T = model.config.block_size
    dom_val = LMDataset(tok, world.domain2_corpus("val")[:100], 64)
    pre_val = LMDataset(tok, world.pretrain_corpus("val")[:100], 64)
    dom_val, pre_val = [dom_val[i] for i in range(8)], [pre_val[i] for i in range(8)]
    qa_test, sum_test = world.task("qa_closed", "test")[:80], world.task("summarization", "test")[:30]
    probes = probe_subset(72)
    columns = {
        "domain NLL": Column(lambda m: evaluate_nll(m, dom_val, batch_size=8), "domain", False),
        "pretrain ppl": Column(lambda m: perplexity(evaluate_nll(m, pre_val, batch_size=8)),
                               "pretrain" if pretrain_stage else None, False),
        "facts": Column(lambda m: fact_accuracy(m, tok, probes), None),
        "QA EM": Column(lambda m: evaluate_task(m, tok, "qa_closed", qa_test, max_new_tokens=12)["score"],
                        "qa_closed"),
        "summary ROUGE-L": Column(lambda m: evaluate_task(m, tok, "summarization", sum_test,
                                                          max_new_tokens=40)["score"], "summarization"),
    }
    stages = [Stage("domain", LMDataset(tok, world.domain2_corpus("train"), 64), int(steps), 1e-3),
              Stage("qa_closed", SFTDataset(tok, mixture(["qa_closed"], "train", None), T), int(steps), 1e-3),
              Stage("summarization", SFTDataset(tok, mixture(["summarization"], "train", None), T), int(steps), 1e-3)]
    if pretrain_stage:
        stages.insert(0, Stage("pretrain", LMDataset(tok, world.pretrain_corpus("train"), 64), 1, 1e-3))
    run = run_stages(model, stages, columns, batch_size=4, replay=float(rho), replay_mix=MixtureConfig(replay_mix),
                     collate_fn=collate_fn(tok.pad_id), progress=False)
    table(("after", *columns), [(r, *[f"{sc[c]:.3f}" for c in columns]) for r, sc in zip(run["rows"], run["scores"])])
    f = forgetting(stage_matrix(run, columns)).tolist()
    print("forgetting f_j of each stage's column but the last: " + ", ".join(f"{x:.3f}" for x in f))
    print("examples drawn per stage: " + "; ".join(", ".join(f"{k} {v}" for k, v in c.items()) for c in run["counts"]))
    return run


if __name__ == "__main__":         # python lessons/18_multitask_sequential/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
