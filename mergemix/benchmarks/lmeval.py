"""lm-eval tasks as benchmark members, run on the model in memory.

A member `benchmarks.tasks.<name>: {source: lmeval, task: T, include_path: DIR, limit: N, num_fewshot: K,
metric: M}` is any lm-eval task or group: by name from lm-eval's registry, or from local task YAMLs under
`include_path` (then only those are indexed). Each evaluation wraps the model object itself in
`HFLM(pretrained=model, tokenizer=tok)` and calls `lm_eval.simple_evaluate` with per-item samples, no response
cache (a merged model changes in place) and no global seeding. Multiple-choice tasks give per-item `acc`,
`acc_norm` (lm-eval's own values) and `prob` (softmax of the choices' log-likelihoods at the gold choice), the
same metrics as the fast evaluator; generation tasks give their metric `M` per item (default: the task's first).
lm-eval is optional (the `[lm-eval]` extra)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np

from mergemix.benchmarks.tasks import Task
from mergemix.errors import MergeMixError

KINDS = {"multiple_choice": "mc", "generate_until": "gen"}
INSTALL = 'pip install "lm-eval[hf]==0.4.13" (the [lm-eval] extra)'


def available() -> bool:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def quiet():
    """lm-eval logs per task and draws progress bars on stderr even when TQDM_DISABLE is set."""
    for name in ("lm-eval", "lm_eval"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


@lru_cache(maxsize=8)
def task_manager(include_paths: tuple[str, ...] = (), include_defaults: bool = True):
    """One TaskManager per set of paths (indexing lm-eval's own registry takes seconds)."""
    from lm_eval.tasks import TaskManager

    with quiet():
        return TaskManager(include_path=list(include_paths) or None, include_defaults=include_defaults)


def manager_for(specs: Mapping[str, Mapping]):
    """The TaskManager that sees every member: their include paths, plus lm-eval's registry when a member names
    a task without an include path."""
    paths = sorted({str(Path(s["include_path"]).resolve()) for s in specs.values() if s.get("include_path")})
    return task_manager(tuple(paths), any(not s.get("include_path") for s in specs.values()))


# ------------------------------------------------------------------------------------------- resolving ---
def _check_spec(name: str, spec: Mapping) -> None:
    if not isinstance(spec.get("task"), str) or not spec["task"]:
        raise MergeMixError(f"benchmark '{name}': an lm-eval member needs `task: <lm-eval task name>`")
    path = spec.get("include_path")
    if path and not Path(path).exists():
        raise MergeMixError(f"benchmark '{name}': include_path not found: {path}")
    limit = spec.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0):
        raise MergeMixError(f"benchmark '{name}': limit must be a positive number of items, got {limit!r}")


def _items(task, kind: str, limit) -> list[dict]:
    """What each scored document looks like (its choices and gold answer): the chance level of a multiple-choice
    member and its item count come from these, taken the way lm-eval takes its documents."""
    from lm_eval.evaluator_utils import get_sample_size

    docs = list(task.eval_docs)
    n = get_sample_size(task, limit)
    out = []
    for doc in docs[:n] if n is not None else docs:
        if kind == "mc":
            choices = [str(c) for c in task.doc_to_choice(doc)]
            gold = task.doc_to_target(doc)
            gold = choices.index(gold) if isinstance(gold, str) and gold in choices else gold
            out.append({"choices": choices, "label": gold})
        else:
            out.append({"prompt": str(task.doc_to_text(doc)), "answer": str(task.doc_to_target(doc))})
    return out


def _resolve_one(name: str, spec: Mapping, tm) -> Task:
    task_name, where = (
        spec["task"],
        (f"in {spec['include_path']}" if spec.get("include_path") else "in lm-eval's task registry"),
    )
    if task_name not in tm.all_tasks:
        raise MergeMixError(f"benchmark '{name}': lm-eval task '{task_name}' not found {where}")
    try:
        with quiet():
            leaves = dict(sorted(tm.load([task_name])["tasks"].items()))
    except Exception as exc:
        raise MergeMixError(
            f"benchmark '{name}': lm-eval task '{task_name}' cannot be loaded (offline its data "
            f"must be local or cached): {_first_line(exc)}"
        ) from exc
    types = {t.OUTPUT_TYPE for t in leaves.values()}
    if len(types) != 1 or next(iter(types)) not in KINDS:
        raise MergeMixError(
            f"benchmark '{name}': lm-eval task '{task_name}' has output type(s) {sorted(types)}; "
            f"members must be {' or '.join(KINDS)} tasks"
        )
    kind = KINDS[types.pop()]
    metric = spec.get("metric")
    if kind == "gen" and not metric:
        metric = leaves[next(iter(leaves))].config.metric_list[0]["metric"]
    items = [it for t in leaves.values() for it in _items(t, kind, spec.get("limit"))]
    if not items:
        raise MergeMixError(f"benchmark '{name}': lm-eval task '{task_name}' has no documents")
    meta = {
        "task": task_name,
        "include_path": spec.get("include_path"),
        "limit": spec.get("limit"),
        "num_fewshot": spec.get("num_fewshot"),
        "metric": metric,
        "leaves": list(leaves),
    }
    return Task(name, kind, items, int(spec.get("max_new_tokens", 8)), lmeval=meta)


def resolve(specs: Mapping[str, Mapping]) -> dict[str, Task]:
    """Check and load every lm-eval member (one clear error for a missing package, name, path or dataset)."""
    for name, spec in specs.items():
        _check_spec(name, spec)
    if specs and not available():
        raise MergeMixError(f"benchmarks {sorted(specs)} use lm-eval, which is not installed: {INSTALL}")
    return {n: _member(n, json.dumps(dict(s), sort_keys=True, default=str)) for n, s in sorted(specs.items())}


@lru_cache(maxsize=256)
def _member(name: str, key: str) -> Task:
    spec = json.loads(key)
    return _resolve_one(name, spec, manager_for({name: spec}))


# ------------------------------------------------------------------------------------------- running ---
def hflm(model, tokenizer, batch_size: int, max_length: int | None = None):
    from lm_eval.models.huggingface import HFLM

    with quiet():
        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def run(lm, task_names: list[str], tm, limit=None, num_fewshot=None, log_samples: bool = True) -> dict:
    """`lm_eval.simple_evaluate` on an HFLM, silenced, without bootstrap, response cache or global seeding."""
    from unittest import mock

    import lm_eval

    # lm-eval records `git describe` of the working directory, whose stderr ("fatal: not a git repository")
    # bypasses Python's streams: the hash is not ours to record
    with quiet(), mock.patch("lm_eval.evaluator.get_git_commit_hash", lambda: None):
        return lm_eval.simple_evaluate(
            model=lm,
            tasks=task_names,
            task_manager=tm,
            limit=limit,
            num_fewshot=num_fewshot,
            bootstrap_iters=0,
            log_samples=log_samples,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )


def samples(out: dict, leaf: str) -> list[dict]:
    return sorted(out["samples"][leaf], key=lambda s: s["doc_id"])


def mc_scores(items: list[dict]) -> dict[str, np.ndarray]:
    """acc, acc_norm and prob per item from lm-eval's multiple-choice samples."""
    acc, acc_norm, prob = [], [], []
    for s in items:
        ll = np.array([r[0] for r in s["filtered_resps"]], dtype=float)
        gold = s["target"]
        golds = list(gold) if isinstance(gold, (list, tuple)) else [int(gold)]
        lengths = np.array([max(1, len(a[1])) for a in s["arguments"]], dtype=float)
        acc.append(float(s["acc"]) if "acc" in s else float(int(np.argmax(ll)) in golds))
        acc_norm.append(
            float(s["acc_norm"]) if "acc_norm" in s else float(int(np.argmax(ll / lengths)) in golds)
        )
        prob.append(float(np.exp(ll[golds] - np.logaddexp.reduce(ll)).sum()))
    return {"acc": np.array(acc), "acc_norm": np.array(acc_norm), "prob": np.array(prob)}


class LMEvalMembers:
    """Scores the lm-eval members of a suite on a model, item by item, in the order of each task's items."""

    def __init__(
        self, tokenizer, tasks: Mapping[str, Task], batch_size: int = 64, max_length: int | None = None
    ):
        self.tok, self.tasks, self.batch_size, self.max_length = (
            tokenizer,
            dict(tasks),
            batch_size,
            max_length,
        )
        self.tm = manager_for({n: t.lmeval for n, t in self.tasks.items()})
        self._lm = None  # (model, HFLM): the model is merged in place, so one wrapper serves every candidate

    def _wrapper(self, model):
        if self._lm is None or self._lm[0] is not model:
            self._lm = (model, hflm(model, self.tok, self.batch_size, self.max_length))
        return self._lm[1]

    def per_item(self, model) -> dict[str, dict[str, np.ndarray]]:
        model.eval()
        groups: dict[tuple, list[str]] = {}
        for name, t in sorted(self.tasks.items()):
            groups.setdefault((t.lmeval["limit"], t.lmeval["num_fewshot"]), []).append(name)
        result = {}
        for (limit, shots), names in groups.items():
            out = run(
                self._wrapper(model),
                sorted({self.tasks[n].lmeval["task"] for n in names}),
                self.tm,
                limit,
                shots,
            )
            for name in names:
                result[name] = self._scores(self.tasks[name], out)
        return result

    def _scores(self, task: Task, out: dict) -> dict[str, np.ndarray]:
        items = [s for leaf in task.lmeval["leaves"] for s in samples(out, leaf)]
        if len(items) != len(task.items):
            raise MergeMixError(
                f"benchmark '{task.name}': lm-eval scored {len(items)} items, expected {len(task.items)}"
            )
        if task.kind == "mc":
            return mc_scores(items)
        metric = task.lmeval["metric"]
        return {metric: np.array([float(s[metric]) for s in items])}


# --------------------------------------------------------------------------------------------- export ---
def export_tasks(workdir: Path, tasks: Mapping[str, Task], prefix: str = "mm_"):
    """Our multiple-choice tasks as lm-eval task YAMLs over local JSONL files (`<prefix><name>`); returns a
    TaskManager that sees only them."""
    from lm_eval.tasks import TaskManager

    d = Path(workdir) / "lm_eval_tasks"
    d.mkdir(parents=True, exist_ok=True)
    for name, task in tasks.items():
        data = d / f"{name}.jsonl"
        data.write_text("".join(json.dumps(it) + "\n" for it in task.items))
        spec = {
            "task": f"{prefix}{name}",
            "dataset_path": "json",
            "test_split": "test",
            "output_type": "multiple_choice",
            "dataset_kwargs": {
                "data_files": {"test": str(data)},
                "cache_dir": str(Path(workdir) / "hf_datasets"),
            },
            "doc_to_text": "context",
            "doc_to_choice": "choices",
            "doc_to_target": "label",
            "target_delimiter": "",  # our choices carry their own leading space
            "metric_list": [{"metric": "acc"}],
        }
        import yaml

        (d / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    with quiet():
        return TaskManager(include_path=str(d), include_defaults=False)


def fingerprint(specs: Mapping[str, Mapping]) -> dict:
    """What determines the members besides their spec: lm-eval's version and the files under include paths."""
    from importlib import metadata

    from mergemix.artifacts import file_digest

    files = {}
    for spec in specs.values():
        root = Path(spec["include_path"]) if spec.get("include_path") else None
        if root is not None and root.exists():
            for f in sorted(root.rglob("*")) if root.is_dir() else [root]:
                if f.is_file():
                    files[str(f.resolve())] = file_digest(f)
    return {"version": metadata.version("lm_eval"), "files": files}
