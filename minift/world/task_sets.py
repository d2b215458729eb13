"""TinyWorld's task sets (all but `instructions`, which has its own file): QA, sentiment, NER,
summarization, paraphrase, contrastive pairs and preference pairs.

Each `_<task>(world, rng)` returns {"train": [...], "val": [...], "test": [...]} of plain dicts.
Most go through `_by_split`, which never lets one example (by its key) appear twice, within or
across splits. Each task has its own RNG, `random.Random("tinyworld/<seed>/task/<name>")`
(`__init__._task`), so adding a task changes no other. `_TASK_MAKERS` maps each name of
`TASKS` to its maker.
"""
from __future__ import annotations

from .instructions import _inst_count, _inst_past, _inst_plural, _inst_reverse, _instructions, _wrong
from .templates import (CANONICAL, EVENT_TEMPLATES, FACT_TEMPLATES, FOLLOW_UP_TEMPLATES, PRONOUNS,
                        QUESTION_TEMPLATES, _a, _cap, _fact, _say)
from .vocab import (DAYS, FEATURES, FOODS, GIFTS, HELDOUT_ANIMALS, HELDOUT_FOODS, JOBS, OBJECTS, PETS,
                    RELATIONS, SPLITS, SURNAMES, WEATHER)

# ============================================================================ tasks

def _by_split(make_one, rng, sizes: dict, max_tries: int = 50) -> dict:
    """Draw sizes[split] distinct examples per split with make_one(rng, split, i) -> (key, example),
    i = the index of the example being made; a key is never reused, within or across splits (so
    no example leaks from train into val/test)."""
    seen, out = set(), {}
    for split in SPLITS:
        got, misses = [], 0
        while len(got) < sizes[split] and misses < max_tries * sizes[split]:
            key, ex = make_one(rng, split, len(got))
            if key in seen:
                misses += 1
                continue
            seen.add(key)
            got.append(ex)
        out[split] = got
    return out


def _qa_closed(w, rng):
    out = {}
    for split in SPLITS:
        exs = []
        for p in w.people_in(split):
            for rel in RELATIONS:
                tpls = QUESTION_TEMPLATES[rel] if split == "train" else rng.sample(QUESTION_TEMPLATES[rel], 2)
                exs += [{"question": t.format(n=p.name), "answer": p.fact(rel), "subject": p.name,
                         "relation": rel} for t in tpls]
        rng.shuffle(exs)
        out[split] = exs
    return out


def _qa_extractive(w, rng):
    values = {"home": [t.name for t in w.towns] + list(w.heldout["val"]["LOC"] + w.heldout["test"]["LOC"]),
              "job": JOBS, "pet": PETS + HELDOUT_ANIMALS, "food": FOODS + HELDOUT_FOODS, "object": OBJECTS}
    out = {}
    for split, n_ctx, per_ctx in (("train", 700, 2), ("val", 150, 1), ("test", 150, 1)):
        pool, exs = w.spare_names[f"extractive_{split}"], []
        for _ in range(n_ctx):
            a, b, c = rng.sample(pool, 3)
            people, facts = [], []
            for name in (a, b):
                rels = rng.sample(RELATIONS, rng.randint(3, 4))
                people.append((name, rng.choice(("she", "he")), rels))
            # the two people never share a value, so a question needs the right person
            used = {r: [] for r in RELATIONS}
            for name, pron, rels in people:
                for r in rels:
                    v = c if r == "friend" else rng.choice([x for x in values[r] if x not in used[r]])
                    if r == "friend" and used[r]:
                        v = rng.choice([x for x in pool if x not in (a, b, c)])
                    used[r].append(v)
                    facts.append((name, pron, r, v))
            if rng.random() < 0.3:
                rng.shuffle(facts)
            sents, prev = [], None
            for name, pron, r, v in facts:
                # the answer must be an exact substring: no template that capitalises a value
                tpls = [t for t in FACT_TEMPLATES[r] if not (t.startswith("{v}") and v[:1].islower())]
                sents.append(_say(rng.choice(tpls), name, pron, v,
                                  use_pronoun=(prev == name and rng.random() < 0.5)))
                prev = name if r != "friend" else None   # after "X is a friend of Y", "she" is ambiguous
            ctx = " ".join(sents)
            for name, _, r, v in rng.sample(facts, per_ctx):
                exs.append({"context": ctx, "question": rng.choice(QUESTION_TEMPLATES[r]).format(n=name),
                            "answer": v})
        out[split] = exs
    return out


# ---- sentiment: negation x contrast, balanced words --------------------------------------------

_POS_ADJ = ("good", "great", "lovely", "wonderful", "excellent", "pleasant", "nice", "delightful")
_NEG_ADJ = ("bad", "awful", "terrible", "horrible", "dreadful", "poor", "unpleasant", "dull")
_POS_VERB, _NEG_VERB = ("love", "like", "enjoy"), ("hate", "dislike")
SENTIMENT_FRAMES = ("{S} was {D}.", "I think {S} is {D}.", "{S} looked {A}, but it was {D}.",
                    "Although {S} seemed {A}, it was {D}.", "I {V} {S}.",
                    "At first {S} seemed {A}, but in the end it was {D}.", "{S} was {A}, but I {V} it.",
                    "To be honest, {S} was {D}.")


def _adj_clause(rng, positive: bool) -> str:
    """An adjective phrase with the given meaning; negated half of the time, so each adjective
    is as often in a positive as in a negative phrase."""
    neg = rng.random() < 0.5
    adj = rng.choice(_POS_ADJ if positive != neg else _NEG_ADJ)
    return ("not " if neg else ("very " if rng.random() < 0.25 else "")) + adj


def _verb_clause(rng, positive: bool) -> str:
    neg = rng.random() < 0.5
    verb = rng.choice(_POS_VERB if positive != neg else _NEG_VERB)
    return ("do not " if neg else ("really " if rng.random() < 0.25 else "")) + verb


def _sentiment(w, rng):
    def make(rng, split, i):
        label = rng.random() < 0.5
        frame = rng.choice(SENTIMENT_FRAMES)
        # test reviews are about things no training review mentions (other foods, towns, objects)
        foods, objs = (HELDOUT_FOODS, GIFTS) if split == "test" else (FOODS, OBJECTS)
        towns = list(w.heldout["test"]["LOC"]) if split == "test" else [t.name for t in w.towns]
        feature = rng.choice(FEATURES).split(" ", 1)[1]
        town, obj = rng.choice(towns), rng.choice(objs)
        subject = rng.choice((f"the {rng.choice(foods)}", f"the {rng.choice(foods)} at the inn",
                              f"our visit to {town}", f"the market in {town}", f"the {feature} in {town}",
                              f"the {obj} I bought", f"my new {obj}", f"the {obj} from {rng.choice(towns)}"))
        contrast = (not label) if rng.random() < 0.8 else rng.random() < 0.5
        text = _cap(frame.format(S=subject, D=_adj_clause(rng, label), A=_adj_clause(rng, contrast),
                                 V=_verb_clause(rng, label)))
        if rng.random() < 0.3:
            text = rng.choice((f"We went there on {rng.choice(DAYS)}. ", f"I went with {rng.choice(w.people).name}. ",
                               "Here is my review. ")) + text
        return text, {"text": text, "label": int(label)}
    return _by_split(make, rng, {"train": 2000, "val": 300, "test": 300})


# ---- NER -------------------------------------------------------------------------------------

NER_TEMPLATES = (
    "{PER} lives in {LOC} with a pet {ANIMAL} .", "On {DAY} , {PER} cooked {FOOD} for {PER} .",
    "In {LOC} , {PER} saw {a_ANIMAL} eating {FOOD} .", "The {ANIMAL} that belongs to {PER} likes {FOOD} .",
    "{PER} and {PER} walked from {LOC} to {LOC} .", "Nobody in {LOC} has ever seen {a_ANIMAL} .",
    "{PER} sold {FOOD} at the market in {LOC} .", "Every {DAY} , {PER} buys {FOOD} from {PER} .",
    "{a_ANIMAL} ran across the road near {LOC} .", "{FOOD} is popular in {LOC} .",
    "Did {PER} give the {ANIMAL} some {FOOD} ?", "{PER} wrote a letter to {PER} about the {ANIMAL} .",
    "The people of {LOC} love {FOOD} .", "Yesterday {PER} visited {LOC} and ate {FOOD} .",
    "{PER} has {a_ANIMAL} , a small garden and a lot of {FOOD} .",
    "When the {ANIMAL} got lost , {PER} searched all of {LOC} .",
)


def _ner(w, rng):
    # People are held out: val/test sentences name only their split's people, never tagged in
    # train but known to the pretrained body, so the split measures whether fine-tuning transfers
    # what pretraining knows ("Mara" is a person) to new names. Towns, pets and foods form small
    # closed sets (12 each, one and two words) that every split uses. Holding them out too was
    # tried: with a single two-word town or pet left in train, even full fine-tuning tagged the
    # held-out "Low Oaks" as O + B-LOC (F1 0.70), and names the body never read (HELDOUT_ANIMALS)
    # scored F1 0.06.
    closed = {"LOC": [t.name for t in w.towns], "ANIMAL": list(PETS), "FOOD": list(FOODS)}
    ents = {s: {"PER": [p.name for p in w.people_in(s)], **closed} for s in SPLITS}

    def make(rng, split, i):
        tokens, tags = [], []
        for slot in rng.choice(NER_TEMPLATES).split():
            if not (slot.startswith("{") and slot.endswith("}")) or len(slot) == 1:
                tokens.append(slot)
                tags.append("O")
                continue
            kind = slot[1:-1]
            if kind == "DAY":
                tokens.append(rng.choice(DAYS))
                tags.append("O")
                continue
            article = kind.startswith("a_")          # {a_ANIMAL}: "a"/"an" (tag O), then the animal
            kind = kind[2:] if article else kind
            ent = rng.choice(ents[split][kind])
            if kind == "PER" and rng.random() < 0.25:
                ent += " " + rng.choice(SURNAMES)
            if article:
                tokens.append(_a(ent).split()[0])
                tags.append("O")
            words = ent.split()
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        tokens[0] = _cap(tokens[0])
        return " ".join(tokens), {"tokens": tokens, "tags": tags}
    return _by_split(make, rng, {"train": 1500, "val": 200, "test": 200})


# ---- summarization -----------------------------------------------------------------------------

_SUM_EVENTS = {
    "gift": ("On {day}, {A} gave {B} {ai}.", "{B} received {ai} from {A} on {day}.",
             "That {day}, {A} brought {ai} as a present for {B}."),
    "visit": ("On {day}, {A} visited {B} in {t}.", "{A} travelled to {t} on {day} to see {B}.",
              "That {day}, {A} went to {t} to visit {B}."),
}
_SUM_FILLER = ("{B} was very pleased.", "The weather was {weather} that day.", "{A}'s {pet} came along.",
               "Later they ate {food} together.", "{B} said thank you twice.", "They talked until the evening.",
               "Nobody else knew about it.")


def _summarization(w, rng):
    def make(rng, split, i):
        ppl = w.people_in(split)
        A, B = rng.sample(ppl, 2)
        kind = rng.choice(("gift", "visit"))
        sl = dict(A=A.name, B=B.name, t=B.home, ai=_a(rng.choice(GIFTS)), day=rng.choice(DAYS),
                  weather=rng.choice(WEATHER), pet=A.pet, food=rng.choice(FOODS))
        core = [_fact(rng, A, "job"), _fact(rng, A, "home"), rng.choice(_SUM_EVENTS[kind]).format(**sl)]
        filler = [f.format(**sl) for f in rng.sample(_SUM_FILLER, rng.randint(0, 3))]
        sents = core[:2]
        rng.shuffle(sents)
        rest = [core[2]] + filler
        rng.shuffle(rest)
        doc = " ".join(sents + rest)
        tail = f"gave {B.name} {sl['ai']}" if kind == "gift" else f"visited {B.name} in {B.home}"
        return doc, {"document": doc, "summary": f"{A.name}, {_a(A.job)} from {A.home}, {tail}."}
    return _by_split(make, rng, {"train": 1500, "val": 200, "test": 200})


# ---- paraphrase, pairs, preference --------------------------------------------------------------

def _two_phrasings(rng, p, rel, value=None):
    t1, t2 = rng.sample(FACT_TEMPLATES[rel], 2)
    v = p.fact(rel) if value is None else value
    return _say(t1, p.name, p.pronoun, v), _say(t2, p.name, p.pronoun, v)


def _paraphrase(w, rng):
    """Positives: one fact in two different templates. Negatives (PAWS-style): half of them keep
    the very same words and change one value or swap the roles, so word overlap cannot tell."""
    def make(rng, split, i):
        label = i % 2                                          # alternate labels: exactly balanced
        ppl = w.people_in(split)
        same_words = rng.random() < 0.5                        # negatives only: reuse s1's template
        if rng.random() < 0.3:                                 # an event
            kind = rng.choice(("gift", "visit"))
            A, B = rng.sample(ppl, 2)
            t1, t2 = rng.sample(EVENT_TEMPLATES[kind], 2)
            sl = dict(A=A.name, B=B.name, t=B.home, ai=_a(rng.choice(GIFTS)))
            s1 = _cap(t1.format(**sl))
            if not label:                                      # swap the roles, or change the thing
                t2 = t1 if same_words else t2
                sl = dict(sl, A=B.name, B=A.name) if rng.random() < 0.6 else dict(
                    sl, ai=_a(rng.choice([g for g in GIFTS if _a(g) != sl["ai"]])),
                    t=rng.choice([t.name for t in w.towns if t.name != sl["t"]]))
            s2 = _cap(t2.format(**sl))
        else:                                                  # a person's fact
            p, rel = rng.choice(ppl), rng.choice(RELATIONS)
            t1, t2 = rng.sample(FACT_TEMPLATES[rel], 2)
            s1 = _say(t1, p.name, p.pronoun, p.fact(rel))
            t2 = t1 if (same_words and not label) else t2
            if label:
                s2 = _say(t2, p.name, p.pronoun, p.fact(rel))
            elif rng.random() < 0.75:                          # one value changed
                s2 = _say(t2, p.name, p.pronoun, _wrong(rng, w, p, rel))
            else:                                              # the same value, another person
                q = rng.choice([x for x in ppl if x.name not in (p.name, p.friend)])
                s2 = _say(t2, q.name, q.pronoun, p.fact(rel))
        return (s1, s2), {"sentence1": s1, "sentence2": s2, "label": label}
    return _by_split(make, rng, {"train": 2000, "val": 200, "test": 200})


def _pairs(w, rng):
    def make(rng, split, i):
        p, rel = rng.choice(w.people_in(split)), rng.choice(RELATIONS)
        a, b = _two_phrasings(rng, p, rel)
        return tuple(sorted((a, b))), {"anchor": a, "positive": b}
    return _by_split(make, rng, {"train": 2000, "val": 180, "test": 180})


_PREF_TEXT = (("Write the words of this sentence in reverse order: ", _inst_reverse),
              ("Rewrite this sentence in the past tense: ", _inst_past),
              ("How many words does this sentence have? ", _inst_count),
              ("Rewrite this sentence about many animals instead of one: ", _inst_plural))


def _preference(w, rng):
    def make(rng, split, i):
        ppl = w.people_in(split)
        p, rel = rng.choice(ppl), rng.choice(RELATIONS)
        q = rng.choice(QUESTION_TEMPLATES[rel]).format(n=p.name)
        true = _say(CANONICAL[rel], p.name, p.pronoun, p.fact(rel))
        kind = rng.random()
        if kind < 0.5:                                         # a true fact beats a wrong one
            prompt, chosen = q, true
            rejected = _say(CANONICAL[rel], p.name, p.pronoun, _wrong(rng, w, p, rel))
        elif kind < 0.75:                                      # follow the format instruction
            if rng.random() < 0.5:
                prompt, chosen, rejected = f"Answer with one word or name only. {q}", p.fact(rel), true
            else:
                prompt, chosen, rejected = f"Answer with a full sentence. {q}", true, p.fact(rel)
        else:                                                  # do the task, not copy the input
            head, gen = rng.choice(_PREF_TEXT)
            i, o, (bad, _) = gen(rng, w, ppl)
            prompt, chosen, rejected = head + i, o, bad
        return (prompt, chosen), {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return _by_split(make, rng, {"train": 1500, "val": 200, "test": 200})


def _dialogue(w, rng):
    """A short chat about one person: 2 or 3 user questions on different relations, each answered by
    the assistant with the canonical fact sentence. Only the first question names the person; the
    later ones say he or she ("And where does she live?"), so answering them needs the earlier
    turns. Split by person, like qa_closed. "answer": the fact the last turn asks for."""
    def make(rng, split, i):
        p = rng.choice(w.people_in(split))
        rels = rng.sample(RELATIONS, rng.choice((2, 3)))
        s, _, g = PRONOUNS[p.pronoun]
        turns = []
        for t, rel in enumerate(rels):
            q = (rng.choice(QUESTION_TEMPLATES[rel]).format(n=p.name) if t == 0
                 else rng.choice(FOLLOW_UP_TEMPLATES[rel]).format(s=s, g=g))
            turns.append({"user": q, "assistant": _say(CANONICAL[rel], p.name, p.pronoun, p.fact(rel))})
        key = (p.name, tuple(rels))
        return key, {"turns": turns, "subject": p.name, "relations": list(rels), "answer": p.fact(rels[-1])}
    return _by_split(make, rng, {"train": 1200, "val": 150, "test": 150})


def _table_to_text(w, rng):
    """Records of one person ("name" and 2 to 5 of the six relations, in a random order) and the text
    stating them, one canonical sentence per field in the order of RELATIONS (lesson 07's E2E-style
    task). Not in `TASKS`: reached through `world.table_records`, so the fingerprint of the task files
    stays what it was. A (person, set of fields) occurs once over all splits."""
    def make(rng, split, i):
        p = rng.choice(w.people_in(split))
        rels = rng.sample(RELATIONS, rng.randint(2, 5))                  # the record's fields, in its order
        fields = [("name", p.name)] + [(r, p.fact(r)) for r in rels]
        text = " ".join(_say(CANONICAL[r], p.name, p.pronoun, p.fact(r)) for r in RELATIONS if r in rels)
        return (p.name, tuple(sorted(rels))), {"fields": fields, "text": text}
    return _by_split(make, rng, {"train": 1500, "val": 200, "test": 200})


_TASK_MAKERS = {"qa_closed": _qa_closed, "qa_extractive": _qa_extractive, "instructions": _instructions,
                "sentiment": _sentiment, "ner": _ner, "summarization": _summarization,
                "paraphrase": _paraphrase, "preference": _preference, "pairs": _pairs, "dialogue": _dialogue}
