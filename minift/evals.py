"""TinyWorld data and evaluation for the alignment lessons (03, 14-18): the course side of align/.

A method file in `minift/align/` holds the method only: its loss, its training step, its trainer
and its config, which work on any data. What the lessons build *from TinyWorld* to train those
methods on, and how they *measure* the result, lives here, one section per lesson:

  instruction tuning (03, 18)   mixture of task sets; greedy generation; the task's metric
  preferences (14, 15)          the preference prompts; π_SFT; held-out preference accuracy of a
                                reward model or a DPO policy; a PPO policy's answers vs the truth
  embeddings (16)               SimCSE's pairs and sentences; paraphrase accuracy; retrieval@1
  distillation (17)             the transfer set: corpus sentences tagged by the teacher

Imports flow one way: this module imports the methods (`minift.align.*`), the world and the task
metrics; no method imports it (a trainer that wants a measurement during training takes an
`eval_fn`, and the lesson passes one of these).

Devices: every evaluation runs the model where it is (batches are moved to its device) and returns
Python numbers, or tensors on the CPU (similarities and labels, for histograms).
"""
from __future__ import annotations

import collections
import copy
import functools
import random
import re
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from . import tasks as T
from . import world
from .align.contrastive import embed_sentences
from .align.distill import teacher_labels
from .align.dpo import preference_metrics, score_pairs
from .align.logps import check_finite
from .align.ppo import decode_responses, rollout
from .align.preference import PreferenceDataset, collate_preferences
from .align.reward import RewardModel, pair_rewards, reward_metrics
from .align.sft import SFTConfig, train_sft
from .heads import encode_words
from .train import TrainConfig, model_device, to_device


# ---- instruction tuning (lessons 03, 18) --------------------------------------------------------

# What each task is scored with when its response is generated.
TASK_METRIC = {"qa_closed": "exact_match", "qa_extractive": "exact_match", "instructions": "exact_match",
               "summarization": "rouge_l", "ner": "entity_f1", "sentiment": "accuracy",
               "paraphrase": "accuracy", "pairs": "rouge_l", "preference": "rouge_l"}


def mixture(task_names: Sequence[str], split: str = "train", n_per_task: Optional[int] = None,
            seed: int = 0) -> list[tuple[str, str]]:
    """A shuffled multi-task mixture of (prompt, response) pairs, at most n_per_task per task
    (examples-proportional mixing capped at n, as in T5/FLAN)."""
    if not task_names:
        raise ValueError("mixture: give at least one task name")
    rng = random.Random(f"mixture/{seed}/{split}")
    out = []
    for name in task_names:
        pairs = [T.format_example(name, ex) for ex in world.task(name, split, seed)]
        rng.shuffle(pairs)
        out += pairs[:n_per_task] if n_per_task is not None else pairs
    rng.shuffle(out)
    return out


@torch.no_grad()
def generate_responses(model, tok, prompts: Sequence[str], max_new_tokens: int = 32,
                       batch_size: int = 32) -> list[str]:
    """Greedy responses to prompts: each is encoded as <|prompt|> prompt <|response|>, left-padded
    into batches (moved to the model's device), and decoded up to the first EOS."""
    model.eval()
    dev = model_device(model)
    out = []
    limit = model.config.block_size - max_new_tokens
    for i in range(0, len(prompts), batch_size):
        enc = [tok.encode_prompt(p) for p in prompts[i:i + batch_size]]
        enc = [e if len(e) <= limit else e[:1] + e[len(e) - limit + 1:] for e in enc]  # keep the newest
        b = to_device(T.collate([{"idx": e} for e in enc], tok.pad_id, side="left"), dev)
        new = model.generate(b["idx"], max_new_tokens, attention_mask=b["attention_mask"],
                             eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        for row in new.tolist():
            row = row[: row.index(tok.eos_id)] if tok.eos_id in row else row
            out.append(tok.decode([t for t in row if t != tok.pad_id]).strip())
    return out


def score(task_name: str, responses: Sequence[str], examples: Sequence[dict]) -> float:
    """The task's metric of generated responses against the examples' gold responses."""
    if task_name not in TASK_METRIC:
        raise ValueError(f"no metric for task {task_name!r}; known: {sorted(TASK_METRIC)}")
    golds = [T.format_example(task_name, ex)[1] for ex in examples]
    metric = TASK_METRIC[task_name]
    if metric == "exact_match":
        return T.exact_match_score(responses, golds)
    if metric == "rouge_l":
        return T.rouge_l_score(responses, golds)
    if metric == "entity_f1":
        preds = [T.parse_response("ner", r, ex) for r, ex in zip(responses, examples)]
        return T.entity_f1(preds, [ex["tags"] for ex in examples])["f1"]
    preds = [T.parse_response(task_name, r) for r in responses]
    return T.accuracy([-1 if p is None else p for p in preds], [int(ex["label"]) for ex in examples])


def evaluate_task(model, tok, task_name: str, examples: Sequence[dict], max_new_tokens: int = 32,
                  batch_size: int = 32) -> dict:
    """Generate a response for every example and score it: {"metric", "score", "responses"}."""
    if not examples:
        raise ValueError(f"evaluate_task: no {task_name} examples")
    prompts = [T.format_example(task_name, ex)[0] for ex in examples]
    responses = generate_responses(model, tok, prompts, max_new_tokens, batch_size)
    return {"metric": TASK_METRIC[task_name], "score": score(task_name, responses, examples),
            "responses": responses}


# ---- preferences (lessons 14, 15) -----------------------------------------------------------------

def preference_examples(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The first n examples of TinyWorld's `preference` task (all of the split if n is None)."""
    ex = world.task("preference", split, seed)
    return ex if n is None else ex[:n]


def train_sft_policy(base, tok, steps: int = 300, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                     n_examples: int | None = None, responses: str = "chosen", progress: bool = True):
    """π_SFT, the common starting point of lessons 14 and 15 (RLHF's step 1; the DPO paper's π_SFT):
    a copy of `base` fully fine-tuned on the preference train split, the loss on the response only.
    responses="chosen": on (prompt, chosen), the usual demonstrations; responses="both": on
    (prompt, chosen) and (prompt, rejected), a model that imitates a mixed population of good and
    bad answers, so that preferences, not imitation, must separate them. The same arguments and
    seed give the same policy in both lessons. Returns (policy, history); `base` is not modified.

    Measured (300 steps, batch 16, lr 1e-3): trained on the chosen responses only, π_SFT already
    ranks chosen above rejected on 97.5% of the val pairs by raw log π(y|x) (the base: 56%), so
    responses="both" is offered for a starting point where preference learning has work to do."""
    if responses not in ("chosen", "both"):
        raise ValueError(f"responses={responses!r} must be 'chosen' or 'both'")
    policy = copy.deepcopy(base)
    for p in policy.parameters():
        p.requires_grad_(True)
    sides = ("chosen",) if responses == "chosen" else ("chosen", "rejected")
    pairs = [(ex["prompt"], ex[s]) for ex in preference_examples("train", n_examples) for s in sides]
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, desc="sft", progress=progress)
    hist = train_sft(policy, pairs, SFTConfig(), cfg, tok=tok)
    return policy.eval(), hist


@torch.no_grad()
def evaluate_reward_model(rm: RewardModel, tok, examples: Sequence[dict], batch_size: int = 64) -> dict:
    """Held-out preference metrics (reward_metrics) of `rm` on {"prompt", "chosen", "rejected"} examples."""
    data = PreferenceDataset(tok, examples, rm.config.block_size)
    rc, rr = [], []
    rm.eval()
    for i in range(0, len(data), batch_size):
        b = collate_preferences([data[j] for j in range(i, min(i + batch_size, len(data)))], tok.pad_id)
        c, r = pair_rewards(rm, b)
        rc.append(c)
        rr.append(r)
    return reward_metrics(torch.cat(rc), torch.cat(rr))


def evaluate_preferences(policy, ref, tok, examples: Sequence[dict], average: bool = False,
                         batch_size: int = 64) -> dict:
    """Held-out preference metrics of a DPO policy. accuracy / ties / margin: of the log-ratio margin
    h vs the reference (the implicit reward's ranking, what DPO optimises; margin in nats);
    logp_accuracy: of the policy's raw log π(y_w|x) > log π(y_l|x) (no reference); d_chosen,
    d_rejected: mean log π − log π_ref of each side. policy and ref: models, or their
    score_pairs(...) (2, N), computed once and reused; ref=None: the PEFT policy (a model) with its
    adapters disabled. As train_dpo's eval_fn: lambda m: evaluate_preferences(m, ref, tok, val)."""
    def scores(m, adapters=True):                                         # (2, N) on the CPU: policy and
        if not isinstance(m, torch.Tensor):                                 # reference may be on two devices
            return score_pairs(m, tok, examples, average, batch_size, adapters).cpu()
        if tuple(m.shape) != (2, len(examples)):
            raise ValueError(f"evaluate_preferences: precomputed log-probs must be (2, N)=(2, {len(examples)}), "
                             f"got {tuple(m.shape)}")
        return m.cpu()
    if ref is None and isinstance(policy, torch.Tensor):
        raise ValueError("evaluate_preferences: ref=None scores the policy with its adapters disabled, so the "
                         "policy must be a model, not log-probs")
    pol = scores(policy)                                                  # (2, N): chosen, rejected
    rf = scores(policy, adapters=False) if ref is None else scores(ref)
    out = preference_metrics(pol[0] - rf[0], pol[1] - rf[1])
    out["logp_accuracy"] = preference_metrics(pol[0], pol[1])["accuracy"]
    out["d_chosen"], out["d_rejected"] = float((pol[0] - rf[0]).mean()), float((pol[1] - rf[1]).mean())
    return out


@torch.no_grad()
def evaluate_policy(policy, ref, reward_model, tok, examples: Sequence[dict], max_new_tokens: int = 24,
                    greedy: bool = True, seed: int = 0, batch_size: int = 64) -> dict:
    """How good are the policy's responses to preference prompts, by the reward model and by the truth:
    mean RM score, KL to ref (Σ_t k1, meaningful for samples), the share of responses that are exactly
    the chosen / the rejected answer (TinyWorld knows both), mean length, share without EOS, and the
    responses themselves. Sampling (greedy=False) draws from a CPU generator: the same responses on
    every device."""
    gen = torch.Generator().manual_seed(seed)
    scores, kls, lens, noeos, texts = [], [], [], [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        r = rollout(policy, ref, reward_model, tok, [e["prompt"] for e in chunk], max_new_tokens, gen, greedy=greedy)
        scores.append(r["score"])
        kls.append((r["logp"] - r["ref_logp"]).sum(1))
        lens.append(r["mask"].sum(1).float())
        noeos.append((~(r["tokens"] == tok.eos_id).any(1)).float())
        texts += decode_responses(tok, r)
    chosen = sum(t == e["chosen"].strip() for t, e in zip(texts, examples)) / len(examples)
    rejected = sum(t == e["rejected"].strip() for t, e in zip(texts, examples)) / len(examples)
    return {"score": float(torch.cat(scores).mean()), "kl": float(torch.cat(kls).mean()), "chosen": chosen,
            "rejected": rejected, "length": float(torch.cat(lens).mean()),
            "no_eos": float(torch.cat(noeos).mean()), "responses": texts}


# ---- embeddings (lesson 16) ------------------------------------------------------------------------

def supervised_pairs(split: str = "train", hard_negatives: bool = True, seed: int = 0) -> list[dict]:
    """{"anchor", "positive"[, "negative"]} from TinyWorld: every `pairs` pair and every label-1
    `paraphrase` pair. A label-0 paraphrase pair (s1, s2) gives s2 as the hard negative of a
    positive pair whose anchor is s1 (s2 has s1's words with one value changed, or roles swapped)."""
    out = [{"anchor": p["anchor"], "positive": p["positive"]} for p in world.task("pairs", split, seed)]
    para = world.task("paraphrase", split, seed)
    out += [{"anchor": p["sentence1"], "positive": p["sentence2"]} for p in para if p["label"] == 1]
    if hard_negatives:
        neg = {}
        for p in para:
            if p["label"] == 0:
                neg.setdefault(p["sentence1"], p["sentence2"])
        for ex in out:
            for s, other in ((ex["anchor"], None), (ex["positive"], ex["anchor"])):
                if s in neg and "negative" not in ex:
                    ex["negative"] = neg.pop(s)
                    if other is not None:                                   # keep s the anchor
                        ex["anchor"], ex["positive"] = s, other
    return out


PAIR_KINDS = ("paraphrase", "near-copy negative", "other negative")


def pair_kind(ex: dict) -> str:
    """The kind of a `paraphrase` pair, one of PAIR_KINDS: label 1 is a paraphrase; a label-0 pair whose
    sentences differ by at most one word each way (counted as multisets: a value changed in the same
    template, or the same words in another order) is a near-copy negative, what an average of word
    embeddings cannot separate; any other label-0 pair is an other negative."""
    if ex["label"] == 1:
        return "paraphrase"
    a, b = (collections.Counter(re.findall(r"[\w']+", ex[k].lower())) for k in ("sentence1", "sentence2"))
    return "near-copy negative" if sum((a - b).values()) <= 1 and sum((b - a).values()) <= 1 else "other negative"


def unsupervised_sentences(split: str = "train", seed: int = 0) -> list[dict]:
    """{"anchor"} items for unsupervised SimCSE: every distinct sentence of the training pairs and
    paraphrase pairs, labels and pairings thrown away (positive = the sentence itself)."""
    seen = {}
    for ex in supervised_pairs(split, hard_negatives=True, seed=seed):
        for s in ex.values():
            seen.setdefault(s, None)
    return [{"anchor": s} for s in seen]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of two (N, C) tensors: (N,)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def best_threshold(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The threshold t maximising accuracy of (score > t) == label: (t, accuracy). Candidates are
    every cut there is: below all scores, the midpoints between sorted distinct scores, and the
    largest score (everything 0). Ties go to the smallest t."""
    s = torch.as_tensor(scores, dtype=torch.float64, device="cpu")         # a few numbers: on the CPU
    y = torch.as_tensor(labels, device="cpu").long()
    if s.dim() != 1 or s.shape != y.shape or len(s) == 0:
        raise ValueError(f"scores and labels must be equal-length 1-D, got {tuple(s.shape)} and {tuple(y.shape)}")
    check_finite("scores", s, None, "best_threshold")                      # NaN > t is False: a quiet "0"
    v = torch.unique(s)                                                     # sorted
    cands = torch.cat([v[:1] - 1.0, (v[1:] + v[:-1]) / 2, v[-1:]])
    accs = ((s[None] > cands[:, None]).long() == y[None]).double().mean(1)  # (n_cands,)
    k = int(accs.argmax())
    return float(cands[k]), float(accs[k])


def threshold_accuracy(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> float:
    s = torch.as_tensor(scores, dtype=torch.float64, device="cpu")
    y = torch.as_tensor(labels, device="cpu").long()
    check_finite("scores", s, None, "threshold_accuracy")
    return float(((s > threshold).long() == y).double().mean())


def retrieval_at_1(queries: torch.Tensor, keys: torch.Tensor, groups: Optional[Sequence] = None) -> float:
    """Share of queries i whose most similar key (cosine) is key i: (N, C), (N, C) -> [0, 1].
    With groups (N labels), a hit is any key of query i's group: another phrasing of the same fact
    is as right as query i's own positive."""
    if not (isinstance(queries, torch.Tensor) and isinstance(keys, torch.Tensor)) \
            or queries.shape != keys.shape or queries.dim() != 2:
        raise ValueError(f"queries and keys must both be (N, C) tensors, got {getattr(queries, 'shape', queries)!r}, "
                         f"{getattr(keys, 'shape', keys)!r}")
    if groups is not None and len(groups) != len(queries):
        raise ValueError(f"groups must have one label per query ({len(queries)}), got {len(groups)}")
    check_finite("queries", queries, None, "retrieval_at_1")                 # argmax over NaN: a quiet pick
    check_finite("keys", keys, None, "retrieval_at_1")
    sim = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T   # (N, N)
    best = sim.argmax(1).tolist()
    if groups is None:
        return sum(j == i for i, j in enumerate(best)) / len(best)
    return sum(groups[j] == groups[i] for i, j in enumerate(best)) / len(best)


@functools.lru_cache(maxsize=4)
def _fact_patterns(seed: int):
    w = world.get_world(seed)
    names = [p.name for p in w.people]
    values = sorted({v for r in world.RELATIONS if r != "friend" for v in w.values(r)}, key=len, reverse=True)
    return (re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b"),
            re.compile(r"\b(" + "|".join(map(re.escape, values)) + r")\b", re.I))


def fact_key(sentence: str, seed: int = 0) -> tuple:
    """Which TinyWorld fact a sentence states: (the people it names, the values it names), e.g.
    "Hisis works as a baker." -> ({'Hisis'}, {'baker'}). Both sentences of every `pairs` pair get
    the same key, so it groups the phrasings of one fact (for retrieval with groups)."""
    names, values = _fact_patterns(seed)
    return frozenset(names.findall(sentence)), frozenset(v.lower() for v in values.findall(sentence))


def evaluate_embeddings(model, tok, pooling: str = "last", seed: int = 0, limit: Optional[int] = None) -> dict:
    """Paraphrase identification (threshold tuned on val, accuracy on test) and retrieval@1 on the
    `pairs` test split, plus the test similarities themselves (for histograms). `limit` keeps the
    first examples of each split only (quick checks)."""
    out = {}
    for split in ("val", "test"):
        ex = world.task("paraphrase", split, seed)[:limit]
        e1 = embed_sentences(model, tok, [x["sentence1"] for x in ex], pooling)
        e2 = embed_sentences(model, tok, [x["sentence2"] for x in ex], pooling)
        out[f"{split}_sims"] = cosine(e1, e2).cpu()                        # (N,) for histograms
        out[f"{split}_labels"] = torch.tensor([x["label"] for x in ex], device="cpu")
    out["threshold"], out["val_acc"] = best_threshold(out["val_sims"], out["val_labels"])
    out["test_acc"] = threshold_accuracy(out["test_sims"], out["test_labels"], out["threshold"])
    pairs = world.task("pairs", "test", seed)[:limit]
    q = embed_sentences(model, tok, [p["anchor"] for p in pairs], pooling)
    k = embed_sentences(model, tok, [p["positive"] for p in pairs], pooling)
    out["retrieval_at_1"] = retrieval_at_1(q, k)                           # its own positive
    out["retrieval_fact_at_1"] = retrieval_at_1(q, k, [fact_key(p["anchor"], seed) for p in pairs])  # any of its fact's
    return out


# ---- distillation (lesson 17) -----------------------------------------------------------------------

def transfer_set(teacher, tok, collate_fn: Callable, n: int = 1500, max_words: int = 25, seed: int = 0,
                 exclude: Sequence[str] = ()) -> list[dict]:
    """A transfer set (Hinton et al., 2015, sec. 3) for a tagging student: n sentences of TinyWorld's
    pretraining corpus (train split, shuffled by `seed`, 4 to max_words words, split like the NER
    task: punctuation apart), tagged by the teacher (teacher_labels). Items {"idx", "labels"}: the
    teacher's tag at each word's first token, -100 elsewhere. Unlabelled text becomes training data.
    Sentences containing any word of `exclude` (e.g. the held-out people's names) are skipped."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} must be a positive int (sentences in the transfer set)")
    sents = [x for d in world.pretrain_corpus("train") for x in re.split(r"(?<=[.!?])\s+", d.replace("\n", " "))]
    random.Random(f"transfer/{seed}").shuffle(sents)
    banned = set(exclude)
    items = []
    for sent in sents:
        words = re.findall(r"\w+|[^\w\s]", sent)
        if 4 <= len(words) <= max_words and not banned.intersection(words):
            ids, labels, _ = encode_words(tok, words, [0] * len(words))       # 0: a placeholder tag
            items.append({"idx": torch.tensor(ids, device="cpu"), "labels": torch.tensor(labels, device="cpu")})
        if len(items) == n:
            break
    return teacher_labels(teacher, items, collate_fn)                       # placeholders -> teacher's tags


# ---- table-to-text (lesson 07) -------------------------------------------------------------------

TABLE_PROMPT = "Describe this record in words."


def table_to_text_examples(split: str = "train", seed: int = 0) -> list[dict]:
    """TinyWorld's table-to-text set, an E2E-style task (Novikova et al., 2017; Li & Liang, 2021's
    first benchmark) built from the world's facts: a record of one person, "name" and 2 to 5 of
    the six relations in a random order, linearized by `tasks.linearize_table`, and the text that
    states those facts, one canonical sentence per field in the fixed order of world.RELATIONS:

        name : Mara | pet : cat | home : Ashford   ->   "Mara lives in Ashford. Mara has a pet cat."

    Split by person like qa_closed (val and test records are about their split's people, whose
    names no training record holds); a record (person, set of fields) occurs once over all splits.
    1500 / 200 / 200 examples {"fields", "table", "text"}; a copy, so callers may edit it."""
    return [{**r, "table": T.linearize_table(r["fields"])} for r in world.table_records(split, seed)]


def table_to_text_pairs(split: str = "train", seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs of the table-to-text set, ready for SFTDataset: the prompt is
    TABLE_PROMPT and the linearized record on the next line, the response the text."""
    return [(f"{TABLE_PROMPT}\n{ex['table']}", ex["text"]) for ex in table_to_text_examples(split, seed)]
