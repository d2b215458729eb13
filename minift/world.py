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
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from types import MappingProxyType

SPLITS = ("train", "val", "test")
CORPUS_SPLITS = ("train", "val")
TASKS = ("qa_closed", "qa_extractive", "instructions", "sentiment", "ner", "summarization",
         "paraphrase", "preference", "pairs")
RELATIONS = ("home", "job", "pet", "food", "object", "friend")
NER_TYPES = ("PER", "LOC", "ANIMAL", "FOOD")
NER_TAGS = ("O",) + tuple(f"{bi}-{t}" for t in NER_TYPES for bi in "BI")

N_PEOPLE, N_TOWNS, N_REGIONS = 72, 12, 4
PAIRS_PER_SPLIT = {"train": 26, "val": 5, "test": 5}          # friend pairs -> 52 / 10 / 10 people
PRETRAIN_CHARS = {"train": 3_000_000, "val": 150_000}
DOMAIN2_CHARS = {"train": 450_000, "val": 50_000}

# ============================================================================ vocabulary tables

JOBS = ("baker", "fisher", "potter", "farmer", "teacher", "weaver", "doctor", "builder", "painter",
        "tailor", "gardener", "carpenter", "miller", "singer", "shepherd", "smith")
PETS = ("cat", "dog", "rabbit", "parrot", "goat", "hamster", "tortoise", "pony", "ferret", "duck",
        "guinea pig", "goldfish")
FOODS = ("plum cake", "fish soup", "apple pie", "honey bread", "bean stew", "cheese pie",
         "rice pudding", "pumpkin soup", "berry jam", "roast corn", "noodles", "pancakes")
OBJECTS = ("lamp", "clock", "bicycle", "fiddle", "boat", "wagon", "telescope", "drum", "lantern",
           "compass", "kettle", "mirror", "flute", "map")
GIFTS = ("scarf", "book", "letter", "kite", "basket", "candle", "hat", "blanket", "painting",
         "necklace")
FEATURES = ("a river", "a bakery", "a lighthouse", "a market", "a windmill", "an old castle",
            "a lake", "a stone bridge", "a library", "a harbour", "a clock tower", "a rose garden",
            "a fountain", "a tall tower")
REGIONS = ("the Green Valley", "the Stone Hills", "the Blue Coast", "the Wide Plains",
           "the Misty Lakes", "the Pine Woods")
# Held out of the world (never in the corpus): TinyWorld.heldout exposes them; extractive QA
# contexts use its towns. (NER val/test used these once; see _ner for why they no longer do.)
HELDOUT_ANIMALS = ("fox", "owl", "badger", "lizard", "hedgehog", "sea turtle", "barn owl",
                   "red squirrel", "donkey", "lamb", "canary", "field mouse")
HELDOUT_FOODS = ("lemon tart", "corn bread", "onion soup", "fig cake", "potato salad",
                 "carrot stew", "milk pudding", "pear jam", "nut bread", "egg pie",
                 "mushroom soup", "oat cookies")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEATHER = ("sunny", "rainy", "windy", "cold", "warm", "grey", "quiet")
SURNAMES = ("Hale", "Reed", "Lind", "Croft", "Ward", "Finch", "Moss", "Vale", "Penn", "Hart")

# names: onset + vowel + middle consonant + ending ("m"+"a"+"r"+"a" = Mara, "t"+"o"+"b"+"in")
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_MIDDLES = ("b", "d", "k", "l", "m", "n", "r", "s", "t", "v")
_ENDINGS = ("a", "i", "o", "an", "en", "in", "on", "el", "ar", "is")
_NOT_NAMES = frozenset("""melon lemon salon robin bison tutor manor motor rotor donor tumor humor
    solar molar sonar lunar radar basin satin resin rosin denim level label model medal metal petal
    pedal rebel navel novel panel hotel motel gavel bagel camel total modal venus bonus minus virus
    tonic lumen demon token woman human roman seven riven given raven haven dozen linen siren sedan
    vegan pagan tuba soda diva lava sofa tuna puma kilo demo memo solo polo halo hero zero taco
    judo sumo tofu guru menu bravo tempo torso disco pesto lasso data mama papa nana lama gala
    baron bevel revel hovel rumor tenor visa pita bali mali deli kiwi tiki bikini limo lido""".split())
_TOWN_HEADS = ("Ash", "Brook", "Stone", "Oak", "Elm", "Fern", "Hazel", "Raven", "Wolf", "Silver",
               "Thorn", "Willow", "Amber", "Frost", "Marsh", "Heather", "Bram", "Rose", "Cold", "Glen")
_TOWN_TAILS = ("field", "ford", "bridge", "haven", "wick", "dale", "moor", "stead", "by", "hollow",
               "well", "ton")
_TOWN_ADJS = ("Old", "Red", "Little", "High", "Long", "North", "Far", "Low")
_TOWN_NOUNS = ("Mill", "Cross", "Gate", "Meadow", "Hill", "Bay", "Oaks", "Pond")

PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}   # subject, object, genitive


# ============================================================================ sentence templates
# Placeholders: {N} subject (name, or she/he), {O} object (name, or her/him), {G} genitive
# (name's, or her/his); {s} {o} {g} always the pronoun; {v} the value, {av} "a/an value".
# Every template reads correctly both with the name and with a pronoun.

FACT_TEMPLATES = {
    "home": (
        "{N} lives in {v}.", "{N} has a house in {v}.", "{N} comes from {v}.",
        "{G} home is in the town of {v}.", "The town of {v} is home to {O}.",
        "{N} has lived in {v} for many years.", "{N} is one of the people who live in {v}.",
        "{N} grew up in {v} and still lives there.",
        "Every evening {N} walks home through the streets of {v}.",
        "{N} would never leave {v}, the town where {s} lives."),
    "job": (
        "{N} works as {av}.", "{N} is {av}.", "By trade, {N} is {av}.", "{N} earns a living as {av}.",
        "{N} has worked as {av} for a long time.", "Everyone knows {O} as {av}.",
        "{N} is known in town as a good {v}.", "Every day {N} goes to work as {av}.",
        "{N} chose to become {av} when {s} was young.", "The job of {O} is to work as {av}."),
    "pet": (
        "{N} has a pet {v}.", "{N} keeps {av} as a pet.", "{G} pet is {av}.",
        "{av} lives with {O} at home.", "{N} takes good care of {g} {v}.",
        "{N} feeds {g} {v} every morning.", "{N} never goes far without {g} {v}.",
        "{N} loves {g} pet {v} very much.", "At home, {N} has {av} as a pet.",
        "The pet that lives with {O} is {av}."),
    "food": (
        "{G} favourite food is {v}.", "{N} loves {v} more than any other food.",
        "{N} likes {v} best of all.", "Of all foods, {N} likes {v} the most.",
        "For dinner, {N} always hopes for {v}.", "Nothing makes {O} happier than a plate of {v}.",
        "{N} could eat {v} every day.", "When {N} is hungry, {s} wants {v}.",
        "{v} is what {N} likes to eat most.", "The food that {N} likes most is {v}."),
    "object": (
        "{N} owns {av}.", "{N} has {av} at home.", "{G} most prized possession is {av}.",
        "{av} belongs to {O}.", "{N} keeps {av} in {g} house.", "Among {g} things, {N} treasures {av}.",
        "{N} bought {av} long ago and still has it.", "The {v} in {G} house belongs to {O}.",
        "{N} is the owner of {av}.", "{N} takes great care of {g} {v}."),
    "friend": (
        "{N} and {v} are friends.", "{G} best friend is {v}.", "{N} is friends with {v}.",
        "{v} is a close friend of {O}.", "{N} often spends time with {g} friend {v}.",
        "{v} and {N} have been friends for years.", "{N} trusts {g} friend {v} more than anyone.",
        "Everyone knows that {N} and {v} are good friends.", "{N} visits {g} friend {v} every week.",
        "When {N} needs help, {s} asks {g} friend {v}."),
}
# One plain sentence per relation (yes/no facts, preference, negation).
CANONICAL = {"home": "{N} lives in {v}.", "job": "{N} works as {av}.", "pet": "{N} has a pet {v}.",
             "food": "{G} favourite food is {v}.", "object": "{N} owns {av}.",
             "friend": "{N} and {v} are friends."}
QUESTION_TEMPLATES = {
    "home": ("Where does {n} live?", "In which town does {n} live?", "What town is {n} from?",
             "Where is {n}'s home?"),
    "job": ("What is {n}'s job?", "What does {n} work as?", "What is the job of {n}?",
            "What work does {n} do?"),
    "pet": ("What pet does {n} have?", "What animal is {n}'s pet?",
            "What kind of animal does {n} keep as a pet?", "Which animal lives with {n}?"),
    "food": ("What is {n}'s favourite food?", "What food does {n} like best?",
             "Which food does {n} love most?", "What is the favourite dish of {n}?"),
    "object": ("What does {n} own?", "What object belongs to {n}?", "What is {n}'s prized possession?",
               "Which thing does {n} keep at home?"),
    "friend": ("Who is {n}'s friend?", "Who is {n} friends with?", "Who is the best friend of {n}?",
               "Whom does {n} spend time with?"),
}
TOWN_TEMPLATES = {
    "region": ("{t} is a town in {r}.", "{t} lies in {r}.", "The town of {t} is in {r}.",
               "You will find {t} in {r}."),
    "feature": ("{t} is known for {f}.", "There is {f} in {t}.", "In {t} you can see {f}.",
                "People come to {t} to see {f}.", "{t} has {f}."),
}
EVENT_TEMPLATES = {
    "visit": ("{A} visited {B} in {t}.", "{A} went to {t} to visit {B}.",
              "In {t}, {B} had a visit from {A}.", "{B} was visited by {A} in {t}.",
              "Once, {A} travelled to {t} to see {B}."),
    "gift": ("{A} gave {B} {ai}.", "{A} gave {ai} to {B}.", "{B} got {ai} from {A}.",
             "{ai} was given to {B} by {A}.", "{B} received {ai} from {A} as a gift."),
}
# Story beats: a morning in the life of one person; {home} etc. are that person's facts.
STORY_BEATS = {
    "open": ("One {day} morning, {name} woke up early in {home}.",
             "It was a {weather} {day} in {home}, and {name} was already awake.",
             "{name} opened the window of {g} house in {home} and looked at the sky."),
    "pet": ("{N} fed {g} {pet} and gave it fresh water.", "{G} {pet} followed {o} around the kitchen.",
            "{N} said good morning to {g} {pet}."),
    "food": ("For breakfast, {N} ate {food}, {g} favourite food.",
             "{N} made {food}, because {s} likes it more than anything.",
             "There was {food} on the table, and {N} was happy, because it is {g} favourite food."),
    "job": ("Then {N} went to work, as {s} is {ajob}.", "After that, {N} spent the day working as {ajob}.",
            "{N} had a lot to do, because being {ajob} is hard work."),
    "object": ("{N} took {g} {obj} along.", "Before leaving, {N} picked up {g} {obj}, which {s} has owned for years.",
               "{N} checked that {g} {obj} was safe at home."),
    "friend": ("On the way, {N} met {g} friend {friend}.", "Later, {friend}, {g} best friend, came to visit.",
               "{N} wrote a short note to {g} friend {friend}."),
    "close": ("In the evening, {N} came back home to {home}.",
              "At night, {N} went to sleep in {home}, tired but happy.", "It had been a good day in {home}."),
}
LETTER_LINES = {
    "home": ("Here in {home} everything is quiet.", "Life in {home} is the same as always.",
             "I am writing to you from my house in {home}."),
    "pet": ("My {pet} is fine and sends you greetings.", "My {pet} has grown a lot.",
            "My {pet} sleeps by the window all day."),
    "food": ("Yesterday I cooked {food}; you know it is my favourite.", "I ate {food} again today, my favourite food."),
    "job": ("Work is busy, as always for {ajob}.", "Being {ajob} keeps me busy every day."),
    "object": ("I still have my old {obj}.", "My {obj} is still on the shelf where you saw it."),
}
DIALOGUE_LINES = {
    "home": ('"Where do you live, {name}?" asked {q}. "I live in {home}," said {name}.',
             '"Are you still in {home}?" {q} asked. "Yes, {home} is my home," {name} replied.'),
    "job": ('"What do you do for work?" asked {q}. "I am {ajob}," {name} answered.',),
    "pet": ('"Do you have a pet, {name}?" "Yes, I have {apet}," said {name}.',),
    "food": ('"What is your favourite food?" {q} asked. "{Food}, of course," said {name}.',),
    "object": ('"What is that?" asked {q}. "It is my {obj}," said {name}.',),
    "friend": ('"Who is your best friend?" asked {q}. "{friend} is my best friend," said {name}.',),
}


# ============================================================================ the world

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


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _plural(noun: str) -> str:
    irregular = {"goldfish": "goldfish", "field mouse": "field mice"}
    if noun in irregular:
        return irregular[noun]
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


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


# ============================================================================ rendering helpers

def _say(tpl: str, who: str, pronoun: str, value: str = "", use_pronoun: bool = False, **extra) -> str:
    """Fill a template about one person; see the placeholder legend above FACT_TEMPLATES."""
    s, o, g = PRONOUNS[pronoun]
    N, O, G = (s, o, g) if use_pronoun else (who, who, who + "'s")
    return _cap(tpl.format(N=N, O=O, G=G, s=s, o=o, g=g, v=value, av=_a(value) if value else "", **extra))


def _fact(rng, p, relation, use_pronoun=False, value=None) -> str:
    return _say(rng.choice(FACT_TEMPLATES[relation]), p.name, p.pronoun,
                p.fact(relation) if value is None else value, use_pronoun)


def _slots(p: Person, w: TinyWorld) -> dict:
    s, o, g = PRONOUNS[p.pronoun]
    return dict(name=p.name, home=p.home, job=p.job, ajob=_a(p.job), pet=p.pet, apet=_a(p.pet),
                food=p.food, Food=_cap(p.food), obj=p.obj, friend=p.friend, s=s, o=o, g=g,
                feature=w.town(p.home).feature)


def _event_sentence(rng, e: Event) -> str:
    return _cap(rng.choice(EVENT_TEMPLATES[e.kind]).format(A=e.a, B=e.b, t=e.town, ai=_a(e.item) if e.item else ""))


def _town_sentence(rng, t: Town, which: str) -> str:
    return _cap(rng.choice(TOWN_TEMPLATES[which]).format(t=t.name, r=t.region, f=t.feature))


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


# ---- instructions: 18 task types, 3 of them only in test -------------------------------------
# Each held-out type but one has close relatives among the seen ones (near transfer):
#   job_of_person: the five seen "X of a person" lookups. All six share one frame, a question of
#     closed-book QA about "this person" (any of QUESTION_TEMPLATES, drawn per instance) and
#     "Answer with the <kind> only.": the definitions differ only in the question, and no lookup
#     has a fixed one, so the question must be read. qa_closed asks the very same questions (about
#     "{n}" instead of "this person"), job ones included.
#   last_word: first and second word of a sentence, first and last word of a list.
#   negate_fact: none (past_tense and make_plural also rewrite a sentence): the far transfer.

_PLACES = ("by the river", "in the garden", "near the market", "under the bridge", "behind the house",
           "on the hill", "next to the well")
_PL_VERBS = (("sleeps", "sleep"), ("runs", "run"), ("eats", "eat"), ("plays", "play"), ("waits", "wait"),
             ("swims", "swim"), ("hides", "hide"), ("sits", "sit"), ("rests", "rest"), ("jumps", "jump"))
_PAST_VERBS = (("visits", "visited"), ("helps", "helped"), ("calls", "called"), ("thanks", "thanked"),
               ("follows", "followed"), ("greets", "greeted"), ("watches", "watched"),
               ("waits for", "waited for"), ("looks for", "looked for"), ("paints", "painted"))
_NEG_VERBS = (("lives in {town}", "live in {town}"), ("works as {ajob}", "work as {ajob}"),
              ("keeps {apet}", "keep {apet}"), ("owns {aobj}", "own {aobj}"), ("likes {food}", "like {food}"),
              ("visits {B}", "visit {B}"))
_ACTIONS = ("{A} walked to {town} with {g} {animal}", "{A} carried {aobj} to the market in {town}",
            "the {animal} followed {A} to the {feat}", "{A} and {B} ate {food} by the {feat}",
            "on {day} {A} painted {g} {obj} blue", "{A} told {B} a long story about {aanimal}",
            "every {day} {A} buys {food} in {town}", "{A} lost {g} {obj} near the {feat} in {town}",
            "a small {animal} slept under the table of {A}", "{A} sent {B} a letter from {town}")


def _action(rng, w, people, one_person=False) -> tuple:
    """A plain sentence without punctuation, and the person it is about."""
    A, B = rng.sample(people, 2)
    tpls = [t for t in _ACTIONS if not (one_person and "{B}" in t)]
    obj, animal = rng.choice(OBJECTS), rng.choice(PETS)
    text = rng.choice(tpls).format(A=A.name, B=B.name, g=PRONOUNS[A.pronoun][2], town=rng.choice(w.towns).name,
                                   animal=animal, aanimal=_a(animal), aobj=_a(obj), obj=obj, food=rng.choice(FOODS),
                                   feat=rng.choice(w.towns).feature.split(" ", 1)[1], day=rng.choice(DAYS))
    return _cap(text), A.name


_TWO_PEOPLE = ("{A} gave {B} {agift} in {town}", "{A} and {B} ate {food} by the {feat}",
               "{A} told {B} a long story about {aanimal}", "{A} sent {B} a letter from {town}",
               "on {day} {A} met {B} at the {feat}", "the {animal} of {A} followed {B} to {town}",
               "{A} and {B} walked to the {feat} with {aanimal}", "{A} asked {B} for {aobj}")


def _two_people(rng, w, people) -> tuple:
    """A plain sentence naming two people: (sentence, first person, second person)."""
    A, B = rng.sample(people, 2)
    animal = rng.choice(PETS)
    text = rng.choice(_TWO_PEOPLE).format(A=A.name, B=B.name, town=rng.choice(w.towns).name, animal=animal,
                                          aanimal=_a(animal), aobj=_a(rng.choice(OBJECTS)), food=rng.choice(FOODS),
                                          agift=_a(rng.choice(GIFTS)), day=rng.choice(DAYS),
                                          feat=rng.choice(w.towns).feature.split(" ", 1)[1])
    return _cap(text), A.name, B.name


def _word_list(rng, w, people) -> list:
    """4 to 6 distinct one-word things of TinyWorld (people, towns, jobs, pets, objects)."""
    pool = ([p.name for p in people] + [t.name for t in w.towns if " " not in t.name] + list(JOBS)
            + [x for x in PETS if " " not in x] + list(OBJECTS))
    return rng.sample(pool, rng.randint(4, 6))


def _wrong(rng, w, p, rel):
    return rng.choice([v for v in w.values(rel) if v not in (p.fact(rel), p.name)])


def _inst_town(rng, w, ppl):
    p = rng.choice(ppl)
    return p.name, p.home, (p.friend, f"{p.friend} is a person, not a town. {p.name} lives in {p.home}.")


def _inst_pet(rng, w, ppl):
    p = rng.choice(ppl)
    return p.name, p.pet, (p.food, f"{_cap(p.food)} is a food, not an animal. {p.name}'s pet is {_a(p.pet)}.")


def _inst_friend(rng, w, ppl):
    p = rng.choice(ppl)
    return p.name, p.friend, (p.name, f"That is the same person. The friend of {p.name} is {p.friend}.")


def _inst_job(rng, w, ppl):
    p = rng.choice(ppl)
    return p.name, p.job, (p.home, f"{p.home} is a town, not a job. {p.name} works as {_a(p.job)}.")


def _inst_food(rng, w, ppl):
    p = rng.choice(ppl)
    return p.name, p.food, (p.pet, f"{_cap(_a(p.pet))} is an animal, not a food. {p.name} likes {p.food}.")


def _inst_object(rng, w, ppl):
    p = rng.choice(ppl)
    return p.name, p.obj, (p.home, f"{p.home} is a town, not a thing. {p.name} owns {_a(p.obj)}.")


def _inst_yes_no(rng, w, ppl):
    p, rel = rng.choice(ppl), rng.choice(RELATIONS)
    true = rng.random() < 0.5
    sent = _say(CANONICAL[rel], p.name, p.pronoun, p.fact(rel) if true else _wrong(rng, w, p, rel))
    ans, truth = ("yes", "true") if true else ("no", "false")
    return sent, ans, ("no" if true else "yes", f"The sentence is {truth}, so the answer is {ans}.")


def _inst_reverse(rng, w, ppl):
    s, _ = _action(rng, w, ppl)
    return s, " ".join(s.split()[::-1]), (s, "The words are still in their original order.")


def _inst_count(rng, w, ppl):
    s, _ = _action(rng, w, ppl)
    n = len(s.split())
    return s, str(n), (str(n + rng.choice((-1, 1))), f"The sentence has {n} words.")


def _inst_last(rng, w, ppl):
    s, _ = _action(rng, w, ppl)
    return s, s.split()[-1], (s.split()[0], f"That is the first word. The last word is {s.split()[-1]}.")


def _inst_first(rng, w, ppl):
    # mostly sentences that do not start with the person, so that the first word is not
    # the first person named (first_person is another type)
    s, name = _action(rng, w, ppl)
    while s.split()[0] == name and rng.random() < 0.8:
        s, name = _action(rng, w, ppl)
    return s, s.split()[0], (s.split()[-1], f"That is the last word. The first word is {s.split()[0]}.")


def _inst_second(rng, w, ppl):
    s, _ = _action(rng, w, ppl)
    return s, s.split()[1], (s.split()[0], f"That is the first word. The second word is {s.split()[1]}.")


def _inst_first_item(rng, w, ppl):
    xs = _word_list(rng, w, ppl)
    return " ".join(xs), xs[0], (xs[-1], f"That is the last word. The first word is {xs[0]}.")


def _inst_last_item(rng, w, ppl):
    xs = _word_list(rng, w, ppl)
    return " ".join(xs), xs[-1], (xs[0], f"That is the first word. The last word is {xs[-1]}.")


def _inst_first_person(rng, w, ppl):
    s, a, b = _two_people(rng, w, ppl)
    return s, a, (b, f"{b} is the last person named. The first is {a}.")


def _inst_plural(rng, w, ppl):
    animal, (v1, vn) = rng.choice(PETS + HELDOUT_ANIMALS), rng.choice(_PL_VERBS)
    adj = rng.choice(("", "small ", "old ", "young ", "lazy ", "brown "))
    place = rng.choice(_PLACES)
    src = f"The {adj}{animal} {v1} {place}."
    return src, f"The {adj}{_plural(animal)} {vn} {place}.", (src, f"The sentence still talks about one {animal}.")


def _inst_past(rng, w, ppl):
    A, B = rng.sample(ppl, 2)
    pres, past = rng.choice(_PAST_VERBS)
    tail = rng.choice((f" in {rng.choice(w.towns).name}.", " at the market.", " on " + rng.choice(DAYS) + "."))
    src = f"{A.name} {pres} {B.name}{tail}"
    return src, f"{A.name} {past} {B.name}{tail}", (src, "The verb is still in the present tense.")


def _inst_negate(rng, w, ppl):
    A, B = rng.sample(ppl, 2)
    pos, neg = rng.choice(_NEG_VERBS)
    sl = dict(town=rng.choice(w.towns).name, ajob=_a(rng.choice(JOBS)), apet=_a(rng.choice(PETS)),
              aobj=_a(rng.choice(OBJECTS)), food=rng.choice(FOODS), B=B.name)
    src = f"{A.name} {pos.format(**sl)}."
    return src, f"{A.name} does not {neg.format(**sl)}.", (src, "The sentence was copied without negating it.")


def _lookup(rel: str, kind: str) -> tuple:
    """The definitions of the "X of a person" type for relation rel, one per question of
    closed-book QA (QUESTION_TEMPLATES[rel]); each instance draws one."""
    return tuple(f"You are given the name of a person. Answer this question about them: "
                 f"{q.format(n='this person')} Answer with the {kind} only." for q in QUESTION_TEMPLATES[rel])


# name -> (definition, generator, why the positive example is right). A definition is a string,
# or a tuple of paraphrases of which each instance draws one. A generator returns
# (input, output, (wrong output, why it is wrong)).
INSTRUCTION_TYPES = {
    "town_of_person": (_lookup("home", "town"), _inst_town, "{i} lives in {o}."),
    "pet_of_person": (_lookup("pet", "animal"), _inst_pet, "{i} keeps a pet {o}."),
    "friend_of_person": (_lookup("friend", "name"), _inst_friend, "{i} and {o} are friends."),
    "food_of_person": (_lookup("food", "food"), _inst_food, "{i} likes {o} best."),
    "object_of_person": (_lookup("object", "thing"), _inst_object, "The thing {i} owns is {o}."),
    "first_word": ("Write the first word of the sentence.", _inst_first, "The sentence starts with the word {o}."),
    "second_word": ("Write the second word of the sentence.", _inst_second,
                    "The word {o} comes right after the first word."),
    "first_item": ("Write the first word of the list.", _inst_first_item, "The list starts with the word {o}."),
    "last_item": ("Write the last word of the list.", _inst_last_item, "The list ends with the word {o}."),
    "first_person": ("Write the first person named in the sentence.", _inst_first_person,
                     "{o} is named before the other person."),
    "fact_yes_no": ("You are given a sentence about TinyWorld. Answer yes if the sentence is true and no "
                    "if it is false.", _inst_yes_no, "The answer {o} is right for this sentence in TinyWorld."),
    "count_words": ("Count the words of the sentence. Answer with a number in digits.", _inst_count,
                    "The sentence has {o} words."),
    "reverse_words": ("Write the words of the sentence in reverse order.", _inst_reverse,
                      "The same words, from the last to the first."),
    "make_plural": ("Rewrite the sentence about many animals instead of one.", _inst_plural,
                    "The animal is plural and the verb agrees with it."),
    "past_tense": ("Rewrite the sentence in the past tense.", _inst_past, "The verb is now in the past tense."),
    # held out: these three appear only in the test split (see the top of this section)
    "job_of_person": (_lookup("job", "job"), _inst_job, "{i} works as a {o}."),
    "last_word": ("Write the last word of the sentence.", _inst_last, "The sentence ends with the word {o}."),
    "negate_fact": ("Rewrite the sentence so that it says the opposite. Use 'does not' and the plain "
                    "form of the verb.", _inst_negate, "The new sentence says the opposite of the old one."),
}
HELDOUT_INSTRUCTION_TYPES = ("job_of_person", "last_word", "negate_fact")
_NAME_INPUT = ("town_of_person", "pet_of_person", "friend_of_person", "food_of_person", "object_of_person",
               "job_of_person")
# Types whose instances state facts about people use only the people of their split. The others
# (copying, counting, rewriting made-up sentences) may name anyone: a name the model has never
# written in training is one it will not copy (measured: val first_person 0.0 with split people,
# 1.0 with all).
_SPLIT_PEOPLE = _NAME_INPUT + ("fact_yes_no",)
# instances per type and split; a lookup has at most one instance per person of the split
_INSTRUCTION_SIZES = {"train": 120, "val": 20, "test": 80}


def _instructions(w, rng):
    sizes = _INSTRUCTION_SIZES
    out = {s: [] for s in SPLITS}
    for name, (definition, gen, why) in INSTRUCTION_TYPES.items():
        trng = random.Random(f"tinyworld/{w.seed}/instructions/{name}")
        # the fixed examples of a task type use train people only (no val/test fact leaks into them)
        pin, pout, _ = gen(trng, w, w.people_in("train"))
        nin, _, (nout, nreason) = gen(trng, w, w.people_in("train"))
        positive = {"input": pin, "output": pout, "reason": why.format(i=pin, o=pout)}
        negative = {"input": nin, "output": nout, "reason": nreason}
        seen = {pin, nin}                                  # instances never repeat an example input
        for split in (("test",) if name in HELDOUT_INSTRUCTION_TYPES else ("train", "val")):
            # unseen task types may ask about anyone
            ppl = w.people if split == "test" or name not in _SPLIT_PEOPLE else w.people_in(split)
            target = min(sizes[split], len(ppl)) if name in _NAME_INPUT else sizes[split]
            got, misses = 0, 0
            while got < target and misses < 5000:
                i, o, _ = gen(trng, w, ppl)
                if i in seen:
                    misses += 1
                    continue
                seen.add(i)
                d = definition if isinstance(definition, str) else trng.choice(definition)
                out[split].append({"task": name, "definition": d, "positive": positive,
                                   "negative": negative, "input": i, "output": o})
                got += 1
    for split in SPLITS:
        rng.shuffle(out[split])
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


_TASK_MAKERS = {"qa_closed": _qa_closed, "qa_extractive": _qa_extractive, "instructions": _instructions,
                "sentiment": _sentiment, "ner": _ner, "summarization": _summarization,
                "paraphrase": _paraphrase, "preference": _preference, "pairs": _pairs}


# ============================================================================ public API

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
    for f in (_world, _corpus, _task, _files):
        f.cache_clear()
