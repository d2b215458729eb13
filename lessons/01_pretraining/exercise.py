"""Lesson 01 exercise: the three formulas every pretraining run rests on, then the training loop.

Fill in each function below (delete its `raise NotImplementedError`), then grade your file with
`minift check 01`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch tensor operations (+, *, @, torch.exp, .sum, .max, ...) and `math`. In the
warm-ups do not call F.cross_entropy, F.log_softmax, torch.logsumexp or minift itself: writing
them is the point (your lesson 00 cross-entropy is fair game if you copy it in). In the
assignment F.cross_entropy is allowed; torch.optim, torch.nn.utils.clip_grad_norm_ and
minift.train are not. Inputs are float32 / int64 tensors.

Try it: `python exercises/01_pretraining.py try_train_tiny_gpt` (your copy: a starter runs the
functions of the file it is in) trains a tiny GPT with your run_train and prints its loss curve.
"""
import math  # noqa: F401  (math.cos, math.pi, math.exp, math.sqrt)

import torch  # noqa: F401


def run_next_token_loss(logits, tokens, loss_mask=None):
    """The language-modelling loss: the logits at position t predict the token at t + 1.

        L = (1/N) sum over (b, t) with t < T - 1 and m_{b, t+1} = 1 of
                ( log sum_v exp z_{b,t,v}  -  z_{b,t,y} ),     y = x_{b, t+1}

    where z = logits, x = tokens, m = loss_mask and N is the number of counted (b, t). The mask
    marks which *target* tokens count, so position t is scored when m_{b, t+1} = 1 (the mask of
    the first token never matters: it is never a target). The last position T - 1 has no next
    token and is never scored.

    logits: (B, T, V) float; tokens: (B, T) int64 in [0, V); loss_mask: (B, T) of 0/1, or None
    (every target counts). Returns a scalar tensor; 0.0 (not NaN) when no target counts.
    Must be stable for large logits (subtract the row maximum before exponentiating).
    """
    raise NotImplementedError("run_next_token_loss: not written yet; lessons/01_pretraining/README.md, "
                              "\"The maths\", equation (1.1), says what it computes")


def run_lr_schedule(step, steps, warmup_steps, lr, min_lr_ratio):
    """The learning rate at optimizer step s = `step` (0-based): linear warmup, then cosine decay.

        eta_min = lr min_lr_ratio,  W = warmup_steps,  S = steps
        s <  W:   eta_s = lr (s + 1) / W                                   (step W - 1 gets lr)
        s >= W:   eta_s = eta_min + (lr - eta_min) (1 + cos(pi p)) / 2,   p = min(1, (s - W) / (S - W))

    So the cosine starts at lr (p = 0), passes (lr + eta_min) / 2 half-way (p = 1/2), reaches
    eta_min at s = S (p = 1) and stays there. W may be 0 (no warmup); 0 <= W < S.
    Returns a Python float.
    """
    raise NotImplementedError("run_lr_schedule: not written yet; lessons/01_pretraining/README.md, "
                              "\"The maths\", equation (1.4), says what it computes")


def run_perplexity(nll_sums, n_tokens):
    """Perplexity of a corpus that was scored batch by batch:

        ppl = exp( (sum_i nll_i) / (sum_i n_i) )

    nll_sums: (N,) float, nll_i = the summed negative log-likelihood (nats) of the target tokens
    of batch i; n_tokens: (N,) int64, n_i = how many target tokens batch i had. The mean NLL is
    weighted by tokens: it is NOT the mean of the per-batch means, nor the mean of per-batch
    perplexities. A uniform model over V tokens pays log V per token, so its perplexity is V.
    Returns a Python float.
    """
    raise NotImplementedError("run_perplexity: not written yet; lessons/01_pretraining/README.md, "
                              "\"The maths\", equation (1.3), says what it computes")


# ---- Assignment: the training loop ----
# Three parts, 9 points: AdamW (3), clipping (2), the loop (4). README, "Assignment: the training loop".

def run_adamw_step(param, grad, m, v, step, lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0):
    """One AdamW update (Loshchilov & Hutter) of one parameter tensor theta with gradient g:

        m'   = b1 m + (1 - b1) g                 v' = b2 v + (1 - b2) g^2      (elementwise)
        m^   = m' / (1 - b1^t)                    v^ = v' / (1 - b2^t)          (bias correction)
        theta' = theta - lr ( m^ / (sqrt(v^) + eps) + weight_decay theta )

    t = `step` >= 1 is the number of this update; (m, v) is the state after t - 1 updates (zeros
    before the first). The decay is decoupled: it never enters m or v. betas = (b1, b2).
    param, grad, m, v: float32 tensors of one shape. Returns (theta', m', v') as NEW tensors;
    the four inputs must come back unchanged.
    """
    raise NotImplementedError("run_adamw_step: not written yet; lessons/01_pretraining/README.md, "
                              "\"Assignment: the training loop\", equation (1.6), says what it computes")


def run_clip_grad_norm(grads, max_norm):
    """Clip a list of gradient tensors by their GLOBAL L2 norm:

        n = sqrt( sum over every tensor and every entry of g^2 )      (one number for the list)
        each g becomes g min(1, c / (n + 10^-6)),   c = max_norm      (one factor for all tensors)

    grads: a list of float32 tensors of any shapes; c > 0. Below the limit nothing
    changes. Returns (list of clipped tensors, in order, same shapes; n as a Python float).
    """
    raise NotImplementedError("run_clip_grad_norm: not written yet; lessons/01_pretraining/README.md, "
                              "\"Assignment: the training loop\", equation (1.7), says what it computes")


def run_train(model, batches, steps, accumulate, lr, warmup_steps, max_norm, weight_decay=0.0,
              betas=(0.9, 0.95), eps=1e-8, min_lr_ratio=0.1):
    """Train `model` for `steps` optimizer steps with gradient accumulation; returns its history.

    Step s (0-based) uses the k = `accumulate` micro-batches number s k, ..., s k + k - 1 of
    `batches`, each a dict {"idx": (b, T) int64, "targets": (b, T) int64, -100 = not counted}.
    model(idx).logits is (b, T, V). The step's loss is ONE mean over all its counted targets:

        L_s = (1/N_s) sum over micro-batches j, and (b, t) with y_{j,b,t} != -100, of
              -log softmax(z_{j,b,t}) at y_{j,b,t},      N_s = counted targets of the whole step

    Then, in order: eta_s from your run_lr_schedule(s, steps, warmup_steps, lr, min_lr_ratio);
    clip the gradients of all trainable parameters together (your run_clip_grad_norm; max_norm
    0 means no clipping); your run_adamw_step on each trainable parameter (requires_grad), with
    t = s + 1, one (m, v) state per parameter, weight_decay on matrices only (2 or more
    dimensions; never on vectors such as biases and LayerNorm gains); zero the gradients.
    Returns a list of `steps` dicts {"lr": eta_s, "loss": L_s (measured before the step's
    update), "grad_norm": n before clipping}.
    """
    raise NotImplementedError("run_train: not written yet; lessons/01_pretraining/README.md, "
                              "\"Assignment: the training loop\", equation (1.8), says what it computes")


# ---- try it ----

def try_train_tiny_gpt(steps=40, lr=3e-2, accumulate=2):
    """Train the assignment's end-to-end model with YOUR run_train and print its loss curve: a tiny
    GPT (1 layer, 16 channels, seed 0) on 8 windows of 32 TinyWorld tokens (about 10 s). Change
    steps, lr or accumulate, or break your loop on purpose, and watch the curve."""
    from minift.conformance.lesson01_training_loop import tiny_gpt, tinyworld_windows
    idx, targets, V = tinyworld_windows()
    model = tiny_gpt(0, vocab_size=V, block_size=idx.shape[1], n_layer=1, n_embd=16)
    micro = [{"idx": i, "targets": y} for i, y in zip(idx.chunk(accumulate), targets.chunk(accumulate))]
    history = run_train(model, micro * steps, steps, accumulate, lr, 5, 1.0, weight_decay=0.1)
    for s, h in enumerate(history):
        if s % 5 == 0 or s == steps - 1:
            print(f"step {s:3d}  lr {h['lr']:.2e}  loss {h['loss']:.3f}  grad norm {h['grad_norm']:.3f}")


def try_forgetting(replay=0.0, lr=1e-3, steps=30):
    """Continued pretraining of the shipped base model on domain 2 (README exercise 5), small
    enough for about half a minute: `steps` steps of 8 windows of 128 tokens at peak rate `lr`,
    a share `replay` of the windows drawn from the original corpus. Prints domain-2 perplexity,
    original perplexity and closed-book fact recall before and after. Change replay, lr, steps."""
    import random

    from minift import world
    from minift.pretrain import forgetting_probe, load_base
    from minift.tasks import LMDataset
    from minift.train import TrainConfig, evaluate_nll, train
    model, tok = load_base()
    d2 = LMDataset(tok, world.domain2_corpus("train")[:400], 128)
    items = [d2[i] for i in range(len(d2))]
    if replay > 0:
        orig = LMDataset(tok, world.pretrain_corpus("train")[:400], 128)
        n = min(len(orig), round(len(items) * replay / (1 - replay)))
        items += [orig[i] for i in random.Random(1).sample(range(len(orig)), n)]
    d2_val = LMDataset(tok, world.domain2_corpus("val"), 128)
    d2_val = [d2_val[i] for i in range(16)]

    def measure(m):
        f = forgetting_probe(m, tok, n_windows=16, n_facts=36)
        return f"domain-2 ppl {math.exp(evaluate_nll(m, d2_val)):.2f}  original ppl {f['pretrain_ppl']:.3f}  " \
               f"facts {f['fact_accuracy']:.0%}"
    print(f"before: {measure(model)}")
    cfg = TrainConfig(steps=steps, batch_size=8, lr=lr, warmup_steps=max(1, steps // 15), weight_decay=0.1,
                      progress=False)
    train(model, items, cfg)
    print(f"after {steps} steps (replay {replay:.0%}, lr {lr:g}): {measure(model)}")


if __name__ == "__main__":         # python lessons/01_pretraining/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
