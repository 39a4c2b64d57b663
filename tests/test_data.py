import json

import numpy as np
import pytest
from conftest import load_domain

from mergemix.data import embedded, synthetic
from mergemix.data.sampler import allocate, plan_mixture
from mergemix.data.tokenizer import load_tokenizer, train_tokenizer
from mergemix.errors import MergeMixError


def test_allocate_exact_counts():
    counts = allocate({"a": 0.5, "b": 0.3, "c": 0.2}, 101)
    assert sum(counts.values()) == 101
    assert all(abs(counts[k] - r * 101) < 1 for k, r in {"a": 0.5, "b": 0.3, "c": 0.2}.items())


def test_sampler_exact_ratios_and_determinism():
    lengths = {"code": 10_000, "math": 5_000, "prose": 20_000}
    ratios = {"code": 0.5, "math": 0.25, "prose": 0.25}
    p1 = plan_mixture(lengths, ratios, 400, 32, seed=3)
    p2 = plan_mixture(lengths, ratios, 400, 32, seed=3)
    p3 = plan_mixture(lengths, ratios, 400, 32, seed=4)
    assert p1.realised_tokens() == {"code": 200 * 32, "math": 100 * 32, "prose": 100 * 32}
    assert np.array_equal(p1.start, p2.start) and np.array_equal(p1.domain, p2.domain)
    assert not np.array_equal(p1.start, p3.start)
    for d, name in enumerate(p1.domains):
        assert (p1.start[p1.domain == d] + 32 <= lengths[name]).all()


def test_sampler_rejects_unknown_domain():
    with pytest.raises(MergeMixError, match="unknown domains"):
        plan_mixture({"code": 1000}, {"poetry": 1.0}, 10, 8, 0)


def test_tokenizer_trains_saves_and_reloads_offline(tmp_path):
    texts = ["def f(x):\n    return x + 1\n", "Q: What is 12 + 7?\nA: 19\n", "The quick brown fox."] * 50
    tok = train_tokenizer(texts, 300, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    for t in texts[:3]:
        ids = again(t, add_special_tokens=False)["input_ids"]
        assert again.decode(ids) == t
        assert ids == tok(t, add_special_tokens=False)["input_ids"]
    assert again.tokenize("123") == ["1", "2", "3"]  # digits are split one per token
    assert again.eos_token_id is not None and again.pad_token_id is not None


def test_embedded_domains_are_deterministic():
    a = embedded.build("math", 0, 0.05, n_items=500)
    b = embedded.build("math", 0, 0.05, n_items=500)
    c = embedded.build("math", 1, 0.05, n_items=500)
    assert a == b and a != c
    assert embedded.build("code", 0, 0.05, max_chars=50_000) == embedded.build(
        "code", 0, 0.05, max_chars=50_000
    )


@pytest.mark.parametrize("kind", ["math", "sft"])
def test_benchmark_prompts_never_in_training_text(kind):
    train_docs, _ = embedded.build(kind, 0, 0.05, n_items=3000)
    text = "\n".join(train_docs)
    held = synthetic.generate(kind, 200, 0, heldout=True)
    assert held and not any(f"{it.prompt}\n" in text for it in held)


def test_user_domain_files(tmp_path):
    (tmp_path / "a.txt").write_text("plain text document")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "json doc one"}) + "\n" + json.dumps({"text": "two"})
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["parquet doc"]}), tmp_path / "c.parquet")
    txt, _ = load_domain("w", {"source": "files", "paths": [str(tmp_path / "a.txt")]}, 0, 0.0)
    js, _ = load_domain("w", {"source": "files", "paths": [str(tmp_path / "*.jsonl")]}, 0, 0.0)
    pa_, _ = load_domain(
        "w", {"source": "files", "paths": [str(tmp_path / "c.parquet")], "text_field": "content"}, 0, 0.0
    )
    assert txt == ["plain text document"] and sorted(js) == ["json doc one", "two"] and pa_ == ["parquet doc"]


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_text(""), "hold no text"),
        (lambda p: p.write_text("   \n"), "hold no text"),
    ],
)
def test_missing_or_empty_domain_file(tmp_path, setup, message):
    path = tmp_path / "d.txt"
    setup(path)
    with pytest.raises(MergeMixError, match=message):
        load_domain("web", {"source": "files", "paths": [str(path)]}, 0, 0.05)


def test_bad_jsonl_domain_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(MergeMixError, match=r"d.jsonl:2"):
        load_domain("web", {"source": "files", "paths": [str(tmp_path / "d.jsonl")]}, 0, 0.05)
