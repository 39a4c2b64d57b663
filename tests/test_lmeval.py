"""lm-eval tasks as benchmark members: lm-eval and the fast evaluator agree item by item on the same local task and
model; unknown, unloadable and uninstalled members fail with one clear error."""

import json
import random

import numpy as np
import pytest

from mergemix.benchmarks import lmeval
from mergemix.benchmarks.suite import Suite
from mergemix.benchmarks.tasks import load_jsonl_task
from mergemix.errors import MergeMixError

needs_lmeval = pytest.mark.skipif(
    not lmeval.available(), reason='lm-eval is not installed (pip install "lm-eval[hf]==0.4.13")'
)
WORDS = [
    "river",
    "stone",
    "light",
    "shadow",
    "seven",
    "eleven",
    "proof",
    "number",
    "garden",
    "window",
    "quickly",
]


def _items(n=40, seed=0):
    """Multiple-choice items with 2-4 multi-word choices. Contexts never end in whitespace: our evaluator moves
    only trailing spaces into the continuation, lm-eval moves all trailing whitespace (newlines too)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(2, 4)
        choices = [" " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(k)]
        out.append(
            {
                "context": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))),
                "choices": choices,
                "label": rng.randrange(k),
            }
        )
    return out


def _task_dir(root, name="toy_mc", dataset_path="json", output_type="multiple_choice"):
    d = root / "lm_tasks"
    d.mkdir(exist_ok=True)
    data = d / "items.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in _items()))
    if output_type == "multiple_choice":
        body = (
            "doc_to_text: '{{context}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
            "target_delimiter: ''\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
        )
    else:
        body = (
            "doc_to_text: '{{context}}'\ndoc_to_target: '{{choices[label]}}'\n"
            "generation_kwargs: {until: ['\\n'], max_gen_toks: 3, do_sample: false}\n"
            "metric_list:\n  - metric: exact_match\n"
        )
    (d / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: {dataset_path}\n"
        f"dataset_kwargs: {{data_files: {{test: {data}}}, cache_dir: {root / 'hf_cache'}}}\n"
        f"test_split: test\noutput_type: {output_type}\n{body}"
    )
    return d, data


@pytest.fixture(scope="module")
def tok_and_model(tmp_path_factory):
    from mergemix.data.tokenizer import train_tokenizer
    from mergemix.models import build_model

    texts = [it["context"] + c for it in _items(200, 1) for c in it["choices"]]
    tok = train_tokenizer(texts, 300, tmp_path_factory.mktemp("tok") / "tok")
    cfg = {
        "name": "micro",
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 176,
        "seq_len": 128,
        "max_position_embeddings": 128,
    }
    return tok, build_model(cfg, len(tok), 0).eval()


@needs_lmeval
def test_lmeval_member_matches_the_fast_evaluator_item_by_item(tmp_path, tok_and_model):
    tok, model = tok_and_model
    d, data = _task_dir(tmp_path)
    theirs = lmeval.resolve({"theirs": {"source": "lmeval", "task": "toy_mc", "include_path": str(d)}})[
        "theirs"
    ]
    ours = load_jsonl_task("ours", data)
    assert theirs.kind == "mc" and len(theirs.items) == len(ours.items) and theirs.chance == ours.chance
    suite = Suite(tok, {"ours": ours, "theirs": theirs}, {"a": ["ours"], "b": ["theirs"]}, "prob", 8, 128, 0)
    assert suite.lmeval is not None and list(suite.evaluator.tasks) == ["ours"]
    scores = suite.per_item(model)
    for metric in ("acc", "acc_norm"):
        assert np.array_equal(scores["ours"][metric], scores["theirs"][metric]), metric
    np.testing.assert_allclose(scores["ours"]["prob"], scores["theirs"]["prob"], atol=1e-5)
    assert 0 < scores["ours"]["acc"].mean() < 1  # a real spread of right and wrong items, not a constant
    result = suite.summarize(scores)
    assert result["capabilities"]["a"] == pytest.approx(result["capabilities"]["b"], abs=1e-5)
    again = suite.per_item(model)["theirs"]  # a second call on the same (in-place merged) model object
    np.testing.assert_array_equal(again["acc"], scores["theirs"]["acc"])


@needs_lmeval
def test_limit_and_generation_members(tmp_path, tok_and_model):
    tok, model = tok_and_model
    d, data = _task_dir(tmp_path)
    _task_dir(tmp_path, "toy_gen", output_type="generate_until")
    tasks = lmeval.resolve(
        {
            "mc10": {"task": "toy_mc", "include_path": str(d), "limit": 10},
            "gen": {"task": "toy_gen", "include_path": str(d), "limit": 5},
        }
    )
    assert (
        len(tasks["mc10"].items) == 10
        and tasks["gen"].kind == "gen"
        and tasks["gen"].score_key == "exact_match"
    )
    suite = Suite(
        tok,
        {"ours": load_jsonl_task("ours", data, limit=10), **tasks},
        {"a": ["ours"], "b": ["mc10"], "c": ["gen"]},
        "acc",
        8,
        128,
        0,
    )
    scores = suite.per_item(model)
    assert np.array_equal(scores["ours"]["acc"], scores["mc10"]["acc"])
    gen = scores["gen"]["exact_match"]
    assert gen.shape == (5,) and set(np.unique(gen)) <= {0.0, 1.0}
    assert suite.summarize(scores)["capabilities"]["c"] == pytest.approx(gen.mean())


@needs_lmeval
def test_members_print_no_git_lines(tmp_path, tok_and_model, monkeypatch, capfd):
    """lm-eval runs `git describe` in the working directory; outside a repository git's stderr stays silent."""
    tok, model = tok_and_model
    d, _ = _task_dir(tmp_path)
    monkeypatch.chdir(tmp_path)  # not a git repository
    tasks = lmeval.resolve({"mc": {"task": "toy_mc", "include_path": str(d), "limit": 4}})
    Suite(tok, tasks, {"a": ["mc"]}, "acc", 8, 128, 0).per_item(model)
    out, err = capfd.readouterr()
    assert "not a git repository" not in out + err


@needs_lmeval
@pytest.mark.parametrize(
    "spec, message",
    [
        ({"task": "no_such_task"}, "lm-eval task 'no_such_task' not found in"),
        ({"task": "toy_hub"}, "lm-eval task 'toy_hub' cannot be loaded"),
        ({"task": "toy_mc", "include_path": "/no/such/dir"}, "include_path not found"),
        ({"task": "toy_mc", "limit": 0}, "limit must be a positive number"),
        ({}, "needs `task: <lm-eval task name>`"),
    ],
)
def test_bad_members_are_one_clear_error(tmp_path, spec, message):
    d, _ = _task_dir(tmp_path)
    _task_dir(tmp_path, "toy_hub", dataset_path="nobody-offline/no_such_dataset")
    spec = {"include_path": str(d), **spec}
    with pytest.raises(MergeMixError, match=message) as err:
        lmeval.resolve({"x": spec})
    assert "\n" not in str(err.value)


def test_missing_lmeval_package_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(lmeval, "available", lambda: False)
    with pytest.raises(MergeMixError, match=r"use lm-eval, which is not installed: pip install"):
        lmeval.resolve({"x": {"task": "toy_mc", "include_path": str(tmp_path)}})


@needs_lmeval
def test_pipeline_suite_carries_lmeval_members(tmp_path, tok_and_model):
    """Through the config: validated up front, stored with the benchmarks and scored next to native tasks."""
    from mergemix.cli import compose, to_plain
    from mergemix.pipeline import Pipeline

    d, data = _task_dir(tmp_path)
    (tmp_path / "web.jsonl").write_text(
        "".join(json.dumps({"text": it["context"]}) + "\n" for it in _items(300, 2))
    )
    conf = tmp_path / "conf"
    (conf / "domains").mkdir(parents=True)
    (conf / "benchmarks").mkdir()
    (conf / "domains" / "one.yaml").write_text(
        f"heldout_fraction: 0.0\nbase_mixture: token\nsources:\n  web: {{source: files, paths: [{tmp_path}/web.jsonl]}}\n"
        f"  web2: {{source: files, paths: [{tmp_path}/web.jsonl]}}\n"  # a mixture needs two domains
    )
    (conf / "benchmarks" / "mixed.yaml").write_text(
        f"metric: prob\nbatch_size: 8\nmax_length: 128\nbootstrap: 10\ncapabilities:\n"
        f"  words: {{domain: web, tasks: [ours, theirs]}}\ntasks:\n"
        f"  ours: {{source: jsonl, path: {data}}}\n"
        f"  theirs: {{source: lmeval, task: toy_mc, include_path: {d}}}\n"
    )
    cfg = to_plain(
        compose(
            [
                "domains=one",
                "benchmarks=mixed",
                "model=micro",
                "logger=none",
                "tokenizer.vocab_size=300",
                "tokenizer.train_chars=20000",
                f"paths.root={tmp_path}/out",
            ],
            str(conf),
        )
    )
    pipe = Pipeline(cfg, tmp_path / "run")
    suite = pipe.suite
    assert suite.tasks["theirs"].lmeval["task"] == "toy_mc" and suite.lmeval is not None
    from mergemix.models import build_model

    m = cfg["model"]
    model = build_model({**m, "max_position_embeddings": m["seq_len"]}, len(pipe.tokenizer), 0).eval()
    scores = suite.per_item(model)
    assert np.array_equal(scores["ours"]["acc"], scores["theirs"]["acc"])
    bad = to_plain(
        compose(
            [
                "domains=one",
                "benchmarks=mixed",
                "model=micro",
                "logger=none",
                f"paths.root={tmp_path}/out",
                "benchmarks.tasks.theirs.task=toy_nope",
            ],
            str(conf),
        )
    )
    with pytest.raises(MergeMixError, match="lm-eval task 'toy_nope' not found"):
        Pipeline(bad, tmp_path / "run2")


@needs_lmeval
@pytest.mark.slow
@pytest.mark.parametrize(
    "task, message",
    [("no_such_task_anywhere", "not found in lm-eval's task registry"), ("hellaswag", "cannot be loaded")],
)
def test_registry_names_offline(task, message, monkeypatch):
    """By name from lm-eval's registry (indexing it takes ~10 s): unknown, or known but its data is on the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MergeMixError, match=message):
        lmeval.resolve({"x": {"task": task}})
