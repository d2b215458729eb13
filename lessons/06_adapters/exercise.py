"""Lesson 06 exercise: a bottleneck adapter, the function every adapter in this lesson computes.

Fill in the function below (delete the `raise NotImplementedError`), then grade your file with
`minift check 06`. How grading works (points, counterexamples, your own copy, --impl, --pytest,
minift verify): lessons/README.md, "Grading your exercise".

Rules: plain PyTorch (torch, torch.nn.functional: @, .T, relu, tanh, sigmoid, ...); do not call minift.

Below the stub, the starters of the README's "try it" exercises (they may call minift):

    python exercises/06_adapters.py try_merge_identity_adapter          # exercise 2, uses your run_adapter (your copy)
    python lessons/06_adapters/exercise.py try_head_plus_wte            # exercise 3, about 15 s
    python lessons/06_adapters/exercise.py try_adapter_timing           # exercise 4, about 10 s
"""
import time

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401


def run_adapter(h, W_down, b_down, W_up, b_up, activation="relu", scaling=1.0):
    """A series bottleneck adapter (Houlsby et al., 2019) applied to a sublayer's output h:

        z   = h W_down^T + b_down                   (N, m)   down-projection, m ≪ C
        out = h + scaling · ( f(z) W_up^T + b_up )  (N, C)   up-projection, added to h (the residual)

    The weights are in nn.Linear layout: W_down (m, C), b_down (m,), W_up (C, m), b_up (C,), so the
    paper's "h W_down" is h times the transpose of W_down here. h: (N, C) float tensor. Returns (N, C),
    h's dtype.

    f is named by `activation`: "relu", "gelu" (GPT-2's tanh approximation, not the erf one),
    "silu", "tanh" or "identity", each as the README's equation (6.2) writes it; any other name
    raises ValueError. `scaling` is a plain float s (it may be negative or 0).

    At initialisation W_up = 0 and b_up = 0, and then the output must be h exactly, bit for bit:
    compute the adapter term on its own and add it to h last, so h + 0 returns h unchanged.
    """
    raise NotImplementedError("run_adapter: not written yet; lessons/06_adapters/README.md, "
                              "\"The maths\", equation (6.1), says what it computes")


# ---- "try it" starters (run: python lessons/06_adapters/exercise.py try_<what>) -------------------

def try_merge_identity_adapter(C=6, m=3, n=4, s=0.5, seed=0):
    """Exercise 2's starter: a series adapter with f = identity on a layer h = W x + b, computed with
    YOUR run_adapter, against one plain linear layer W' x + b' with W' and b' as the README states
    them. Prints the largest difference (float32 rounding if the merge is right). Then try
    activation="relu" in the run_adapter call and see what breaks."""
    g = torch.Generator().manual_seed(seed)
    W, b, x = torch.randn(C, C, generator=g), torch.randn(C, generator=g), torch.randn(n, C, generator=g)
    Wd, bd = torch.randn(m, C, generator=g), torch.randn(m, generator=g)
    Wu, bu = torch.randn(C, m, generator=g), torch.randn(C, generator=g)
    h = x @ W.T + b                                                           # the frozen layer
    adapted = run_adapter(h, Wd, bd, Wu, bu, activation="identity", scaling=s)
    M = torch.eye(C) + s * (Wu @ Wd)                                          # I + s W_up W_down
    W_merged, b_merged = M @ W, M @ b + s * (Wu @ bd + bu)
    merged = x @ W_merged.T + b_merged
    print(f"identity adapter via run_adapter vs the merged layer W' x + b': max |diff| = "
          f"{float((adapted - merged).abs().max()):.2e} (outputs up to {float(adapted.abs().max()):.1f})")


def try_head_plus_wte(steps=100, lr=1e-1):
    """Exercise 3's starter (about 15 s): lesson 06's NER recipe (100 steps x 8, head-only's lr
    1e-1), head-only, then head-only with the token embedding `transformer.wte.` unfrozen too (no
    adapter). Prints dev and test F1 and the trainable count of each."""
    from minift import course
    from minift.heads import ner_splits
    from minift.peft.selective import SelectiveConfig
    from minift.pretrain import load_base

    torch.set_num_threads(1)
    _, tok = load_base()
    bench = course.Bench({"head-only": SelectiveConfig(patterns=())}, tok, ner_splits(tok, 128, None, dev_key="dev"),
                         steps=steps, batch=8, width=16)
    for unfreeze in ((), ("transformer.wte.",)):
        r = bench.train_and_measure("head-only", lr, unfreeze=unfreeze)
        print(f"head-only{' + wte' if unfreeze else '':<6}  trainable {r['rep']['trainable']:>9,}  dev F1 "
              f"{r['f1']['dev']:.3f}  test F1 {r['f1']['test']:.3f}  ({r['time']:.1f}s)", flush=True)


def try_adapter_timing(widths=(128, 4096), m=15, tokens=64, rounds=20):
    """Exercise 4's starter (about 10 s): the forward CPU time of one `SeriesAdapterLinear` (a C x C
    linear layer plus a bottleneck of width m) against the bare nn.Linear, at each width C, on
    `tokens` rows; the fastest of `rounds` interleaved rounds, one thread."""
    from minift.peft.adapters import AdapterConfig, SeriesAdapterLinear

    torch.set_num_threads(1)
    for C in widths:
        lin = torch.nn.Linear(C, C)
        ad = SeriesAdapterLinear(torch.nn.Linear(C, C), AdapterConfig(bottleneck=m))
        x = torch.randn(tokens, C)
        best = {"linear": float("inf"), "adapter": float("inf")}
        with torch.no_grad():
            for _ in range(rounds):
                for name, mod in (("linear", lin), ("adapter", ad)):
                    t0 = time.process_time()
                    mod(x)
                    best[name] = min(best[name], time.process_time() - t0)
        extra = 2 * C * m / (C * C)
        print(f"C = {C:>5}: linear {best['linear'] * 1e6:9.1f} us, with adapter {best['adapter'] * 1e6:9.1f} us, "
              f"ratio {best['adapter'] / max(best['linear'], 1e-9):.2f}x  (extra multiply-adds vs the linear: {extra:.1%})")


if __name__ == "__main__":         # python lessons/06_adapters/exercise.py try_<what> [value ...] [name=value ...]
    from minift.course import run_starter
    run_starter(globals())
