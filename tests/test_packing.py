"""Packed multiple-choice scoring: a prefix-tree row per item gives every choice the log-likelihood of its own causal
forward (lm-eval's request), with left-truncated inputs and choices that change the context's last tokens too."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mergemix.benchmarks.evaluator import Evaluator, _encode_pair
from mergemix.benchmarks.packing import batches, prefix_tree
from mergemix.benchmarks.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["river", "stone", "light", "shadow", "seven", "eleven", "proof", "number", "garden", "window"]
MAX_LENGTH = 24


def test_prefix_tree_layout():
    row = prefix_tree([([1, 2, 3], [(2, 9, 0)]), ([1, 2, 4], [(1, 4, 1), (2, 8, 1)]), ([5], [(0, 7, 2)])])
    assert row.tokens == [1, 2, 3, 4, 5]
    assert row.positions == [0, 1, 2, 2, 0]
    assert row.end == [4, 4, 3, 4, 5]  # 3 and 4 are siblings under 2; 5 is a second root
    assert row.targets == [(2, 9, 0), (1, 4, 1), (3, 8, 1), (4, 7, 2)]
    assert not row.is_path and prefix_tree([([1, 2], []), ([1], [])]).is_path


def test_batches_hold_every_row_once_sorted_by_length():
    rows = [prefix_tree([([7] * n, [(n - 1, 1, slot)])]) for slot, n in enumerate([30, 2, 3, 30, 2, 31])]
    rows.append(prefix_tree([([1, 2], [(1, 3, 6)]), ([1, 4], [(1, 5, 7)])]))  # a branching row
    out = batches(rows, pad_id=0, batch_size=2)
    assert all(b.input_ids.shape[0] <= 2 for b in out)
    assert sorted(s for b in out for s in b.slot) == list(range(8))
    assert sum(b.n_tokens for b in out) == sum(len(r.tokens) for r in rows)
    for b in out:  # as wide as its longest row, and short rows are not padded to the long ones
        lengths = (b.input_ids != 0).sum(1)
        assert b.input_ids.shape[1] == int(lengths.max()) and not (lengths.min() <= 3 and lengths.max() >= 30)
    trees = [b for b in out if b.end is not None]  # only the branching row needs a mask
    assert len(trees) == 1 and {6, 7} <= set(trees[0].slot.tolist())


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from mergemix.data.tokenizer import train_tokenizer

    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) + f" {rng.randint(0, 999)}" for _ in range(300)]
    return train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok") / "tok")


def _items(rng: random.Random) -> list[dict]:
    items = []
    for n_words in (
        2,
        4,
        16,
        30,
    ):  # the longer contexts exceed MAX_LENGTH tokens and are truncated from the left
        context = " ".join(rng.choice(WORDS) for _ in range(n_words))
        items += [
            {"context": context, "choices": [" river stone", " river light", " seven", " river"], "label": 0},
            {"context": context + " =", "choices": [" 12", " 11", " 1", " 120 7"], "label": 1},
            {"context": context + " riv", "choices": ["er", "er stone", " stone", "ers"], "label": 2},
            {"context": context + " ", "choices": ["light", "shadow eleven", "7"], "label": 0},
        ]
    return items


def _reference(model, tok, item: dict) -> np.ndarray:
    """lm-eval's loglikelihood request, one choice at a time: one unpadded causal forward each."""
    out = []
    for choice in item["choices"]:
        ctx, cont = _encode_pair(tok, item["context"], choice)
        inp = (ctx + cont)[-(MAX_LENGTH + 1) :][:-1]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([inp])).logits[0].float(), -1)
        out.append(float(sum(logp[len(inp) - len(cont) + i, t] for i, t in enumerate(cont))))
    return np.array(out)


@pytest.mark.parametrize("arch, attention", [("micro", "sdpa"), ("micro", "eager"), ("micro_moe", "sdpa")])
def test_packed_rows_give_each_choice_its_own_forward(tok, arch, attention):
    from mergemix.models import build_model

    cfg = yaml.safe_load((ROOT / "conf" / "model" / f"{arch}.yaml").read_text())
    model = build_model({**cfg, "max_position_embeddings": cfg["seq_len"]}, len(tok), 0).eval()
    model.set_attn_implementation(attention)
    items = _items(random.Random(1))
    ev = Evaluator(tok, {"t": Task("t", "mc", items)}, batch_size=5, max_length=MAX_LENGTH)
    # the cases this is about are really there: truncation, contexts that differ per choice, branching rows
    pairs = [[_encode_pair(tok, it["context"], c) for c in it["choices"]] for it in items]
    assert any(len(c) + len(x) > MAX_LENGTH + 1 for p in pairs for c, x in p)
    assert any(len({tuple(c) for c, _ in p}) > 1 for p in pairs)
    assert any(b.end is not None for b in ev.mc_batches["t"])
    assert ev.packs(model)

    reference = [_reference(model, tok, it) for it in items]
    for packed in (True, False):
        ll = ev.log_likelihoods(model, "t", packed=packed)
        for ours, ref in zip(ll, reference):
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    assert ev.n_tokens() < sum(len(c) + len(x) - 1 for p in pairs for c, x in p)  # shared tokens counted once
