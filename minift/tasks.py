"""Task datasets, collation with loss masks, prompt formats, and the metrics of the course.

Datasets turn text into the tensors the training loop eats. Every item is a dict
{"idx": (T,) long, "targets": (T,) long}; targets[t] is the token that follows idx[t], or -100
(IGNORE_INDEX) where no loss is taken. `collate` pads a list of items into a batch and adds the
attention_mask (1 = real token, 0 = padding).

    LMDataset     pretraining: every token predicts the next one
    SFTDataset    instruction tuning: loss only on the response (and its EOS)

    ids      = [<|prompt|>] prompt [<|response|>] response [<|endoftext|>]
    idx      = ids[:-1]
    targets  = ids[1:]   with -100 where loss_mask[1:] == 0 (the prompt)

The tokenizer is anything with encode, decode, eos_id, pad_id, encode_pair and encode_prompt
(see minift/tokenizer.py); tests use a byte-level fake.

Metrics, each in pure Python on strings / label lists:

    accuracy       acc = (1/n) sum_i [pred_i == label_i]
    exact_match    EM  = [norm(pred) == norm(gold)],  norm = lowercase, strip, collapse
                   whitespace, drop final punctuation
    entity_f1      span-level micro P/R/F1 over BIO tags (conlleval / seqeval rules)
    rouge_l        LCS-based F-measure over lowercased whitespace tokens
    perplexity     ppl = exp(mean NLL in nats)
"""
from __future__ import annotations

import functools
import math
import string
from typing import Sequence

import torch
from torch.utils.data import Dataset

IGNORE_INDEX = -100                      # the targets value cross_entropy skips

# ============================================================================ metrics


def _as_list(x) -> list:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


def _check_pair(a, b, what_a: str, what_b: str) -> tuple[list, list]:
    a, b = _as_list(a), _as_list(b)
    if len(a) != len(b):
        raise ValueError(f"{what_a} has {len(a)} items but {what_b} has {len(b)}; they must match")
    if not a:
        raise ValueError(f"{what_a} and {what_b} are empty; a score needs at least one example")
    return a, b


def accuracy(preds, labels) -> float:
    """acc = (1/n) sum_i [pred_i == label_i]  (lists or 1-D tensors of equal length)."""
    preds, labels = _check_pair(preds, labels, "preds", "labels")
    for name, xs in (("preds", preds), ("labels", labels)):
        if any(isinstance(x, float) and not math.isfinite(x) for x in xs):   # NaN == y is False: a quiet "wrong"
            raise ValueError(f"accuracy: {name} holds NaN or inf")
    return sum(p == y for p, y in zip(preds, labels)) / len(labels)


def normalize_answer(s: str) -> str:
    """Lowercase, strip, collapse runs of whitespace, drop final punctuation:
    '  Old   Mill. ' -> 'old mill'."""
    if not isinstance(s, str):
        raise TypeError(f"expected a str, got {type(s).__name__}")
    s = " ".join(s.lower().split())
    return s.rstrip(string.punctuation).rstrip()


def exact_match(pred: str, gold: str) -> float:
    """EM = 1.0 if norm(pred) == norm(gold) else 0.0 (see normalize_answer)."""
    return float(normalize_answer(pred) == normalize_answer(gold))


def exact_match_score(preds, golds) -> float:
    """Mean exact match over a list of predictions."""
    preds, golds = _check_pair(preds, golds, "preds", "golds")
    return sum(exact_match(p, g) for p, g in zip(preds, golds)) / len(golds)


def _split_tag(tag: str) -> tuple[str, str | None]:
    if tag == "O":
        return "O", None
    if isinstance(tag, str) and len(tag) > 2 and tag[:2] in ("B-", "I-"):
        return tag[0], tag[2:]
    raise ValueError(f"tag {tag!r} is not BIO: expected 'O', 'B-TYPE' or 'I-TYPE'")


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entity spans (type, start, end) with end exclusive, read the conlleval way:
    a span starts at B-X, or at an I-X that does not continue a span of type X (after O, or
    after a span of another type); it ends before O, B-, or an I- of another type."""
    spans, cur, start = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, typ = _split_tag(tag)
        begins = prefix == "B" or (prefix == "I" and typ != cur)
        if cur is not None and (prefix == "O" or begins):
            spans.append((cur, start, i))
            cur = None
        if begins:
            cur, start = typ, i
    return spans


def entity_f1(pred_tags, gold_tags) -> dict:
    """Span-level micro precision / recall / F1 over BIO sequences (a list of tag lists, or one
    tag list). A predicted span counts only if type, start and end all match a gold span.

        P = tp / #pred spans     R = tp / #gold spans     F1 = 2 P R / (P + R)

    A ratio whose denominator is 0 is 0.0 (as in seqeval), so with no entities at all F1 = 0."""
    if pred_tags and isinstance(_as_list(pred_tags)[0], str):
        pred_tags, gold_tags = [pred_tags], [gold_tags]
    pred_tags, gold_tags = _check_pair(pred_tags, gold_tags, "pred_tags", "gold_tags")
    tp = n_pred = n_gold = 0
    for k, (p, g) in enumerate(zip(pred_tags, gold_tags)):
        if len(p) != len(g):
            raise ValueError(f"sequence {k}: {len(p)} predicted tags but {len(g)} gold tags")
        ps, gs = set(get_entities(p)), set(get_entities(g))
        tp, n_pred, n_gold = tp + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _lcs(a: list, b: list) -> int:
    """Length of the longest common subsequence, O(len(a) len(b)) time, O(len(b)) memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure (Lin, 2004) with beta = 1 over lowercased whitespace tokens:

        P = LCS / len(pred)    R = LCS / len(ref)    F = 2 P R / (P + R)    (0 if LCS = 0)"""
    p, r = pred.lower().split(), ref.lower().split()
    lcs = _lcs(p, r) if p and r else 0
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def rouge_l_score(preds, refs) -> float:
    """Mean ROUGE-L F over a list of predictions."""
    preds, refs = _check_pair(preds, refs, "preds", "refs")
    return sum(rouge_l(p, r) for p, r in zip(preds, refs)) / len(refs)


def perplexity(mean_nll) -> float:
    """ppl = exp(mean NLL in nats per token). A uniform guess over V tokens has NLL = log V,
    so perplexity V: 'as unsure as choosing among V tokens'."""
    x = float(mean_nll.item() if isinstance(mean_nll, torch.Tensor) else mean_nll)
    if math.isnan(x):
        raise ValueError("mean_nll is NaN; perplexity is undefined")
    return math.exp(x) if x < 709.0 else math.inf       # exp(709.8) overflows a float


# ============================================================================ datasets


class LMDataset(Dataset):
    """Language-modelling windows: all documents, each followed by EOS, are concatenated and cut
    into non-overlapping windows of block_size + 1 tokens (the tail that does not fill a window
    is dropped). Item i: idx = window[:-1], targets = window[1:], both (block_size,) long."""

    def __init__(self, tok, texts: Sequence[str], block_size: int):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be an int >= 1")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of documents, not one str")
        texts = list(texts)
        # encode_batch (when the tokenizer has it) gives the same ids as encode, only faster
        batch = getattr(tok, "encode_batch", None)
        encoded = batch(texts) if callable(batch) else [tok.encode(t) for t in texts]
        ids: list[int] = []
        for doc in encoded:
            ids.extend(doc)
            ids.append(tok.eos_id)
        n = len(ids) // (block_size + 1)
        if n == 0:
            raise ValueError(f"the texts give {len(ids)} tokens (EOS included), fewer than "
                             f"block_size + 1 = {block_size + 1}: not one window")
        self.block_size = block_size
        self.data = torch.tensor(ids[: n * (block_size + 1)], dtype=torch.long, device="cpu").view(n, block_size + 1)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> dict:
        w = self.data[i]                                 # (block_size + 1,)
        return {"idx": w[:-1], "targets": w[1:]}


def truncate_prompt(ids: list, mask: list, max_len: int) -> tuple[list, list]:
    """Make a prompt+response sequence at most max_len tokens by dropping the *oldest* prompt
    tokens. The first token (<|prompt|>) and the last prompt token (<|response|>) are kept, and
    the response (mask 1) is never cut: if it cannot fit, ValueError."""
    if len(ids) != len(mask):
        raise ValueError(f"ids has {len(ids)} tokens but loss_mask has {len(mask)}")
    if len(ids) <= max_len:
        return list(ids), list(mask)
    if 1 not in mask:
        raise ValueError("loss_mask has no 1: the example has no response to train on")
    first = list(mask).index(1)                          # where the response starts
    n_resp = len(ids) - first
    keep = max_len - n_resp                              # prompt tokens that still fit
    if keep < 2:
        raise ValueError(f"the response alone is {n_resp} tokens (EOS included); with the <|prompt|> "
                         f"and <|response|> markers it needs {n_resp + 2} > block_size + 1 = {max_len}")
    cut = first - (keep - 1)
    return list(ids[:1]) + list(ids[cut:]), list(mask[:1]) + list(mask[cut:])


def masked_lm_item(ids: list, mask: list | None) -> dict:
    """A training item from a token sequence and its loss mask: idx = ids[:-1], targets = ids[1:]
    with -100 where mask[1:] is 0 (mask None: every token is a target). On the CPU: the training
    loop moves each batch. (SFT pairs here; chat dialogues: align/chat.py.)"""
    x = torch.tensor(ids[:-1], dtype=torch.long, device="cpu")                   # (T,)
    y = torch.tensor(ids[1:], dtype=torch.long, device="cpu")                    # (T,) the next tokens
    if mask is not None:
        y[torch.tensor(mask[1:], dtype=torch.bool, device="cpu").logical_not()] = IGNORE_INDEX
    return {"idx": x, "targets": y}


class SFTDataset(Dataset):
    """Supervised fine-tuning items from (prompt, response) pairs.

        ids, mask = tok.encode_pair(prompt, response)   # truncated from the left of the prompt
        idx       = ids[:-1]                             # (T,)
        targets   = ids[1:], -100 where mask[1:] == 0    # (T,) loss on response + EOS only

    T varies per item (at most block_size); `collate` pads. train_on_prompt=True drops the mask
    (loss on every token, prompt included): the ablation that shows why the mask matters."""

    def __init__(self, tok, examples: Sequence, block_size: int, train_on_prompt: bool = False):
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size={block_size!r} must be an int >= 1")
        self.items = []
        for k, ex in enumerate(examples):
            if not (isinstance(ex, (tuple, list)) and len(ex) == 2 and all(isinstance(s, str) for s in ex)):
                raise TypeError(f"example {k} must be a (prompt, response) pair of str, got {ex!r:.80}")
            ids, mask = tok.encode_pair(ex[0], ex[1])
            try:
                ids, mask = truncate_prompt(ids, mask, block_size + 1)
            except ValueError as e:
                raise ValueError(f"example {k}: {e}") from None
            self.items.append(masked_lm_item(ids, None if train_on_prompt else mask))
        if not self.items:
            raise ValueError("SFTDataset: no examples")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(batch: Sequence[dict], pad_id: int, side: str = "right") -> dict:
    """Pad items {"idx": (T_i,), "targets": (T_i,)} into a batch:
    idx (B, T) padded with pad_id, targets (B, T) padded with -100, attention_mask (B, T) with 1
    on real tokens. side="right" pads after the tokens (training); side="left" pads before them
    (batched generation, so every row ends at its last real token). Items without "targets"
    (prompts to generate from) give a batch without targets. The batch is made on the device of
    the first item's idx (the CPU for token lists)."""
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r} must be 'left' or 'right'")
    if not batch:
        raise ValueError("collate: the batch is empty")
    has_t = ["targets" in b for b in batch]
    if any(has_t) and not all(has_t):
        raise ValueError("collate: some items have 'targets' and some do not")
    seqs = [_ids(b["idx"], "idx", i).reshape(-1) for i, b in enumerate(batch)]
    B, T, dev = len(seqs), max(len(s) for s in seqs), seqs[0].device
    idx = torch.full((B, T), int(pad_id), dtype=torch.long, device=dev)
    targets = torch.full((B, T), IGNORE_INDEX, dtype=torch.long, device=dev)
    attn = torch.zeros((B, T), dtype=torch.long, device=dev)
    for i, s in enumerate(seqs):
        n = len(s)
        cols = slice(0, n) if side == "right" else slice(T - n, T)
        idx[i, cols] = s
        attn[i, cols] = 1
        if has_t[i]:
            t = _ids(batch[i]["targets"], "targets", i).reshape(-1)
            if len(t) != n:
                raise ValueError(f"collate: item {i} has {n} idx tokens but {len(t)} targets")
            targets[i, cols] = t
    out = {"idx": idx, "attention_mask": attn}
    if all(has_t):
        out["targets"] = targets
    if "labels" in batch[0]:
        out["labels"] = _collate_labels(batch, T, side, dev)
    return out


def _ids(x, what: str, i: int) -> torch.Tensor:
    """Item i's token ids, targets or labels as a long tensor. Floats are refused, not truncated (a 4.7
    would quietly become token 4)."""
    t = torch.as_tensor(x, device=x.device if isinstance(x, torch.Tensor) else "cpu")   # a tensor stays where it is
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        raise TypeError(f"collate: item {i} has {what} of dtype {t.dtype}; they must be integer ids")
    return t.to(torch.long)


def _collate_labels(batch: Sequence[dict], T: int, side: str, device) -> torch.Tensor:
    """Labels ride along with idx: one class per item (sequence classification) -> (B,), or one
    per token (token classification) -> (B, T) padded like idx with -100."""
    if not all("labels" in b for b in batch):
        raise ValueError("collate: some items have 'labels' and some do not")
    labels = [_ids(b["labels"], "labels", i) for i, b in enumerate(batch)]
    if all(lab.dim() == 0 for lab in labels):
        return torch.stack([lab.to(device) for lab in labels])       # (B,)
    out = torch.full((len(batch), T), IGNORE_INDEX, dtype=torch.long, device=device)
    for i, (b, lab) in enumerate(zip(batch, labels)):
        n = _ids(b["idx"], "idx", i).numel()
        if lab.dim() != 1 or len(lab) != n:
            raise ValueError(f"collate: item {i} has {n} idx tokens but labels of shape {tuple(lab.shape)}")
        out[i, slice(0, n) if side == "right" else slice(T - n, T)] = lab
    return out                                                       # (B, T)


def collate_fn(pad_id: int, side: str = "right"):
    """collate with pad_id and side fixed: the collate_fn argument of minift.train.train."""
    if side not in ("left", "right"):
        raise ValueError(f"side={side!r} must be 'left' or 'right'")
    return functools.partial(collate, pad_id=pad_id, side=side)


# ============================================================================ prompt formats

LABEL_WORDS = {"sentiment": ("negative", "positive"), "paraphrase": ("no", "yes")}   # label 0, label 1
NER_INSTRUCTION = "Tag each word with O, or B- / I- and one of PER, LOC, ANIMAL, FOOD."


INSTRUCTION_STYLES = ("full", "name", "plain")     # format_example(..., style=): what an instruction prompt keeps


def format_example(task_name: str, example: dict, style: str = "full") -> tuple[str, str]:
    """(prompt, response) of one example of a TinyWorld task, so every task can be trained and
    generated from as text-to-text (SFT can mix them all). Classification tasks answer with a
    label word (LABEL_WORDS), NER with one tag per word, separated by spaces.

    style (the `instructions` task only; the ablation of FLAN, Wei et al. 2022, sec. 4.3, and of the
    no-instruction baseline of Natural Instructions, Mishra et al. 2022): "full" (the default) is the
    whole Natural-Instructions prompt, definition + positive and negative example + instance;
    "name" keeps only the task type's name and the instance ("Task: town_of_person\nInput: Tiken");
    "plain" keeps only the instance ("Input: Tiken"): input -> output. The response never changes."""
    ex = example
    if style not in INSTRUCTION_STYLES:
        raise ValueError(f"format_example: style={style!r} must be one of {INSTRUCTION_STYLES}")
    if style != "full" and task_name != "instructions":
        raise ValueError(f"format_example: style={style!r} strips an instruction, so it needs task_name="
                         f"'instructions', got {task_name!r} (other tasks have no definition to strip)")
    try:
        if task_name == "instructions" and style != "full":
            head = f"Task: {ex['task']}\n" if style == "name" else ""
            return f"{head}Input: {ex['input']}", ex["output"]
        if task_name == "qa_closed":
            return f"Question: {ex['question']}", ex["answer"]
        if task_name == "qa_extractive":
            return f"Context: {ex['context']}\nQuestion: {ex['question']}", ex["answer"]
        if task_name == "instructions":
            pos, neg = ex["positive"], ex["negative"]
            return (f"Definition: {ex['definition']}\n"
                    f"Positive example. Input: {pos['input']} Output: {pos['output']} Reason: {pos['reason']}\n"
                    f"Negative example. Input: {neg['input']} Output: {neg['output']} Reason: {neg['reason']}\n"
                    f"Now do the task. Input: {ex['input']}", ex["output"])
        if task_name == "summarization":
            return f"Summarize in one sentence.\n{ex['document']}", ex["summary"]
        if task_name == "sentiment":
            return f"Is this review positive or negative?\n{ex['text']}", LABEL_WORDS["sentiment"][int(ex["label"])]
        if task_name == "paraphrase":
            return (f"Do these two sentences mean the same thing?\n1: {ex['sentence1']}\n2: {ex['sentence2']}",
                    LABEL_WORDS["paraphrase"][int(ex["label"])])
        if task_name == "ner":
            return f"{NER_INSTRUCTION}\n{' '.join(ex['tokens'])}", " ".join(ex["tags"])
        if task_name == "preference":
            return ex["prompt"], ex["chosen"]
        if task_name == "pairs":
            return f"Say this in other words: {ex['anchor']}", ex["positive"]
        if task_name == "dialogue":                 # flattened to one turn; align/chat.py keeps the turns
            *hist, last = ex["turns"]
            lines = [f"User: {t['user']}\nAssistant: {t['assistant']}" for t in hist]
            return "\n".join(lines + [f"User: {last['user']}"]), last["assistant"]
    except KeyError as e:
        raise ValueError(f"a {task_name} example needs the key {e}; got keys {sorted(example)}") from None
    from .world import TASKS
    raise ValueError(f"unknown task {task_name!r}; valid task names are {list(TASKS)}")


def parse_response(task_name: str, text: str, example: dict | None = None):
    """Read a generated response back into the task's label space.
    sentiment / paraphrase -> 1, 0, or None (neither label word); ner -> a tag list as long as
    example["tokens"] (unknown tags become O, missing ones O); other tasks -> the stripped text."""
    words = text.strip().split()
    if task_name in LABEL_WORDS:
        first = normalize_answer(words[0]) if words else ""
        zero, one = LABEL_WORDS[task_name]
        return 1 if first == one else 0 if first == zero else None
    if task_name == "ner":
        if example is None:
            raise ValueError("parse_response('ner', ...) needs the example (for its number of tokens)")
        n = len(example["tokens"])
        from .world import NER_TAGS
        tags = [t if t in NER_TAGS else "O" for t in words[:n]]
        return tags + ["O"] * (n - len(tags))
    return text.strip()


def sft_pairs(task_names: Sequence[str], split: str = "train", seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs of one or several TinyWorld tasks, ready for SFTDataset."""
    from .world import task
    if isinstance(task_names, str):
        task_names = [task_names]
    return [format_example(n, ex) for n in task_names for ex in task(n, split, seed)]


# ============================================================================ table-to-text

TABLE_FIELD_SEP, TABLE_VALUE_SEP = " | ", " : "     # between fields; between an attribute and its value


def linearize_table(fields) -> str:
    """A one-record table as one line of text, attribute : value pairs joined by '|', so that a
    decoder-only LM (GPT-2 in Li & Liang, 2021) can read an E2E-style record (Novikova et al., 2017):

        [(a_1, v_1), ..., (a_n, v_n)]  ->  "a_1 : v_1 | a_2 : v_2 | ... | a_n : v_n"

    Fields stay in the given order (the order is part of the input); each attribute and value is
    written stripped of surrounding whitespace. fields: a non-empty sequence of (attribute, value)
    pairs of strings, or a dict (in its order). Attributes and values must be non-empty after
    stripping and hold no '|' or ':', so the line can be read back unambiguously."""
    items = list(fields.items()) if isinstance(fields, dict) else fields
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise ValueError(f"linearize_table: fields must be a non-empty sequence of (attribute, value) pairs "
                         f"or a dict, got {fields!r}")
    out = []
    for i, pair in enumerate(items):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"linearize_table: fields[{i}]={pair!r} must be an (attribute, value) pair")
        for what, s in zip(("attribute", "value"), pair):
            if not isinstance(s, str):
                raise TypeError(f"linearize_table: the {what} of fields[{i}] must be a str, got {type(s).__name__}")
            if not s.strip() or "|" in s or ":" in s:
                raise ValueError(f"linearize_table: the {what} of fields[{i}]={s!r} must be non-empty and "
                                 f"hold no '|' or ':'")
        out.append(pair[0].strip() + TABLE_VALUE_SEP + pair[1].strip())         # "a_i : v_i"
    return TABLE_FIELD_SEP.join(out)                                            # "a_1 : v_1 | a_2 : v_2"
