"""Deterministic generators of math problems and SFT-style instruction/response pairs.

Every item is a (prompt, answer, choices) triple. A stable hash of the prompt decides whether an item belongs to
the held-out partition, so benchmark prompts never appear in any training text, whatever the seeds."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

HELDOUT_FRACTION = 0.15


@dataclass(frozen=True)
class Item:
    prompt: str
    answer: str
    distractors: tuple[str, ...] = field(default=())
    skill: str = ""


def is_heldout(prompt: str) -> bool:
    h = int(hashlib.md5(prompt.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < HELDOUT_FRACTION


def _num_distractors(rng: random.Random, gold: int, n: int = 3) -> tuple[str, ...]:
    pool = {gold + d for d in (-10, -2, -1, 1, 2, 10, 3, -3)} | {
        rng.randint(0, max(20, gold * 2)) for _ in range(4)
    }
    pool = sorted(x for x in pool if x >= 0 and x != gold)
    return tuple(str(x) for x in rng.sample(pool, n))


# ----------------------------------------------------------------------------------------------------- math ---
NAMES = ["Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lea", "Max", "Nia"]
THINGS = ["apples", "books", "coins", "cards", "pens", "shells", "stamps", "marbles", "eggs", "cups"]


def math_item(rng: random.Random) -> Item:
    kind = rng.choice(["add", "add", "sub", "mul", "word_add", "word_sub", "compare"])
    if kind == "add":
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        return Item(f"What is {a} + {b}?", str(a + b), _num_distractors(rng, a + b), kind)
    if kind == "sub":
        a = rng.randint(0, 30)
        b = rng.randint(0, a)
        return Item(f"What is {a} - {b}?", str(a - b), _num_distractors(rng, a - b), kind)
    if kind == "mul":
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        return Item(f"What is {a} * {b}?", str(a * b), _num_distractors(rng, a * b), kind)
    if kind == "compare":
        a, b = rng.sample(range(100), 2)
        return Item(
            f"Which is larger, {a} or {b}?",
            str(max(a, b)),
            (str(min(a, b)), str(a + b), str(abs(a - b))),
            kind,
        )
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if kind == "word_add":
        a, b = rng.randint(1, 15), rng.randint(1, 15)
        q = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
        return Item(q, str(a + b), _num_distractors(rng, a + b), kind)
    a = rng.randint(2, 20)
    b = rng.randint(1, a)
    q = f"{name} has {a} {thing} and gives away {b}. How many {thing} are left?"
    return Item(q, str(a - b), _num_distractors(rng, a - b), kind)


def math_worked(item: Item) -> str:
    """Training text for a math item: question, short worked step, answer."""
    return f"Q: {item.prompt}\nA: {item.answer}\n"


# ------------------------------------------------------------------------------------------------------ sft ---
ANTONYMS = [
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("up", "down"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("hard", "soft"),
    ("old", "new"),
    ("rich", "poor"),
    ("strong", "weak"),
    ("wet", "dry"),
    ("high", "low"),
    ("long", "short"),
    ("near", "far"),
    ("loud", "quiet"),
    ("clean", "dirty"),
    ("true", "false"),
    ("win", "lose"),
    ("push", "pull"),
    ("buy", "sell"),
    ("begin", "end"),
    ("day", "night"),
    ("left", "right"),
    ("thick", "thin"),
    ("sweet", "sour"),
    ("brave", "afraid"),
    ("first", "last"),
]
PLURAL_NOUNS = [
    "cat",
    "dog",
    "box",
    "bus",
    "city",
    "baby",
    "house",
    "tree",
    "glass",
    "fox",
    "lady",
    "car",
    "dish",
    "church",
    "party",
    "book",
    "key",
    "toy",
    "day",
    "bird",
    "watch",
    "story",
    "pen",
    "cup",
    "brush",
    "penny",
    "road",
    "star",
    "boat",
    "class",
    "family",
    "river",
    "table",
    "window",
]
IRREGULAR = {
    "child": "children",
    "man": "men",
    "woman": "women",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "person": "people",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
CATEGORIES = {
    "animal": ["horse", "tiger", "rabbit", "sheep", "eagle", "whale", "mouse", "camel", "snake", "goat"],
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum", "melon"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "brown", "pink", "black", "white"],
    "tool": ["hammer", "saw", "drill", "wrench", "shovel", "rake", "chisel", "pliers", "axe", "spade"],
}
POSITIVE = ["wonderful", "great", "lovely", "excellent", "delightful", "amazing", "pleasant", "superb"]
NEGATIVE = ["terrible", "awful", "boring", "horrible", "dreadful", "poor", "disappointing", "nasty"]
SUBJECTS = [
    "the movie",
    "the food",
    "the trip",
    "the book",
    "the concert",
    "the hotel",
    "the game",
    "the class",
]


def plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    return noun + "s"


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("" if ones == 0 else "-" + ONES[ones])


def _pick_other(rng: random.Random, pool: list[str], gold: str, n: int = 3) -> tuple[str, ...]:
    return tuple(rng.sample([p for p in dict.fromkeys(pool) if p != gold], n))


def sft_item(rng: random.Random) -> Item:
    kind = rng.choice(["antonym", "plural", "next", "spell", "category", "parity", "repeat", "sentiment"])
    if kind == "antonym":
        a, b = rng.choice(ANTONYMS)
        if rng.random() < 0.5:
            a, b = b, a
        q = rng.choice(
            [f"What is the opposite of '{a}'?", f"Give the antonym of '{a}'.", f"Opposite of '{a}':"]
        )
        return Item(q, b, _pick_other(rng, [w for pair in ANTONYMS for w in pair], b), kind)
    if kind == "plural":
        noun = rng.choice(PLURAL_NOUNS + list(IRREGULAR))
        gold = plural(noun)
        wrong = {noun + "s", noun + "es", noun[:-1] + "ies", noun + "ies", noun} - {gold}
        q = rng.choice([f"What is the plural of '{noun}'?", f"Write the plural form of '{noun}'."])
        return Item(q, gold, tuple(sorted(wrong))[:3], kind)
    if kind == "next":
        seq = rng.choice([DAYS, MONTHS])
        i = rng.randrange(len(seq))
        gold = seq[(i + 1) % len(seq)]
        q = rng.choice([f"What comes after {seq[i]}?", f"Name the one that follows {seq[i]}."])
        return Item(q, gold, _pick_other(rng, seq, gold), kind)
    if kind == "spell":
        n = rng.randint(0, 99)
        gold = number_words(n)
        others = [number_words(m) for m in {(n + 1) % 100, max(n - 1, 0), (n + 10) % 100, (n * 7 + 3) % 100}]
        return Item(
            rng.choice([f"Write {n} in words.", f"Spell the number {n}."]),
            gold,
            _pick_other(rng, others + ONES, gold),
            kind,
        )
    if kind == "category":
        cat, other = rng.sample(sorted(CATEGORIES), 2)
        gold = rng.choice(CATEGORIES[cat])
        wrong = rng.sample(CATEGORIES[other], 2)
        opts = [gold, *wrong]
        rng.shuffle(opts)
        q = f"Which of these is a {cat}: {', '.join(opts)}?"
        return Item(
            q, gold, (*wrong, rng.choice(CATEGORIES[rng.choice([c for c in CATEGORIES if c != cat])])), kind
        )
    if kind == "parity":
        n = rng.randint(0, 999)
        gold = "even" if n % 2 == 0 else "odd"
        return Item(
            f"Is {n} even or odd?", gold, ("odd" if gold == "even" else "even", "prime", "zero"), kind
        )
    if kind == "repeat":
        word = rng.choice([w for ws in CATEGORIES.values() for w in ws])
        k = rng.randint(2, 3)
        gold = " ".join([word] * k)
        return Item(
            f"Repeat the word '{word}' {'twice' if k == 2 else 'three times'}.",
            gold,
            (" ".join([word] * (5 - k)), word, " ".join([word] * 4)),
            kind,
        )
    good = rng.random() < 0.5
    adj = rng.choice(POSITIVE if good else NEGATIVE)
    q = f"Classify the sentiment: '{rng.choice(SUBJECTS)} was {adj}'."
    gold = "positive" if good else "negative"
    return Item(q, gold, ("negative" if good else "positive", "neutral", "unknown"), kind)


def sft_text(item: Item) -> str:
    return f"### Instruction:\n{item.prompt}\n### Response:\n{item.answer}\n"


GENERATORS = {"math": math_item, "sft": sft_item}


def generate(kind: str, n: int, seed: int, heldout: bool) -> list[Item]:
    """n distinct-by-sampling items of one generator from one side of the held-out partition."""
    rng = random.Random(f"{kind}-{seed}-{heldout}")
    gen, out, tries = GENERATORS[kind], [], 0
    while len(out) < n and tries < n * 200:
        tries += 1
        item = gen(rng)
        if is_heldout(item.prompt) == heldout:
            out.append(item)
    return out
