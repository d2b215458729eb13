"""TinyWorld: determinism, held-out splits, well-formed task sets, corpus sizes and speed."""
import collections
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys

import pytest

from minift import world as W

pytestmark = pytest.mark.lesson01

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def w():
    return W.get_world(0)


def _names_in(text, names):
    return {t for t in re.findall(r"[A-Z][a-z]+", text) if t in names}


# ---------------------------------------------------------------------------- determinism

def test_fingerprint_is_a_function_of_the_seed():
    a = W.fingerprint(0)
    W.clear_cache()                      # rebuild from scratch, not from the cache
    assert W.fingerprint(0) == a
    assert W.fingerprint(1) != a
    assert re.fullmatch(r"[0-9a-f]{64}", a)


def test_fingerprint_does_not_depend_on_hash_seed_or_global_rng():
    """Set iteration order changes with PYTHONHASHSEED; the data must not."""
    code = "import random; random.seed(123); from minift.world import fingerprint; print(fingerprint(0))"
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == W.fingerprint(0)


def test_generation_leaves_the_global_rng_alone():
    random.seed(7)
    state = random.getstate()
    W.clear_cache()
    W.task("sentiment", "train", seed=3)
    W.pretrain_corpus("val", seed=3)
    assert random.getstate() == state


def test_write_jsonl_is_byte_identical_and_matches_manifest(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    m1 = W.write_jsonl(str(d1), seed=0)
    m2 = W.write_jsonl(str(d2), seed=0)
    assert m1 == m2
    names = sorted(os.listdir(d1))
    assert names == sorted(os.listdir(d2))
    assert "MANIFEST.json" in names and not any(n.startswith(".tmp") for n in names)
    for n in names:
        assert (d1 / n).read_bytes() == (d2 / n).read_bytes(), n
    assert json.loads((d1 / "MANIFEST.json").read_text()) == m1
    for split in W.SPLITS:
        assert f"ner_{split}.jsonl" in m1["files"]
    for split in W.CORPUS_SPLITS:
        assert f"pretrain_{split}.jsonl" in m1["files"] and f"domain2_{split}.jsonl" in m1["files"]
    listing = ""
    for n, meta in sorted(m1["files"].items()):
        data = (d1 / n).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert data.count(b"\n") == meta["lines"] > 0
        listing += f"{n} {meta['sha256']}\n"
        first = json.loads(data.split(b"\n", 1)[0])
        assert isinstance(first, dict)
    assert hashlib.sha256(listing.encode()).hexdigest() == W.fingerprint(0) == m1["fingerprint"]
    # the files hold the same data the API returns
    lines = (d1 / "qa_closed_test.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == W.task("qa_closed", "test")


# ---------------------------------------------------------------------------- validation

def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="qa_closed"):
        W.task("nope", "train")
    with pytest.raises(ValueError, match="train"):
        W.task("qa_closed", "dev")
    with pytest.raises(ValueError, match="val"):
        W.pretrain_corpus("test")
    with pytest.raises(ValueError):
        W.domain2_corpus("validation")
    with pytest.raises(TypeError):
        W.task("qa_closed", "train", seed="0")


def test_task_returns_a_copy():
    a = W.task("qa_closed", "train")
    a[0]["answer"] = "CHANGED"
    a.clear()
    assert W.task("qa_closed", "train")[0]["answer"] != "CHANGED"


# ---------------------------------------------------------------------------- the world

def test_world_shape(w):
    assert 60 <= len(w.people) <= 80 and len(w.towns) == 12
    names = [p.name for p in w.people]
    assert len(set(names)) == len(names)
    assert len({t.name for t in w.towns}) == 12 and any(" " in t.name for t in w.towns)
    for p in w.people:
        f = w.person(p.friend)
        assert f.friend == p.name and f.name != p.name and f.split == p.split
        assert p.home in {t.name for t in w.towns}
    assert {e.kind for e in w.events} == {"visit", "gift"}
    for s in W.SPLITS:
        assert w.people_in(s)


# ---------------------------------------------------------------------------- corpora

def test_corpus_sizes():
    chars = {(k, s): sum(map(len, f(s))) for k, f in (("pre", W.pretrain_corpus), ("d2", W.domain2_corpus))
             for s in W.CORPUS_SPLITS}
    assert 2_000_000 <= chars["pre", "train"] <= 4_000_000
    assert 100_000 <= chars["pre", "val"] <= 200_000
    assert 300_000 <= chars["d2", "train"] <= 600_000
    assert 40_000 <= chars["d2", "val"] <= 70_000


def test_val_documents_are_new():
    for f in (W.pretrain_corpus, W.domain2_corpus):
        assert not set(f("val")) & set(f("train"))


def test_every_fact_is_stated_many_times_in_many_documents(w):
    docs = W.pretrain_corpus("train")
    names = {p.name for p in w.people}
    by_name = collections.defaultdict(list)
    for d in docs:
        for n in _names_in(d, names):
            by_name[n].append(d)
    for p in w.people:
        for rel in W.RELATIONS:
            v = p.fact(rel)
            n_docs = sum(bool(re.search(rf"\b{re.escape(v)}\b", d)) for d in by_name[p.name])
            assert n_docs >= 10, (p.name, rel, v, n_docs)


def test_corpus_never_contradicts_the_world(w):
    """Plain statements of a fact in the corpus always name the true value."""
    people = {p.name: p for p in w.people}
    towns = "|".join(re.escape(t.name) for t in w.towns)
    checks = (("home", rf"\b([A-Z][a-z]+) lives in ({towns})\b"),
              ("job", r"\b([A-Z][a-z]+) works as an? ([a-z]+)\b"),
              ("pet", r"\b([A-Z][a-z]+) has a pet ([a-z]+(?: pig)?)\b"))
    seen = collections.Counter()
    for d in W.pretrain_corpus("train"):
        for rel, pat in checks:
            for name, value in re.findall(pat, d):
                if name in people:
                    assert people[name].fact(rel) == value, (name, rel, value, d)
                    seen[rel] += 1
    assert all(seen[r] > 50 for r, _ in checks)


def test_domain2_is_a_different_register():
    docs = W.domain2_corpus("train")
    heads = collections.Counter(d.split(":", 1)[0] for d in docs)
    assert {"Problem", "Recipe"} <= set(heads)
    for d in docs:
        if d.startswith("Problem"):              # the arithmetic is right
            a, op, b, res = re.search(r"Answer: (\d+) ([-+x/]) (\d+) = (\d+)", d).groups()
            a, b, res = int(a), int(b), int(res)
            assert {"+": a + b, "-": a - b, "x": a * b, "/": a // b}[op] == res
            if op == "/":
                assert a % b == 0


# ---------------------------------------------------------------------------- tasks: common

SIZES = {"train": (300, 2000), "val": (100, 300), "test": (100, 300)}
KEYS = {"qa_closed": {"question", "answer", "subject", "relation"},
        "qa_extractive": {"context", "question", "answer"},
        "instructions": {"task", "definition", "positive", "negative", "input", "output"},
        "sentiment": {"text", "label"}, "ner": {"tokens", "tags"},
        "summarization": {"document", "summary"}, "paraphrase": {"sentence1", "sentence2", "label"},
        "preference": {"prompt", "chosen", "rejected"}, "pairs": {"anchor", "positive"},
        "dialogue": {"turns", "subject", "relations", "answer"}}


@pytest.mark.parametrize("name", W.TASKS)
def test_task_sizes_and_keys(name):
    assert set(KEYS) == set(W.TASKS)
    for split in W.SPLITS:
        exs = W.task(name, split)
        lo, hi = SIZES[split]
        assert lo <= len(exs) <= hi, (name, split, len(exs))
        for ex in exs:
            assert set(ex) == KEYS[name]
            for k, v in ex.items():
                assert v not in ("", [], None), (name, k)
        json.dumps(exs, ensure_ascii=False)
        # no example appears in two splits
        if split != "train":
            ser = {json.dumps(e, sort_keys=True) for e in W.task(name, "train")}
            assert not any(json.dumps(e, sort_keys=True) in ser for e in exs)


# ---------------------------------------------------------------------------- tasks: each

def test_qa_closed_split_by_person(w):
    subj = {s: {e["subject"] for e in W.task("qa_closed", s)} for s in W.SPLITS}
    assert not subj["train"] & subj["test"] and not subj["train"] & subj["val"] and not subj["val"] & subj["test"]
    for s in W.SPLITS:
        for e in W.task("qa_closed", s):
            assert w.person(e["subject"]).fact(e["relation"]) == e["answer"]
            assert e["subject"] in e["question"]
            if e["relation"] == "friend":        # a friend answer never reveals another split's person
                assert e["answer"] in subj[s]
    assert {e["relation"] for e in W.task("qa_closed", "test")} == set(W.RELATIONS)


def test_dialogue_names_the_person_once_and_answers_every_turn_with_the_fact(w):
    subj = {s: {e["subject"] for e in W.task("dialogue", s)} for s in W.SPLITS}
    assert not subj["train"] & subj["test"] and not subj["train"] & subj["val"] and not subj["val"] & subj["test"]
    for s in W.SPLITS:
        for e in W.task("dialogue", s):
            p, turns = w.person(e["subject"]), e["turns"]
            assert 2 <= len(turns) <= 3 and len(set(e["relations"])) == len(turns)
            assert e["subject"] in turns[0]["user"]
            for t, rel in zip(turns, e["relations"]):
                assert p.fact(rel) in t["assistant"] and e["subject"] in t["assistant"]
            for t in turns[1:]:                  # later questions need the first turn to know who
                assert e["subject"] not in t["user"]
                assert re.search(r"\b(she|he|her|his)\b", t["user"]), t["user"]
                assert re.search(rf"\b{'she|her' if p.pronoun == 'she' else 'he|his'}\b", t["user"])
            assert e["answer"] == p.fact(e["relations"][-1])


def test_qa_extractive(w):
    world_names = {p.name for p in w.people}
    ctx = {}
    for s in W.SPLITS:
        exs = W.task("qa_extractive", s)
        ctx[s] = {e["context"] for e in exs}
        for e in exs:
            assert e["answer"] in e["context"]
            assert not _names_in(e["context"], world_names)       # new people only
    assert not ctx["train"] & ctx["test"] and not ctx["train"] & ctx["val"] and not ctx["val"] & ctx["test"]
    # the people asked about in test never occur in a train context
    subjects = {s: {n for e in W.task("qa_extractive", s) for n in re.findall(r"(?<!^)\b[A-Z][a-z]+", e["question"])}
                for s in W.SPLITS}
    train_words = set(re.findall(r"[A-Za-z]+", " ".join(ctx["train"])))
    assert subjects["test"] and not subjects["test"] & train_words
    assert not subjects["val"] & train_words


def test_instructions_hold_out_task_types():
    types = {s: collections.Counter(e["task"] for e in W.task("instructions", s)) for s in W.SPLITS}
    assert len(set(types["train"]) | set(types["test"])) >= 8
    assert len(types["test"]) >= 2 and not set(types["test"]) & set(types["train"])
    assert set(types["val"]) <= set(types["train"])
    for s in W.SPLITS:
        for e in W.task("instructions", s):
            assert set(e["positive"]) == set(e["negative"]) == {"input", "output", "reason"}
            assert e["negative"]["output"] != e["positive"]["output"] or e["negative"]["input"] != e["positive"]["input"]
            assert e["input"] not in (e["positive"]["input"], e["negative"]["input"])
            if e["task"] == "reverse_words":
                assert e["output"].split() == e["input"].split()[::-1]
            if e["task"] == "count_words":
                assert e["output"] == str(len(e["input"].split()))
            if e["task"] == "last_word":
                assert e["output"] == e["input"].split()[-1]
            if e["task"] == "negate_fact":
                assert " does not " in e["output"]


def _words(text):
    return re.findall(r"[a-z]+", text.lower())


@pytest.mark.parametrize("held_out", ["val", "test"])
def test_sentiment_is_not_bag_of_words(held_out):
    train, test = W.task("sentiment", "train"), W.task("sentiment", held_out)
    for s in W.SPLITS:
        labels = [e["label"] for e in W.task("sentiment", s)]
        assert set(labels) == {0, 1} and 0.4 <= sum(labels) / len(labels) <= 0.6
    # fit per-word label counts on train
    counts = collections.defaultdict(lambda: [0, 0])
    for e in train:
        for x in set(_words(e["text"])):
            counts[x][e["label"]] += 1
    lean = {x: (c[1] > c[0]) - (c[1] < c[0]) for x, c in counts.items()}

    def vote(e):                              # every word votes for the label it co-occurs with more
        return int(sum(lean.get(x, 0) for x in _words(e["text"])) > 0)

    def log_odds(e):                          # naive Bayes-like: sum of smoothed log odds
        return int(sum(math.log((counts[x][1] + 1) / (counts[x][0] + 1)) for x in _words(e["text"]) if x in counts) > 0)

    for clf in (vote, log_odds):
        acc = sum(clf(e) == e["label"] for e in test) / len(test)
        assert acc < 0.75, (clf.__name__, acc)
    # no single word predicts the label: best "word present -> label" rule
    vocab = [x for x, c in counts.items() if sum(c) >= 10]
    best = 0.0
    for x in vocab:
        hit = [x in set(_words(e["text"])) for e in test]
        acc1 = sum(h == bool(e["label"]) for h, e in zip(hit, test)) / len(test)
        best = max(best, acc1, 1 - acc1)
    assert best < 0.75
    # each sentiment word really occurs with both labels, and each polarity group about equally
    groups = {"positive words": "good great lovely wonderful excellent pleasant nice delightful love like enjoy",
              "negative words": "bad awful terrible horrible dreadful poor unpleasant dull hate dislike",
              "negation": "not", "contrast": "but"}
    for group, words in groups.items():
        pooled = [0, 0]
        for x in words.split():
            c = counts[x]
            assert min(c) / sum(c) > 0.3, (x, c)
            pooled = [pooled[0] + c[0], pooled[1] + c[1]]
        assert 0.42 < pooled[1] / sum(pooled) < 0.58, (group, pooled)


def _spans(ex):
    out, cur = [], None
    for tok, tag in zip(ex["tokens"], ex["tags"]):
        if tag.startswith("B-"):
            cur = [tag[2:], tok]
            out.append(cur)
        elif tag.startswith("I-"):
            cur[1] += " " + tok
        else:
            cur = None
    return {(t, s) for t, s in out}


def test_ner_well_formed_and_held_out():
    allowed = set(W.NER_TAGS)
    ents = {}
    for s in W.SPLITS:
        exs = W.task("ner", s)
        ents[s] = set()
        tag_count = collections.Counter()
        for e in exs:
            assert len(e["tokens"]) == len(e["tags"]) > 0
            assert set(e["tags"]) <= allowed
            for prev, tag in zip(["O"] + e["tags"], e["tags"]):       # BIO: I-X only after B-X / I-X
                if tag.startswith("I-"):
                    assert prev in (f"B-{tag[2:]}", tag)
            for tok in e["tokens"]:
                assert tok and not any(c.isspace() for c in tok)
                assert re.fullmatch(r"[A-Za-z]+|[^\sA-Za-z0-9]", tok), tok      # punctuation split off
            tag_count.update(e["tags"])
            ents[s] |= _spans(e)
        assert all(tag_count[f"B-{t}"] > 0 for t in W.NER_TYPES) and any(tag_count[f"I-{t}"] for t in W.NER_TYPES)
    train_people = {x.split()[0] for t, x in ents["train"] if t == "PER"}      # first names, surnames aside
    for s in ("val", "test"):
        people = {x.split()[0] for t, x in ents[s] if t == "PER"}
        assert people and not people & train_people
        assert people <= {p.name for p in W.get_world().people_in(s)}


def test_summarization_is_determined_by_the_document():
    for s in W.SPLITS:
        for e in W.task("summarization", s):
            n_sent = len(re.findall(r"[.!?](?:\s|$)", e["document"]))
            assert 3 <= n_sent <= 6, e["document"]
            assert "\n" not in e["summary"] and e["summary"].endswith(".")
            doc_words = set(re.findall(r"[A-Za-z]+", e["document"]))
            missing = set(re.findall(r"[A-Za-z]+", e["summary"])) - doc_words - {"a", "an", "from", "gave", "visited", "in"}
            assert not missing, (missing, e)


def test_paraphrase_balanced_and_hard(w):
    for s in W.SPLITS:
        exs = W.task("paraphrase", s)
        labels = [e["label"] for e in exs]
        assert set(labels) == {0, 1} and 0.4 <= sum(labels) / len(labels) <= 0.6
        for e in exs:
            assert e["sentence1"] != e["sentence2"]
        # hard negatives: word overlap does not separate the classes (negatives overlap more)
        def jaccard(e):
            a, b = set(_words(e["sentence1"])), set(_words(e["sentence2"]))
            return len(a & b) / len(a | b)
        mean = {y: sum(jaccard(e) for e in exs if e["label"] == y) / labels.count(y) for y in (0, 1)}
        assert mean[0] > mean[1]
        same_bag = [e for e in exs if e["label"] == 0 and sorted(_words(e["sentence1"])) == sorted(_words(e["sentence2"]))]
        assert same_bag                          # roles swapped: the very same words, another meaning


def test_preference_and_pairs(w):
    names = {p.name for p in w.people}
    for s in W.SPLITS:
        for e in W.task("preference", s):
            assert e["chosen"] != e["rejected"] and e["prompt"].strip()
        for e in W.task("pairs", s):
            assert e["anchor"] != e["positive"]
            assert _names_in(e["anchor"], names) == _names_in(e["positive"], names)
    people = {s: set().union(*(_names_in(e["anchor"], names) for e in W.task("pairs", s))) for s in W.SPLITS}
    assert not people["train"] & people["test"]
    pref_people = {s: set().union(*(_names_in(e["prompt"] + e["chosen"], names) for e in W.task("preference", s)))
                   for s in W.SPLITS}
    assert not pref_people["train"] & pref_people["test"]


def test_preference_chosen_is_the_true_fact(w):
    """For prompts that are plain world questions, chosen states the world's answer, rejected doesn't."""
    qa = {e["question"]: e["answer"] for s in W.SPLITS for e in W.task("qa_closed", s)}
    n = 0
    for s in W.SPLITS:
        for e in W.task("preference", s):
            if e["prompt"] in qa:
                assert qa[e["prompt"]] in e["chosen"] and qa[e["prompt"]] not in e["rejected"].split(" ", 1)[1]
                n += 1
    assert n > 100
