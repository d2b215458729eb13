"""Metrics, datasets and collation of minift.tasks, checked with properties (hypothesis)."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minift import tasks as T
from minift import world as W

pytestmark = pytest.mark.lesson01
SETTINGS = settings(deadline=None, max_examples=50)


class ByteTok:
    """A byte-level fake tokenizer with the interface of minift.tokenizer.Tokenizer."""
    eos_id, pad_id, prompt_id, response_id = 256, 257, 258, 259

    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def encode_prompt(self, prompt):
        return [self.prompt_id] + self.encode(prompt) + [self.response_id]

    def encode_pair(self, prompt, response):
        p, r = self.encode_prompt(prompt), self.encode(response) + [self.eos_id]
        return p + r, [0] * len(p) + [1] * len(r)


TOK = ByteTok()
TYPES = ("PER", "LOC", "ANIMAL")
TAG = st.sampled_from(("O",) + tuple(f"{p}-{t}" for t in TYPES for p in "BI"))
SEQS = st.lists(st.lists(TAG, min_size=1, max_size=10), min_size=1, max_size=5)
WORD = st.text(alphabet="abcdefghij", min_size=1, max_size=4)
TEXT = st.lists(WORD, min_size=1, max_size=12).map(" ".join)


# ---------------------------------------------------------------------------- entity F1

def test_get_entities_by_hand():
    assert T.get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    assert T.get_entities(["I-PER", "I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [("PER", 0, 2), ("LOC", 2, 3), ("LOC", 3, 5)]
    assert T.get_entities(["O", "O"]) == []
    with pytest.raises(ValueError):
        T.get_entities(["X-PER"])


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-FOOD", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["O", "B-FOOD"]]
    # gold spans: PER(0,2) LOC(3,4) FOOD(0,1); pred: PER(0,1) LOC(3,4) FOOD(1,2): 1 of 3 right
    r = T.entity_f1(pred, gold)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        T.entity_f1([["O"]], [["O", "O"]])


@SETTINGS
@given(SEQS)
def test_entity_f1_of_itself_is_one(seqs):
    assume(any(t != "O" for s in seqs for t in s))
    assert T.entity_f1(seqs, seqs) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


@SETTINGS
@given(SEQS)
def test_entity_f1_is_zero_without_predicted_entities(gold):
    assume(any(t != "O" for s in gold for t in s))
    pred = [["O"] * len(s) for s in gold]
    assert T.entity_f1(pred, gold)["f1"] == 0.0
    assert T.entity_f1(gold, pred)["f1"] == 0.0


@SETTINGS
@given(st.lists(st.tuples(st.lists(TAG, min_size=1, max_size=8), st.lists(TAG, min_size=1, max_size=8)),
                min_size=1, max_size=4))
def test_entity_f1_swapping_pred_and_gold_swaps_precision_and_recall(pairs):
    pred = [a[:min(len(a), len(b))] for a, b in pairs]
    gold = [b[:min(len(a), len(b))] for a, b in pairs]
    r, s = T.entity_f1(pred, gold), T.entity_f1(gold, pred)
    assert r["precision"] == pytest.approx(s["recall"]) and r["recall"] == pytest.approx(s["precision"])
    assert r["f1"] == pytest.approx(s["f1"]) and 0.0 <= r["f1"] <= 1.0
    # F1 lies between precision and recall (it is their harmonic mean)
    if r["f1"] > 0:
        assert min(r["precision"], r["recall"]) - 1e-12 <= r["f1"] <= max(r["precision"], r["recall"]) + 1e-12


# ---------------------------------------------------------------------------- ROUGE-L

def _lcs_brute(a, b):
    """Exponential-free but independent LCS: memoised recursion."""
    import functools

    @functools.lru_cache(maxsize=None)
    def f(i, j):
        if i == len(a) or j == len(b):
            return 0
        return f(i + 1, j + 1) + 1 if a[i] == b[j] else max(f(i + 1, j), f(i, j + 1))
    return f(0, 0)


def test_rouge_l_by_hand():
    # LCS("the cat sat on the mat", "the cat on mat") = 4; P = 4/4, R = 4/6, F = 0.8
    assert T.rouge_l("the cat on mat", "the cat sat on the mat") == pytest.approx(0.8)
    assert T.rouge_l("", "a b") == 0.0
    assert T.rouge_l("The CAT", "the cat") == 1.0


@SETTINGS
@given(TEXT)
def test_rouge_l_of_itself_is_one(x):
    assert T.rouge_l(x, x) == pytest.approx(1.0)


@SETTINGS
@given(TEXT, TEXT)
def test_rouge_l_is_symmetric_and_uses_the_lcs(x, y):
    assert T.rouge_l(x, y) == pytest.approx(T.rouge_l(y, x))
    a, b = x.split(), y.split()
    lcs = _lcs_brute(tuple(a), tuple(b))
    want = 0.0 if lcs == 0 else 2 * (lcs / len(a)) * (lcs / len(b)) / (lcs / len(a) + lcs / len(b))
    assert T.rouge_l(x, y) == pytest.approx(want)


@SETTINGS
@given(st.lists(st.text(alphabet="abc", min_size=1, max_size=3), min_size=1, max_size=8),
       st.lists(st.text(alphabet="xyz", min_size=1, max_size=3), min_size=1, max_size=8))
def test_rouge_l_is_zero_for_disjoint_vocabularies(a, b):
    assert T.rouge_l(" ".join(a), " ".join(b)) == 0.0
    assert T.rouge_l_score([" ".join(a), " ".join(a)], [" ".join(b), " ".join(a)]) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- exact match, accuracy

@SETTINGS
@given(st.lists(st.text(alphabet="abcXYZ", min_size=1, max_size=5), min_size=1, max_size=5),
       st.sampled_from(["", ".", "!", "?", " .", "..."]), st.sampled_from(["", " ", "\t ", "\n"]))
def test_exact_match_normalises(words, punct, space):
    gold = " ".join(words)
    messy = space + "  ".join(w.upper() for w in words) + punct + space
    assert T.exact_match(messy, gold) == 1.0
    assert T.exact_match(messy, gold + " extra") == 0.0
    assert T.normalize_answer(messy) == gold.lower()


def test_exact_match_score_and_accuracy():
    assert T.exact_match("Old Mill", "old  mill.") == 1.0
    assert T.exact_match("Old Mill", "Old Mills") == 0.0
    assert T.exact_match_score(["a", "b", "c", "d"], ["A", "x", "c.", "y"]) == 0.5
    assert T.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    assert T.accuracy(torch.tensor([1, 2]), torch.tensor([1, 2])) == 1.0
    with pytest.raises(ValueError):
        T.accuracy([1], [1, 0])
    with pytest.raises(ValueError):
        T.exact_match_score([], [])


# ---------------------------------------------------------------------------- perplexity

@SETTINGS
@given(st.integers(2, 4000), st.integers(1, 64), st.floats(-5, 5), st.integers(0, 2**31 - 1))
def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(V, N, level, seed):
    logits = torch.full((N, V), level, dtype=torch.float64)        # every token equally likely
    targets = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(seed))
    nll = F.cross_entropy(logits, targets)
    assert T.perplexity(nll) == pytest.approx(V, rel=1e-9)
    assert T.perplexity(float(nll)) == pytest.approx(V, rel=1e-9)


def test_perplexity_edges():
    assert T.perplexity(0.0) == 1.0
    assert T.perplexity(1e6) == math.inf
    with pytest.raises(ValueError):
        T.perplexity(float("nan"))


# ---------------------------------------------------------------------------- collate

SEQ_BATCH = st.lists(st.lists(st.integers(0, 255), min_size=1, max_size=9), min_size=1, max_size=5)


@SETTINGS
@given(SEQ_BATCH, st.sampled_from(["left", "right"]))
def test_collate_pads_and_masks(seqs, side):
    batch = [{"idx": torch.tensor(s), "targets": torch.tensor([t + 1 for t in s])} for s in seqs]
    out = T.collate(batch, pad_id=999, side=side)
    B, L = len(seqs), max(map(len, seqs))
    assert out["idx"].shape == out["targets"].shape == out["attention_mask"].shape == (B, L)
    for i, s in enumerate(seqs):
        n = len(s)
        real = slice(0, n) if side == "right" else slice(L - n, L)
        pad = slice(n, L) if side == "right" else slice(0, L - n)
        assert out["idx"][i, real].tolist() == s
        assert out["targets"][i, real].tolist() == [t + 1 for t in s]
        assert out["attention_mask"][i, real].tolist() == [1] * n
        assert out["attention_mask"][i, pad].tolist() == [0] * (L - n)
        assert out["idx"][i, pad].tolist() == [999] * (L - n)
        assert out["targets"][i, pad].tolist() == [-100] * (L - n)
    assert int(out["attention_mask"].sum()) == sum(map(len, seqs))


def test_collate_errors():
    item = {"idx": torch.tensor([1, 2]), "targets": torch.tensor([2, 3])}
    with pytest.raises(ValueError, match="side"):
        T.collate([item], pad_id=0, side="middle")
    with pytest.raises(ValueError):
        T.collate([], pad_id=0)
    with pytest.raises(ValueError):
        T.collate([{"idx": torch.tensor([1, 2]), "targets": torch.tensor([1])}], pad_id=0)
    out = T.collate([{"idx": [5, 6]}, {"idx": [7]}], pad_id=0, side="left")       # prompts only
    assert "targets" not in out and out["idx"].tolist() == [[5, 6], [0, 7]]


# ---------------------------------------------------------------------------- datasets

PRINTABLE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=40)


@SETTINGS
@given(PRINTABLE, PRINTABLE.filter(bool))
def test_sft_targets_are_masked_exactly_on_the_prompt(prompt, response):
    ds = T.SFTDataset(TOK, [(prompt, response)], block_size=512)
    item = ds[0]
    p = TOK.encode_prompt(prompt)
    x, y = item["idx"].tolist(), item["targets"].tolist()
    assert x == (p + TOK.encode(response) + [TOK.eos_id])[:-1]
    # position t predicts token t+1: loss exactly where token t+1 is a response token or the EOS
    for t in range(len(y)):
        assert (y[t] == -100) == (t + 1 < len(p))
    assert [v for v in y if v != -100] == TOK.encode(response) + [TOK.eos_id]


@SETTINGS
@given(PRINTABLE, PRINTABLE.filter(bool), st.integers(1, 60))
def test_sft_truncates_the_prompt_from_the_left(prompt, response, block_size):
    full, _ = TOK.encode_pair(prompt, response)
    n_resp = len(TOK.encode(response)) + 1
    if n_resp + 2 > block_size + 1:
        with pytest.raises(ValueError, match="response"):
            T.SFTDataset(TOK, [(prompt, response)], block_size=block_size)
        return
    item = T.SFTDataset(TOK, [(prompt, response)], block_size=block_size)[0]
    ids = item["idx"].tolist() + [item["targets"].tolist()[-1]]
    assert len(item["idx"]) <= block_size
    assert ids[0] == TOK.prompt_id and TOK.response_id in ids
    if len(full) <= block_size + 1:
        assert ids == full
    else:                                  # as long as allowed: <|prompt|> + the newest tokens
        assert len(ids) == block_size + 1 and ids == full[:1] + full[len(full) - block_size:]
    assert [v for v in item["targets"].tolist() if v != -100] == TOK.encode(response) + [TOK.eos_id]


@SETTINGS
@given(st.lists(PRINTABLE, min_size=1, max_size=6), st.integers(1, 16))
def test_lm_dataset_windows(texts, block_size):
    stream = [i for t in texts for i in TOK.encode(t) + [TOK.eos_id]]
    n = len(stream) // (block_size + 1)
    if n == 0:
        with pytest.raises(ValueError):
            T.LMDataset(TOK, texts, block_size)
        return
    ds = T.LMDataset(TOK, texts, block_size)
    assert len(ds) == n
    for i in range(n):
        win = stream[i * (block_size + 1):(i + 1) * (block_size + 1)]
        assert ds[i]["idx"].tolist() == win[:-1] and ds[i]["targets"].tolist() == win[1:]
        assert ds[i]["idx"].dtype == torch.long and ds[i]["idx"].shape == (block_size,)


def test_dataset_argument_errors():
    with pytest.raises(ValueError):
        T.LMDataset(TOK, ["abc"], 0)
    with pytest.raises(TypeError):
        T.LMDataset(TOK, "a str, not a list", 4)
    with pytest.raises(TypeError):
        T.SFTDataset(TOK, ["not a pair"], 8)


# ---------------------------------------------------------------------------- prompt formats

@pytest.mark.parametrize("name", W.TASKS)
def test_format_example_and_parse_back(name):
    exs = W.task(name, "val")[:20]
    pairs = [T.format_example(name, ex) for ex in exs]
    for (prompt, response), ex in zip(pairs, exs):
        assert isinstance(prompt, str) and prompt and isinstance(response, str) and response
        if name in ("sentiment", "paraphrase"):
            assert T.parse_response(name, response) == ex["label"]
        if name == "ner":
            assert T.parse_response(name, response, ex) == ex["tags"]
        if name == "instructions":
            assert ex["definition"] in prompt and ex["input"] in prompt
            assert ex["positive"]["reason"] in prompt and ex["negative"]["reason"] in prompt
    ds = T.SFTDataset(TOK, pairs, block_size=2048)
    assert len(ds) == len(exs)
    with pytest.raises(ValueError, match="qa_closed"):
        T.format_example("nope", exs[0])


def test_parse_response_unknown_words():
    assert T.parse_response("sentiment", "maybe") is None
    assert T.parse_response("paraphrase", " Yes.") == 1
    assert T.parse_response("ner", "B-PER X-Y", {"tokens": ["a", "b", "c"]}) == ["B-PER", "O", "O"]
