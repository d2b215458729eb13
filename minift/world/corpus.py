"""TinyWorld's two corpora: the pretraining corpus of the world, and a second domain.

`pretrain_corpus` (~3M characters train / ~150k val) cycles through the people so that coverage
is even, and for each draws a kind of document by weight (`_DOC_KINDS`: profiles, stories,
letters, dialogues, friends, town guides, listings, news). The val split is new documents about
the same facts (a document equal to one in train is skipped), so val perplexity measures
learning of the world, not memorised strings.

`domain2_corpus` (~450k / ~50k) is a different register (arithmetic word problems, recipes,
notices) about the same people and towns, for continued pretraining and for forgetting.

Each split has its own RNG, `random.Random("tinyworld/<seed>/pretrain/<split>")`: the shipped base
checkpoint was pretrained on seed 0's corpus, so any change here is a bug.
"""
from __future__ import annotations

import functools
import random

from .build import TinyWorld, get_world
from .templates import (DIALOGUE_LINES, FACT_TEMPLATES, LETTER_LINES, STORY_BEATS, _cap, _event_sentence, _fact,
                        _say, _slots, _town_sentence)
from .vocab import DAYS, DOMAIN2_CHARS, FOODS, JOBS, PRETRAIN_CHARS, PRONOUNS, RELATIONS, WEATHER

# ============================================================================ pretraining corpus

def _doc_profile(rng, w, p):
    intro = rng.choice(("", "Meet {n}. ", "This is {n}. ", "Let me tell you about {n}. ",
                        "Here is what we know about {n}. ", "About {n}.\n")).format(n=p.name)
    rels = list(RELATIONS)
    rng.shuffle(rels)
    out = [_fact(rng, p, r, use_pronoun=(i > 0 and rng.random() < 0.6)) for i, r in enumerate(rels)]
    if rng.random() < 0.4:
        out.append(_town_sentence(rng, w.town(p.home), rng.choice(("region", "feature"))))
    return intro + " ".join(out)


def _doc_story(rng, w, p):
    sl = _slots(p, w)
    mids = ["pet", "food", "job", "object", "friend"]
    rng.shuffle(mids)
    out = [rng.choice(STORY_BEATS["open"]).format(day=rng.choice(DAYS), weather=rng.choice(WEATHER), **sl)]
    for beat in mids + ["close"]:
        out.append(_say(rng.choice(STORY_BEATS[beat]), p.name, p.pronoun, "", rng.random() < 0.6,
                        **{k: v for k, v in sl.items() if k not in ("s", "o", "g")}))
    if rng.random() < 0.3:
        out.insert(1, _town_sentence(rng, w.town(p.home), "feature"))
    return " ".join(out)


def _doc_letter(rng, w, p):
    sl = _slots(p, w)
    keys = list(LETTER_LINES)
    rng.shuffle(keys)
    body = " ".join(rng.choice(LETTER_LINES[k]).format(**sl) for k in keys)
    close = rng.choice((" Come and visit soon.", " Write back soon.", ""))
    end = rng.choice(("Your friend", "With love", "Best wishes", "See you soon"))
    return f"Dear {p.friend},\n{body}{close}\n{end}, {p.name}"


def _doc_dialogue(rng, w, p):
    sl = _slots(p, w)
    keys = rng.sample(list(DIALOGUE_LINES), rng.randint(3, 6))
    asker = p.friend if rng.random() < 0.5 else rng.choice(w.people).name
    if asker == p.name:
        asker = p.friend
    return "\n".join(rng.choice(DIALOGUE_LINES[k]).format(q=asker, **sl) for k in keys)


def _doc_friends(rng, w, p):
    q = w.person(p.friend)
    out = [_say(rng.choice(FACT_TEMPLATES["friend"]), p.name, p.pronoun, q.name)]
    facts = [(x, r) for x in (p, q) for r in rng.sample(RELATIONS[:5], rng.randint(2, 4))]
    rng.shuffle(facts)
    return " ".join(out + [_fact(rng, x, r) for x, r in facts])


def _doc_town(rng, w, t):
    out = [_town_sentence(rng, t, "region"), _town_sentence(rng, t, "feature")]
    residents = [p for p in w.people if p.home == t.name]
    chosen = rng.sample(residents, rng.randint(3, len(residents)))
    listed = ", ".join(p.name for p in chosen[:-1]) + f" and {chosen[-1].name}"
    out.append(f"Among the people who live in {t.name} are {listed}.")
    for p in chosen:
        out.append(_fact(rng, p, rng.choice(RELATIONS[1:])))
    return " ".join(out)


def _doc_listing(rng, w, _p):
    rel = rng.choice(RELATIONS)
    head = {"home": "Where people live", "job": "Jobs in the towns", "pet": "Pets and their owners",
            "food": "Favourite foods", "object": "Who owns what", "friend": "Good friends"}[rel]
    people = rng.sample(w.people, rng.randint(5, 10))
    return head + ".\n" + "\n".join(_fact(rng, p, rel) for p in people)


def _doc_news(rng, w, _p):
    e = rng.choice(w.events)
    a, b = w.person(e.a), w.person(e.b)
    town = e.town or a.home
    out = [rng.choice(("News from {t}.", "A story from {t}.", "Heard in {t}:")).format(t=town), _event_sentence(rng, e)]
    out += [_fact(rng, x, rng.choice(RELATIONS[:5])) for x in (a, b, rng.choice((a, b)))]
    return " ".join(out)


_DOC_KINDS = ((_doc_profile, 30), (_doc_story, 15), (_doc_letter, 10), (_doc_dialogue, 10),
              (_doc_friends, 10), (_doc_town, 8), (_doc_listing, 7), (_doc_news, 10))


def _pretrain_split(w: TinyWorld, split: str, exclude=frozenset()) -> tuple:
    rng = random.Random(f"tinyworld/{w.seed}/pretrain/{split}")
    makers, weights = zip(*_DOC_KINDS)
    docs, total, queue = [], 0, []
    while total < PRETRAIN_CHARS[split]:
        if not queue:                       # cycle through people so coverage is even
            queue = list(w.people)
            rng.shuffle(queue)
        p = queue.pop()
        maker = rng.choices(makers, weights)[0]
        doc = maker(rng, w, w.town(p.home)) if maker is _doc_town else maker(rng, w, p)
        if doc in exclude:
            continue
        docs.append(doc)
        total += len(doc)
    return tuple(docs)


# ============================================================================ second domain

_ITEMS = ("apples", "eggs", "carrots", "coins", "books", "nails", "jars of jam", "candles", "plums", "buttons")
_INGREDIENTS = ("cups of flour", "eggs", "spoons of honey", "cups of milk", "pinches of salt",
                "spoons of butter", "cups of water", "handfuls of plums", "spoons of sugar", "onions")
_STEPS = ("Mix the {x} and the {y} in a big bowl.", "Stir slowly for {n} minutes.",
          "Heat the pot over a low fire.", "Add the {x} a little at a time.",
          "Bake in a hot oven for {m} minutes.", "Let it cool for {n} minutes.",
          "Cut it into {n} pieces.", "Pour everything into a clean dish.", "Taste it and add the {y} if needed.")


def _problem(rng, w):
    p = rng.choice(w.people)
    s = PRONOUNS[p.pronoun][0]
    item, a, b = rng.choice(_ITEMS), rng.randint(2, 40), rng.randint(2, 30)
    kind = rng.randrange(4)
    if kind == 0:
        text = (f"{p.name} had {a} {item}. {_cap(s)} bought {b} more at the market. "
                f"How many {item} does {p.name} have now?")
        sol = f"{a} + {b} = {a + b}. {p.name} has {a + b} {item}."
    elif kind == 1:
        a = a + b
        text = f"{p.name} had {a} {item} and gave {b} of them to {p.friend}. How many {item} are left?"
        sol = f"{a} - {b} = {a - b}. {_cap(s)} has {a - b} {item} left."
    elif kind == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        text = f"{p.name} has {a} baskets. Each basket holds {b} {item}. How many {item} are there in all?"
        sol = f"{a} x {b} = {a * b}. There are {a * b} {item}."
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        text = f"{p.name} shares {a * b} {item} equally among {a} friends. How many {item} does each friend get?"
        sol = f"{a * b} / {a} = {b}. Each friend gets {b} {item}."
    return f"Problem: {text}\nAnswer: {sol}"


def _recipe(rng, w):
    food = rng.choice(FOODS)
    ings = rng.sample(_INGREDIENTS, rng.randint(3, 5))
    lines = [f"Recipe: {food}", "You need: " + ", ".join(f"{rng.randint(2, 6)} {i}" for i in ings) + "."]
    for k, tpl in enumerate(rng.sample(_STEPS, rng.randint(3, 6)), 1):
        x, y = rng.sample(ings, 2)
        lines.append(f"Step {k}: " + tpl.format(x=x.split(" of ")[-1], y=y.split(" of ")[-1],
                                                n=rng.randint(2, 12), m=rng.choice((20, 30, 40, 45, 60))))
    lines.append(rng.choice(("Serve warm.", "Serve with tea.", "Keep it in a cool place.", "Enjoy.")))
    return "\n".join(lines)


def _notice(rng, w):
    t = rng.choice(w.towns)
    feat = t.feature.split(" ", 1)[1]
    day, hour = rng.choice(DAYS), rng.randint(1, 11)
    body = rng.choice((f"The {feat} will be closed on {day} for repairs.",
                       f"All {rng.choice(JOBS)}s are asked to meet at the {feat} on {day} at {hour} o'clock.",
                       f"On {day} there will be a fair near the {feat}. Bring {rng.choice(FOODS)} to share.",
                       f"The road to {rng.choice(w.towns).name} will be closed from {day} until further notice."))
    extra = rng.choice(("Thank you for your patience.", "Please tell your neighbours.", "Do not be late.", ""))
    return f"Notice to the people of {t.name}:\n{body} {extra}".rstrip() + f"\nThe town council of {t.name}"


def _domain2_split(w: TinyWorld, split: str, exclude=frozenset()) -> tuple:
    rng = random.Random(f"tinyworld/{w.seed}/domain2/{split}")
    docs, total = [], 0
    while total < DOMAIN2_CHARS[split]:
        doc = rng.choices((_problem, _recipe, _notice), (5, 3, 2))[0](rng, w)
        if doc not in exclude:
            docs.append(doc)
            total += len(doc)
    return tuple(docs)


@functools.lru_cache(maxsize=4)
def _corpus(seed: int, which: str) -> dict:
    w = get_world(seed)
    make = _pretrain_split if which == "pretrain" else _domain2_split
    train = make(w, "train")
    return {"train": train, "val": make(w, "val", exclude=frozenset(train))}
