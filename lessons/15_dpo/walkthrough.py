"""Lesson 15: DPO — preference alignment without a reward model or sampling, against IPO and PPO.

Prints, top to bottom:

  1. π_SFT: the base fine-tuned on BOTH the chosen and the rejected answers of the preference train
     split (minift.evals.train_sft_policy(responses="both")), and how often it already
     ranks the chosen answer first on the held-out pairs (the first 64 of 200; raw log π), against the base;
  2. DPO from π_SFT on the same preference pairs (minift/align/dpo.py): held-out preference accuracy
     before/after, by kind of pair (fact, format, task), the margin, and what happened to log π of
     the chosen and the rejected answers;
  3. the effect of β (DPO at three values, same steps, lr, seed), IPO for contrast, and DPO + NLL
     (the chosen answer's NLL added): accuracy, margin, drift from π_SFT, and the greedy answers'
     exact match with the chosen answer (TinyWorld knows it) and fact correctness on the held-out
     fact prompts, checked against the lesson's targets;
  4. PPO (minift/align/ppo.py, lesson 14's loop) from the same π_SFT against a reward model trained
     on the same pairs: greedy generations of π_SFT, DPO, DPO + NLL and PPO side by side, with the
     reward model's score and exact match;
  5. the training cost of DPO vs PPO, measured in this run: CPU seconds per step and per training
     example, models held in memory, and the peak bytes autograd saved for one backward;
  6. what each cost the language model (pretraining perplexity, cloze facts);
  7. (with --sentiment, on its own) sentiment control, the DPO paper's first experiment: a classifier's
     p(positive) as the reward, PPO, DPO on pairs sampled from π_SFT and ranked by the classifier
     (minift/align/onpolicy.py) and DPO on TinyWorld's fixed pairs, each at three β; reward against KL
     from π_SFT on fresh samples (the frontier), and the steps to reach a target reward.
  With --seeds K, at the end (after part 6, or after part 3 with --long): π_SFT and part 3's rows again with
  seeds 0..K-1 (π_SFT's and DPO's data order), and the spread of held-out accuracy, Δ log π(y_w), the greedy
  answers' exact match and the targets.

With --long, parts 1-3 only, at budgets where the lesson's targets can be met (π_SFT 200 steps,
DPO 128 steps x 8 pairs on 1,024 train pairs, all 200 held-out pairs); parts 4-6 are not run.

    python lessons/15_dpo/walkthrough.py              # or: minift run 15
    python lessons/15_dpo/walkthrough.py --fast       # tiny budgets, 8 eval pairs (the tests)
    python lessons/15_dpo/walkthrough.py --variants   # also cDPO (ε = 0.1) and hinge (SLiC) in part 3
    python lessons/15_dpo/walkthrough.py --sentiment  # part 7 alone: sentiment control (about 4 minutes of CPU)
    python lessons/15_dpo/walkthrough.py --long       # parts 1-3 at the budgets of the targets (about 4 minutes of CPU)
    python lessons/15_dpo/walkthrough.py --seeds 5    # + the seed spread of part 3's rows (3.2x the default run's time)

Everything it uses lives in the library (minift/align/dpo.py, preference.py, logps.py, reward.py,
ppo.py, sft.py, onpolicy.py; minift/evals.py; minift/sentiment.py for part 7); this file only calls it,
measures and prints.
"""
EXPECTED_SECONDS = 76
FAST_SECONDS = 10

import copy
import time

import torch

from minift import course, figures
from minift.align.dpo import DPOConfig, score_pairs, train_dpo
from minift.align.ppo import PPOConfig, frozen_copy, train_ppo
from minift.align.preference import PreferenceDataset
from minift.align.reward import RewardConfig, score as reward_score, train_reward_model
from minift.evals import (evaluate_preferences, evaluate_reward_model, generate_responses, preference_examples,
                          train_sft_policy)
from minift.memory import SavedForBackward
from minift.pretrain import forgetting_probe, load_base
from minift.report import header, per_seed, table
from minift.tasks import collate
from minift.train import TrainConfig, to_device

parser = course.parser(__doc__)
parser.add_argument("--variants", action="store_true", help="also conservative DPO and hinge in part 3")
parser.add_argument("--sentiment", action="store_true", help="part 7 alone: sentiment control, the reward-KL frontier "
                    "of PPO, DPO on on-policy pairs and DPO on fixed pairs (about 4 minutes of CPU)")
parser.add_argument("--long", action="store_true", help="parts 1-3 only (parts 4-6 are not run), at budgets where "
                    "the lesson's targets can be met: π_SFT 200 steps x 16, DPO 128 steps x 8 pairs (1,024 train pairs, "
                    "each once), all 200 held-out pairs (about 4 minutes of CPU); not with --sentiment")
course.add_seeds(parser, "π_SFT and part 3's rows", "π_SFT's and DPO's data order",
                 "held-out accuracy, Δ log π(y_w), the greedy answers' exact match and the targets",
                 "K=5: 3.2x the default run's time, 4.6x with --long; not with --sentiment")
args = course.start("15", parser)         # the base-model check, one thread, the clock: minift/course.py
if args.long and args.sentiment:
    parser.error("--long sizes parts 1-3; --sentiment runs part 7 alone: give one of them")
if args.seeds > 1 and args.sentiment:
    parser.error("--seeds retrains π_SFT and part 3's rows; --sentiment runs part 7 alone: give one of them")
FAST, LONG, DEV = args.fast, args.long, args.device     # DEV: --device (cpu unless told), where every model lives
CLOCK = course.clock_name()                # timed lines: "CPU" seconds; on a GPU "GPU wall" (synchronized)
c_start = time.process_time()

# --long (parts 1-3 only): π_SFT answers some held-out prompts exactly right at 200 steps (23%), so
# the quality half of the targets can be judged, and 128 DPO steps take every row past 90%.
SFT_STEPS, RM_STEPS = (2, 1) if FAST else (200, 12) if LONG else (40, 12)
N_EVAL = 8 if FAST else 200 if LONG else 64      # held-out pairs (the first 64 of the 200 val pairs by default)
N_TRAIN = 16 if FAST else 1024 if LONG else 96   # DPO sees each of these pairs once
DPO = dict(steps=1 if FAST else 128 if LONG else 12, batch_size=8, lr=5e-4, seed=0)
MAIN_BETA = 0.3
# (row name, loss_type, β, label smoothing ε, NLL weight α)
RUNS = [("DPO", "sigmoid", 0.1, 0.0, 0.0), ("DPO", "sigmoid", MAIN_BETA, 0.0, 0.0), ("DPO", "sigmoid", 1.0, 0.0, 0.0),
        ("IPO", "ipo", MAIN_BETA, 0.0, 0.0), ("DPO + NLL α=1", "sigmoid", MAIN_BETA, 0.0, 1.0)]
if FAST:
    RUNS = RUNS[1:2] + RUNS[4:]                  # --fast: DPO and DPO + NLL (IPO's loss has its own tests)
if args.variants:
    RUNS += [("cDPO ε=0.1", "sigmoid", MAIN_BETA, 0.1, 0.0), ("hinge (SLiC)", "hinge", MAIN_BETA, 0.0, 0.0)]
PPO = PPOConfig(steps=1 if FAST else 2, batch_size=4 if FAST else 32, minibatch_size=4 if FAST else 16,
                ppo_epochs=4, lr=1e-4, kl_coef=0.2, max_new_tokens=8 if FAST else 20, seed=0)    # lesson 14's PPO settings, fewer iterations

base, tok = load_base(device=DEV)
train_ex, val_ex = preference_examples("train"), preference_examples("val")[:N_EVAL]
dpo_ex = train_ex[:N_TRAIN]


def kind(prompt: str) -> str:
    """TinyWorld's three kinds of preference pair (minift/world/task_sets.py: _preference), read off the prompt."""
    if prompt.startswith("Answer with"):
        return "format"
    if prompt.startswith(("Write the words", "Rewrite this sentence", "How many words")):
        return "task"
    return "fact"


KINDS = ("fact", "format", "task")
by_kind = {k: [i for i, e in enumerate(val_ex) if kind(e["prompt"]) == k] for k in KINDS}


def ranked(chosen: torch.Tensor, rejected: torch.Tensor, idx=None) -> str:
    """Share of pairs with chosen > rejected (ties count as not ranked)."""
    idx = list(range(len(chosen))) if idx is None else idx
    return f"{float((chosen[idx] > rejected[idx]).double().mean()):.0%}"


def cpu(fn):
    """fn()'s result and the CPU seconds it took (user + sys of this process: what load does not inflate);
    on a GPU, the wall seconds between two synchronizes (course.clock)."""
    t = course.clock()
    out = fn()
    return out, course.clock() - t


def mib(n: float) -> str:
    return f"{n / 2 ** 20:.1f} MiB"


def n_params(*models) -> int:
    return sum(p.numel() for m in models for p in m.parameters())


# ==============================================================================================
# Part 7 (--sentiment, on its own): sentiment control, the DPO paper's first experiment (§6.1).
# π_SFT writes the judgement of a review ("My new lantern was" -> "not lovely."), a classifier
# trained here scores it, and each method trades reward for KL from π_SFT (minift/sentiment.py).
if args.sentiment:
    from minift.align.onpolicy import rank_pairs, sample_responses
    from minift.align.sft import SFTConfig, train_sft
    from minift.sentiment import (classifier_reward, first_reaching, fixed_pairs, positive_prob, reward_and_kl,
                                  sentiment_completions, train_sentiment_classifier)
    S_SFT, S_CLF = (2, 2) if FAST else (200, 150)                  # π_SFT steps x 16; classifier steps x 32
    N_PAIRS, K, NEW = (16, 4, 6) if FAST else (384, 4, 6)          # DPO prompts, samples per prompt, tokens
    S_DPO, S_PPO, S_EVAL = (1, 1, 1) if FAST else (24, 12, 4)      # DPO steps x 16 pairs; PPO iterations; eval every
    BETAS, KL_COEFS, TARGET = ([0.1], [0.1], 0.8) if FAST else ([0.2, 1.0, 5.0], [0.03, 0.1, 0.3], 0.8)
    data = {s: sentiment_completions(s) for s in ("train", "val", "test")}
    held = [e["prompt"] for e in data["val"] + data["test"]][:8 if FAST else None]
    probe = held[:8 if FAST else 64]                               # the prompts scored during training
    header(f"7. Sentiment control: {len(data['train'])} train reviews cut before the judgement, {len(held)} held-out "
           f"prompts; π_SFT {S_SFT} steps x 16, classifier {S_CLF} steps x 32")
    ex = data["train"][0]
    print(f"example: prompt {ex['prompt']!r} -> response {ex['response']!r}, label {ex['label']} (1 = positive)")
    s_sft = copy.deepcopy(base).requires_grad_(True)             # π_SFT: the base fine-tuned on the completions
    hist, t_sft = cpu(lambda: train_sft(s_sft, [(e["prompt"], e["response"]) for e in data["train"]], SFTConfig(),
                                        TrainConfig(steps=S_SFT, batch_size=16, lr=1e-3, seed=0, progress=False,
                                                    desc="sft"), tok=tok))
    s_sft.eval()
    clf, t_clf = cpu(lambda: train_sentiment_classifier(copy.deepcopy(base), tok, data["train"], TrainConfig(
        steps=S_CLF, batch_size=32, lr=1e-3, seed=0, progress=False, desc="classifier")))
    acc = {s: float(((positive_prob(clf, tok, [e["prompt"] for e in data[s]], [e["response"] for e in data[s]]) > 0.5)
                     .long() == torch.tensor([e["label"] for e in data[s]])).double().mean()) for s in ("val", "test")}
    print(f"π_SFT: loss {hist[0]['loss']:.2f} -> {hist[-1]['loss']:.2f}, {t_sft:.1f}s {CLOCK}. Classifier p_φ "
          f"(lesson 02's SequenceClassifier on the base, every weight, reading the completion only): held-out "
          f"accuracy val {acc['val']:.3f} ({len(data['val'])} reviews), test {acc['test']:.3f} ({len(data['test'])}); "
          f"{t_clf:.1f}s {CLOCK}. The train completions are {len({e['response'] for e in data['train']})} distinct "
          f"phrases (adjective, 'not' or 'very' + adjective), which the held-out reviews reuse.")
    reward = classifier_reward(clf, tok.response_id)
    s_ref = frozen_copy(s_sft)
    start = reward_and_kl(s_sft, s_ref, reward, tok, held, NEW, seed=1)
    runs = []                                                      # (method, knob, policy, curve, secs, samples)

    # PPO: the classifier as reward, KL penalty coefficient β_KL (minift/align/ppo.py)
    for c in KL_COEFS:
        pol = copy.deepcopy(s_sft)
        cfg = PPOConfig(steps=S_PPO, batch_size=8 if FAST else 32, minibatch_size=8 if FAST else 16, ppo_epochs=2,
                        lr=3e-4, kl_coef=c, max_new_tokens=NEW, seed=0)
        h, secs = cpu(lambda: train_ppo(pol, [e["prompt"] for e in data["train"]], cfg, ref=s_ref,
                                        reward_model=reward, tok=tok, progress=False))
        curve = [(i + 1, r["score"]) for i, r in enumerate(h)]     # iteration, mean reward of its samples
        runs.append(("PPO", f"β_KL={c:g}", pol, curve, secs, cfg.batch_size, "iterations"))

    # DPO on pairs sampled from π_SFT and ranked by the classifier (minift/align/onpolicy.py), and on
    # TinyWorld's own positive and negative completions for the same prompts
    prompts = [e["prompt"] for e in data["train"][:N_PAIRS]]
    (ys, t_samp) = cpu(lambda: sample_responses(s_sft, tok, prompts, K, NEW, seed=0))
    scores = [positive_prob(clf, tok, [p] * K, y).tolist() for p, y in zip(prompts, ys)]
    on_pairs = rank_pairs(prompts, ys, scores, "best_worst", margin=0.0)
    off_pairs = fixed_pairs(data["train"][:N_PAIRS])
    print(f"on-policy pairs: {K} samples from π_SFT for each of {len(prompts)} train prompts ({t_samp:.1f}s {CLOCK}), "
          f"the classifier's best over its worst: {len(on_pairs)} pairs, mean p(positive) gap "
          f"{sum(p['margin'] for p in on_pairs) / max(1, len(on_pairs)):.2f}; fixed pairs: {len(off_pairs)}, "
          f"TinyWorld's positive over a negative completion.")
    for name, pairs in (("DPO on-policy", on_pairs), ("DPO fixed", off_pairs)):
        for b in BETAS:
            pol = copy.deepcopy(s_sft)
            probe_fn = lambda m: {"r": reward_and_kl(m, s_ref, reward, tok, probe, NEW, seed=2)["reward"]}
            h, secs = cpu(lambda: train_dpo(pol, pairs, DPOConfig(beta=b), TrainConfig(
                steps=S_DPO, batch_size=16, lr=5e-4, seed=0, eval_every=S_EVAL, progress=False), ref=s_ref, tok=tok,
                eval_fn=probe_fn))
            curve = [(r["step"], r["eval_r"]) for r in h if "eval_r" in r]
            runs.append((name, f"β={b:g}", pol, curve, secs, 16, "steps"))

    rows, points = [("π_SFT (= π_ref)", "", "0.00", f"{start['reward']:.3f}", "", "", "")], {}
    for name, knob, pol, curve, secs, per, unit in runs:
        ev = reward_and_kl(pol, s_ref, reward, tok, held, NEW, seed=1)
        hit = first_reaching([r for _, r in curve], TARGET)
        reach = "not reached" if hit is None else f"{curve[hit][0]} {unit} ({curve[hit][0] * per} "
        reach += "" if hit is None else ("samples)" if name == "PPO" else "pairs)")
        rows.append((name, knob, f"{ev['kl']:.2f}", f"{ev['reward']:.3f}", f"{max(r for _, r in curve):.3f}", reach,
                     f"{secs:.1f}s"))
        points.setdefault(name, []).append((ev["kl"], ev["reward"], knob))
    table(("method", "β", "KL from π_SFT (nats)", "reward p(pos)", "best during training", f"to reach {TARGET:g}",
           CLOCK), rows)
    print(f"KL and reward: one fresh sample per held-out prompt ({len(held)}), KL = Σ_t log π(y_t) − log π_ref(y_t) "
          f"over the completion, averaged. During training: PPO, the mean reward of each iteration's own samples "
          f"({32 if not FAST else 8} prompts); DPO, a fresh sample on {len(probe)} held-out prompts every {S_EVAL} steps.")
    print("fresh samples (seed 3) for the prompts: " + " | ".join(held[:4]))
    for name, knob, pol, *_ in runs[::len(BETAS)]:
        g = reward_and_kl(pol, s_ref, reward, tok, held[:4], NEW, seed=3)["responses"]
        print(f"  {name + ' ' + knob:<24} " + " | ".join(g))
    print(f"  {'π_SFT':<24} " + " | ".join(reward_and_kl(s_sft, s_ref, reward, tok, held[:4], NEW, seed=3)["responses"]))

    def dominated(a, b):
        """How many points of a have a point of b at least as far right in reward and as far left in KL."""
        return sum(any(kb <= ka and rb >= ra and (kb, rb) != (ka, ra) for kb, rb, _ in b) for ka, ra, _ in a)
    if not FAST:
        print("\nThe DPO paper's claims (Fig. 2 left): DPO's frontier dominates PPO's; and here, on-policy pairs "
              "give more reward per nat of KL than fixed ones.")

        def judge(a, b):
            """a's frontier dominates b's: some point of b is dominated by one of a, and none of a by one of b."""
            da, db = dominated(points[a], points[b]), dominated(points[b], points[a])
            word = "holds" if db and not da else "does not hold" if da and not db else "not resolved here"
            return (f"{da} of {len(points[a])} {a} points dominated by a {b} point, {db} of {len(points[b])} {b} "
                    f"points by a {a} point -> {word}")
        course.verdict(f"  DPO on-policy dominates PPO: {judge('DPO on-policy', 'PPO')}")
        course.verdict(f"  on-policy pairs dominate fixed pairs: {judge('DPO on-policy', 'DPO fixed')}")
    if args.figures:
        figures.reward_kl_frontier(points, figures.target("15", "sentiment_frontier.png", FAST), TARGET)
    print(f"\ntotal: {course.elapsed():.1f}s wall, {time.process_time() - c_start:.1f}s CPU")
    raise SystemExit(0)


# ==============================================================================================
header(f"1. π_SFT: the base fine-tuned on the chosen AND the rejected answers, {SFT_STEPS} steps x 16, lr 1e-3")
(sft, sft_hist), t_sft = cpu(lambda: train_sft_policy(base, tok, steps=SFT_STEPS, batch_size=16, lr=1e-3, seed=0,
                                                      responses="both", progress=False))
print(f"SFT loss {sft_hist[0]['loss']:.3f} -> {sft_hist[-1]['loss']:.3f}, {t_sft:.1f}s {CLOCK}. It imitates a mixed "
      f"population of good and bad answers, so ranking them is left to preference learning.")
lp_base, lp_sft = score_pairs(base, tok, val_ex), score_pairs(sft, tok, val_ex)      # (2, N) each
rows = [(name, ranked(lp[0], lp[1]), *(ranked(lp[0], lp[1], by_kind[k]) for k in KINDS))
        for name, lp in (("base", lp_base), ("π_SFT", lp_sft))]
table(("model", f"log π(y_w) > log π(y_l), {len(val_ex)} held-out pairs",
       *(f"{k} ({len(by_kind[k])})" for k in KINDS)), rows)
print("fact: a true fact vs a wrong one; format: follows 'one word only' / 'a full sentence' vs not; task: does "
      "the text task (reverse, past tense, count, plural) vs copies the input.")

# ==============================================================================================
header(f"2. DPO from π_SFT: β = {MAIN_BETA}, {DPO['steps']} steps x {DPO['batch_size']} pairs "
       f"({N_TRAIN} train pairs, each once), lr {DPO['lr']:g}; reference = a frozen π_SFT")
results, gens = {}, {}


def answer_tokens(examples) -> torch.Tensor:
    """Tokens scored in each answer (the response and its EOS), (2, N): averaged log π = summed log π / this."""
    data = PreferenceDataset(tok, examples, sft.config.block_size)
    return torch.tensor([[float(sum(it[side])) for it in data] for side in ("chosen_mask", "rejected_mask")],
                        device=DEV)


ref_train, t_ref = cpu(lambda: score_pairs(sft, tok, dpo_ex))     # log π_ref of the train pairs, once for all runs
n_train, n_val = answer_tokens(dpo_ex), answer_tokens(val_ex)


def run_dpo(name, loss_type, beta, eps, alpha, sft=sft, ref_train=ref_train, lp_sft=lp_sft, seed=0):
    """One row of parts 2-3, trained from a copy of π_SFT (--seeds passes another seed's π_SFT, its log-probs
    and the seed of DPO's data order)."""
    policy = copy.deepcopy(sft)
    cfg = DPOConfig(beta=beta, loss_type=loss_type, label_smoothing=eps, nll_weight=alpha)
    meter = SavedForBackward(policy, sft)
    avg = cfg.average_logps                                      # IPO: per-token log-probs, the same sums / length
    with meter:
        hist, secs = cpu(lambda: train_dpo(policy, dpo_ex, cfg, TrainConfig(**{**DPO, "seed": seed}, progress=False,
                                                                            desc=name),
                                           ref=sft, tok=tok, ref_logps=ref_train / n_train if avg else ref_train))
    own = score_pairs(policy, tok, val_ex)                                                # summed log π (2, N)
    ev = evaluate_preferences(own / n_val if avg else own, lp_sft / n_val if avg else lp_sft, tok, val_ex)
    return {"name": name, "policy": policy, "cfg": cfg, "hist": hist, "secs": secs, "eval": ev, "lp": own,
            "meter": meter}


for name, loss_type, beta, eps, alpha in RUNS:
    results[(name, beta)] = run_dpo(name, loss_type, beta, eps, alpha)
main, fix = results[("DPO", MAIN_BETA)], results[("DPO + NLL α=1", MAIN_BETA)]
h = main["hist"]
print(f"train loss {h[0]['loss']:.3f} (log 2 = 0.693: π = π_ref at step 0) -> {h[-1]['loss']:.3f}; train reward "
      f"accuracy of the last batch {h[-1]['reward_acc']:.0%}; {main['secs']:.1f}s {CLOCK}")
rows = [("π_SFT (= π_ref)", "0% (100% ties)", ranked(lp_sft[0], lp_sft[1]), "0.00", "0.00", "0.00")]
for r in (main, fix):
    e = r["eval"]
    rows.append((f"{r['name']} β={MAIN_BETA}", f"{e['accuracy']:.0%}", ranked(r["lp"][0], r["lp"][1]),
                 f"{e['margin']:.2f}", f"{e['d_chosen']:+.2f}", f"{e['d_rejected']:+.2f}"))
table(("policy", "held-out acc: h > 0", "log π(y_w) > log π(y_l)", "mean h (nats)", "Δ log π(y_w)", "Δ log π(y_l)"),
      rows)
rows = [("π_SFT, log π ranking", *(ranked(lp_sft[0], lp_sft[1], by_kind[k]) for k in KINDS))]
for r in (main, fix):
    hm = (r["lp"][0] - lp_sft[0]) - (r["lp"][1] - lp_sft[1])                              # h per pair (N,)
    rows += [(f"{r['name']}, h > 0", *(ranked(hm, torch.zeros_like(hm), by_kind[k]) for k in KINDS)),
             (f"{r['name']}, log π ranking", *(ranked(r["lp"][0], r["lp"][1], by_kind[k]) for k in KINDS))]
table(("held-out acc by kind", *KINDS), rows)
print("h = [log π(y_w) − log π_ref(y_w)] − [log π(y_l) − log π_ref(y_l)]: the implicit reward margin / β. "
      "Δ log π: mean change from π_SFT over the held-out pairs (summed over the answer's tokens). DPO + NLL α=1 "
      "adds the chosen answer's NLL per token to the loss (DPOConfig(nll_weight=1.0)).")

if args.figures:                           # --figures: every run's curves as a picture (minift/figures.py)
    figures.dpo_curves({f"{r['name']} β={r['cfg'].beta:g}": (r["hist"], r["cfg"].beta) for r in results.values()},
                       figures.target("15", "dpo_curves.png", FAST or LONG))    # the README's figure: a default run

# ==============================================================================================
header("3. The effect of β, IPO for contrast, and the NLL term (same pairs, steps, lr, seed)")
tgt = lambda r: f"{1 / (2 * r['cfg'].beta):.2f}/token" if r["cfg"].loss_type == "ipo" else "none"
facts = by_kind["fact"]
prompts_val = [e["prompt"] for e in val_ex]


def exact(responses) -> dict:
    """Greedy answers vs TinyWorld's: exact match with the chosen / the rejected answer, and on the fact
    prompts with the chosen one (fact correctness: the true sentence)."""
    ok = [t == e["chosen"].strip() for t, e in zip(responses, val_ex)]
    bad = [t == e["rejected"].strip() for t, e in zip(responses, val_ex)]
    return {"chosen": sum(ok) / len(ok), "rejected": sum(bad) / len(bad),
            "fact_correct": sum(ok[i] for i in facts) / max(1, len(facts)), "responses": responses}


def greedy(policy) -> dict:
    return exact(generate_responses(policy, tok, prompts_val, max_new_tokens=PPO.max_new_tokens))


gens["π_SFT"] = greedy(sft)
g0 = gens["π_SFT"]
rows = [("π_SFT", "", "", "", "0%", ranked(lp_sft[0], lp_sft[1]), "0.00", "", "", f"{g0['chosen']:.0%}",
         f"{g0['rejected']:.0%}", f"{g0['fact_correct']:.0%}", "")]
for key, r in results.items():
    gens[key] = g = greedy(r["policy"])
    e = r["eval"]
    rows.append((r["name"], f"{r['cfg'].beta:g}", tgt(r), "avg" if r["cfg"].average_logps else "sum",
                 f"{e['accuracy']:.0%}", ranked(r["lp"][0], r["lp"][1]), f"{e['margin']:.2f}", f"{e['d_chosen']:+.2f}",
                 f"{e['d_rejected']:+.2f}", f"{g['chosen']:.0%}", f"{g['rejected']:.0%}", f"{g['fact_correct']:.0%}",
                 f"{r['secs']:.1f}s"))
table(("policy", "β", "target", "log π", "acc h > 0", "log π rank", "mean h", "Δ log π(y_w)", "Δ log π(y_l)",
       "greedy = y_w", "= y_l", "facts right", CLOCK), rows)
print("log π: summed or length-averaged over the answer (IPO is fed averages, so its target 1/(2β) is per token, "
      "and its h, Δ columns are per token). greedy = y_w / = y_l: share of held-out prompts whose greedy answer is "
      f"exactly the chosen / the rejected one; facts right: = y_w on the {len(facts)} fact prompts.")
for r in results.values():                 # a per-token row's drift in the other rows' unit: summed over the answer
    if r["cfg"].average_logps:
        d = r["lp"] - lp_sft                                                              # summed log π (2, N)
        print(f"{r['name']} β={r['cfg'].beta:g}, Δ log π summed over the answer (the unit of the other rows): "
              f"y_w {float(d[0].mean()):+.2f}, y_l {float(d[1].mean()):+.2f} nats")
MARGIN = 0.02


def targets(e, g, g0) -> tuple[bool, bool]:
    """The lesson's two targets for a row's held-out metrics e and greedy answers g: accuracy (h > 0) >= 90%,
    and π_SFT's answer quality (its greedy answers g0) kept within MARGIN."""
    return e["accuracy"] >= 0.9, (g["chosen"] >= g0["chosen"] - MARGIN - 1e-9
                                  and g["fact_correct"] >= g0["fact_correct"] - MARGIN - 1e-9)


print(f"\nThe lesson's targets: held-out preference accuracy (h > 0) >= 90%, from π_SFT's own ranking "
      f"{ranked(lp_sft[0], lp_sft[1])} (the base's {ranked(lp_base[0], lp_base[1])}); and π_SFT's answer quality kept "
      f"within {100 * MARGIN:.0f} points (greedy = y_w >= {max(0, g0['chosen'] - MARGIN):.0%}, facts right >= "
      f"{max(0, g0['fact_correct'] - MARGIN):.0%}).")
for key, r in results.items():
    g, e = gens[key], r["eval"]
    good, kept = targets(e, g, g0)
    course.verdict(f"  {r['name'] + ' β=' + format(r['cfg'].beta, 'g'):<20} accuracy >= 90%: {'yes' if good else 'no '} "
          f"({e['accuracy']:.0%}) | quality kept: {'yes' if kept else 'no '} ({g['chosen']:.0%}, "
          f"{g['fact_correct']:.0%}) -> {'holds' if good and kept else 'fails'}")


def seed_spread():
    """--seeds K, the run's last section (after part 3 with --long, part 6 otherwise): π_SFT and every row of
    part 3 again with seeds 1..K-1, beside this run's seed 0; each seed's rows start from its own π_SFT."""
    if not (seeds := course.seeds_section(args.seeds, "8. Seed spread: π_SFT and part 3's rows",
                                          "π_SFT's and DPO's data order")):
        return
    runs = {0: (g0, {key: (r["eval"], gens[key]) for key, r in results.items()})}  # seed: (π_SFT's greedy, rows)
    for sd in seeds[1:]:
        pi, _ = train_sft_policy(base, tok, steps=SFT_STEPS, batch_size=16, lr=1e-3, seed=sd, responses="both",
                                 progress=False)
        lp, ref_lp = score_pairs(pi, tok, val_ex), score_pairs(pi, tok, dpo_ex)
        rows = {}
        for name, loss_type, beta, eps, alpha in RUNS:
            r = run_dpo(name, loss_type, beta, eps, alpha, sft=pi, ref_train=ref_lp, lp_sft=lp, seed=sd)
            rows[(name, beta)] = (r["eval"], greedy(r["policy"]))
        runs[sd] = (greedy(pi), rows)

    rows = []
    for key in results:
        acc, dw = [runs[sd][1][key][0]["accuracy"] for sd in seeds], [runs[sd][1][key][0]["d_chosen"] for sd in seeds]
        rows.append((key[0], f"{key[1]:g}", *per_seed(acc, spread=True), *per_seed(dw, "+.2f")))
    table(("policy", "β", "acc h > 0 per seed", "mean", "range", "Δ log π(y_w) per seed", "mean"), rows)
    rows = [("π_SFT", "", *per_seed([runs[sd][0]["chosen"] for sd in seeds]),
             *per_seed([runs[sd][0]["fact_correct"] for sd in seeds]), "")]
    for key in results:
        gs = [runs[sd][1][key][1] for sd in seeds]
        held = sum(all(targets(*runs[sd][1][key], runs[sd][0])) for sd in seeds)
        rows.append((key[0], f"{key[1]:g}", *per_seed([g["chosen"] for g in gs]), *per_seed([g["fact_correct"] for g in gs]),
                     f"{held} of {len(seeds)}"))
    table(("policy", "β", "greedy = y_w per seed", "mean", "facts right per seed", "mean", "both targets hold"), rows)
    per_token = sorted({key[0] for key, r in results.items() if r["cfg"].average_logps})
    unit = "nats, summed over the answer" + (f"; {', '.join(per_token)}: per token" if per_token else "")
    print(f"acc h > 0 (a share, 0 to 1) and Δ log π(y_w) ({unit}): part 3's columns, on the {len(val_ex)} held-out "
          f"pairs; greedy = y_w, facts right and both targets: part 3's, each seed's rows against its own π_SFT.")


if LONG:                                   # --long: parts 1-3 only; what drift does to the answers π_SFT got right
    right = [i for i, t in enumerate(g0["responses"]) if t == val_ex[i]["chosen"].strip()]
    names = {key: key if key == "π_SFT" else f"{key[0]} β={key[1]:g}" for key in gens}
    print(f"\nπ_SFT's greedy answer is exactly right on {len(right)} held-out prompts; still exactly right after "
          "training: " + ", ".join(f"{names[key]} {sum(g['responses'][i] == g0['responses'][i] for i in right)}"
                                   for key, g in gens.items() if key != "π_SFT"))
    print("greedy answers to the first 4 of them:" if right else "")
    for i in right[:4]:
        print(f"\n[{kind(val_ex[i]['prompt'])}] {val_ex[i]['prompt']}\n  {'rejected':<20} {val_ex[i]['rejected']}")
        for key, g in gens.items():
            print(f"  {names[key]:<20} {g['responses'][i]}")
    seed_spread()
    print(f"\n--long: parts 1-3 only. total: {course.elapsed():.1f}s wall, {time.process_time() - c_start:.1f}s CPU "
          f"({torch.get_num_threads()} thread){course.memory_note()}")
    raise SystemExit(0)

# ==============================================================================================
rm_ex = train_ex[:16] if FAST else train_ex
(rm, rm_hist), t_rm = cpu(lambda: train_reward_model(sft, rm_ex, RewardConfig(), TrainConfig(
    steps=RM_STEPS, batch_size=16, lr=3e-4, seed=0, desc="reward model", progress=False), tok=tok))
rm_eval = evaluate_reward_model(rm, tok, val_ex)
header(f"4. PPO from the same π_SFT: reward model ({RM_STEPS} steps x 16 pairs, held-out accuracy "
       f"{rm_eval['accuracy']:.0%}), then {PPO.steps} PPO iterations x {PPO.batch_size} prompts (lesson 14's lr, epochs and β; fewer, larger iterations)")
ppo_policy, ppo_ref = copy.deepcopy(sft), frozen_copy(sft)
meter_ppo = SavedForBackward(ppo_policy, ppo_ref, rm)
with meter_ppo:
    ppo_hist, t_ppo = cpu(lambda: train_ppo(ppo_policy, [e["prompt"] for e in train_ex], PPO, ref=ppo_ref,
                                            reward_model=rm, tok=tok, progress=False))
print(f"reward model: {t_rm:.1f}s {CLOCK}. PPO: score of the samples {ppo_hist[0]['score']:+.2f} -> "
      f"{ppo_hist[-1]['score']:+.2f}, KL to π_SFT {ppo_hist[-1]['kl']:.2f} nats/response; {t_ppo:.1f}s {CLOCK}")
ev_ppo = evaluate_preferences(ppo_policy, lp_sft, tok, val_ex)
acc = {"π_SFT": "0%", f"DPO β={MAIN_BETA}": f"{main['eval']['accuracy']:.0%}",
       "DPO + NLL": f"{fix['eval']['accuracy']:.0%}", "PPO": f"{ev_ppo['accuracy']:.0%}"}


def rm_score(responses) -> float:
    """The reward model's mean score of (prompt, answer) texts."""
    b = to_device(collate([{"idx": tok.encode_pair(p, r)[0]} for p, r in zip(prompts_val, responses)], tok.pad_id), DEV)
    return float(reward_score(rm, b["idx"], b["attention_mask"]).mean())


gens["PPO"] = greedy(ppo_policy)
side = {k: gens[key] for k, key in (("π_SFT", "π_SFT"), (f"DPO β={MAIN_BETA}", ("DPO", MAIN_BETA)),
                                    ("DPO + NLL", ("DPO + NLL α=1", MAIN_BETA)), ("PPO", "PPO"))}
for g in side.values():
    g["score"] = rm_score(g["responses"])
table(("policy", "RM score (greedy)", "greedy = y_w", "= y_l", "facts right", "held-out acc h > 0"),
      [(k, f"{g['score']:+.2f}", f"{g['chosen']:.0%}", f"{g['rejected']:.0%}", f"{g['fact_correct']:.0%}", acc[k])
       for k, g in side.items()])
picks = [i for k in KINDS for i in by_kind[k][:2]]
for i in picks:
    e = val_ex[i]
    print(f"\n[{kind(e['prompt'])}] {e['prompt']}\n  chosen:    {e['chosen']}\n  rejected:  {e['rejected']}")
    for k, g in side.items():
        print(f"  {k:<10} {g['responses'][i]}")

# ==============================================================================================
header("5. The training cost of DPO vs PPO, measured in this run")
cfg, meter_dpo = TrainConfig(**DPO), main["meter"]                  # the run: steps, pairs per step
t_dpo = main["secs"] + t_ref                                      # training + the reference's log-probs, once
n_ppo_updates = PPO.steps * PPO.ppo_epochs * (PPO.batch_size // PPO.minibatch_size)
rows = [("DPO", f"{cfg.steps}", f"{t_dpo / cfg.steps:.3f}s", f"{t_dpo / (cfg.steps * cfg.batch_size):.4f}s / pair",
         "policy (ref: before)", f"{n_params(main['policy']):,}", mib(meter_dpo.peak)),
        ("PPO", f"{n_ppo_updates}", f"{t_ppo / n_ppo_updates:.3f}s",
         f"{t_ppo / (PPO.steps * PPO.batch_size):.4f}s / prompt", "policy + value + ref + RM",
         f"{n_params(ppo_policy, ppo_ref, rm) + sft.config.n_embd + 1:,}",
         mib(meter_ppo.peak))]
table(("method", "optimizer steps", f"{CLOCK} / step", f"{CLOCK} / example", "models held", "parameters held",
       "peak saved for backward"), rows)
per_dpo, per_ppo = t_dpo / (cfg.steps * cfg.batch_size), t_ppo / (PPO.steps * PPO.batch_size)
print(f"PPO / DPO, {CLOCK} per training example: {per_ppo / per_dpo:.1f}x; whole runs: DPO {t_dpo:.1f}s for "
      f"{cfg.steps * cfg.batch_size} pairs, PPO {t_ppo:.1f}s for {PPO.steps * PPO.batch_size} prompts + the reward "
      f"model's {t_rm:.1f}s (DPO needs none).")
print(f"per DPO step: 1 forward + backward of the policy on {2 * cfg.batch_size} sequences; the reference's "
      f"log-probs were computed once, before training ({t_ref:.1f}s, counted in DPO's time), so the reference need "
      f"not stay in memory. Per PPO iteration: sampling {PPO.batch_size} answers token "
      f"by token, 3 scoring forwards (policy, reference, reward model), then {PPO.ppo_epochs} epochs x "
      f"{PPO.batch_size // PPO.minibatch_size} minibatches of forward + backward.")
print("peak saved for backward: bytes autograd kept for one backward (deduplicated by storage, parameters "
      "excluded), the largest over all steps; weights, gradients and AdamW's two moments come on top "
      "(16 bytes per trainable parameter).")

# ==============================================================================================
header("6. What DPO cost the language model (minift.pretrain.forgetting_probe)")
if not FAST:
    rows = [(name, f"{fp['pretrain_ppl']:.2f}", f"{fp['fact_accuracy']:.0%}")
            for name, m in (("π_SFT", sft), (f"DPO β={MAIN_BETA}", main["policy"]),
                            ("DPO + NLL", fix["policy"]), ("PPO", ppo_policy))
            for fp in [forgetting_probe(m, tok)]]
    table(("model", "pretraining ppl", "cloze facts (72)"), rows)
else:
    print("(skipped in --fast)")

seed_spread()
print(f"\ntotal: {course.elapsed():.1f}s wall, {time.process_time() - c_start:.1f}s CPU "
      f"({torch.get_num_threads()} thread; wall grows when other jobs share the cores){course.memory_note()}")
