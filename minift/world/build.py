"""The TinyWorld of a seed: towns, people with six facts each, events; built once and cached.

`get_world(seed)` draws everything from `random.Random("tinyworld/<seed>/world")`, in a fixed
order: town names, regions, features, people's names (plus spare name pools the task sets use
for people outside the world), homes, friend pairs (a perfect matching, so friendship is
symmetric), the split of each pair (train 26 / val 5 / test 5 pairs), each person's pronoun and
facts, 48 events, and the held-out towns, animals and foods. Reordering any draw renames people
and changes every corpus, so the order is part of the data.
"""
from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from types import MappingProxyType

from .vocab import (_ENDINGS, _MIDDLES, _NOT_NAMES, _ONSETS, _TOWN_ADJS, _TOWN_HEADS, _TOWN_NOUNS, _TOWN_TAILS,
                    _VOWELS, DAYS, FEATURES, FOODS, GIFTS, HELDOUT_ANIMALS, HELDOUT_FOODS, JOBS, N_PEOPLE,
                    N_REGIONS, N_TOWNS, OBJECTS, PAIRS_PER_SPLIT, PETS, REGIONS, RELATIONS, SPLITS, SURNAMES,
                    WEATHER)


@dataclass(frozen=True)
class Town:
    name: str
    feature: str       # "a windmill"
    region: str        # "the Stone Hills"


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str       # "she" | "he"
    home: str
    job: str
    pet: str
    food: str
    obj: str           # the owned object (relation "object")
    friend: str
    split: str         # the task split this person (and their friend) belongs to

    def fact(self, relation: str) -> str:
        if relation not in RELATIONS:
            raise ValueError(f"relation {relation!r} is not one of {RELATIONS}")
        return self.obj if relation == "object" else getattr(self, relation)


@dataclass(frozen=True)
class Event:
    kind: str          # "visit" (A visited B in town) | "gift" (A gave B item)
    a: str
    b: str
    town: str = ""
    item: str = ""


@dataclass(frozen=True)
class TinyWorld:
    seed: int
    towns: tuple
    people: tuple
    events: tuple
    spare_names: dict = field(repr=False)     # pool -> names never used by world people
    heldout: dict = field(repr=False)         # "val"/"test" -> {"LOC": .., "ANIMAL": .., "FOOD": ..}

    def person(self, name: str) -> Person:
        for p in self.people:
            if p.name == name:
                return p
        raise ValueError(f"no person named {name!r} in TinyWorld(seed={self.seed})")

    def town(self, name: str) -> Town:
        for t in self.towns:
            if t.name == name:
                return t
        raise ValueError(f"no town named {name!r} in TinyWorld(seed={self.seed})")

    def people_in(self, split: str) -> list:
        _check_split(split, SPLITS)
        return [p for p in self.people if p.split == split]

    def values(self, relation: str) -> tuple:
        """Every value a relation can take (the candidates for wrong answers)."""
        return {"home": tuple(t.name for t in self.towns), "job": JOBS, "pet": PETS, "food": FOODS,
                "object": OBJECTS, "friend": tuple(p.name for p in self.people)}[relation]


class _NameMaker:
    """Unique, prefix-free invented names (no name is the start of another, so 'Mara' can
    never be found inside 'Maran'; no two share a stem, so there is no 'Malin' next to 'Malen'),
    avoiding real words and the world's vocabulary."""

    def __init__(self, rng: random.Random):
        words = " ".join(JOBS + PETS + FOODS + OBJECTS + GIFTS + HELDOUT_ANIMALS + HELDOUT_FOODS
                         + DAYS + WEATHER + SURNAMES).lower().split()
        self.rng, self.reserved = rng, _NOT_NAMES | frozenset(words)
        self.taken: set = set()
        self.prefixes: set = set()
        self.stems: set = set()

    def draw(self, n: int) -> tuple:
        out, tries, r = [], 0, self.rng
        while len(out) < n:
            tries += 1
            if tries > 200_000:
                raise RuntimeError("TinyWorld: ran out of invented names")
            stem = r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_MIDDLES)
            w = stem + r.choice(_ENDINGS)
            if (w in self.reserved or stem in self.stems or w in self.prefixes
                    or any(w[:k] in self.taken for k in range(2, len(w)))):
                continue
            self.taken.add(w)
            self.stems.add(stem)
            self.prefixes.update(w[:k] for k in range(2, len(w)))
            out.append(w.capitalize())
        return tuple(out)


def _town_names(rng: random.Random) -> tuple:
    """12 world towns (9 one-word, 3 two-word) and 12 held-out towns, all distinct words."""
    one = [h + t for h in _TOWN_HEADS for t in _TOWN_TAILS]
    two = [f"{a} {b}" for a in _TOWN_ADJS for b in _TOWN_NOUNS]
    rng.shuffle(one)
    rng.shuffle(two)
    used: set = set()
    picked = []
    for want_one, want_two in ((9, 3), (8, 4)):           # world, then held out
        got1 = []
        for name in one:
            head = next(h for h in _TOWN_HEADS if name.startswith(h))
            if len(got1) < want_one and head not in used:
                got1.append(name)
                used.add(head)
        got2 = []
        for name in two:
            a, b = name.split()
            if len(got2) < want_two and a not in used and b not in used:
                got2.append(name)
                used.update((a, b))
        picked.append(tuple(got1 + got2))
    return picked[0], picked[1]


def _build_world(seed: int) -> TinyWorld:
    rng = random.Random(f"tinyworld/{seed}/world")
    town_names, heldout_towns = _town_names(rng)
    regions = rng.sample(REGIONS, N_REGIONS)
    features = rng.sample(FEATURES, N_TOWNS)
    towns = tuple(Town(n, features[i], regions[i % N_REGIONS]) for i, n in enumerate(town_names))

    names = _NameMaker(rng)
    people_names = names.draw(N_PEOPLE)
    spare = {pool: names.draw(k) for pool, k in (("extractive_train", 160), ("extractive_val", 40),
                                                 ("extractive_test", 40), ("ner_val", 30), ("ner_test", 30))}
    # (the ner_* pools are unused now, and still drawn: dropping them would rename the people below)
    homes = [t.name for t in towns] * (N_PEOPLE // N_TOWNS)
    rng.shuffle(homes)
    order = list(people_names)
    rng.shuffle(order)
    friend, split = {}, {}
    splits = [s for s in SPLITS for _ in range(PAIRS_PER_SPLIT[s])]
    for i, s in enumerate(splits):
        a, b = order[2 * i], order[2 * i + 1]
        friend[a], friend[b] = b, a
        split[a] = split[b] = s
    people = tuple(Person(name=n, pronoun=rng.choice(("she", "he")), home=homes[i], job=rng.choice(JOBS),
                          pet=rng.choice(PETS), food=rng.choice(FOODS), obj=rng.choice(OBJECTS),
                          friend=friend[n], split=split[n]) for i, n in enumerate(people_names))
    events = []
    for kind in ("visit", "gift"):
        for _ in range(24):
            a, b = rng.sample(people, 2)
            events.append(Event(kind, a.name, b.name, town=b.home if kind == "visit" else "",
                                item=rng.choice(GIFTS) if kind == "gift" else ""))
    animals, foods = list(HELDOUT_ANIMALS), list(HELDOUT_FOODS)
    rng.shuffle(animals)
    rng.shuffle(foods)
    heldout = {"val": {"LOC": heldout_towns[0::2], "ANIMAL": tuple(animals[0::2]), "FOOD": tuple(foods[0::2])},
               "test": {"LOC": heldout_towns[1::2], "ANIMAL": tuple(animals[1::2]), "FOOD": tuple(foods[1::2])}}
    return TinyWorld(seed, towns, people, tuple(events), MappingProxyType(spare),
                     MappingProxyType({k: MappingProxyType(v) for k, v in heldout.items()}))


# ---- the public boundary and the cache (one world per seed) ------------------------------------

def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return seed


def _check_split(split, allowed) -> None:
    if split not in allowed:
        raise ValueError(f"split={split!r} is not valid; expected one of {list(allowed)}")


@functools.lru_cache(maxsize=8)
def _world(seed: int) -> TinyWorld:
    return _build_world(seed)


def get_world(seed: int = 0) -> TinyWorld:
    """The TinyWorld of this seed (built once, then cached)."""
    return _world(_check_seed(seed))
