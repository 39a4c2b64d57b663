"""Corpus scale: K = 22 and 32 domains in the seed design and the candidate search (the grid is built in time
proportional to its rows, K = 4 exactly as before), a micro run over 22 domains, and long documents tokenised in
bounded pieces with the ids of the whole."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest

from mergemix import simplex
from mergemix.data import tokens
from mergemix.search.design import seed_mixtures
from mergemix.search.surrogate import candidates, fine_search
from mergemix.stages.tokenizer import training_texts


def _product_grid(k: int, r: int) -> np.ndarray:
    """The grid as it was first written: itertools.product over the first k-1 coordinates (3^(k-1) at r=2)."""
    pts = [c for c in itertools.product(range(r + 1), repeat=k - 1) if sum(c) <= r]
    return np.array([[*c, r - sum(c)] for c in pts], dtype=float) / r


def test_grid_rows_and_order_are_those_of_the_product_grid():
    for k, r in itertools.product(range(1, 8), range(1, 6)):
        assert np.array_equal(simplex.grid(k, r), _product_grid(k, r)), (k, r)
        assert len(simplex.grid(k, r)) == simplex.grid_size(k, r)


@pytest.mark.parametrize("k", [22, 32])
def test_design_and_candidates_at_corpus_scale(k):
    names = [f"d{i:02d}" for i in range(k)]
    prior = {n: (i + 1) / (k * (k + 1) / 2) for i, n in enumerate(names)}
    t0 = time.perf_counter()
    design = seed_mixtures(names, k + 10, 3, [prior], 10.0, 0)
    cand = candidates(k, 20_000, 0)
    assert time.perf_counter() - t0 < 1.0
    assert design.shape == (k + 10, k) and cand.shape[1] == k and len(cand) >= 20_000
    for pts in (design, cand):
        assert np.all(pts >= 0) and np.allclose(pts.sum(axis=1), 1.0)
    assert np.array_equal(design[:k], np.eye(k)[::-1])  # every vertex first (grid order)
    assert len({tuple(np.round(p, 4)) for p in design}) == len(design)


def test_k4_design_and_candidates_are_pinned():
    """The default design and candidates: the search results of cached runs depend on them."""
    names = ["code", "math", "prose", "sft"]
    prior = {"code": 0.4, "math": 0.2, "prose": 0.3, "sft": 0.1}
    design = seed_mixtures(names, 40, 3, [prior], 10.0, 0)
    assert np.array_equal(design[:20], _product_grid(4, 3)) and len(design) == 40
    rng = np.random.default_rng(0)
    expected = np.vstack(
        [rng.dirichlet(np.ones(4), 2000), _product_grid(4, 8)]
    )  # C(11, 3) = 165 <= 2000 / 10
    assert np.array_equal(candidates(4, 2000, 0), expected)


class _Flat:
    def predict(self, alphas):
        return {"c": np.atleast_2d(alphas)[:, 0]}


def test_top_k_above_the_candidates_is_capped_with_a_warning(capsys):
    alpha, _ = fine_search(_Flat(), 2, 5, 1000, 0)
    err = capsys.readouterr().err
    n = len(candidates(2, 5, 0))
    assert f"warning: search.top_k 1000 exceeds the {n} candidates: capped at {n}" in err
    assert np.isclose(alpha.sum(), 1.0)


# ------------------------------------------------------------------------------------- long documents ---
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from mergemix.data.tokenizer import train_tokenizer

    text = (
        "def f(x):\n    return x + 42  # it's fine, isn't it?\n\nThe river's stone; 3.14 and 2,718.\t tab\n"
        * 50
    )
    return train_tokenizer([text], 320, tmp_path_factory.mktemp("tok"))


def _document(n_chars: int) -> str:
    rng = np.random.default_rng(1)
    words = [
        "river",
        "stone's",
        "x=1;",
        "(a,",
        "b)",
        "42",
        "3.14",
        "\tdef",
        "  return",
        "don't",
        "état",
        "数",
    ]
    seps = [" ", " ", "\n", ", ", ".\n\n", "  ", "\t"]
    out, n = [], 0
    while n < n_chars:
        w = words[rng.integers(len(words))] + seps[rng.integers(len(seps))]
        out.append(w)
        n += len(w)
    return "".join(out)


def test_long_document_is_tokenised_in_bounded_pieces_with_the_ids_of_the_whole(tokenizer, monkeypatch):
    doc = _document(60_000)
    whole = tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    monkeypatch.setattr(tokens, "CHUNK_CHARS", 2_000)
    monkeypatch.setattr(tokens, "BATCH_CHARS", 2_000)
    calls = []

    def counting(texts, **kw):
        calls.append(sum(map(len, texts)))
        return tokenizer(texts, **kw)

    counting.eos_token_id, counting.__len__ = tokenizer.eos_token_id, tokenizer.__len__
    monkeypatch.setattr(tokens, "dtype_for", lambda tok: np.dtype(np.uint16))
    packed = tokens.pack(counting, ["short one", doc, "another"])
    short = [
        tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for t in ("short one", "another")
    ]
    assert packed.tolist() == short[0] + whole + short[1]
    assert len(calls) >= 25 and max(calls) <= 2 * 2_000 + 2_000  # a piece, plus the pieces already pending
    assert tokens.splits_at_spaces(tokenizer)


def test_pieces_cut_only_before_a_lone_space_or_newline():
    doc = _document(20_000)
    cut = list(tokens.pieces(doc, 500))
    assert "".join(cut) == doc and len(cut) > 20
    for a, b in itertools.pairwise(cut):
        assert b[0] in " \n" and not a[-1].isspace() and not b[1].isspace()
    assert list(tokens.pieces("x" * 2_500, 1_000)) == ["x" * 2_000, "x" * 500]  # no space: cut at 2 x size


def test_tokenizer_training_takes_at_most_train_chars_of_a_long_document(monkeypatch):
    monkeypatch.setattr(tokens, "CHUNK_CHARS", 1_000)
    doc = _document(50_000)
    taken = list(training_texts(["short", doc, "never"], 4_321))
    assert taken[0] == "short" and sum(map(len, taken)) == 4_321 and max(map(len, taken[1:])) <= 2_000
    assert list(training_texts(["a" * 10, "b" * 10, "c"], 15)) == ["a" * 10, "b" * 10]  # short ones: whole


# ------------------------------------------------------------------------------------------ 22 domains ---
@pytest.mark.slow
def test_a_micro_run_over_22_domains_finishes(tmp_path, capsys, monkeypatch):
    from conftest import run_cli

    names = [f"d{i:02d}" for i in range(22)]
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "stone",
        "light",
        "shadow",
        "seven",
        "eleven",
        "proof",
    ]
    conf = tmp_path / "conf"
    (conf / "domains").mkdir(parents=True)
    (conf / "benchmarks").mkdir()
    sources = []
    for k, name in enumerate(names):
        docs = [" ".join(f"{words[(i * (k + 1) + j) % len(words)]}{k}" for i in range(80)) for j in range(30)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        sources.append(f"  {name}: {{source: files, paths: [{tmp_path}/{name}.jsonl]}}")
    (conf / "domains" / "many.yaml").write_text(
        "heldout_fraction: 0.2\nbase_mixture: token\nsources:\n" + "\n".join(sources) + "\n"
    )
    mc = '{"context": "alpha0 beta0", "choices": [" %s", " %s"], "label": 0}\n'
    (tmp_path / "bench.jsonl").write_text("".join(mc % (w, v) for w, v in zip(words, words[1:] + words[:1])))
    (conf / "benchmarks" / "mine.yaml").write_text(
        "metric: prob\nbatch_size: 8\nmax_length: 64\nbootstrap: 10\ncapabilities:\n"
        f"  words: {{domain: d00, tasks: [words]}}\ntasks:\n  words: {{source: jsonl, path: {tmp_path}/bench.jsonl}}\n"
    )
    args = [
        "run",
        "--config-dir",
        str(conf),
        "domains=many",
        "benchmarks=mine",
        "model=micro",
        "logger=none",
        "data.max_epochs=null",
        "tokenizer.vocab_size=300",
        "tokenizer.train_chars=40000",
        "base.tokens=8192",
        "base.warmup_steps=1",
        "experts.tokens=2048",
        "experts.warmup_steps=0",
        "mix.tokens=2048",
        "mix.warmup_steps=0",
        "search.budget=24",
        "search.n_candidates=2000",
        "search.top_k=10",
        "search.lgbm.n_estimators=20",
        "trainer.precision=32-true",
        "trainer.eval_dtype=null",
        "trainer.enable_progress_bar=false",
        f"paths.root={tmp_path}/home",
        f"hydra.run.dir={tmp_path}/hydra",
        f"paths.run_dir={tmp_path}/run",
    ]
    monkeypatch.chdir(tmp_path)
    t0 = time.time()
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    mixture = __import__("yaml").safe_load((tmp_path / "run" / "mixture.yaml").read_text())
    assert sorted(mixture["alpha_star"]) == names and abs(sum(mixture["alpha_star"].values()) - 1) < 1e-4
    assert {"objective", "U"} <= set(mixture["best_seed"])
    assert time.time() - t0 < 600
