"""TinyWorld's vocabulary: the sizes and splits of the world, and every closed word list it draws from.

Nothing here is random: these tables are the candidates that `build.py` draws people, towns and
events from, and that the corpora and task sets fill their templates with. Changing any tuple
(even its order) changes every seed's world, and the shipped base checkpoint was pretrained on
the corpus of seed 0, so these are frozen.

Invented names are built from syllables (`_ONSETS` + `_VOWELS` + `_MIDDLES` + `_ENDINGS`) and
must avoid real words (`_NOT_NAMES`); town names are a head + tail ("Ash" + "ford") or an
adjective + noun ("Old Mill").
"""
from __future__ import annotations

SPLITS = ("train", "val", "test")
CORPUS_SPLITS = ("train", "val")
TASKS = ("qa_closed", "qa_extractive", "instructions", "sentiment", "ner", "summarization",
         "paraphrase", "preference", "pairs", "dialogue")
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
