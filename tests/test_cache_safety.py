"""Cache safety: changing one input invalidates exactly the artifacts that depend on it and no others, and two
processes building the same artifact at once build it once.

Artifact keys are planned without training: `PlanningStore` returns the path of every trained or searched
artifact (base, experts, search, mixtures) without building it, while the cheap stages (corpus, tokenizer,
tokens, benchmarks) are built for real, since their contents feed later keys (the token counts give the uniform
mixture). A test checks that the planned keys are the keys a real micro run builds."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import micro_cfg

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore, stage_key
from mergemix.pipeline import Pipeline

TRAINED = ("base", "expert", "mixture", "search", "eval")


class PlanningStore(ArtifactStore):
    """Builds the cheap stages; for trained and searched ones returns where the artifact would be."""

    def get_or_build(self, stage, inputs, build, leader=None):
        if stage in TRAINED:
            return self.path(stage, stage_key(stage, inputs))
        return super().get_or_build(stage, inputs, build, leader)


def plan(cfg: dict) -> dict[str, str]:
    """Every artifact of a run up to the search and the uniform mixture, as {label: stage/key}."""
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    pipe.store = PlanningStore(pipe.store.root)
    paths = {
        "tokenizer": pipe.tokenizer_dir,
        "base": pipe.base_dir,
        "benchmarks": pipe.task_dir,
        "search": pipe.search_dir,
        "mixture:uniform": pipe.train_mixture(pipe.uniform_mixture, "uniform"),
    }
    for n in pipe.domain_names:
        paths.update(
            {
                f"corpus:{n}": pipe.corpus[n],
                f"tokens:{n}": pipe.token_dirs[n],
                f"expert:{n}": pipe.expert_dirs[n],
            }
        )
    return {label: f"{p.parent.name}/{p.name}" for label, p in paths.items()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert set(before) == set(after)
    return {label for label in before if before[label] != after[label]}


def expand(patterns: set[str], labels) -> set[str]:
    return {label for label in labels if any(fnmatch.fnmatch(label, p) for p in patterns)}


def test_planned_keys_are_the_keys_a_real_run_builds(micro_run, micro_root):
    pipe, _ = micro_run
    planned = plan(micro_cfg(micro_root))
    built = {
        f"{p.parent.name}/{p.name}"
        for p in (micro_root / "cache").glob("*/*")
        if (p / "manifest.json").is_file()
    }
    assert set(planned.values()) <= built
    assert (
        planned["search"] == f"search/{pipe.search_dir.name}"
        and planned["base"] == f"base/{pipe.base_dir.name}"
    )


DOWNSTREAM_OF_TOKENS = {"tokens:*", "base", "expert:*", "search", "mixture:uniform"}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("experts.lr=0.002", {"expert:*", "search"}),
        ("search_seed=1", {"search", "mixture:uniform"}),
        ("tokenizer.vocab_size=384", {"tokenizer", "benchmarks", *DOWNSTREAM_OF_TOKENS}),
        ("mix.tokens=16384", {"mixture:uniform"}),
        ("benchmarks.metric=acc", {"search"}),
    ],
    ids=["experts.lr", "search_seed", "vocab_size", "mix.tokens", "metric"],
)
def test_changed_setting_invalidates_exactly_its_dependents(override, expected, micro_root, tmp_path):
    before = plan(micro_cfg(micro_root, f"paths.run_dir={tmp_path}/a"))
    after = plan(micro_cfg(micro_root, override, f"paths.run_dir={tmp_path}/b"))
    assert changed(before, after) == expand(expected, before)


@pytest.mark.parametrize(
    "stage, expected",
    [
        ("expert", {"expert:*", "search"}),
        ("tokens", DOWNSTREAM_OF_TOKENS),
        ("benchmarks", {"benchmarks", "search"}),
    ],
)
def test_code_version_bump_invalidates_exactly_its_dependents(
    stage, expected, micro_root, tmp_path, monkeypatch
):
    cfg = micro_cfg(micro_root, f"paths.run_dir={tmp_path}/run")
    before = plan(cfg)
    monkeypatch.setitem(artifacts.CODE_VERSIONS, stage, artifacts.CODE_VERSIONS[stage] + 1)
    assert changed(before, plan(cfg)) == expand(expected, before)


@pytest.fixture
def files_cfg(tmp_path):
    """Two user domains from files, a user tokenizer (so that one domain's tokens do not depend on the other's
    text) and a JSONL benchmark; the composed config."""
    from mergemix.cli import compose, to_plain
    from mergemix.data.tokenizer import train_tokenizer

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
        "number",
    ]
    docs = {
        name: [" ".join(words[(i * k) % len(words)] for i in range(60)) for k in range(1, 9)]
        for name in ("a", "b")
    }
    for name, texts in docs.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    train_tokenizer([t for texts in docs.values() for t in texts], 300, tmp_path / "tok")
    conf = tmp_path / "conf"
    (conf / "domains").mkdir(parents=True)
    (conf / "benchmarks").mkdir()
    (conf / "domains" / "two.yaml").write_text(
        "heldout_fraction: 0.2\nbase_mixture: token\nsources:\n"
        f"  a: {{source: files, paths: [{tmp_path}/a.jsonl]}}\n  b: {{source: files, paths: [{tmp_path}/b.jsonl]}}\n"
    )
    (tmp_path / "bench.jsonl").write_text('{"prompt": "alpha beta", "answer": "gamma"}\n')
    (conf / "benchmarks" / "mine.yaml").write_text(
        "metric: prob\nbatch_size: 8\nmax_length: 64\nbootstrap: 10\ncapabilities:\n"
        f"  lang: {{domain: a, tasks: [words]}}\ntasks:\n  words: {{source: jsonl, path: {tmp_path}/bench.jsonl}}\n"
    )
    return to_plain(
        compose(
            [
                "domains=two",
                "benchmarks=mine",
                "model=micro",
                "logger=none",
                "data.max_epochs=null",
                f"tokenizer.path={tmp_path}/tok",
                f"paths.root={tmp_path}/home",
                f"paths.run_dir={tmp_path}/run",
            ],
            str(conf),
        )
    )


def test_changed_domain_file_invalidates_exactly_its_dependents(files_cfg, tmp_path):
    before = plan(files_cfg)
    path = tmp_path / "b.jsonl"
    path.write_text(path.read_text().replace("alpha", "omega", 1))  # one word of one document
    after = plan(files_cfg)
    # benchmarks: cloze tasks draw from held-out documents, so the task set is keyed by every domain's corpus
    assert changed(before, after) == {
        "corpus:b",
        "tokens:b",
        "base",
        "expert:a",
        "expert:b",
        "benchmarks",
        "search",
        "mixture:uniform",
    }


WORKER = r"""
import sys, time
from pathlib import Path
from mergemix.artifacts import ArtifactStore

root, log, me, other = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
(root / f"calling-{me}").touch()

def build(tmp):
    with open(log, "a") as fh:
        fh.write(me + "\n")
    for _ in range(3000):  # until the other process is about to ask for the same artifact
        if (root / f"calling-{other}").exists():
            break
        time.sleep(0.01)
    time.sleep(0.3)  # ... and waits on its lock
    (tmp / "payload.bin").write_bytes(bytes(range(256)) * 4096)
    return {"builder": me}

print(ArtifactStore(root / "cache").get_or_build("tokens", {"domain": "shared"}, build))
"""


def test_two_processes_building_one_artifact_build_it_once(tmp_path):
    log = tmp_path / "builds.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), str(log), me, other],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("p1", "p2"), ("p2", "p1"))
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1  # both got the same artifact
    builders = log.read_text().split()
    assert len(builders) == 1  # built once
    final = Path(paths.pop())
    manifest = json.loads((final / "manifest.json").read_text())
    assert manifest["builder"] == builders[0] and manifest["inputs"] == {"domain": "shared"}
    assert (final / "payload.bin").read_bytes() == bytes(range(256)) * 4096
    assert [p.name for p in final.parent.iterdir()] == [final.name]  # no temporary or second copy left


# ----------------------------------------------------------------------------- every leaf of the config ---
class KeyStore(ArtifactStore):
    """Builds nothing: every stage's artifact is where its key puts it."""

    def get_or_build(self, stage, inputs, build, leader=None):
        return self.path(stage, stage_key(stage, inputs))


def key_pipeline(cfg: dict, monkeypatch) -> Pipeline:
    """A pipeline whose artifacts are only keyed, from the config alone: token counts (which set the uniform
    mixture) stand in as a function of the token keys, and no check runs (a changed value need not be a valid one)."""
    from mergemix import pipeline

    monkeypatch.setattr(pipeline, "check_config", lambda cfg: None)
    monkeypatch.setattr(Pipeline, "validate", lambda self: None)
    monkeypatch.setattr(Pipeline, "check_epochs", lambda self, *a: None)
    monkeypatch.setattr(
        Pipeline,
        "token_counts",
        property(lambda self: {n: 10**6 + int(p.name[:6], 16) for n, p in self.token_dirs.items()}),
    )
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    pipe.store = KeyStore(pipe.store.root)
    return pipe


def keys_of(cfg: dict, monkeypatch) -> dict[str, str]:
    """Every stage's key for `cfg` (key_pipeline)."""
    pipe = key_pipeline(cfg, monkeypatch)
    paths = {
        "tokenizer": pipe.tokenizer_dir,
        "base": pipe.base_dir,
        "benchmarks": pipe.task_dir,
        "eval:base": pipe.eval_dir(pipe.base_dir),
        "search": pipe.search_dir,
        "mixture:uniform": pipe.train_mixture(pipe.uniform_mixture, "uniform"),
    }
    for n in pipe.domain_names:
        paths.update(
            {
                f"corpus:{n}": pipe.corpus[n],
                f"tokens:{n}": pipe.token_dirs[n],
                f"expert:{n}": pipe.expert_dirs[n],
            }
        )
    return {label: f"{p.parent.name}/{p.name}" for label, p in paths.items()}


def leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, (*path, k))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from leaves(v, (*path, i))
    else:
        yield path


def changed_value(path: tuple, value):
    """Another value of the leaf's type (one a stage reading it would not ignore)."""
    if path[-1] == "num_threads":
        return 1  # setting it to the current thread count changes nothing in this process
    if path[-1] == "eval_dtype":
        return "bfloat16"
    if path[-1] == "seed" and value is None:
        return 7  # a section's own seed (experts.seed), null by default
    if path[-1] == "kind" and value == "full":
        return "lora"  # the other kind of expert
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.5
    return "x" if value is None else f"{value}_x"


WEIGHTS = {"base", "expert:*", "mixture:uniform", "eval:base", "search"}  # what the base's weights determine
EVERYTHING = {"corpus:*", "tokenizer", "tokens:*", "benchmarks", *WEIGHTS}
# The spec: which artifacts a change of each leaf must rebuild (first matching pattern). A leaf that no pattern
# covers fails the test, so that a new setting is classified here when it is added.
SPEC = [
    ("seed", EVERYTHING),
    ("search_seed", {"search", "mixture:uniform"}),
    ("tokenizer.*", EVERYTHING - {"corpus:*"}),
    ("domains.heldout_fraction", EVERYTHING),
    ("domains.sources.*", EVERYTHING - {"corpus:*"}),  # and the domain's own corpus, added below
    ("model.*", WEIGHTS),
    ("optim.*", WEIGHTS),
    ("base.*", WEIGHTS),
    ("trainer.precision", WEIGHTS),
    ("trainer.gradient_clip_val", WEIGHTS),
    ("experts.lora.*", set()),  # adapter settings: read only by LoRA experts (not the default)
    ("experts.*", {"expert:*", "search"}),
    ("mix.*", {"mixture:uniform"}),
    ("benchmarks.tasks.*", {"benchmarks", "eval:base", "search"}),
    *(
        (f"benchmarks.{k}", {"eval:base", "search"})
        for k in ("metric", "capabilities.*", "max_length", "bootstrap")
    ),
    ("trainer.eval_dtype", {"eval:base", "search"}),
    ("search.n_workers", set()),  # the surrogate's trials and alpha* on any number of workers (Optuna: keyed)
    ("search.*", {"search"}),
    # read by no stage: numerics-free batching, the process layout, logging, paths, checks, the studies
    ("benchmarks.batch_size", set()),
    ("trainer.*", set()),
    ("data.*", set()),
    ("logger.*", set()),
    ("paths.*", set()),
    ("domains.base_mixture.*", set()),
    ("domains.groups.*", set()),
    ("run_name", set()),
    ("expert_domain", set()),
    ("strategy", set()),
    ("baseline.*", set()),
    ("export.*", set()),
    *(
        (f"{study}.*", set())
        for study in (
            "validate",
            "theory",
            "curves",
            "landscape",
            "transfer",
            "dynamic",
            "hierarchical",
            "frontier",
        )
    ),
]
USER_PATHS = {"tokenizer.path", "base.checkpoint"}  # a user's directory in place of a stage: keyed by its ref


def expected_changes(dotted: str, labels) -> set[str]:
    pattern = next(labels_ for p, labels_ in SPEC if fnmatch.fnmatch(dotted, p))
    if dotted.startswith("domains.sources."):
        pattern = {*pattern, f"corpus:{dotted.split('.')[2]}"}
    return expand(pattern, labels)


def test_every_config_leaf_changes_exactly_the_keys_of_the_stages_reading_it(
    micro_root, tmp_path, monkeypatch
):
    import copy

    cfg = micro_cfg(micro_root, f"paths.run_dir={tmp_path}/run")
    before = keys_of(cfg, monkeypatch)
    unclassified, wrong, n = [], {}, 0
    for path in leaves(cfg):
        dotted = ".".join(map(str, path))
        if dotted in USER_PATHS:
            continue
        if not any(fnmatch.fnmatch(dotted, p) for p, _ in SPEC):
            unclassified.append(dotted)
            continue
        new = copy.deepcopy(cfg)
        node = new
        for part in path[:-1]:
            node = node[part]
        if path[:-1] in (
            ("base", "mixture"),
            ("domains", "base_mixture"),
        ):  # shares: move 0.05 to another one
            other = next(k for k in node if k != path[-1])
            node[path[-1]], node[other] = node[path[-1]] + 0.05, node[other] - 0.05
        else:
            node[path[-1]] = changed_value(path, node[path[-1]])
        got, want = changed(before, keys_of(new, monkeypatch)), expected_changes(dotted, before)
        n += 1
        if got != want:
            wrong[dotted] = {"extra": sorted(got - want), "missing": sorted(want - got)}
    assert not unclassified, f"classify these settings in SPEC: {unclassified}"
    from mergemix.pipeline import READS

    assert all(len({p.rsplit(".", 1)[-1] for p in paths}) == len(paths) for paths in READS.values())  # names
    assert not wrong, wrong
    assert n >= 100  # the composed micro config's leaves


# ----------------------------------------------------------------------------------------- pinned keys ---
# The keys of the micro experiment's artifacts (key_pipeline: token counts stand in), plain and with the optional key
# inputs set, as the code that built today's caches computes them. Moving the stages' code must leave them as they
# are; a deliberate change of what a stage produces bumps artifacts.CODE_VERSIONS (and these values) instead.
OPTIONAL = (
    "experts.kind=lora",
    "search.calibration=recovery",
    "search.merge_scale=0.5",
    "+domains.sources.code.max_tokens=50000",
)
PINNED = {
    (): {
        "tokenizer": "tokenizer/168d87c26395e2f1",
        "base": "base/b40621fd190e7906",
        "benchmarks": "benchmarks/288fef80caa89b99",
        "eval:base": "eval/b1f101417fbbd45c",
        "search": "search/6bd43e0b227a4282",
        "mixture:uniform": "mixture/eabc4d0b11cbbab9",
        "corpus:code": "corpus/23afc4cea16425b7",
        "tokens:code": "tokens/71c193ed29b957e0",
        "expert:code": "expert/926f50594cb2c492",
        "corpus:math": "corpus/4723a6e548f143d9",
        "tokens:math": "tokens/5f4b2ba50d24b9c7",
        "expert:math": "expert/14e7026d4f97eff1",
        "corpus:prose": "corpus/73af3a293a5d34b5",
        "tokens:prose": "tokens/eee6466eed6fc394",
        "expert:prose": "expert/a02b140c5cb03ec7",
        "corpus:sft": "corpus/da0a401f2a256421",
        "tokens:sft": "tokens/e64677a55349a6ed",
        "expert:sft": "expert/7d40b9e8a564d692",
        "merge-cache": "fc6cf015f3034163.jsonl",
        "expert:mixed": "5999c731c7316332",
        "mixture:seed7": "803b69f587dbfeb5",
    },
    OPTIONAL: {
        "tokenizer": "tokenizer/168d87c26395e2f1",
        "base": "base/2591dd136eff2df1",
        "benchmarks": "benchmarks/288fef80caa89b99",
        "eval:base": "eval/e76bb3765a0af97c",
        "search": "search/4417d685ced4dde2",
        "mixture:uniform": "mixture/84daddffe4004667",
        "corpus:code": "corpus/23afc4cea16425b7",
        "tokens:code": "tokens/c417720cce999120",
        "expert:code": "expert/3f91ea9a4baa4ef8",
        "corpus:math": "corpus/4723a6e548f143d9",
        "tokens:math": "tokens/5f4b2ba50d24b9c7",
        "expert:math": "expert/7759978303dc189f",
        "corpus:prose": "corpus/73af3a293a5d34b5",
        "tokens:prose": "tokens/eee6466eed6fc394",
        "expert:prose": "expert/5a8f710d446e957c",
        "corpus:sft": "corpus/da0a401f2a256421",
        "tokens:sft": "tokens/e64677a55349a6ed",
        "expert:sft": "expert/4270090cfa0b4c27",
        "merge-cache": "f0e390d683d9246a.jsonl",
        "expert:mixed": "c2ac9cd16030062d",
        "mixture:seed7": "7769f3f1fff59e14",
    },
}


@pytest.mark.parametrize("overrides", list(PINNED), ids=["plain", "optional-inputs"])
def test_stage_keys_of_the_micro_experiment_are_pinned(overrides, micro_root, tmp_path, monkeypatch):
    cfg = micro_cfg(micro_root, *overrides, f"paths.run_dir={tmp_path}/run")
    keys = keys_of(cfg, monkeypatch)
    pipe = key_pipeline(cfg, monkeypatch)
    keys.update(
        {
            "merge-cache": pipe.merge_cache_path.name,
            "expert:mixed": pipe.expert_dir("mixed", {"code": 0.5, "math": 0.5}).name,
            "mixture:seed7": pipe.train_mixture(
                {"code": 0.25, "math": 0.25, "prose": 0.25, "sft": 0.25}, "x", seed=7
            ).name,
        }
    )
    assert keys == PINNED[overrides]


def test_workers_key_only_the_searches_whose_result_they_change(micro_root):
    """search.n_workers: the surrogate's design is the same on any number of workers; Optuna's parallel workers
    propose differently, so there it is part of the search key."""
    from mergemix.stages.keys import config_inputs

    def key(*overrides):
        return config_inputs(micro_cfg(micro_root, *overrides), "search")

    assert key("search.n_workers=4") == key()
    assert key("search=tpe", "search.n_workers=4") != key("search=tpe")
