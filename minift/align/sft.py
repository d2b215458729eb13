"""Supervised fine-tuning (SFT) and instruction tuning.

Instruction tuning (Wei et al., 2022, FLAN; Mishra et al., 2022, Natural Instructions; Ouyang et
al., 2022) fine-tunes a pretrained LM on (instruction, response) pairs so it follows instructions
it has never seen. The objective is the language-modelling loss restricted to the response:

    L = -(1 / |R|) Σ_{t ∈ R} log p_θ(y_t | prompt, y_<t)        R = response tokens + final EOS

The prompt is context, not something to imitate: the loss mask m_t = 1 on R, 0 elsewhere (set as
targets = -100 in minift). Training *with* the prompt in the loss spends capacity on predicting
instructions and inputs, and teaches the model to generate prompts.

Pieces:
- the template: `Template(prompt="...{input}...", response="{output}")` renders an example's
  fields; tokenization puts it in token space (tokenizer.encode_pair, `<|prompt|> ... <|response|>
  ... <|endoftext|>`), so the prompt is an exact prefix of the training sequence;
- `mixture(task_names, split, n_per_task)`: a multi-task instruction mixture from TinyWorld;
- `generate_responses` and `evaluate_task`: greedy generation from prompts, scored with the
  task's metric (exact match, ROUGE-L, entity F1 or accuracy).
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .. import tasks as T
from ..world import task as world_task


@dataclass(frozen=True)
class Template:
    """A prompt/response template over an example's fields, e.g.
    Template(prompt="Question: {question}", response="{answer}")."""
    prompt: str
    response: str

    def __post_init__(self):
        for which in ("prompt", "response"):
            fields = [f for _, f, _, _ in string.Formatter().parse(getattr(self, which)) if f is not None]
            if which == "response" and not fields:
                raise ValueError(f"Template.response={self.response!r} has no slot: it needs a field such "
                                 f"as '{{output}}' to put the answer in")
            if any(f == "" or f.isdigit() for f in fields):
                raise ValueError(f"Template.{which} uses positional slots {{}}; name them, e.g. {{input}}")

    def fields(self) -> set:
        return {f for s in (self.prompt, self.response) for _, f, _, _ in string.Formatter().parse(s) if f}

    def render(self, example: dict) -> tuple[str, str]:
        missing = sorted(self.fields() - set(example))
        if missing:
            raise ValueError(f"the example lacks field(s) {missing} that the template needs; it has {sorted(example)}")
        return self.prompt.format(**example), self.response.format(**example)


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
        pairs = [T.format_example(name, ex) for ex in world_task(name, split, seed)]
        rng.shuffle(pairs)
        out += pairs[:n_per_task] if n_per_task is not None else pairs
    rng.shuffle(out)
    return out


@torch.no_grad()
def generate_responses(model, tok, prompts: Sequence[str], max_new_tokens: int = 32,
                       batch_size: int = 32) -> list[str]:
    """Greedy responses to prompts: each is encoded as <|prompt|> prompt <|response|>, left-padded
    into batches, and decoded up to the first EOS."""
    model.eval()
    out = []
    limit = model.config.block_size - max_new_tokens
    for i in range(0, len(prompts), batch_size):
        enc = [tok.encode_prompt(p) for p in prompts[i:i + batch_size]]
        enc = [e if len(e) <= limit else e[:1] + e[len(e) - limit + 1:] for e in enc]  # keep the newest
        b = T.collate([{"idx": e} for e in enc], tok.pad_id, side="left")
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
