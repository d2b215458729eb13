"""Lesson 14: RLHF with PPO — π_SFT, a reward model, then PPO against it, with and without the KL leash.

Prints, top to bottom:

  1. π_SFT: the shipped base fully fine-tuned on the preference prompts' chosen answers
     (minift.evals.train_sft_policy), and how often its answers are exactly right;
  2. the reward model (minift/align/reward.py), started from π_SFT and trained on the preference
     pairs: held-out accuracy (ties counted apart) by kind of preference, on val people never seen
     in its training pairs;
  3. PPO (minift/align/ppo.py) from π_SFT against that reward model, twice with the same seed, lr,
     batches and iterations: KL coefficient β = 0 and β = 0.2. Curves over the iterations: mean RM
     score of the samples, KL to π_SFT (nats per response, the k1 estimator PPO optimises), entropy,
     length; PPO's own statistics (clip fraction, value loss) and the check that the sampling
     log-probs equal a re-scored forward pass;
  4. the reward model against the truth: RM score, KL, and the share of answers that are EXACTLY
     the chosen answer (TinyWorld knows it) for π_SFT and both PPO policies, greedy and sampled;
     which spurious feature the β = 0 policy found (the reward model's preference for a dropped
     final '.', measured on the val fact pairs); generations side by side.
  With --long: part 3 again for β in {0, 0.05, 0.2} and seeds 0, 1, 2 (the default run uses seed 0
  only), and the spread (about 2 more minutes of CPU).

    python lessons/14_rlhf_ppo/walkthrough.py           # or: minift run 14
    python lessons/14_rlhf_ppo/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/14_rlhf_ppo/walkthrough.py --long    # + 3 seeds x 3 values of beta

Everything it uses lives in the library (minift/align/ppo.py, minift/align/reward.py,
minift/align/preference.py, minift/evals.py, minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 104
FAST_SECONDS = 12

import copy
import time

from minift import course
from minift.align.ppo import PPOConfig, frozen_copy, train_ppo
from minift.align.reward import RewardConfig, train_reward_model
from minift.evals import evaluate_policy, evaluate_reward_model, preference_examples, train_sft_policy
from minift.pretrain import load_base
from minift.report import header, table
from minift.train import TrainConfig

parser = course.parser(__doc__)
parser.add_argument("--long", action="store_true", help="also rerun PPO for beta in {0, 0.05, 0.2} x seeds 0, 1, 2")
args = course.start("14", parser)         # the base-model check, one thread, the clock: minift/course.py
FAST, DEV = args.fast, args.device     # DEV: --device (cpu unless told), where every model lives
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)

SFT_STEPS, RM_STEPS = (2, 2) if FAST else (50, 45)
N_EVAL = 8 if FAST else 32
BETAS = (0.0, 0.2)
PPO = PPOConfig(steps=1 if FAST else 10, batch_size=4 if FAST else 16, minibatch_size=4 if FAST else 16,
                ppo_epochs=4, lr=1e-4, clip=0.2, clip_value=0.2, vf_coef=0.5, gamma=1.0, lam=0.95,
                max_new_tokens=20, seed=0)
EVERY = 1 if FAST else 2                                          # curve rows: means over EVERY iterations

base, tok = load_base(device=DEV)
train_ex, val_ex = preference_examples("train"), preference_examples("val")
if FAST:
    val_ex = val_ex[:N_EVAL]                                      # --fast: the reward model's checks on 8 pairs too
eval_ex = val_ex[:N_EVAL]
prompts = [e["prompt"] for e in train_ex]


def kind(ex):
    """Which preference an example tests (TinyWorld's three kinds, read off the prompt)."""
    if ex["prompt"].startswith("Answer with"):
        return "format"
    return "task" if any(ex["prompt"].startswith(h) for h in ("Write the words", "Rewrite", "How many")) else "fact"


def cpu():
    """CPU seconds of this process; on a GPU, wall seconds after a synchronize (course.clock)."""
    return course.clock()


print(f"data: TinyWorld's preference task, {len(train_ex)} training pairs, {len(val_ex)} val pairs (people never in "
      f"the training pairs); evaluation on the first {len(eval_ex)} val prompts. Kinds: fact (a true fact beats a "
      f"wrong one), format (follows 'one word only' / 'a full sentence'), task (does the text task, not a copy).")
print(f"e.g. {train_ex[0]}")

# ==============================================================================================
header(f"1. Step 1, π_SFT: the base fully fine-tuned on (prompt, chosen), {SFT_STEPS} steps x batch 16, lr 1e-3")
t0 = cpu()
sft, sft_hist = train_sft_policy(base, tok, steps=SFT_STEPS, batch_size=16, lr=1e-3, seed=0, progress=False)
t_sft = cpu() - t0
print(f"SFT loss {sft_hist[0]['loss']:.3f} -> {sft_hist[-1]['loss']:.3f} in {t_sft:.1f}s {CLOCK}")

# ==============================================================================================
header(f"2. Step 2, the reward model: π_SFT + a scalar head on the last real token, Bradley–Terry loss, "
       f"{RM_STEPS} steps x 16 pairs, lr 3e-4")
t0 = cpu()
rm_ex = train_ex[:RM_STEPS * 16] if FAST else train_ex          # --fast: only the pairs its 2 steps read
rm, rm_hist = train_reward_model(sft, rm_ex, RewardConfig(), TrainConfig(steps=RM_STEPS, batch_size=16, lr=3e-4, seed=0,
                                 desc="reward model", progress=False), tok=tok)
t_rm = cpu() - t0
print(f"loss {rm_hist[0]['loss']:.3f} -> {rm_hist[-1]['loss']:.3f} (log 2 = 0.693 is a coin), train accuracy of the "
      f"last batch {rm_hist[-1]['acc']:.0%}, {t_rm:.1f}s {CLOCK}; rewards then standardised (mean 0, std 1 on training "
      f"responses)")
rows, rm_val = [], {}
for k in ("fact", "format", "task"):
    sub = [e for e in val_ex if kind(e) == k]
    if not sub:                                         # (--fast's 16 pairs might miss a kind)
        continue
    rm_val[k] = m = {**evaluate_reward_model(rm, tok, sub), "n": len(sub)}
    rows.append((k, len(sub), f"{m['accuracy']:.1%}", f"{m['ties']:.1%}", f"{m['margin']:+.2f}"))
n_all = sum(m["n"] for m in rm_val.values())           # "all": the kinds' means weighted by their sizes
m = {key: sum(v[key] * v["n"] for v in rm_val.values()) / n_all for key in ("accuracy", "ties", "margin")}
rows.append(("all", n_all, f"{m['accuracy']:.1%}", f"{m['ties']:.1%}", f"{m['margin']:+.2f}"))
table(("held-out val pairs", "n", "accuracy (r_w > r_l)", "ties", "mean r_w − r_l"), rows)

# ==============================================================================================
header(f"3. Step 3, PPO from π_SFT against the reward model: {PPO.steps} iterations x {PPO.batch_size} prompts, "
       f"{PPO.ppo_epochs} epochs of minibatches of {PPO.minibatch_size}, lr {PPO.lr:g}, ε = {PPO.clip}, "
       f"γ = {PPO.gamma}, λ = {PPO.lam}; full fine-tuning; β = {' and β = '.join(f'{b:g}' for b in BETAS)}")
ref = frozen_copy(sft)


def run_ppo(beta, seed=0):
    policy = copy.deepcopy(sft)
    for p in policy.parameters():
        p.requires_grad_(True)
    cfg = PPOConfig(**{**PPO.__dict__, "kl_coef": beta, "seed": seed})
    t0 = cpu()
    hist = train_ppo(policy, prompts, cfg, ref=ref, reward_model=rm, tok=tok, progress=False)
    return policy, hist, cpu() - t0


runs = {}
for beta in BETAS:
    runs[beta] = run_ppo(beta)
    print(f"β = {beta:g}: {runs[beta][2]:.1f}s {CLOCK}", flush=True)


def window(hist, key, i):
    xs = [h[key] for h in hist[i:i + EVERY]]
    return sum(xs) / len(xs)


rows = []
for i in range(0, PPO.steps, EVERY):
    row = [f"{i + 1}-{min(i + EVERY, PPO.steps)}" if EVERY > 1 else str(i + 1)]
    for beta in BETAS:
        h = runs[beta][1]
        row += [f"{window(h, 'score', i):+.2f}", f"{window(h, 'kl', i):.2f}", f"{window(h, 'entropy', i):.2f}",
                f"{window(h, 'length', i):.1f}"]
    rows.append(row)
hdr = ["iterations"] + [f"{c} β={b:g}" for b in BETAS for c in ("score", "KL", "entropy", "len")]
table(hdr, rows)
print("score = mean RM score of the rollout's samples (fresh prompts every iteration, so the rows are noisy); "
      "KL = mean Σ_t (log π − log π_ref) per response, nats, the estimator in the reward; entropy = mean per-token "
      "entropy of π on the sampled tokens; len = tokens per response (EOS included).")
rows = []
for beta in BETAS:
    h = runs[beta][1]
    n = len(h)
    rows.append((f"β = {beta:g}", f"{sum(x['clip_frac'] for x in h) / n:.3f}", f"{sum(x['approx_kl'] for x in h) / n:.4f}",
                 f"{h[0]['value_loss']:.3f} -> {h[-1]['value_loss']:.3f}", f"{max(x['sample_logp_err'] for x in h):.1e}",
                 f"{runs[beta][2] / PPO.steps:.2f}s"))
table(("PPO run", "clip fraction", "KL(π_old ‖ π_new) per update", "value loss", "max |sample − rescored logp|",
       f"{CLOCK} / iteration"), rows)
print(f"cost: one PPO run = {runs[BETAS[-1]][2] / t_rm:.2f}x the reward model's training and "
      f"{runs[BETAS[-1]][2] / t_sft:.2f}x π_SFT's ({CLOCK} time, this run).")

# ==============================================================================================
header(f"4. The reward model vs the truth, on {len(eval_ex)} val prompts (people unseen in PPO's prompts)")
policies = {"π_SFT": sft, **{f"PPO β = {b:g}": runs[b][0] for b in BETAS}}
res = {}
for name, pol in policies.items():
    res[name] = {"sampled": evaluate_policy(pol, ref, rm, tok, eval_ex, PPO.max_new_tokens, greedy=False, seed=1),
                 "greedy": evaluate_policy(pol, ref, rm, tok, eval_ex, PPO.max_new_tokens, greedy=True)}


def period(texts, exs):
    """Share of answers to fact prompts that end with '.' (every chosen fact answer does)."""
    pairs = [(t, e) for t, e in zip(texts, exs) if kind(e) == "fact"]
    return sum(t.endswith(".") for t, _ in pairs) / max(1, len(pairs))


rows = []
for name, r in res.items():
    s, g = r["sampled"], r["greedy"]
    rows.append((name, f"{s['score']:+.2f}", f"{s['kl']:.2f}", f"{s['chosen']:.1%}", f"{g['score']:+.2f}",
                 f"{g['chosen']:.1%}", f"{g['rejected']:.1%}", f"{period(g['responses'], eval_ex):.0%}",
                 f"{g['length']:.1f}", f"{g['no_eos']:.0%}"))
table(("policy", "RM score (sampled)", "KL (sampled)", "= chosen (sampled)", "RM score (greedy)", "= chosen (greedy)",
       "= rejected (greedy)", "fact answers with '.'", "length", "no EOS"), rows)
print("= chosen: the response is exactly TinyWorld's preferred answer (a true fact in the asked form; the format "
      "asked for; the text task done). Sampled: temperature 1, one sample per prompt (seed 1).")

facts = [e for e in val_ex if kind(e) == "fact"]
with_dot = evaluate_reward_model(rm, tok, [{"prompt": e["prompt"], "chosen": e["chosen"],
                                            "rejected": e["chosen"].rstrip(".")} for e in facts])
true_vs_dotless_wrong = evaluate_reward_model(rm, tok, [{"prompt": e["prompt"], "chosen": e["chosen"],
                                                         "rejected": e["rejected"].rstrip(".")} for e in facts])
print(f"\nA spurious feature, measured on the {len(facts)} val fact pairs: the reward model prefers the true answer WITH "
      f"its final '.' to the same answer without it on {with_dot['accuracy']:.0%} of them (mean r difference "
      f"{with_dot['margin']:+.2f}); the true answer beats the WRONG answer with its '.' dropped on "
      f"{true_vs_dotless_wrong['accuracy']:.0%} (vs {rm_val.get('fact', {'accuracy': 0})['accuracy']:.0%} with the '.').")

print("\nGreedy answers side by side (the first val prompts of each kind):")
shown = [i for k in ("fact", "format", "task") for i in [j for j, e in enumerate(eval_ex) if kind(e) == k][:2]]
for i in shown:
    e = eval_ex[i]
    print(f"\n  [{kind(e)}] {e['prompt']}\n    chosen        {e['chosen']}")
    for name in res:
        print(f"    {name:<13} {res[name]['greedy']['responses'][i]}")

# ==============================================================================================
if args.long:
    header("5. Seeds: PPO again for β in {0, 0.05, 0.2} and seeds 0, 1, 2 (same π_SFT and reward model)")
    rows = []
    for beta in (0.0, 0.05, 0.2):
        per = []
        for seed in (0, 1, 2):
            pol, hist, _ = runs[beta] if (seed == 0 and beta in runs) else run_ppo(beta, seed)
            s = evaluate_policy(pol, ref, rm, tok, eval_ex, PPO.max_new_tokens, greedy=False, seed=1)
            g = evaluate_policy(pol, ref, rm, tok, eval_ex, PPO.max_new_tokens, greedy=True)
            per.append((s["score"], s["kl"], s["chosen"], g["chosen"]))
            print(f"  β = {beta:g}, seed {seed}: done", flush=True)
        cols = list(zip(*per))
        rows.append((f"β = {beta:g}", " ".join(f"{x:+.2f}" for x in cols[0]), " ".join(f"{x:.1f}" for x in cols[1]),
                     " ".join(f"{x:.0%}" for x in cols[2]), " ".join(f"{x:.0%}" for x in cols[3])))
    s0, g0 = res["π_SFT"]["sampled"], res["π_SFT"]["greedy"]
    rows.append(("π_SFT", f"{s0['score']:+.2f}", f"{s0['kl']:.1f}", f"{s0['chosen']:.0%}", f"{g0['chosen']:.0%}"))
    table(("policy", "RM score sampled, seeds 0 1 2", "KL sampled", "= chosen sampled", "= chosen greedy"), rows)

print(f"\ntotal {course.elapsed():.0f}s wall, {time.process_time():.0f}s CPU{course.memory_note()}")
