"""TinyWorld: a small, seeded, synthetic world, and every dataset of the course.

Why a synthetic world? To fine-tune a model you first need a model that *knows* something, and
to measure what fine-tuning does you need tasks whose answers you control. TinyWorld is small
enough that a ~1-3M-parameter GPT pretrained for a few CPU minutes memorises it, and regular
enough that its few hundred distinct words fit a small BPE (the shipped one stops at 1442 tokens:
every word of the corpus is one token or a few, so merges run out before the 2048 asked for).

The world (`get_world(seed)`)
-----------------------------
* 12 towns with invented names ("Ashford", "Old Mill"); each has one feature ("a windmill")
  and lies in one of 4 regions ("the Stone Hills").
* 72 people with invented, syllable-built first names ("Mara", "Tobin"). Every person has
  six facts, the *relations*: home (a town), job, pet (an animal), food (favourite),
  object (owned) and friend. Friendship is a perfect matching, so it is symmetric and
  "Who is X's friend?" always has exactly one answer.
* 48 events: "X visited Y in Y's town", "X gave Y a gift".
People are assigned to a task split (train 52 / val 10 / test 10) **by friend pair**, so a
friend-question in train can never reveal the answer of a test question.

Everything is drawn from `random.Random("tinyworld/<seed>/<purpose>")` (never the global RNG;
string seeds are hashed with SHA-512, so they do not depend on PYTHONHASHSEED), iteration is
over lists and dicts only, never sets: the same seed gives byte-identical data. Nothing is
shipped: the world and all sets are rebuilt in memory (under a second) and cached per seed.

Corpora
-------
* `pretrain_corpus(split)`: ~3M characters (train) / ~150k (val) of profiles, short stories,
  letters, dialogues, town guides, lists and news. Each of a person's facts is stated in many
  phrasings (templates below) and in many documents (>= 10 times each). The val split is *new
  documents about the same facts* (other draws of templates and orders), so val perplexity
  measures learning of the world, not memorised strings.
* `domain2_corpus(split)`: a different register (arithmetic word problems, recipes, notices),
  ~450k / ~50k characters, for continued pretraining and for measuring forgetting.

Tasks (`task(name, split)`, splits train/val/test) and what each measures
-------------------------------------------------------------------------
name            train/val/test   measures; how val/test are held out
qa_closed       1248/120/120     closed-book QA about world facts. Split by person: fine-tuning on
                                 train people teaches the *format*; test people measure knowledge
                                 extraction from pretraining.
qa_extractive   1400/150/150     reading comprehension over paragraphs about *new* invented people
                                 (not in the world), so the answer (an exact substring) must be
                                 read. Each split has its own name pool: contexts are disjoint.
instructions    1450/250/230     Natural-Instructions-style: definition, a positive and a negative
                                 example with reasons, an instance. 18 task types; test holds 3
                                 types never seen in train/val (generalisation to unseen tasks).
sentiment       2000/300/300     reviews with negation and contrast; every sentiment word occurs
                                 with both labels about equally often, so a bag of words cannot
                                 solve it. Test reviews are about foods, towns and objects no
                                 training review mentions.
ner             1500/200/200     BIO tags PER, LOC, ANIMAL, FOOD (multi-word entities give I-
                                 tags). Val and test name only their split's people (never
                                 tagged in train, known from pretraining); towns, pets and foods
                                 are closed sets shared by all splits.
summarization   1500/200/200     a 3-6 sentence document -> the one-line summary it determines.
paraphrase      2000/200/200     same meaning? Balanced. Negatives change one value or swap the
                                 roles, half of them with the very same words (PAWS-style).
preference      1500/200/200     prompt, chosen (true fact / follows the instruction), rejected
                                 (wrong fact / ignores the instruction): for reward models, DPO.
pairs           2000/180/180     two phrasings of one fact, for contrastive learning.
Train and val sets that state facts of world people use only the people of their split (test
sets use test people, except unseen instruction types, which may ask about anyone; instruction
types that state no facts, such as copying a word, may name anyone in every split).

`write_jsonl(out_dir)` writes all of it as JSONL plus a MANIFEST.json of sha256 sums;
`fingerprint(seed)` is one sha256 over the same bytes.

The package, one file per job (each module's docstring says more):
  vocab.py         sizes, splits and the closed word lists (jobs, pets, foods, name syllables)
  templates.py     sentence templates and the helpers that fill them (_say, _a, _cap)
  build.py         Town, Person, Event, TinyWorld and get_world(seed)
  corpus.py        pretrain_corpus and domain2_corpus (documents)
  instructions.py  the 18 instruction task types
  task_sets.py     the other task sets (QA, sentiment, NER, summarization, paraphrase, pairs, preference)
  __init__.py      the public API below: task(), the corpora, fingerprint(), write_jsonl()
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import random
import tempfile

from .build import Event, Person, TinyWorld, Town, _check_seed, _check_split, _world, get_world
from .corpus import _corpus
from .instructions import HELDOUT_INSTRUCTION_TYPES, INSTRUCTION_TYPES
from .task_sets import NER_TEMPLATES, SENTIMENT_FRAMES, _TASK_MAKERS, _table_to_text
from .templates import (CANONICAL, DIALOGUE_LINES, EVENT_TEMPLATES, FACT_TEMPLATES, LETTER_LINES,
                        QUESTION_TEMPLATES, STORY_BEATS, TOWN_TEMPLATES, _a)
from .vocab import (CORPUS_SPLITS, DAYS, DOMAIN2_CHARS, FEATURES, FOODS, GIFTS, HELDOUT_ANIMALS, HELDOUT_FOODS,
                    JOBS, N_PEOPLE, N_REGIONS, N_TOWNS, NER_TAGS, NER_TYPES, OBJECTS, PAIRS_PER_SPLIT, PETS,
                    PRETRAIN_CHARS, PRONOUNS, REGIONS, RELATIONS, SPLITS, SURNAMES, TASKS, WEATHER)

__all__ = [
    # the public API
    "get_world", "pretrain_corpus", "domain2_corpus", "task", "table_records", "fingerprint", "write_jsonl",
    "clear_cache",
    # the world's types
    "TinyWorld", "Town", "Person", "Event",
    # sizes, splits, names of things
    "SPLITS", "CORPUS_SPLITS", "TASKS", "RELATIONS", "NER_TYPES", "NER_TAGS", "N_PEOPLE", "N_TOWNS", "N_REGIONS",
    "PAIRS_PER_SPLIT", "PRETRAIN_CHARS", "DOMAIN2_CHARS",
    # vocabulary tables
    "JOBS", "PETS", "FOODS", "OBJECTS", "GIFTS", "FEATURES", "REGIONS", "HELDOUT_ANIMALS", "HELDOUT_FOODS",
    "DAYS", "WEATHER", "SURNAMES", "PRONOUNS",
    # templates and task definitions
    "FACT_TEMPLATES", "CANONICAL", "QUESTION_TEMPLATES", "TOWN_TEMPLATES", "EVENT_TEMPLATES", "STORY_BEATS",
    "LETTER_LINES", "DIALOGUE_LINES", "INSTRUCTION_TYPES", "HELDOUT_INSTRUCTION_TYPES", "SENTIMENT_FRAMES",
    "NER_TEMPLATES",
]
# `_a` ("a"/"an" + noun) is imported above for minift/pretrain.py, which builds fact prompts with it.


@functools.lru_cache(maxsize=64)
def _task(seed: int, name: str) -> dict:
    rng = random.Random(f"tinyworld/{seed}/task/{name}")
    return _TASK_MAKERS[name](get_world(seed), rng)


def pretrain_corpus(split: str = "train", seed: int = 0) -> list:
    """Pretraining documents (list of str) of the world; split "train" or "val"."""
    _check_split(split, CORPUS_SPLITS)
    return list(_corpus(_check_seed(seed), "pretrain")[split])


def domain2_corpus(split: str = "train", seed: int = 0) -> list:
    """Second-domain documents (word problems, recipes, notices); split "train" or "val"."""
    _check_split(split, CORPUS_SPLITS)
    return list(_corpus(_check_seed(seed), "domain2")[split])


def task(name: str, split: str = "train", seed: int = 0) -> list:
    """The examples (list of dicts, a fresh copy) of task `name` in `split`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid task names are {list(TASKS)}")
    _check_split(split, SPLITS)
    return copy.deepcopy(_task(_check_seed(seed), name)[split])


@functools.lru_cache(maxsize=8)
def _table_records(seed: int) -> dict:
    return _table_to_text(get_world(seed), random.Random(f"tinyworld/{seed}/task/table_to_text"))


def table_records(split: str = "train", seed: int = 0) -> list:
    """Lesson 07's table-to-text records of `split` (a fresh copy): {"fields": [(attribute, value)],
    "text"}, split by person; 1500 / 200 / 200. Outside TASKS (and its files and fingerprint)."""
    _check_split(split, SPLITS)
    return copy.deepcopy(_table_records(_check_seed(seed))[split])


def _jsonl(objs) -> bytes:
    return "".join(json.dumps(o, ensure_ascii=False, sort_keys=True) + "\n" for o in objs).encode("utf-8")


@functools.lru_cache(maxsize=2)
def _files(seed: int) -> dict:
    files = {}
    for which in ("pretrain", "domain2"):
        for split in CORPUS_SPLITS:
            files[f"{which}_{split}.jsonl"] = _jsonl({"text": d} for d in _corpus(seed, which)[split])
    for name in TASKS:
        for split in SPLITS:
            files[f"{name}_{split}.jsonl"] = _jsonl(_task(seed, name)[split])
    return files


def fingerprint(seed: int = 0) -> str:
    """sha256 of the lines "<file name> <sha256 of its bytes>" over every file write_jsonl writes,
    in sorted order: equal fingerprints mean byte-identical data."""
    files = _files(_check_seed(seed))
    listing = "".join(f"{n} {hashlib.sha256(files[n]).hexdigest()}\n" for n in sorted(files))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_jsonl(out_dir: str, seed: int = 0) -> dict:
    """Write every corpus split ({"text": doc} per line) and task split as JSONL, plus MANIFEST.json
    with each file's sha256, bytes and lines. Every file is written atomically. Returns the manifest."""
    files = _files(_check_seed(seed))
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"seed": seed, "fingerprint": fingerprint(seed),
                "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b), "lines": b.count(b"\n")}
                          for n, b in sorted(files.items())}}
    for n, b in files.items():
        _atomic_write(os.path.join(out_dir, n), b)
    _atomic_write(os.path.join(out_dir, "MANIFEST.json"),
                  (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    return manifest


def clear_cache() -> None:
    """Forget every cached world, corpus and task (tests use it to time a cold build)."""
    for f in (_world, _corpus, _task, _table_records, _files):
        f.cache_clear()
