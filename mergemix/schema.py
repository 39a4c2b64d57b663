"""One typed schema of the composed config (pydantic models, one per config group), checked once before any work:
every number's type and range, every option and flag, and the rules that tie settings together. A violation is
one line naming the dotted key, what it must be and what it got.

Sections accept keys the schema does not name (names, paths, pass-through Trainer arguments); an absent or null
value is not checked (optional settings; a mandatory `???` is reported by Hydra itself). Checks that read files or
registries (domain files, benchmark items, back-end names) run after this, in `stages/validate.py`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from mergemix.errors import MergeMixError


@dataclass(frozen=True)
class Rule:
    """What a value must be (`text`, as the error says it) and the test of it; None always passes."""

    text: str
    test: Callable[[Any], bool]

    def accepts(self, value) -> bool:
        return value is None or self.test(value)

    def __call__(self, value):
        if not self.accepts(value):
            raise ValueError(self.text)
        return value


def _number(text: str, integer: bool, in_range: Callable[[float], bool]) -> Rule:
    def test(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        return ok and (not integer or float(v).is_integer()) and in_range(v)

    return Rule(text, test)


def one_of(*options: str) -> Rule:
    return Rule(f"one of {', '.join(options)}", lambda v: not isinstance(v, bool) and str(v) in options)


def field(rule: Rule) -> Any:
    """A field type checked by `rule` (its metadata lets `leaves()` list it)."""
    return Annotated[Any, AfterValidator(rule)]


POS_INT = _number("a positive integer", True, lambda v: v > 0)
NONNEG_INT = _number("a non-negative integer", True, lambda v: v >= 0)
INT_2 = _number("an integer of at least 2", True, lambda v: v >= 2)
INT_3 = _number("an integer of at least 3 (a rank correlation needs 3 mixtures)", True, lambda v: v >= 3)
POS = _number("a positive number", False, lambda v: v > 0)
NONNEG = _number("a non-negative number", False, lambda v: v >= 0)
FRACTION_OPEN_1 = _number("a fraction in [0, 1)", False, lambda v: 0 <= v < 1)
FRACTION_OPEN_0 = _number("a fraction in (0, 1]", False, lambda v: 0 < v <= 1)
INSIDE_01 = _number("a number strictly between 0 and 1", False, lambda v: 0 < v < 1)
SEED = _number(
    "an integer in [0, 2^32 - 1]", True, lambda v: 0 <= v < 2**32
)  # numpy's and torch's seed range
VOCAB = _number(
    "an integer of at least 258 (the 256 byte symbols and 2 special tokens)", True, lambda v: v >= 258
)
MAX_LENGTH = _number(
    "an integer of at least 2 (a context token and a continuation token)", True, lambda v: v >= 2
)
RESAMPLES = _number(
    "an integer of at least 2 (a standard deviation needs 2 resamples)", True, lambda v: v >= 2
)
MERGE_SCALE = _number("a number in (0, 10]", False, lambda v: 0 < v <= 10)
BETAS = Rule(
    "two numbers in [0, 1)",
    lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(FRACTION_OPEN_1.test(b) for b in v),
)
DATA_PREFIX = Rule("a path containing '{domain}'", lambda v: isinstance(v, str) and "{domain}" in v)
FLAG = Rule("true or false", lambda v: isinstance(v, bool))
SCHEDULE = one_of("constant", "wsd", "cosine")
PRECISION = one_of(
    "32-true",
    "bf16-mixed",
    "bf16-true",
    "16-mixed",
    "16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "32",
    "bf16",
    "16",
    "64",
)  # Lightning's
# Merge evaluations a search back-end needs at least: a surrogate is fitted on 2 or more, iterative's first round
# is half its budget.
MIN_BUDGET = {"surrogate": 2, "iterative": 4}


class Section(BaseModel):
    model_config = ConfigDict(extra="allow")


class Tokenizer(Section):
    vocab_size: field(VOCAB) = None
    train_chars: field(POS_INT) = None


class Domains(Section):
    heldout_fraction: field(FRACTION_OPEN_1) = None


class Data(Section):
    num_workers: field(NONNEG_INT) = None
    shard_mb: field(POS) = None
    max_epochs: field(POS) = None


class Model(Section):
    seq_len: field(POS_INT) = None
    batch_size: field(POS_INT) = None
    hidden_size: field(POS_INT) = None
    num_layers: field(POS_INT) = None
    num_heads: field(POS_INT) = None
    num_kv_heads: field(POS_INT) = None
    intermediate_size: field(POS_INT) = None
    router_bias_update_rate: field(NONNEG) = None

    @model_validator(mode="after")
    def _shapes(self):
        h, heads, kv = self.hidden_size, self.num_heads, self.num_kv_heads
        if h and heads and h % heads:
            raise MergeMixError(f"model.hidden_size ({h}) must be a multiple of model.num_heads ({heads})")
        if heads and kv and heads % kv:
            raise MergeMixError(f"model.num_heads ({heads}) must be a multiple of model.num_kv_heads ({kv})")
        return self


class Stage(Section):
    tokens: field(POS_INT) = None
    lr: field(POS) = None
    warmup_steps: field(NONNEG_INT) = None
    schedule: field(SCHEDULE) = None


class Lora(Section):
    r: field(POS_INT) = None
    alpha: field(POS) = None
    dropout: field(FRACTION_OPEN_1) = None


class Experts(Stage):
    seed: field(SEED) = None  # the experts' data order (null: seed)
    kind: field(one_of("full", "lora")) = None
    lora: Lora | None = None


class Optim(Section):
    weight_decay: field(NONNEG) = None
    betas: field(BETAS) = None


class Lgbm(Section):
    n_estimators: field(POS_INT) = None
    learning_rate: field(POS) = None
    num_leaves: field(INT_2) = None
    min_data_in_leaf: field(NONNEG_INT) = None
    min_data_in_bin: field(POS_INT) = None
    bagging_fraction: field(FRACTION_OPEN_0) = None
    bagging_freq: field(NONNEG_INT) = None


class Search(Section):
    budget: field(POS_INT) = None
    n_workers: field(POS_INT) = None
    merge_scale: field(MERGE_SCALE) = None
    n_candidates: field(POS_INT) = None
    top_k: field(POS_INT) = None
    grid_resolution: field(POS_INT) = None
    prior_concentration: field(POS) = None
    round_concentration: field(POS) = None
    calibration: field(one_of("none", "recovery")) = None
    lgbm: Lgbm | None = None


class Task(Section):
    n: field(POS_INT) = None  # items of a generated task
    limit: field(POS) = None  # items kept (lm-eval also takes a fraction below 1)
    max_new_tokens: field(POS_INT) = None


class Benchmarks(Section):
    batch_size: field(POS_INT) = None
    max_length: field(MAX_LENGTH) = None
    bootstrap: field(RESAMPLES) = None
    tasks: dict[str, Task | None] | None = None


class Trainer(Section):
    num_threads: field(POS_INT) = None
    gradient_clip_val: field(NONNEG) = None
    micro_batch_size: field(POS_INT) = None
    eval_dtype: field(one_of("bfloat16", "float16")) = None  # null: float32
    precision: field(PRECISION) = None
    accelerator: field(one_of("cpu", "gpu", "cuda", "mps", "tpu", "auto")) = None
    chunked_loss: field(POS_INT) = None  # tokens per chunk of the LM loss (null: the model's own loss)
    compile: field(FLAG) = None
    fused_adamw: field(FLAG) = None


class Baseline(Section):
    budget: field(POS_INT) = None
    trial_tokens: field(POS_INT) = None
    correction: field(one_of("tilt", "gain")) = None  # refine's
    min_distance: field(FRACTION_OPEN_0) = None


class Validate(Section):
    n_mixtures: field(INT_3) = None
    design: field(one_of("dirichlet", "grid")) = None
    bootstrap: field(RESAMPLES) = None


class Curves(Section):
    train: field(FLAG) = None


class Landscape(Section):
    source: field(one_of("surrogate", "merge")) = None
    resolution: field(POS_INT) = None
    specialists: field(FLAG) = None


class Transfer(Section):
    target_search: field(FLAG) = None


class Dynamic(Section):
    fraction: field(INSIDE_01) = None
    train_second_half: field(FLAG) = None


class Hierarchical(Section):
    train: field(FLAG) = None


class Export(Section):
    data_prefix: field(DATA_PREFIX) = None


class Config(Section):
    seed: field(SEED) = None
    search_seed: field(SEED) = None
    tokenizer: Tokenizer | None = None
    domains: Domains | None = None
    data: Data | None = None
    model: Model | None = None
    base: Stage | None = None
    experts: Experts | None = None
    mix: Stage | None = None
    optim: Optim | None = None
    search: Search | None = None
    benchmarks: Benchmarks | None = None
    trainer: Trainer | None = None
    baseline: Baseline | None = None
    validate_: Validate | None = Field(None, alias="validate")  # `validate` is a BaseModel method
    curves: Curves | None = None
    landscape: Landscape | None = None
    transfer: Transfer | None = None
    dynamic: Dynamic | None = None
    hierarchical: Hierarchical | None = None
    export: Export | None = None

    @model_validator(mode="after")
    def _together(self):
        s, e, t = self.search, self.experts, self.trainer
        least = MIN_BUDGET.get(getattr(s, "backend", None), 1)
        if s is not None and s.budget is not None and s.budget < least:
            raise MergeMixError(
                f"search.budget must be at least {least} for the {s.backend} back-end, got {s.budget}"
            )
        if e is not None and e.kind == "lora" and t is not None and getattr(t, "strategy", None):
            raise MergeMixError(
                "experts.kind=lora trains on one device per job (no trainer.strategy such as fsdp)"
            )
        return self


_NAME = re.compile(r"[^\s/\\\x00-\x1f\x7f]+")


def check_names(cfg: dict) -> None:
    """Names that become file or directory names (runs, domains, benchmark tasks) or blend.txt fields (domains)
    stay one path component inside their root."""

    def keys(section: str, key: str) -> list:
        node = (cfg.get(section) or {}).get(key) if isinstance(cfg.get(section), dict) else None
        return list(node) if isinstance(node, dict) else []

    named = [
        ("run_name", [cfg.get("run_name")]),
        ("domain", keys("domains", "sources")),
        ("benchmark task", keys("benchmarks", "tasks")),
    ]
    for what, names in named:
        for name in names:
            text = str(name)
            if not _NAME.fullmatch(text) or ".." in text or text.startswith("."):
                raise MergeMixError(
                    f"{what} {text!r} cannot name a file: use one path component without '/', "
                    f"'\\', '..', whitespace or a leading '.'"
                )


def check(cfg: dict) -> None:
    """Validate a composed config (a plain dict) against the schema; the first violation is a MergeMixError."""
    check_names(cfg)
    try:
        Config.model_validate(cfg)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "value_error":
            raise MergeMixError(f"{key} must be {err['ctx']['error']}, got {err['input']!r}") from None
        if err["type"] == "model_type":
            raise MergeMixError(f"{key} must be a mapping of settings, got {err['input']!r}") from None
        raise MergeMixError(f"{key}: {err['msg'][0].lower()}{err['msg'][1:]}") from None


def leaves(model: type[BaseModel] = Config, prefix: str = "") -> dict[str, Rule]:
    """{dotted key: rule} of every checked setting (the schema as data: tests and docs walk it)."""
    out = {}
    for name, info in model.model_fields.items():
        key = prefix + (info.alias or name)
        rules = [m for m in info.metadata if isinstance(m, AfterValidator) and isinstance(m.func, Rule)]
        if rules:
            out[key] = rules[0].func
        nested = [
            a
            for a in getattr(info.annotation, "__args__", (info.annotation,))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]  # not those under a dict (named entries)
        if nested:
            out.update(leaves(nested[0], key + "."))
    return out
