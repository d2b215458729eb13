"""TinyWorld's sentence templates and the helpers that fill them.

Each relation of a person is stated in ten phrasings (`FACT_TEMPLATES`) and asked in four
(`QUESTION_TEMPLATES`); towns, events, story beats, letters and dialogues have their own. The
corpora (`corpus.py`) and the task sets (`task_sets.py`, `instructions.py`) draw from these with
their own seeded RNG, so a template's text and its position in its tuple are both part of the
data: the shipped base checkpoint was pretrained on them.

The rendering helpers below turn a template and a person into a sentence:
`_say(tpl, who, pronoun, value)` fills the placeholders (legend above `FACT_TEMPLATES`), with the
person's name or a pronoun; `_a("owl") = "an owl"`, `_cap`, `_plural` are the English the
templates need.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .vocab import PRONOUNS

if TYPE_CHECKING:                                   # annotations only: build.py needs nothing from here
    from .build import Event, Person, TinyWorld, Town


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
# A follow-up turn of a dialogue (task "dialogue"): the person is named only in an earlier turn.
# {s}: subject pronoun, {g}: possessive ("she", "her").
FOLLOW_UP_TEMPLATES = {
    "home": ("And where does {s} live?", "Which town is {s} from?"),
    "job": ("And what is {g} job?", "What does {s} work as?"),
    "pet": ("And what pet does {s} have?", "Which animal is {g} pet?"),
    "food": ("And what is {g} favourite food?", "What food does {s} like best?"),
    "object": ("And what does {s} own?", "Which thing does {s} keep at home?"),
    "friend": ("And who is {g} friend?", "Who is {s} friends with?"),
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


# ============================================================================ rendering helpers

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
