import json

import numpy as np
import pytest
import torch

from mergemix.benchmarks.evaluator import Evaluator, _encode_pair
from mergemix.benchmarks.suite import Suite, normalised
from mergemix.benchmarks.tasks import Task, load_jsonl_task
from mergemix.errors import MergeMixError


def _brute_loglik(model, tok, context, choice):
    ctx, cont = _encode_pair(tok, context, choice)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_mc_scores_match_brute_force_loglikelihood(micro_run):
    pipe, _ = micro_run
    from mergemix.models import load_checkpoint

    model = load_checkpoint(pipe.base_dir).eval()
    tok = pipe.tokenizer
    items = [
        {"context": "Q: What is 3 + 4?\nA:", "choices": [" 7", " 8", " 12", " 1"], "label": 0},
        {"context": "def f(x):\n    return", "choices": [" x", " None", " self", " 1"], "label": 0},
        {
            "context": "### Instruction:\nOpposite of 'hot':\n### Response:\n",
            "choices": ["cold", "warm weather", "big", "small"],
            "label": 0,
        },
    ]
    ev = Evaluator(tok, {"t": Task("t", "mc", items)}, batch_size=3)
    per = ev.per_item(model)["t"]
    for i, it in enumerate(items):
        ll = np.array([_brute_loglik(model, tok, it["context"], c) for c in it["choices"]])
        assert per["acc"][i] == float(np.argmax(ll) == it["label"])
        assert per["prob"][i] == pytest.approx(np.exp(ll[0] - np.logaddexp.reduce(ll)), rel=1e-4, abs=1e-6)


def test_normalisation_against_chance():
    task = Task("t", "mc", [{"context": "", "choices": ["a", "b", "c", "d"], "label": 0}] * 4)
    assert task.chance == 0.25
    norm = normalised(task, {"acc": np.array([1.0, 0.0, 0.25, 0.25])}, "acc")
    assert norm.tolist() == [1.0, -1 / 3, 0.0, 0.0]
    gen = Task("g", "gen", [{"prompt": "", "answer": "1"}])
    assert gen.chance == 0.0


def test_item_bootstrap_keeps_its_definition_and_seed():
    """The std of capability scores and U over item resamples (scipy.stats.bootstrap, vectorised): within 6% of
    the hand-written loop's numbers on these fixed items at 4000 resamples (other draws of the same seeded
    generator: a std estimate's relative error is ~1/sqrt(2n) = 1.1%, 6% is over 3 sigma of the difference) and
    of the analytic std of a mean; the same seed gives the same numbers; a one-item task adds no noise."""
    from mergemix.benchmarks.suite import bootstrap, paired_gap

    rng = np.random.default_rng(11)
    norm = {
        "t1": rng.uniform(-0.2, 1, 40),
        "t2": rng.integers(0, 2, 25).astype(float),
        "t3": rng.normal(0.3, 0.5, 60),
        "t4": rng.uniform(0, 1, 7),
    }
    caps = {"a": ["t1", "t2"], "b": ["t3"], "c": ["t2", "t4"]}
    loop = (
        {"a": 0.05623803410221384, "b": 0.062017938619570695, "c": 0.06739011979518653},
        0.04275153104615718,
    )
    cap_std, u_std = bootstrap(norm, caps, 4000, 0)
    assert cap_std == pytest.approx(loop[0], rel=0.06) and u_std == pytest.approx(loop[1], rel=0.06)
    se = {t: np.sqrt(np.var(v) / len(v)) for t, v in norm.items()}
    assert cap_std == pytest.approx(
        {c: np.sqrt(sum(se[t] ** 2 for t in ms)) / len(ms) for c, ms in caps.items()}, rel=0.06
    )
    assert bootstrap(norm, caps, 200, 3) == bootstrap(norm, caps, 200, 3) != bootstrap(norm, caps, 200, 4)
    assert bootstrap({"x": np.array([0.5])}, {"a": ["x"]}, 100, 0) == ({"a": 0.0}, 0.0)
    assert bootstrap(norm, caps, 0, 0) == ({"a": 0.0, "b": 0.0, "c": 0.0}, 0.0)
    result = {"items": norm, "capabilities": {c: 0.0 for c in caps}, "U": 0.0}
    assert paired_gap(result, result, caps)["U_std"] == 0.0  # the same items: no gap noise


def test_suite_scores_and_generation(micro_run):
    _pipe, summary = micro_run
    base = summary["rows"]["base"]
    assert set(base["capabilities"]) == {"code", "instruct", "language", "math"}
    assert base["U"] == pytest.approx(np.mean(list(base["capabilities"].values())))
    assert base["U_std"] > 0
    assert 0.0 <= base["tasks"]["math_gen"]["exact_match"] <= 1.0


def test_user_jsonl_benchmark(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"context": "2+2=", "choices": ["4", "5"], "label": 0}) + "\n")
    task = load_jsonl_task("mine", p)
    assert task.kind == "mc" and task.chance == 0.5
    g = tmp_path / "g.jsonl"
    g.write_text(json.dumps({"prompt": "2+2=", "answer": " 4 "}) + "\n")
    assert load_jsonl_task("gen", g).items == [{"prompt": "2+2=", "answer": "4"}]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"context": "x", "choices": ["a", "b"], "label": 5}', "label must be an integer index"),
        ('{"context": "x", "choices": ["a"], "label": 0}', "at least two strings"),
        ("not json", "not valid JSON"),
        ('{"prompt": "x"}', "needs prompt and answer"),
    ],
)
def test_bad_user_benchmark(tmp_path, line, message):
    p = tmp_path / "b.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(MergeMixError, match=message):
        load_jsonl_task("mine", p)


def test_suite_rejects_capability_with_unknown_task(micro_run):
    pipe, _ = micro_run
    with pytest.raises(MergeMixError, match="unknown or no tasks"):
        Suite(pipe.tokenizer, {}, {"math": ["nope"]})
