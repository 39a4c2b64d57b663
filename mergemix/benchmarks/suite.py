"""A benchmark suite: tasks grouped into capabilities, scores normalised against chance, U = macro-average.

`Suite.evaluate(model)` returns task metrics, capability scores, U and its bootstrap standard deviation."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

from mergemix.benchmarks import embedded
from mergemix.benchmarks.evaluator import Evaluator
from mergemix.benchmarks.tasks import Task, load_jsonl_task
from mergemix.errors import MergeMixError
from mergemix.registry import Registry

MC_METRICS = ("acc", "acc_norm", "prob")
BOOT_ELEMENTS = 1 << 22  # resampled items held at once by the bootstrap (32 MiB)


def check_task_spec(name: str, spec: Mapping) -> str:
    """The task's source, once the spec names a known source and what that source needs (checked before work)."""
    source = spec.get("source", "embedded")
    SOURCES.get(source, f"benchmark '{name}': ")
    if source == "embedded":
        BUILDERS.get(spec.get("builder"), f"benchmark '{name}': ")
    if source == "jsonl" and not spec.get("path"):
        raise MergeMixError(f"benchmark '{name}': a jsonl task needs `path: FILE`")
    return source


def build_task(
    name: str, spec: Mapping, heldout_docs: Mapping[str, list[str]], seed: int, tokenizer=None
) -> Task:
    return SOURCES[check_task_spec(name, spec)](name, spec, heldout_docs, seed, tokenizer)


def _jsonl(name, spec, heldout_docs, seed, tokenizer) -> Task:
    return load_jsonl_task(
        name, spec["path"], spec.get("kind"), spec.get("limit"), spec.get("max_new_tokens", 8)
    )


def _lmeval(name, spec, heldout_docs, seed, tokenizer) -> Task:
    from mergemix.benchmarks import lmeval

    return lmeval.resolve({name: spec})[name]


def _embedded(name, spec, heldout_docs, seed, tokenizer) -> Task:
    return BUILDERS[spec["builder"]](name, spec, heldout_docs, seed, tokenizer, int(spec.get("n", 500)))


def _cloze(name, spec, heldout_docs, seed, tokenizer, n) -> Task:
    docs = heldout_docs.get(spec["domain"])
    if not docs:
        raise MergeMixError(f"benchmark '{name}': domain '{spec['domain']}' has no held-out documents")
    single = None
    if tokenizer is not None and spec.get("single_token", True):

        def single(word: str) -> bool:
            return len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    return embedded.cloze(name, docs, n, seed, spec.get("vocab", 400), spec.get("context_chars", 240), single)


SOURCES = Registry("source", {"embedded": _embedded, "jsonl": _jsonl, "lmeval": _lmeval})
BUILDERS = Registry(
    "builder",
    {  # of embedded tasks
        "cloze": _cloze,
        "synthetic_mc": lambda name, spec, docs, seed, tok, n: embedded.synthetic_mc(
            name, spec["generator"], n, seed
        ),
        "synthetic_gen": lambda name, spec, docs, seed, tok, n: embedded.synthetic_gen(
            name, spec["generator"], n, seed, spec.get("max_new_tokens", 6)
        ),
    },
)


def normalised(task: Task, scores: Mapping[str, np.ndarray], metric: str) -> np.ndarray:
    """Per-item scores rescaled so that chance is 0 and perfect is 1."""
    raw = scores[task.score_key] if task.kind == "gen" else scores[metric]
    return (raw - task.chance) / (1.0 - task.chance)


def bootstrap(
    norm: Mapping[str, np.ndarray], capabilities: Mapping[str, list[str]], n: int, seed: int = 0
) -> tuple[dict[str, float], float]:
    """Standard deviations of capability scores and U when each task's items are resampled (n resamples,
    scipy.stats.bootstrap from one seeded generator): the std of their means over the resamples. Given per-item
    differences of two models on the same items, it is the paired bootstrap of their gap."""
    varying = [t for t, v in norm.items() if len(v) > 1]  # one item resamples to itself (scipy needs two)
    if n <= 0 or not varying:
        return {c: 0.0 for c in capabilities}, 0.0
    fixed = {t: float(np.mean(v)) for t, v in norm.items() if t not in varying}

    def stat(*samples, axis=-1):
        means = {**fixed, **{t: s.mean(axis=axis) for t, s in zip(varying, samples)}}
        caps = np.broadcast_arrays(*(sum(means[t] for t in ms) / len(ms) for ms in capabilities.values()))
        return np.stack([*caps, sum(caps) / len(caps)])  # each capability, then U

    items = sum(len(norm[t]) for t in varying)
    with np.errstate(all="ignore"):
        boot = stats.bootstrap(
            [np.asarray(norm[t], float) for t in varying],
            stat,
            n_resamples=n,
            batch=max(1, BOOT_ELEMENTS // items),
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        ).bootstrap_distribution
    std = boot.std(axis=-1)
    return dict(zip(capabilities, std[:-1].tolist())), float(std[-1])


def paired_gap(
    a: Mapping, b: Mapping, capabilities: Mapping[str, list[str]], n: int = 1000, seed: int = 0
) -> dict:
    """a - b on the same items, with paired-bootstrap noise (much tighter than two independent errors)."""
    diff = {t: np.asarray(a["items"][t]) - np.asarray(b["items"][t]) for t in a["items"]}
    cap_std, u_std = bootstrap(diff, capabilities, n, seed)
    caps = {c: a["capabilities"][c] - b["capabilities"][c] for c in capabilities}
    return {"capabilities": caps, "capabilities_std": cap_std, "U": a["U"] - b["U"], "U_std": u_std}


class Suite:
    def __init__(
        self,
        tokenizer,
        tasks: dict[str, Task],
        capabilities: Mapping[str, list[str]],
        metric: str = "prob",
        batch_size: int = 64,
        max_length: int = 256,
        bootstrap: int = 200,
    ):
        if metric not in MC_METRICS:
            raise MergeMixError(f"benchmarks.metric must be one of {MC_METRICS}, got '{metric}'")
        for cap, members in capabilities.items():
            missing = [m for m in members if m not in tasks]
            if missing or not members:
                raise MergeMixError(
                    f"capability '{cap}' names unknown or no tasks {missing}; tasks: {sorted(tasks)}"
                )
        self.tasks, self.metric, self.bootstrap = tasks, metric, bootstrap
        self.capabilities = {c: list(m) for c, m in sorted(capabilities.items())}
        native = {n: t for n, t in tasks.items() if t.lmeval is None}
        self.evaluator = Evaluator(tokenizer, native, batch_size, max_length)
        self.lmeval = None  # lm-eval members, scored by lm-eval itself
        if len(native) < len(tasks):
            from mergemix.benchmarks.lmeval import LMEvalMembers

            self.lmeval = LMEvalMembers(
                tokenizer, {n: t for n, t in tasks.items() if t.lmeval is not None}, batch_size, max_length
            )

    def summarize(self, per_item: Mapping[str, Mapping[str, np.ndarray]], seed: int = 0) -> dict:
        norm = {t: normalised(self.tasks[t], per_item[t], self.metric) for t in self.tasks}
        caps = {c: float(np.mean([norm[t].mean() for t in ms])) for c, ms in self.capabilities.items()}
        cap_std, u_std = bootstrap(norm, self.capabilities, self.bootstrap, seed)
        return {
            "tasks": {t: {m: float(v.mean()) for m, v in s.items()} for t, s in per_item.items()},
            "capabilities": caps,
            "capabilities_std": cap_std,
            "U": float(np.mean(list(caps.values()))),
            "U_std": u_std,
            "items": {t: np.round(v, 5).tolist() for t, v in norm.items()},
        }

    def per_item(self, model) -> dict[str, dict[str, np.ndarray]]:
        scores = self.evaluator.per_item(model)
        if self.lmeval is not None:
            scores.update(self.lmeval.per_item(model))
        return scores

    def evaluate(self, model) -> dict:
        return self.summarize(self.per_item(model))


def _numbers(node, path: str = ""):
    """(path, number) of every number in a result, in order: tasks, capabilities, U, ..."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def is_finite(result: Mapping) -> bool:
    return all(math.isfinite(v) for _, v in _numbers(result))


def check_finite(result: Mapping, what: str) -> None:
    """A NaN or infinite score is an error naming `what` (the checkpoint or merge) and where it is (the task and
    metric): such a score is never stored, so that no search or table is built on it."""
    for path, value in _numbers(result):
        if not math.isfinite(value):
            raise MergeMixError(
                f"{what} scores {value} on {path}: a model with corrupt or diverged weights "
                f"(check its experts); nothing was cached"
            )
