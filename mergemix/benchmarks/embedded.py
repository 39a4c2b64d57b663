"""Embedded downstream benchmarks, built only from held-out documents and held-out generator items.

- cloze (prose, code): the next word of a held-out document against three distractors drawn with the same
  frequency distribution, so the unigram prior alone scores chance and only context helps.
- synthetic_mc / synthetic_gen (math, sft): held-out prompts with the gold answer among distractors, or
  exact-match generation of the answer."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable

from mergemix.benchmarks.tasks import Task
from mergemix.data import synthetic

WORD = re.compile(r"[A-Za-z_][A-Za-z_0-9]+")


def cloze(
    name: str,
    docs: list[str],
    n: int,
    seed: int,
    vocab: int = 400,
    context_chars: int = 240,
    single_token: Callable[[str], bool] | None = None,
) -> Task:
    """With `single_token` (is " word" one token?), only such words are used, after a space: every choice is
    then one token and one forward pass of the context scores all four."""
    counts = Counter(w for d in docs for w in WORD.findall(d))
    if single_token is not None:
        counts = Counter({w: c for w, c in counts.items() if single_token(w)})
    top = {w for w, _ in counts.most_common(vocab)}
    lead_chars = " " if single_token is not None else " ("
    rng = random.Random(f"cloze-{name}-{seed}")
    sites = [
        (i, m.start())
        for i, d in enumerate(docs)
        for m in WORD.finditer(d)
        if m.group() in top and m.start() >= context_chars and d[m.start() - 1] in lead_chars
    ]
    rng.shuffle(sites)
    by_occurrence = [w for w, c in counts.items() if w in top for _ in range(c)]
    items, seen = [], set()
    for i, pos in sites:
        if len(items) >= n:
            break
        doc = docs[i]
        gold = WORD.match(doc, pos).group()
        lead = " " if doc[pos - 1] == " " else ""
        context = doc[pos - context_chars : pos - len(lead)]
        context = context[context.find(" ") + 1 :] if " " in context else context
        if (context, gold) in seen:
            continue
        seen.add((context, gold))
        wrong: list[str] = []
        while len(wrong) < 3:
            w = rng.choice(by_occurrence)
            if w != gold and w not in wrong:
                wrong.append(w)
        choices = [gold, *wrong]
        rng.shuffle(choices)
        items.append(
            {"context": context, "choices": [lead + c for c in choices], "label": choices.index(gold)}
        )
    return Task(name, "mc", items)


def _templates(kind: str) -> tuple[str, str]:
    return ("Q: {p}\nA:", " ") if kind == "math" else ("### Instruction:\n{p}\n### Response:\n", "")


def _unique_heldout(kind: str, n: int, seed: int) -> list[synthetic.Item]:
    items = {it.prompt: it for it in synthetic.generate(kind, n * 6, seed + 7919, heldout=True)}
    return list(items.values())[:n]


def synthetic_mc(name: str, generator: str, n: int, seed: int) -> Task:
    fmt, lead = _templates(generator)
    rng = random.Random(f"mc-{name}-{seed}")
    items = []
    for it in _unique_heldout(generator, n, seed):
        choices = [it.answer, *it.distractors[:3]]
        rng.shuffle(choices)
        items.append(
            {
                "context": fmt.format(p=it.prompt),
                "choices": [lead + c for c in choices],
                "label": choices.index(it.answer),
            }
        )
    return Task(name, "mc", items)


def synthetic_gen(name: str, generator: str, n: int, seed: int, max_new_tokens: int = 6) -> Task:
    fmt, _ = _templates(generator)
    items = [
        {"prompt": fmt.format(p=it.prompt), "answer": it.answer}
        for it in _unique_heldout(generator, n, seed + 1)
    ]
    return Task(name, "gen", items, max_new_tokens)
