"""TinyWorld's `instructions` task: 18 Natural-Instructions-style task types, 3 seen only in test.

An example is a definition, a positive and a negative example (each with the reason it is right or
wrong), and an instance (input -> output). Each type is a generator `gen(rng, world, people) ->
(input, output, (wrong output, why it is wrong))` registered in `INSTRUCTION_TYPES`; three of them
(`HELDOUT_INSTRUCTION_TYPES`) appear only in the test split, to measure generalisation to unseen
tasks. The preference task (`task_sets.py`) reuses four of these generators.
"""
from __future__ import annotations

import random

from .templates import CANONICAL, QUESTION_TEMPLATES, _a, _cap, _plural, _say
from .vocab import DAYS, FOODS, GIFTS, HELDOUT_ANIMALS, JOBS, OBJECTS, PETS, PRONOUNS, RELATIONS, SPLITS

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


# The "X of a person" lookups: relation -> (where the negative example's wrong answer comes from:
# another relation of the same person, or "name", the person themself; why it is wrong). In the
# reason {W} is the wrong answer capitalised, {AW} the same with "a"/"an", {n} the person, {v} the
# right answer and {av} the same with "a"/"an".
_LOOKUP_WRONG = {
    "home": ("friend", "{W} is a person, not a town. {n} lives in {v}."),
    "pet": ("food", "{W} is a food, not an animal. {n}'s pet is {av}."),
    "friend": ("name", "That is the same person. The friend of {n} is {v}."),
    "job": ("home", "{W} is a town, not a job. {n} works as {av}."),
    "food": ("pet", "{AW} is an animal, not a food. {n} likes {v}."),
    "object": ("home", "{W} is a town, not a thing. {n} owns {av}."),
}


def _inst_lookup(rel: str):
    """The generator of the lookup type for relation rel: a person of the split, their value of rel."""
    wrong_from, why = _LOOKUP_WRONG[rel]

    def gen(rng, w, ppl):
        p = rng.choice(ppl)
        v, bad = p.fact(rel), (p.name if wrong_from == "name" else p.fact(wrong_from))
        return p.name, v, (bad, why.format(W=_cap(bad), AW=_cap(_a(bad)), n=p.name, v=v, av=_a(v)))
    return gen


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
    "town_of_person": (_lookup("home", "town"), _inst_lookup("home"), "{i} lives in {o}."),
    "pet_of_person": (_lookup("pet", "animal"), _inst_lookup("pet"), "{i} keeps a pet {o}."),
    "friend_of_person": (_lookup("friend", "name"), _inst_lookup("friend"), "{i} and {o} are friends."),
    "food_of_person": (_lookup("food", "food"), _inst_lookup("food"), "{i} likes {o} best."),
    "object_of_person": (_lookup("object", "thing"), _inst_lookup("object"), "The thing {i} owns is {o}."),
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
    "job_of_person": (_lookup("job", "job"), _inst_lookup("job"), "{i} works as a {o}."),
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
