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
  With --lora, on its own (parts 1-2, then part 6): PPO at β = 0.2 with full fine-tuning (part 3's
  recipe) against PPO that trains only LoRA adapters, whose disabled adapters are π_ref (no frozen
  copy): reward, KL, parameters trained, models and bytes held, bytes saved for backward, CPU time.
  With --lora --seeds K, at the end: part 6's rows again with seeds 0..K-1 (LoRA init, the prompts' order,
  PPO's sampling and minibatch order; the same π_SFT and reward model), and the spread of the held-out RM
  score, score − β KL, the training rollouts' score and KL, and the KL per update. --seeds needs --lora
  (part 3's β rows have --long's three seeds).

    python lessons/14_rlhf_ppo/walkthrough.py           # or: minift run 14
    python lessons/14_rlhf_ppo/walkthrough.py --fast    # the seconds-long version the tests run
    python lessons/14_rlhf_ppo/walkthrough.py --long    # + 3 seeds x 3 values of beta
    python lessons/14_rlhf_ppo/walkthrough.py --lora    # parts 1-2, then full fine-tuning vs LoRA PPO
    python lessons/14_rlhf_ppo/walkthrough.py --lora --seeds 5   # + part 6's rows with seeds 1-4 (3.5x --lora's time)

Everything it uses lives in the library (minift/align/ppo.py, minift/align/reward.py,
minift/align/preference.py, minift/evals.py, minift/pretrain.py); this file only calls it and prints.
"""
EXPECTED_SECONDS = 103
FAST_SECONDS = 12

import copy
import time

import torch
import torch.nn as nn

from minift import course
from minift.align.ppo import PPOConfig, frozen_copy, train_ppo
from minift.peft.lora import LoRAConfig, apply_lora
from minift.align.reward import RewardConfig, train_reward_model
from minift.evals import evaluate_policy, evaluate_reward_model, preference_examples, train_sft_policy
from minift.memory import SavedForBackward
from minift.pretrain import load_base
from minift.report import header, per_seed, table
from minift.train import TrainConfig

parser = course.parser(__doc__)
parser.add_argument("--long", action="store_true", help="also rerun PPO for beta in {0, 0.05, 0.2} x seeds 0, 1, 2")
parser.add_argument("--lora", action="store_true", help="parts 1-2, then part 6 alone: PPO with full fine-tuning "
                                                        "vs PPO with LoRA on the policy (about 2 minutes of CPU)")
course.add_seeds(parser, "part 6's rows (with --lora)", "LoRA init, the prompts' order, PPO's sampling and "
                 "minibatch order", "the held-out RM score and KL, the training rollouts' score and KL, and the KL "
                 "per update", "K=5: 3.5x --lora's time; only with --lora")
args = course.start("14", parser)         # the base-model check, one thread, the clock: minift/course.py
if args.seeds > 1 and not args.lora:
    parser.error("--seeds K reruns part 6's rows: give it with --lora (--long reruns part 3's PPO with 3 seeds)")
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
# Part 6 (--lora, on its own): the same PPO (β = 0.2, part 3's steps, batches, prompts and seed) with
# every weight trained against PPO that trains LoRA adapters only. train_ppo(ref=None) takes the
# policy with its adapters disabled as π_ref, so the LoRA runs hold no frozen copy of π_SFT.
if args.lora:
    ALL_LINEAR = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    LORA_BETA, FULL_LR = 0.2, PPO.lr
    # (row, LoRA config or None for full fine-tuning, lr). LoRA's lr: 10x full fine-tuning's, the ratio
    # lesson 05's sweep picked (LoRA 1e-2 vs full 1e-3); the row at full fine-tuning's own lr shows why.
    VARIANTS = [("full fine-tuning", None, FULL_LR),
                ("LoRA r=8 q,v", LoRAConfig(r=8, include_head=False), 10 * FULL_LR),
                ("LoRA r=8 all linear", LoRAConfig(r=8, targets=ALL_LINEAR, qkv=None, include_head=False), 10 * FULL_LR),
                ("LoRA r=1 all linear", LoRAConfig(r=1, targets=ALL_LINEAR, qkv=None, include_head=False), 10 * FULL_LR),
                ("LoRA r=8 all linear", LoRAConfig(r=8, targets=ALL_LINEAR, qkv=None, include_head=False), FULL_LR)]
    if FAST:
        VARIANTS = VARIANTS[:2]
    header(f"6. PPO with LoRA on the policy vs full fine-tuning: β = {LORA_BETA:g}, {PPO.steps} iterations x "
           f"{PPO.batch_size} prompts, {PPO.ppo_epochs} epochs of minibatches of {PPO.minibatch_size}, seed 0, the "
           f"same reward model; every LoRA alpha = 16")

    def held_bytes(*models) -> int:
        """Bytes of every distinct parameter and buffer of the models held during PPO."""
        seen = {id(t): t for m in models for t in list(m.parameters()) + list(m.buffers())}
        return sum(t.numel() * t.element_size() for t in seen.values())

    def mib(n: float) -> str:
        return f"{n / 2 ** 20:.2f} MiB"

    C = sft.config.n_embd

    def lora_run(name, lcfg, lr, seed=0):
        """One row: PPO from a copy of π_SFT (LoRA when lcfg is given), then its held-out evaluation."""
        policy = copy.deepcopy(sft)
        for p in policy.parameters():
            p.requires_grad_(True)
        if lcfg is not None:
            if seed:                                               # seed 0: the RNG as the runs before left it
                torch.manual_seed(seed)
            apply_lora(policy, lcfg)                               # freezes every weight but A and B
        ref_ = frozen_copy(sft) if lcfg is None else None          # LoRA: π_ref = the adapters disabled
        vhead = nn.Linear(C, 1)                                    # train_ppo's own head: V = 0 at the start
        nn.init.zeros_(vhead.weight)
        nn.init.zeros_(vhead.bias)
        vhead = vhead.to(device=sft.transformer.wte.weight.device)
        cfg = PPOConfig(**{**PPO.__dict__, "kl_coef": LORA_BETA, "lr": lr, "seed": seed})
        held = [m for m in (policy, ref_, rm, vhead) if m is not None]
        meter = SavedForBackward(*held)
        t0 = cpu()
        with meter:
            hist = train_ppo(policy, prompts, cfg, ref=ref_, reward_model=rm, tok=tok, value_head=vhead,
                             progress=False)
        secs = cpu() - t0
        trainable = sum(p.numel() for m in (policy, vhead) for p in m.parameters() if p.requires_grad)
        s = evaluate_policy(policy, ref_, rm, tok, eval_ex, PPO.max_new_tokens, greedy=False, seed=1)
        g = evaluate_policy(policy, ref_, rm, tok, eval_ex, PPO.max_new_tokens, greedy=True)
        n = len(hist)
        return {"name": name, "lr": lr, "trainable": trainable, "held": len(held),
                "models": "policy + ref + RM + V" if ref_ is not None else "policy (+adapters) + RM + V",
                "params_held": sum(p.numel() for m in held for p in m.parameters()),
                "weights": held_bytes(*held), "state": 12 * trainable, "saved": meter.peak,
                "secs": secs, "iter_secs": secs / n, "s": s, "g": g,
                "clip": sum(x["clip_frac"] for x in hist) / n, "step_kl": sum(x["approx_kl"] for x in hist) / n,
                "train_score": sum(x["score"] for x in hist[n // 2:]) / (n - n // 2),
                "train_kl": sum(x["kl"] for x in hist[n // 2:]) / (n - n // 2)}

    lora_rows = []
    for name, lcfg, lr in VARIANTS:
        lora_rows.append(lora_run(name, lcfg, lr))
        print(f"{name}, lr {lr:g}: {lora_rows[-1]['secs']:.1f}s {CLOCK}", flush=True)
    sft_ref = frozen_copy(sft)
    s0 = evaluate_policy(sft, sft_ref, rm, tok, eval_ex, PPO.max_new_tokens, greedy=False, seed=1)
    g0 = evaluate_policy(sft, sft_ref, rm, tok, eval_ex, PPO.max_new_tokens, greedy=True)
    n_full = sum(p.numel() for p in sft.parameters())
    rows = [("π_SFT (no PPO)", "-", "-", f"{s0['score']:+.2f}", f"{s0['kl']:.2f}", f"{s0['score'] - LORA_BETA * s0['kl']:+.2f}",
             f"{g0['chosen']:.1%}", "-", "-", "-", "-")]
    for r in lora_rows:
        rows.append((r["name"], f"{r['lr']:g}", f"{r['trainable']:,} ({r['trainable'] / n_full:.1%})",
                     f"{r['s']['score']:+.2f}", f"{r['s']['kl']:.2f}", f"{r['s']['score'] - LORA_BETA * r['s']['kl']:+.2f}",
                     f"{r['g']['chosen']:.1%}", f"{r['train_score']:+.2f}", f"{r['train_kl']:.2f}", f"{r['clip']:.3f}",
                     f"{r['step_kl']:.4f}"))
    table(("policy", "lr", "trained (of the model)", "RM score", "KL", f"score − {LORA_BETA:g} KL", "= chosen (greedy)",
           f"train score, it {PPO.steps // 2 + 1}-{PPO.steps}", "train KL", "clip fraction",
           "KL(π_old ‖ π_new) per update"), rows)
    print(f"RM score, KL, score − β KL: one temperature-1 sample per held-out prompt ({len(eval_ex)} prompts, seed 1), "
          f"KL to π_SFT in nats per response; = chosen: greedy answers exactly right. train: the rollouts' means over "
          f"the last {PPO.steps - PPO.steps // 2} iterations. Trained: the policy's trainable weights + the value "
          f"head's {C + 1}.")
    rows = [(r["name"], f"{r['lr']:g}", r["models"], f"{r['params_held']:,}", mib(r["weights"]), mib(r["state"]),
             mib(r["saved"]), f"{r['iter_secs']:.2f}s") for r in lora_rows]
    table(("policy", "lr", "models held", "parameters held", "weights held", "grads + AdamW state",
           "peak saved for backward", f"{CLOCK} / iteration"), rows)
    print("weights held: every distinct parameter and buffer of the models PPO keeps (fp32); grads + AdamW state: "
          "4 + 8 bytes per trained number; peak saved for backward: the most bytes autograd kept for one "
          "backward (deduplicated by storage, parameters excluded), over the run.")
    full = lora_rows[0]
    for r in lora_rows[1:]:
        less = r["weights"] + r["state"] < full["weights"] + full["state"]
        course.verdict(f"  {r['name']}, lr {r['lr']:g}: weights + optimizer state {mib(r['weights'] + r['state'])} vs "
                       f"full fine-tuning's {mib(full['weights'] + full['state'])} -> "
                       f"{'holds' if less else 'fails'} (LoRA PPO needs less memory)")
    same_lr = [r for r in lora_rows[1:] if r["lr"] == FULL_LR]
    higher = [r for r in lora_rows[1:] if r["lr"] > FULL_LR and r["name"] in {x["name"] for x in same_lr}]
    for lo, hi in [(lo, hi) for lo in same_lr for hi in higher if hi["name"] == lo["name"]]:
        ok = lo["step_kl"] < hi["step_kl"] and lo["step_kl"] < full["step_kl"] / 2
        course.verdict(f"  {lo['name']}: KL(π_old ‖ π_new) per update {lo['step_kl']:.4f} at full fine-tuning's lr "
                       f"{FULL_LR:g}, {hi['step_kl']:.4f} at {hi['lr']:g}, full fine-tuning {full['step_kl']:.4f} -> "
                       f"{'holds' if ok else 'fails'} (at the same lr LoRA moves the policy far less: it needs a "
                       f"higher lr)")
    SE = (2 / len(eval_ex)) ** 0.5   # one standard error of a difference of two n-sample means of a unit-variance reward
    gain = full["s"]["score"] - s0["score"]
    for r in lora_rows[1:]:
        d = r["s"]["score"] - full["s"]["score"]
        judged = ("not resolved: full fine-tuning's own gain over π_SFT is within the noise too" if gain < SE
                  else "holds" if d >= -SE else "fails")
        course.verdict(f"  {r['name']}, lr {r['lr']:g}: held-out RM score {r['s']['score']:+.2f} vs full fine-tuning's "
                       f"{full['s']['score']:+.2f} (difference {d:+.2f}) and π_SFT's {s0['score']:+.2f} (full fine-"
                       f"tuning's gain {gain:+.2f}); noise: {SE:.2f} = one standard error of a difference of two "
                       f"{len(eval_ex)}-sample means of a unit-variance reward -> {judged} (LoRA PPO reaches full "
                       f"fine-tuning's reward)")

    # --seeds K: every row of part 6 again with seeds 1..K-1, beside the seed-0 runs above
    if seeds := course.seeds_section(args.seeds, "7. Seed spread: part 6's rows", "LoRA init, the prompts' order, "
                                     "PPO's sampling and minibatch order; the same π_SFT and reward model"):
        per = [[r] for r in lora_rows]                             # per[row][seed]; seed 0: the runs above
        for sd in seeds[1:]:
            t0 = cpu()
            for by_seed, (name, lcfg, lr) in zip(per, VARIANTS):
                by_seed.append(lora_run(name, lcfg, lr, sd))
            print(f"seed {sd}: {len(VARIANTS)} PPO runs, {cpu() - t0:.1f}s {CLOCK}", flush=True)

        full = [r["s"]["score"] for r in per[0]]                   # the first row: full fine-tuning
        diffs = [("full fine-tuning − π_SFT", [x - s0["score"] for x in full])]
        rows, rows2 = [], []
        for by_seed in per:
            name, lr, score = by_seed[0]["name"], f"{by_seed[0]['lr']:g}", [r["s"]["score"] for r in by_seed]
            rows.append([name, lr, *per_seed(score, "+.3f", spread=True),
                         *per_seed([r["s"]["score"] - LORA_BETA * r["s"]["kl"] for r in by_seed], "+.3f"),
                         *per_seed([r["train_score"] for r in by_seed], "+.3f")])
            rows2.append([name, lr, *per_seed([r["s"]["kl"] for r in by_seed]),
                          *per_seed([r["train_kl"] for r in by_seed]),
                          *per_seed([r["step_kl"] for r in by_seed], ".4f", spread=True)])
            if by_seed is not per[0]:
                diffs.append((f"{name}, lr {lr} − full fine-tuning", [x - y for x, y in zip(score, full)]))
        table(("policy", "lr", "held-out RM score per seed", "mean", "range", f"score − {LORA_BETA:g} KL per seed",
               "mean", f"train score, it {PPO.steps // 2 + 1}-{PPO.steps}, per seed", "mean"), rows)
        table(("policy", "lr", "held-out KL per seed", "mean", "train KL per seed", "mean",
               "KL(π_old ‖ π_new) per update per seed", "mean", "range"), rows2)
        table(("held-out RM score, difference", "per seed", "mean", f"above +{SE:.3f}", f"below −{SE:.3f}"),
              [[name, *per_seed(d, "+.3f"), f"{sum(x > SE for x in d)} of {len(d)}", f"{sum(x < -SE for x in d)} of {len(d)}"]
               for name, d in diffs])
        print(f"held-out: part 6's columns, one temperature-1 sample per held-out prompt (the same sampling seed 1 for "
              f"every training seed); π_SFT's RM score {s0['score']:+.3f} (no seed). {SE:.3f}: one standard error of a "
              f"difference of two {len(eval_ex)}-sample means of a unit-variance reward.")
    print(f"\ntotal {course.elapsed():.0f}s wall, {time.process_time():.0f}s CPU{course.memory_note()}")
    raise SystemExit(0)

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
