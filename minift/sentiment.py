"""Sentiment control: the DPO paper's first experiment (Rafailov et al., 2023, §6.1) on TinyWorld.

The task: given the opening of a review, x = "My new lantern was", write a completion y that a
sentiment classifier reads as positive, without drifting far from π_SFT (a model that writes both
kinds). Every method is judged by two numbers measured on FRESH samples y ~ π(·|x) of held-out prompts:

    reward   R = E_x E_y [ p_φ(positive | y) ]                         the classifier's probability
    KL       D = E_x E_y [ log π(y|x) − log π_ref(y|x) ]               sequence level, nats per completion

(D is the sampled estimate of KL(π ‖ π_ref), summed over the completion's tokens, as the paper
reports it.) The pairs (D, R) of several β or KL coefficients trace each method's reward–KL frontier.

TinyWorld's reviews of one clause ("{S} was {D}.", "I think {S} is {D}.", "To be honest, {S} was
{D}.") are cut before the judgement: x ends at "was"/"is", y is "not lovely." or "very good.". The
judgement alone carries the label, so the classifier p_φ reads the completion only: its attention
mask is 1 on the tokens after the prompt's <|response|> (`completion_mask`), which, with positions counted from
the first real token (minift/model.py), is the same as classifying y on its own.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

import torch

from .align.ppo import rollout
from .heads import SequenceClassifier, classifier_loss
from .tasks import collate
from .train import TrainConfig, model_device, train
from .world import task

# (optional preamble) (optional "To be honest, " / "I think ") subject ... was|is  judgement.
_ONE_CLAUSE = re.compile(r"^((?:We went there on \w+\. |I went with \w+\. |Here is my review\. )?"
                         r"(?:To be honest, |I think )?[^,]*? (?:was|is)) ([a-z ]+)\.$")


def sentiment_completions(split: str = "train", seed: int = 0) -> list[dict]:
    """TinyWorld's one-clause reviews of `split`, cut before the judgement: [{"prompt", "response",
    "label"}] with response = "{D}." and label 1 = positive. Contrast reviews ("... but ...",
    "Although ...") and "I {V} {S}." are left out (their judgement is not at the end)."""
    out = []
    for e in task("sentiment", split, seed=seed):
        m = _ONE_CLAUSE.match(e["text"])
        if m and " but " not in e["text"] and not e["text"].startswith("Although"):
            out.append({"prompt": m.group(1), "response": m.group(2) + ".", "label": int(e["label"])})
    return out


def completion_mask(ids: torch.Tensor, attention_mask: torch.Tensor, response_id: int) -> torch.Tensor:
    """1 on the real tokens after the FIRST <|response|> of each row (the one encode_prompt puts
    there; a sampled completion may contain the marker again, and that copy is completion), 0
    elsewhere: (B, T) -> (B, T) long. A row with no real token after it is refused."""
    if ids.shape != attention_mask.shape or ids.dim() != 2:
        raise ValueError(f"ids {tuple(ids.shape)} and attention_mask {tuple(attention_mask.shape)} must be one "
                         f"(batch, tokens) shape")
    real = attention_mask.bool()
    seen = ((ids == response_id) & real).long().cumsum(1)                   # markers up to t  (B, T)
    first = (seen == 1) & (ids == response_id) & real                     # the first marker itself
    keep = ((seen > 0) & real & ~first).long()                              # (B, T)
    if bool((keep.sum(1) == 0).any()):
        raise ValueError("completion_mask: a row has no real token after <|response|>")
    return keep


def _batch(tok, prompts: Sequence[str], responses: Sequence[str]) -> dict:
    """<|prompt|> x <|response|> y <|endoftext|> of each pair, padded: {"idx", "attention_mask"} (B, T) on the CPU."""
    return collate([{"idx": torch.tensor(tok.encode_pair(p, r)[0], device="cpu")} for p, r in zip(prompts, responses)],
                   tok.pad_id)


def train_sentiment_classifier(body, tok, examples: Sequence[dict], train_cfg: TrainConfig) -> SequenceClassifier:
    """p_φ: SequenceClassifier(body, 2) (lesson 02's head on the last real token), every weight trained
    on the completions of `examples` (completion_mask). `body` is used as is (pass a copy). Returns it
    in eval mode."""
    torch.manual_seed(train_cfg.seed)                                       # the head's init
    clf = SequenceClassifier(body, 2).to(model_device(body))
    for p in clf.parameters():
        p.requires_grad_(True)
    items = [{"prompt": e["prompt"], "response": e["response"], "label": e["label"]} for e in examples]

    def col(batch):                                                         # train() moves it to the model
        b = _batch(tok, [e["prompt"] for e in batch], [e["response"] for e in batch])
        return {"idx": b["idx"], "attention_mask": completion_mask(b["idx"], b["attention_mask"], tok.response_id),
                "labels": torch.tensor([e["label"] for e in batch], device="cpu")}
    train(clf, items, train_cfg, loss_fn=classifier_loss, collate_fn=col)
    return clf.eval()


@torch.no_grad()
def positive_prob(clf: SequenceClassifier, tok, prompts: Sequence[str], responses: Sequence[str],
                  batch_size: int = 256) -> torch.Tensor:
    """p_φ(positive | y) of each completion, reading the completion only: (N,) float32 on the CPU."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts and {len(responses)} responses: one response per prompt")
    reward, dev = classifier_reward(clf, tok.response_id), model_device(clf)
    out = []
    for a in range(0, len(prompts), batch_size):
        b = _batch(tok, prompts[a:a + batch_size], responses[a:a + batch_size])
        out.append(reward(b["idx"].to(dev), b["attention_mask"].to(dev)).cpu())             # (b,)
    return torch.cat(out)


def classifier_reward(clf: SequenceClassifier, response_id: int) -> Callable:
    """The reward PPO's rollout calls, reward(ids, attention_mask) -> (B,): p_φ(positive | completion)
    of sampled sequences <|prompt|> x <|response|> y."""
    @torch.no_grad()
    def reward(ids, attention_mask):
        clf.eval()
        return clf(ids, attention_mask=completion_mask(ids, attention_mask, response_id)).logits.float().softmax(-1)[:, 1]
    return reward


@torch.no_grad()
def reward_and_kl(policy, ref, reward: Callable, tok, prompts: Sequence[str], max_new_tokens: int, seed: int = 0,
                  batch_size: int = 128, greedy: bool = False) -> dict:
    """Fresh samples y ~ π(·|x), one per prompt: the mean reward R, the mean sequence-level
    D = Σ_t (log π(y_t|s_t) − log π_ref(y_t|s_t)) (nats per completion), the completions' texts
    ("responses") and token ids ("tokens", EOS included when sampled).
    ref=None: a PEFT policy's disabled adapters (as in train_ppo)."""
    gen = torch.Generator().manual_seed(seed)
    rs, kls, toks = [], [], []
    for a in range(0, len(prompts), batch_size):
        r = rollout(policy, ref, reward, tok, prompts[a:a + batch_size], max_new_tokens, gen, greedy=greedy)
        rs.append(r["score"].float().cpu())
        kls.append(((r["logp"] - r["ref_logp"]) * r["mask"]).sum(1).float().cpu())   # Σ_t k1  (B,)
        toks += [[t for t, m in zip(row, mr) if m] for row, mr in zip(r["tokens"].tolist(), r["mask"].tolist())]
    texts = [tok.decode([t for t in row if t != tok.eos_id]).strip() for row in toks]
    R, D = torch.cat(rs), torch.cat(kls)
    return {"reward": float(R.mean()), "kl": float(D.mean()), "responses": texts, "tokens": toks}


def fixed_pairs(examples: Sequence[dict], seed: int = 0) -> list[dict]:
    """Offline pairs from TinyWorld's own sentences: each example's prompt with a positive and a
    negative completion written by TinyWorld (its own, and one of the other label drawn from the
    examples), {"prompt", "chosen", "rejected"}; no model is sampled."""
    g = torch.Generator().manual_seed(seed)
    by = {lab: [e["response"] for e in examples if e["label"] == lab] for lab in (0, 1)}
    if not by[0] or not by[1]:
        raise ValueError("fixed_pairs: the examples need both labels")
    out = []
    for e in examples:
        other = by[1 - e["label"]][int(torch.randint(len(by[1 - e["label"]]), (), generator=g, device="cpu"))]
        pos, neg = (e["response"], other) if e["label"] == 1 else (other, e["response"])
        out.append({"prompt": e["prompt"], "chosen": pos, "rejected": neg})
    return out


def first_reaching(values: Sequence[float], target: float) -> Optional[int]:
    """The 0-based index of the first value >= target, None if none reaches it."""
    return next((i for i, v in enumerate(values) if v >= target), None)


__all__ = ["sentiment_completions", "completion_mask", "train_sentiment_classifier", "positive_prob",
           "classifier_reward", "reward_and_kl", "fixed_pairs", "first_reaching"]
