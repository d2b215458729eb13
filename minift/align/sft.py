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
- the data: (prompt, response) pairs in tasks.SFTDataset, whose targets are -100 on the prompt;
- the trainer: `train_sft(model, pairs, SFTConfig(), TrainConfig(...), tok=tok)`, minift.train.train
  with the LM loss on those targets. SFTConfig(train_on_prompt=True) is the ablation that puts the
  prompt in the loss too.

TinyWorld's instruction mixture (`mixture`) and the evaluation by greedy generation scored with each
task's metric (`generate_responses`, `evaluate_task`) are the course side: minift/evals.py.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Sequence

from ..tasks import SFTDataset, collate_fn
from ..train import TrainConfig, train
from ..validate import check_bool


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


@dataclass
class SFTConfig:
    """What the loss covers: the response and its EOS (the default), or every token (train_on_prompt)."""
    train_on_prompt: bool = False

    def __post_init__(self):
        check_bool(self, "train_on_prompt", self.train_on_prompt)


def train_sft(model, pairs: Sequence[tuple[str, str]], cfg: SFTConfig, train_cfg: TrainConfig, *, tok,
              eval_fn=None) -> list[dict]:
    """Fine-tune `model` (whatever requires_grad says) on (prompt, response) pairs with the
    language-modelling loss on the response tokens (L above), through minift.train.train; eval_fn(model)
    -> dict as in train. Returns the history."""
    if not isinstance(cfg, SFTConfig) or not isinstance(train_cfg, TrainConfig):
        raise TypeError(f"train_sft: cfg must be an SFTConfig and train_cfg a TrainConfig, got "
                        f"{type(cfg).__name__} and {type(train_cfg).__name__}")
    data = SFTDataset(tok, pairs, model.config.block_size, train_on_prompt=cfg.train_on_prompt)
    return train(model, data, train_cfg, collate_fn=collate_fn(tok.pad_id), eval_fn=eval_fn)
