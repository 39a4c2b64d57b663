"""Bad input: each row of CASES is an input a user can get wrong, the exact line the CLI prints for it and what to
do about it. Every case runs in-process through `mergemix.cli.main` and must exit 2 with that one `error:` line,
leaving everything already written (the prepared micro cache and run directory, the input files) as it was.

docs/TROUBLESHOOTING.md holds the same table: `python tests/test_bad_input.py` rewrites it from CASES, and
test_troubleshooting_doc_matches_the_cases fails when the two drift apart.

Placeholders in arguments and messages: <tmp> a directory of prepared bad inputs; <base>, <code>, <math> the micro
run's base and two of its experts, <base_key>, <code_key>, <math_key> their cache keys."""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "TROUBLESHOOTING.md"
README = DOC.parents[1] / "README.md"
BEGIN = "<!-- table generated from tests/test_bad_input.py: python tests/test_bad_input.py -->"
END = "<!-- end of generated table -->"
AREAS = ("config", "files", "checkpoints", "ratios", "benchmarks", "storage")


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    args: str  # the command line after `mergemix`, as typed in a shell
    message: str  # the error line after `error: `
    fix: str  # what to do
    after_work: bool = False  # the error comes after cached stages: run on the prepared micro cache
    micro: bool = True  # run with experiment=micro (not shown in the table)
    builds_first: bool = False  # on a fresh cache, stages before the error may complete (streamed user data)
    requires: str = ""  # a module the case needs (skipped without it)


W = "weights={code: %s, math: %s, prose: %s, sft: %s}"
CKPT = "cannot load checkpoint"
CASES = [
    # ------------------------------------------------------------------------------------------ config ---
    Case(
        "unknown-key",
        "config",
        "run no_such_key=1",
        "bad config: Could not override 'no_such_key'.",
        "Check the key's spelling against conf/config.yaml and its groups; add a new key with `+key=value`.",
    ),
    Case(
        "unknown-group-option",
        "config",
        "run logger=nope",
        "bad config: In 'config': Could not find 'logger/nope' (options: csv, mlflow, none, tensorboard, wandb)",
        "Pick one of the listed options, or add your YAML file with `--config-dir`.",
    ),
    Case(
        "override-syntax",
        "config",
        "run experts.lr=[1",
        "bad config: no viable alternative at input '[1'",
        "Quote values that hold brackets, braces or spaces in the shell, and close them.",
    ),
    Case(
        "missing-mandatory-value",
        "config",
        "run model=hf",
        "bad config: Missing mandatory value: path (key model.path)",
        "Give the value the config marks `???` (here `model.path=DIR`).",
    ),
    Case(
        "config-dir-missing",
        "config",
        "run --config-dir <tmp>/no_conf",
        "--config-dir not found: <tmp>/no_conf",
        "Point `--config-dir` at the directory that holds your YAML files.",
    ),
    Case(
        "not-an-integer",
        "config",
        "run model.hidden_size=abc",
        "model.hidden_size must be a positive integer, got 'abc'",
        "Give a whole number.",
    ),
    Case(
        "negative-lr",
        "config",
        "run experts.lr=-0.001",
        "experts.lr must be a positive number, got -0.001",
        "Learning rates are positive.",
    ),
    Case(
        "bad-seed",
        "config",
        "run seed=abc",
        "seed must be an integer in [0, 2^32 - 1], got 'abc'",
        "Seeds are whole numbers >= 0.",
    ),
    Case(
        "zero-budget",
        "config",
        "search search.budget=0",
        "search.budget must be a positive integer, got 0",
        "Give at least one merge evaluation.",
    ),
    Case(
        "zero-baseline-budget",
        "config",
        "search baseline=proxy baseline.budget=0",
        "baseline.budget must be a positive integer, got 0",
        "Give the baseline at least one proxy run.",
    ),
    Case(
        "negative-tokens",
        "config",
        "run experts.tokens=-5",
        "experts.tokens must be a positive integer, got -5",
        "Give a positive token budget.",
    ),
    Case(
        "tokens-below-one-batch",
        "config",
        "run experiment=micro experts.tokens=100",
        "experts.tokens must cover at least one batch (2048 tokens)",
        "Raise the budget to at least `model.seq_len * model.batch_size` tokens.",
        micro=False,
    ),
    Case(
        "heldout-fraction",
        "config",
        "run domains.heldout_fraction=1.5",
        "domains.heldout_fraction must be a fraction in [0, 1), got 1.5",
        "Hold out a fraction below 1 of each domain (e.g. 0.05).",
    ),
    Case(
        "max-epochs-zero",
        "config",
        "run data.max_epochs=0",
        "data.max_epochs must be a positive number, got 0",
        "Allow at least one pass over a domain, or `null` for no limit.",
    ),
    Case(
        "embedded-size-negative",
        "config",
        "run domains.sources.code.max_chars=-1",
        "domain 'code': max_chars must be a positive number, got -1",
        "Give a positive size.",
    ),
    Case(
        "unknown-backend",
        "config",
        "run search.backend=anneal",
        "unknown search back-end 'anneal' (choose from surrogate, iterative, grid, optuna, gradient)",
        "Use one of the listed back-ends, or a `search=` preset (`search=tpe`).",
    ),
    Case(
        "unknown-sampler",
        "config",
        "run search=tpe search.sampler=nsga9",
        "unknown Optuna sampler 'nsga9' (choose from tpe, cmaes, gp, qmc, random)",
        "Use one of the listed samplers.",
    ),
    Case(
        "unknown-objective",
        "config",
        "run search.objective=chem",
        "search.objective must be 'macro', a capability or a list of capabilities ['code', 'instruct', "
        "'language', 'math'], got 'chem'",
        "Optimise U (`macro`), name a configured capability, or list the capabilities to average.",
    ),
    Case(
        "unknown-expert-domain",
        "config",
        "experts expert_domain=chem",
        "expert_domain 'chem' is not a configured domain (code, math, prose, sft)",
        "Name a configured domain.",
    ),
    Case(
        "unknown-strategy",
        "config",
        "run 'trainer.strategy={name: deepspeed}'",
        "unknown trainer.strategy.name 'deepspeed' (choose from auto, ddp, fsdp)",
        "Use `trainer=fsdp` or one of the listed strategies.",
    ),
    Case(
        "unknown-logger",
        "config",
        "run logger=none logger.kind=foo",
        "unknown logger kind 'foo' (wandb, none, or a Lightning logger's _target_ as in conf/logger/csv.yaml)",
        "Use `logger=csv`, `logger=tensorboard`, `logger=wandb`, `logger=none`, or a YAML with `_target_`.",
    ),
    Case(
        "budget-below-backend",
        "config",
        "run search.budget=1",
        "search.budget must be at least 2 for the surrogate back-end, got 1",
        "A surrogate is fitted on 2 or more merges (the iterative back-end: 4).",
    ),
    Case(
        "lgbm-no-trees",
        "config",
        "search search.lgbm.n_estimators=0",
        "search.lgbm.n_estimators must be a positive integer, got 0",
        "The surrogate needs at least one tree.",
    ),
    Case(
        "lgbm-bagging-fraction",
        "config",
        "search search.lgbm.bagging_fraction=0",
        "search.lgbm.bagging_fraction must be a fraction in (0, 1], got 0",
        "Bag a fraction above 0 of the merges.",
    ),
    Case(
        "unknown-schedule",
        "config",
        "experts experts.schedule=bogus",
        "experts.schedule must be one of constant, wsd, cosine, got 'bogus'",
        "Use one of the listed schedules.",
    ),
    Case(
        "unknown-eval-dtype",
        "config",
        "run trainer.eval_dtype=int8",
        "trainer.eval_dtype must be one of bfloat16, float16, got 'int8'",
        "Evaluate in bfloat16 or float16, or `null` for float32.",
    ),
    Case(
        "unknown-precision",
        "config",
        "run trainer.precision=fp8",
        "trainer.precision must be one of 32-true, bf16-mixed, bf16-true, 16-mixed, 16-true, 64-true, "
        "transformer-engine, transformer-engine-float16, 32, bf16, 16, 64, got 'fp8'",
        "Use one of Lightning's precisions (`bf16-mixed` on recent hardware, `32-true` for exact runs).",
    ),
    Case(
        "negative-clip",
        "config",
        "run trainer.gradient_clip_val=-1",
        "trainer.gradient_clip_val must be a non-negative number, got -1",
        "Clip at 0 (off) or a positive norm.",
    ),
    Case(
        "validate-too-few-mixtures",
        "config",
        "validate validate.n_mixtures=1",
        "validate.n_mixtures must be an integer of at least 3 (a rank correlation needs 3 mixtures), got 1",
        "Validate on 3 or more mixtures.",
    ),
    Case(
        "max-length-one",
        "config",
        "run benchmarks.max_length=1",
        "benchmarks.max_length must be an integer of at least 2 (a context token and a continuation token), got 1",
        "Leave room for a context and a continuation (the default: 256 tokens).",
    ),
    Case(
        "bootstrap-zero",
        "config",
        "run benchmarks.bootstrap=0",
        "benchmarks.bootstrap must be an integer of at least 2 (a standard deviation needs 2 resamples), got 0",
        "Resample the items at least twice (the default: 200).",
    ),
    Case(
        "merge-scale-huge",
        "config",
        "search search.merge_scale=1e30",
        "search.merge_scale must be a number in (0, 10], got 1e+30",
        "Scale the task vectors by at most 10 (1 is the paper's merge).",
    ),
    Case(
        "vocab-below-bytes",
        "config",
        "run tokenizer.vocab_size=100",
        "tokenizer.vocab_size must be an integer of at least 258 (the 256 byte symbols and 2 special tokens), "
        "got 100",
        "A byte-level BPE needs its 256 byte symbols and 2 special tokens; give more for merges.",
    ),
    Case(
        "betas-out-of-range",
        "config",
        "run optim.betas=[0.9,1.5]",
        "optim.betas must be two numbers in [0, 1), got [0.9, 1.5]",
        "Give two coefficients in [0, 1) (e.g. [0.9, 0.95]).",
    ),
    Case(
        "negative-weight-decay",
        "config",
        "run optim.weight_decay=-0.1",
        "optim.weight_decay must be a non-negative number, got -0.1",
        "Decay the weights by 0 or more.",
    ),
    Case(
        "seed-too-large",
        "config",
        "run seed=4294967296",
        "seed must be an integer in [0, 2^32 - 1], got 4294967296",
        "Seeds fit in 32 bits.",
    ),
    Case(
        "generation-length-zero",
        "config",
        "run benchmarks.tasks.math_gen.max_new_tokens=0",
        "benchmarks.tasks.math_gen.max_new_tokens must be a positive integer, got 0",
        "Generate at least one token.",
    ),
    Case(
        "generated-task-empty",
        "config",
        "run benchmarks.tasks.math_mc.n=0",
        "benchmarks.tasks.math_mc.n must be a positive integer, got 0",
        "Generate at least one item.",
    ),
    Case(
        "benchmark-limit-negative",
        "config",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/sums.jsonl, limit: -5}'",
        "benchmarks.tasks.mine.limit must be a positive number, got -5",
        "Keep a positive number of items, or `null` for all.",
    ),
    Case(
        "heads-do-not-divide",
        "config",
        "run model.num_heads=3",
        "model.hidden_size (64) must be a multiple of model.num_heads (3)",
        "Pick a head count that divides the hidden size.",
    ),
    Case(
        "kv-heads-do-not-divide",
        "config",
        "run model.num_kv_heads=3",
        "model.num_heads (4) must be a multiple of model.num_kv_heads (3)",
        "Pick a key/value head count that divides the head count.",
    ),
    Case(
        "warmup-longer-than-run",
        "config",
        "run base.warmup_steps=30",
        "base.warmup_steps must not exceed the run's 19 steps (base.tokens / 2048 tokens per step), got 30",
        "Shorten the warm-up or raise the run's tokens.",
    ),
    Case(
        "single-domain",
        "config",
        "run '~domains.sources.math' '~domains.sources.prose' '~domains.sources.sft'",
        "a mixture needs at least 2 domains, got 1 (code): add domains under domains.sources",
        "Configure two or more domains: a mixture of one domain has nothing to search.",
    ),
    Case(
        "budget-below-domains",
        "config",
        "run search.budget=3",
        "search.budget must be at least the number of domains (4) for the surrogate back-end (its seed merges start "
        "at the 4 vertices), got 3",
        "Give the surrogate at least one merge per domain (more: a better fit).",
    ),
    Case(
        "objective-repeated",
        "config",
        "run 'search.objective=[code,code,math]'",
        "search.objective lists a capability more than once (it would weigh more), got ['code', 'code', 'math']",
        "List each capability once.",
    ),
    Case(
        "export-prefix-without-domain",
        "config",
        "run export.data_prefix=/data",
        "export.data_prefix must be a path containing '{domain}', got '/data'",
        "Put `{domain}` where each domain's name goes (e.g. `/data/{domain}`).",
    ),
    # ------------------------------------------------------------------------------------------- files ---
    Case(
        "domain-file-missing",
        "files",
        "run --config-dir <tmp>/conf domains=missing_file",
        "domain 'web': file not found: <tmp>/nope.txt",
        "Fix the path in the domain's `paths`.",
        micro=False,
    ),
    Case(
        "domain-glob-matches-nothing",
        "files",
        "run domains=example_files",
        "domain 'code': no file matches data/code/*.parquet",
        "Relative paths are read from the working directory: run there, or give absolute paths.",
    ),
    Case(
        "shard-dir-without-data",
        "files",
        "run --config-dir <tmp>/conf domains=empty_shards",
        "domain 'web': directory <tmp>/shards holds no readable shards (.txt, .jsonl, .parquet files, or a "
        "dataset saved by datasets' save_to_disk)",
        "Point the domain at a directory of .txt/.jsonl/.parquet shards or a `save_to_disk` dataset.",
        micro=False,
    ),
    Case(
        "domain-file-type",
        "files",
        "run --config-dir <tmp>/conf domains=csv_file",
        "domain 'web': unsupported file type .csv (.txt, .jsonl, .parquet)",
        "Convert the file to JSONL or parquet.",
        micro=False,
    ),
    Case(
        "domain-file-empty",
        "files",
        "run --config-dir <tmp>/conf domains=empty_file benchmarks=mine",
        "domain 'web': its files hold no text",
        "The domain's files are empty: fill them or drop the domain.",
        micro=False,
        builds_first=True,
    ),
    Case(
        "domain-jsonl-garbled",
        "files",
        "run --config-dir <tmp>/conf domains=garbled_jsonl benchmarks=mine",
        "<tmp>/garbled_domain.jsonl:2: expected a JSON object with a 'text' string",
        "Fix that line (documents are read as they stream: the error names the first bad line).",
        micro=False,
        builds_first=True,
    ),
    Case(
        "benchmark-file-missing",
        "files",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/no.jsonl}'",
        "benchmark 'mine': file not found: <tmp>/no.jsonl",
        "Fix the benchmark's `path`.",
    ),
    Case(
        "benchmark-jsonl-garbled",
        "files",
        "experts '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/garbled.jsonl}' "
        "benchmarks.capabilities.math.tasks=[mine]",
        "benchmark 'mine': <tmp>/garbled.jsonl:2 is not valid JSON (Expecting value)",
        "Fix that line: one JSON object per line.",
        after_work=True,
    ),
    Case(
        "benchmark-item-fields",
        "files",
        "experts '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/fields.jsonl}' "
        "benchmarks.capabilities.math.tasks=[mine]",
        "benchmark 'mine': <tmp>/fields.jsonl:1: a generation item needs prompt and answer",
        "Give each item `{context, choices, label}` (multiple choice) or `{prompt, answer}` (generation).",
        after_work=True,
    ),
    Case(
        "domain-txt-not-utf8",
        "files",
        "run --config-dir <tmp>/conf domains=binary_txt benchmarks=mine",
        "<tmp>/binary.txt:2: not UTF-8 text (byte 6); convert the file to UTF-8",
        "Convert the file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or drop a binary file.",
        micro=False,
        builds_first=True,
    ),
    Case(
        "domain-jsonl-not-utf8",
        "files",
        "run --config-dir <tmp>/conf domains=binary_jsonl benchmarks=mine",
        "<tmp>/binary_domain.jsonl:2: not UTF-8 text; convert the file to UTF-8",
        "Convert the file to UTF-8.",
        micro=False,
        builds_first=True,
    ),
    Case(
        "benchmark-item-not-object",
        "files",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/five.jsonl}'",
        "benchmark 'mine': <tmp>/five.jsonl:2: expected a JSON object, got 5",
        "One JSON object per line.",
    ),
    Case(
        "benchmark-not-utf8",
        "files",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/binary.jsonl}'",
        "benchmark 'mine': <tmp>/binary.jsonl:2: not UTF-8 text; convert the file to UTF-8",
        "Convert the file to UTF-8.",
    ),
    Case(
        "benchmark-file-empty",
        "files",
        "experts '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/empty.jsonl}' "
        "benchmarks.capabilities.math.tasks=[mine]",
        "benchmark 'mine': <tmp>/empty.jsonl holds no items",
        "Add items to the file.",
        after_work=True,
    ),
    # ------------------------------------------------------------------------------------- checkpoints ---
    Case(
        "merge-base-missing",
        "checkpoints",
        "merge base=<tmp>/nope experts=[<tmp>/nope2] weights=[1.0] out=<tmp>/out_missing",
        "checkpoint directory not found: <tmp>/nope",
        "Fix the path.",
    ),
    Case(
        "merge-base-not-hf",
        "checkpoints",
        "merge base=<tmp>/not_ckpt experts=[<tmp>/nope2] weights=[1.0] out=<tmp>/out_not_hf",
        "not a checkpoint directory (no config.json): <tmp>/not_ckpt",
        "Give a Hugging Face checkpoint directory (config.json and weights, as `save_pretrained` writes).",
    ),
    Case(
        "base-checkpoint-missing",
        "checkpoints",
        "experts base.checkpoint=<tmp>/nope",
        "checkpoint directory not found: <tmp>/nope",
        "Fix `base.checkpoint`.",
    ),
    Case(
        "tokenizer-missing",
        "checkpoints",
        "run tokenizer.path=<tmp>/nope",
        "tokenizer directory not found: <tmp>/nope",
        "Fix `tokenizer.path`, or `null` to train one.",
    ),
    Case(
        "expert-other-shape",
        "checkpoints",
        "merge base=<base> experts=[<tmp>/wide] weights=[1.0] out=<tmp>/out_wide",
        "expert 'expert000:wide' has another architecture than the base (intermediate_size: 176 vs 96)",
        "Merge only experts fine-tuned from this base (same config and tensor shapes).",
        after_work=True,
    ),
    Case(
        "expert-other-base",
        "checkpoints",
        "merge base=<math> experts=[<code>] weights=[1.0] out=<tmp>/out_lineage",
        "expert 'expert000:<code_key>' was trained from another base: its manifest records 'base/<base_key>', "
        "the base is 'expert/<math_key>'",
        "Give the base the expert was trained from (its manifest's `init`).",
        after_work=True,
    ),
    Case(
        "expert-corrupt",
        "checkpoints",
        "merge base=<base> experts=[<tmp>/corrupt] weights=[1.0] out=<tmp>/out_corrupt",
        f"{CKPT} <tmp>/corrupt: Error while deserializing header: header too large",
        "The weights file is damaged: copy or train the expert again.",
        after_work=True,
    ),
    Case(
        "expert-nan",
        "checkpoints",
        "merge base=<base> experts=[<tmp>/nan_expert] weights=[1.0] out=<tmp>/out_nan",
        "expert 'expert000:nan_expert' has NaN or Inf weights (first in model.embed_tokens.weight); "
        "refusing to merge it",
        "The expert diverged: retrain it with a lower learning rate.",
        after_work=True,
    ),
    Case(
        "merge-out-not-empty",
        "checkpoints",
        "merge base=<base> experts=[<code>,<math>] weights=[0.5,0.5] out=<tmp>/keep",
        "output directory <tmp>/keep exists and is not empty; choose another `out`",
        "Choose a new or empty `out` directory: a merge never overwrites.",
        after_work=True,
    ),
    Case(
        "merge-out-under-file",
        "checkpoints",
        "merge base=<base> experts=[<code>] weights=[1.0] out=<tmp>/a_file/merged",
        "output directory <tmp>/a_file/merged cannot be created: <tmp>/a_file is not a directory",
        "Choose an `out` whose parent is a directory.",
        after_work=True,
    ),
    # ------------------------------------------------------------------------------------------ ratios ---
    Case(
        "negative-weight",
        "ratios",
        "mix '" + W % (-0.5, 0.5, 0.5, 0.5) + "'",
        "mix weights must be non-negative, got [-0.5, 0.5, 0.5, 0.5]",
        "Weights are shares: 0 or more.",
    ),
    Case(
        "weights-sum",
        "ratios",
        "run 'base.mixture={code: 0.5, math: 0.6, prose: 0, sft: 0}'",
        "base.mixture must sum to 1 (within 1e-06), got sum 1.1",
        "Make the weights sum to 1.",
    ),
    Case(
        "all-zero-weights",
        "ratios",
        "mix '" + W % (0, 0, 0, 0) + "'",
        "mix weights must sum to 1 (within 1e-06), got sum 0",
        "Give at least one domain a positive share.",
    ),
    Case(
        "nan-weight",
        "ratios",
        "mix '" + W % ("nan", 0.5, 0.5, 0) + "'",
        "mix weights must be finite, got ['nan', 0.5, 0.5, 0]",
        "Give finite numbers.",
    ),
    Case(
        "unknown-domain",
        "ratios",
        "mix 'weights={code: 0.5, chem: 0.5, math: 0, prose: 0, sft: 0}'",
        "mix weights name unknown domains ['chem']; known: ['code', 'math', 'prose', 'sft']",
        "Name only configured domains.",
    ),
    Case(
        "missing-domain",
        "ratios",
        "mix 'weights={code: 1.0}'",
        "mix weights miss domains ['math', 'prose', 'sft']; give a weight (0 allowed) for each of "
        "['code', 'math', 'prose', 'sft']",
        "Give every domain a weight (0 allowed).",
    ),
    Case(
        "weight-not-a-number",
        "ratios",
        "mix '" + W % ("abc", 0.5, 0.5, 0) + "'",
        "mix weights must be numbers, got ['abc', 0.5, 0.5, 0]",
        "Give numbers.",
    ),
    Case(
        "weights-not-a-mapping",
        "ratios",
        "mix weights=0.5",
        "mix weights must be {domain: weight, ...} or a list of weights, got 0.5",
        "Give `weights='{code: 0.4, math: 0.6, ...}'`.",
    ),
    Case(
        "weights-unparsable",
        "ratios",
        "mix 'weights={code: 0.5'",
        "cannot parse mix weights (weights={code: 0.5): while parsing a flow mapping",
        "Quote the mapping and close its brace.",
    ),
    Case(
        "weights-missing", "ratios", "mix", "mix needs weights='{domain: weight, ...}'", "Give the mixture."
    ),
    Case(
        "weight-as-text",
        "ratios",
        "run 'base.mixture={code: \"0.5\", math: 0.5, prose: 0, sft: 0}'",
        "base.mixture must be numbers, got ['0.5', 0.5, 0, 0]",
        "Give numbers, not quoted text.",
    ),
    Case(
        "merge-negative-weight",
        "ratios",
        "merge base=<base> experts=[<code>,<math>] weights=[1.5,-0.5] out=<tmp>/out_neg",
        "merge weights must be non-negative, got [1.5, -0.5]",
        "Weights are shares: 0 or more.",
        after_work=True,
    ),
    Case(
        "merge-weights-sum",
        "ratios",
        "merge base=<base> experts=[<code>,<math>] weights=[0.5,0.6] out=<tmp>/out_sum",
        "merge weights must sum to 1 (within 1e-06), got sum 1.1",
        "Make the weights sum to 1.",
        after_work=True,
    ),
    Case(
        "merge-weights-count",
        "ratios",
        "merge base=<base> experts=[<code>,<math>] weights=[1.0] out=<tmp>/out_count",
        "weights have 1 entries but there are 2 experts",
        "Give one weight per expert.",
        after_work=True,
    ),
    Case(
        "mixture-repeats-data",
        "ratios",
        "mix mix.tokens=24000 +domains.sources.code.max_epochs=0.3 '" + W % (1, 0, 0, 0) + "'",
        "mix:custom would repeat domain 'code' <epochs> times (<drawn> tokens drawn from <available> available), "
        "more than its max_epochs 0.3: lower the run's tokens or that domain's share, add data, or raise "
        "max_epochs",
        "Lower the tokens or that domain's weight, add data, or raise `data.max_epochs`.",
        after_work=True,
    ),
    # -------------------------------------------------------------------------------------- benchmarks ---
    Case(
        "capability-unknown-task",
        "benchmarks",
        "run benchmarks.capabilities.math.tasks=[nope]",
        "capability 'math' names unknown tasks ['nope']; tasks: ['code_cloze', 'math_gen', 'math_mc', "
        "'prose_cloze', 'sft_mc']",
        "List only tasks defined under `benchmarks.tasks`.",
    ),
    Case(
        "bad-metric",
        "benchmarks",
        "run benchmarks.metric=f1",
        "benchmarks.metric must be one of ('acc', 'acc_norm', 'prob'), got 'f1'",
        "Use acc, acc_norm or prob.",
    ),
    Case(
        "benchmark-source",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: web}'",
        "benchmark 'mine': unknown source 'web' (choose from embedded, jsonl, lmeval)",
        "Use embedded, jsonl or lmeval.",
    ),
    Case(
        "benchmark-builder",
        "benchmarks",
        "run '+benchmarks.tasks.mine={n: 40}'",
        "benchmark 'mine': unknown builder 'None' (choose from cloze, synthetic_mc, synthetic_gen)",
        "An embedded task needs one of the listed builders; your own items: `source: jsonl`.",
    ),
    Case(
        "benchmark-empty-choice",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/empty_choice.jsonl}'",
        "benchmark 'mine': <tmp>/empty_choice.jsonl:1: a choice is empty (an empty continuation has probability 1)",
        "Give every choice some text.",
    ),
    Case(
        "benchmark-duplicate-choices",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/dup_choices.jsonl}'",
        "benchmark 'mine': <tmp>/dup_choices.jsonl:1: choices repeat [' four']",
        "Make the choices distinct.",
    ),
    Case(
        "benchmark-boolean-label",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/bool_label.jsonl}'",
        "benchmark 'mine': <tmp>/bool_label.jsonl:1: label must be an integer index into choices, got True",
        "Give the index of the right choice (0, 1, ...).",
    ),
    Case(
        "benchmark-empty-prompt",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/empty_prompt.jsonl}'",
        "benchmark 'mine': <tmp>/empty_prompt.jsonl:2: a generation item needs a non-empty prompt and answer",
        "Give every generation item a prompt and an answer.",
    ),
    Case(
        "benchmark-null-field",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/null_context.jsonl}'",
        "benchmark 'mine': <tmp>/null_context.jsonl:1: context must be text, got null",
        "Give every item its text.",
    ),
    Case(
        "benchmark-duplicate-items",
        "benchmarks",
        "run '+benchmarks.tasks.mine={source: jsonl, path: <tmp>/dup_items.jsonl}'",
        "benchmark 'mine': <tmp>/dup_items.jsonl:3 repeats the item of line 1 (a repeated item counts twice and "
        "understates the bootstrap noise)",
        "Remove the repeated items.",
    ),
    Case(
        "lmeval-unknown-task",
        "benchmarks",
        "run '+benchmarks.tasks.extra={source: lmeval, task: toy_nope, include_path: <tmp>/lm_tasks}'",
        "benchmark 'extra': lm-eval task 'toy_nope' not found in <tmp>/lm_tasks",
        "Check the task name (`lm_eval --tasks list`) and the `include_path`.",
        requires="lm_eval",
    ),
    # ----------------------------------------------------------------------------------------- storage ---
    Case(
        "storage-unknown-scheme",
        "storage",
        "search search=tpe search.storage=foo://db",
        "cannot open Optuna storage foo://db: Can't load plugin: sqlalchemy.dialects:foo",
        "Give an SQLAlchemy URL: `sqlite:///PATH` or `postgresql+psycopg2://USER@HOST/DB`.",
    ),
    Case(
        "storage-sqlite-folder",
        "storage",
        "search search=tpe search.storage=sqlite:///<tmp>/a_file/study.db",
        "cannot open Optuna storage sqlite:///<tmp>/a_file/study.db: <tmp>/a_file is not a directory",
        "Put the SQLite file in an existing directory.",
    ),
    Case(
        "cache-dir-unwritable",
        "storage",
        "run paths.cache_dir=<tmp>/a_file/cache",
        "paths.cache_dir <tmp>/a_file/cache cannot be created: <tmp>/a_file is not a directory",
        "Point `paths.cache_dir` (or `MERGEMIX_HOME`) at a writable directory.",
    ),
    Case(
        "run-dir-unwritable",
        "storage",
        "run paths.run_dir=<tmp>/a_file/run",
        "run directory <tmp>/a_file/run cannot be created: <tmp>/a_file is not a directory",
        "Point `paths.run_dir` at a writable directory.",
    ),
    Case(
        "root-unwritable",
        "storage",
        "run paths.root=<tmp>/a_file/out",
        "paths.root <tmp>/a_file/out cannot be created: <tmp>/a_file is not a directory",
        "Point `paths.root` (or `MERGEMIX_HOME`) at a writable directory.",
    ),
]


# --------------------------------------------------------------------------------------- doc table ---
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    rows = ["| area | input | error line | what to do |", "|---|---|---|---|"]
    for c in CASES:
        rows.append(
            f"| {c.area} | `{_cell('mergemix ' + c.args)}` | `{_cell('error: ' + c.message)}` | "
            f"{_cell(c.fix)} |"
        )
    return "\n".join([BEGIN, *rows, END])


def write_doc() -> None:
    text = DOC.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + render_table() + text[end:])


# ----------------------------------------------------------------------------------- prepared inputs ---
def _domain_conf(conf: Path, name: str, paths: list[Path]) -> None:
    """Domain `web` from `paths`, beside a good domain `zz` (a mixture needs two)."""
    good = conf.parent / "good_domain.jsonl"
    (conf / "domains" / f"{name}.yaml").write_text(
        f"heldout_fraction: 0.05\nbase_mixture: token\nsources:\n  web: {{source: files, paths: {[str(p) for p in paths]}}}\n"
        f"  zz: {{source: files, paths: ['{good}']}}\n"
    )


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory) -> Path:
    """Bad files and a config directory whose domains point at them."""
    d = tmp_path_factory.mktemp("bad")
    conf = d / "conf"
    (conf / "domains").mkdir(parents=True)
    (d / "shards").mkdir()
    (d / "shards" / "x.csv").write_text("a,b\n")
    (d / "table.csv").write_text("a,b\n")
    (d / "empty.txt").write_text("   \n")
    (d / "garbled_domain.jsonl").write_text('{"text": "fine"}\nnot json\n')
    (d / "garbled.jsonl").write_text('{"context": "a", "choices": ["x", "y"], "label": 0}\nnot json at all\n')
    (d / "fields.jsonl").write_text('{"context": "a"}\n')
    (d / "empty.jsonl").write_text("\n")
    mc = '{"context": "2+2=", "choices": %s, "label": %s}\n'
    (d / "five.jsonl").write_text(mc % ('[" four", " five"]', 0) + "5\n")
    (d / "binary.jsonl").write_text(mc % ('[" four", " five"]', 0))
    with open(d / "binary.jsonl", "ab") as fh:
        fh.write(b'{"context": "\xff\xfe", "choices": ["a", "b"], "label": 0}\n')
    (d / "empty_choice.jsonl").write_text(mc % ('[" four", ""]', 0))
    (d / "dup_choices.jsonl").write_text(mc % ('[" four", " five", " four"]', 0))
    (d / "bool_label.jsonl").write_text(mc % ('[" four", " five"]', "true"))
    (d / "empty_prompt.jsonl").write_text(
        '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "  ", "answer": "2"}\n'
    )
    (d / "null_context.jsonl").write_text(mc.replace('"2+2="', "null") % ('[" four", " five"]', 0))
    (d / "dup_items.jsonl").write_text(
        mc % ('[" four", " five"]', 0) + mc % ('[" six", " five"]', 1) + mc % ('[" four", " five"]', 0)
    )
    (d / "good_domain.jsonl").write_text(
        "".join(f'{{"text": "a good document number {i}"}}\n' for i in range(20))
    )
    (d / "binary.txt").write_bytes(b"hello\n\xff\xfe world\n")
    (d / "binary_domain.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "\xff"}\n')
    (d / "not_ckpt").mkdir()
    (d / "not_ckpt" / "weights.bin").write_bytes(b"\0")
    (d / "a_file").write_text("a file where a directory is expected")
    (d / "lm_tasks").mkdir()
    (d / "keep").mkdir()
    (d / "keep" / "precious.txt").write_text("x")
    (conf / "benchmarks").mkdir()
    (d / "sums.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    (conf / "benchmarks" / "mine.yaml").write_text(
        f"metric: prob\nbatch_size: 8\nmax_length: 64\nbootstrap: 10\ncapabilities:\n"
        f"  math: {{domain: web, tasks: [sums]}}\ntasks:\n  sums: {{source: jsonl, path: {d}/sums.jsonl}}\n"
    )
    for name, paths in {
        "missing_file": [d / "nope.txt"],
        "empty_shards": [d / "shards"],
        "csv_file": [d / "table.csv"],
        "empty_file": [d / "empty.txt"],
        "garbled_jsonl": [d / "garbled_domain.jsonl"],
        "binary_txt": [d / "binary.txt"],
        "binary_jsonl": [d / "binary_domain.jsonl"],
    }.items():
        _domain_conf(conf, name, paths)
    return d


@pytest.fixture(scope="module")
def checkpoints(request, bad_dir) -> dict[str, str]:
    """The micro run's base and experts, and bad experts made from them: another shape, NaN, corrupt weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from mergemix.models import load_checkpoint

    pipe, _ = request.getfixturevalue("micro_run")
    base, code, math = pipe.base_dir, pipe.expert_dirs["code"], pipe.expert_dirs["math"]
    if not (bad_dir / "wide").exists():
        cfg = AutoConfig.from_pretrained(base)
        cfg.intermediate_size = 96
        AutoModelForCausalLM.from_config(cfg).save_pretrained(bad_dir / "wide")
        model = load_checkpoint(code)
        with torch.no_grad():
            model.model.embed_tokens.weight[0, 0] = float("nan")
        model.save_pretrained(bad_dir / "nan_expert")
        shutil.copytree(code, bad_dir / "corrupt")
        (bad_dir / "corrupt" / "model.safetensors").write_bytes(b"not a safetensors file")
    return {
        "<base>": str(base),
        "<code>": str(code),
        "<math>": str(math),
        "<base_key>": base.name,
        "<code_key>": code.name,
        "<math_key>": math.name,
    }


# ---------------------------------------------------------------------------------------------- runs ---
def _fill(text: str, values: dict[str, str]) -> str:
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time (a rewrite changes the latter)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _artifacts(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in (root / "cache").glob("*/*/manifest.json")}


def _pattern(message: str) -> str:
    """The expected line as a regex: placeholders left unfilled (<epochs>, ...) stand for numbers."""
    return r"[\d.,]+".join(re.escape(part) for part in re.split(r"<[a-z_]+>", message))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_error_line_and_nothing_is_lost(
    case, bad_dir, tmp_path, request, capsys, monkeypatch
):
    if case.requires:
        pytest.importorskip(case.requires)
    values = {"<tmp>": str(bad_dir)}
    if case.after_work:
        values.update(request.getfixturevalue("checkpoints"))
        root = request.getfixturevalue("micro_root")
    else:
        root = tmp_path / "home"
    args = [_fill(a, values) for a in shlex.split(case.args)]
    if args[0] != "merge":
        defaults = {
            "logger": "none",
            "experiment": "micro" if case.micro else None,
            "paths.root": root,
            "hydra.run.dir": tmp_path / "hydra",
        }
        given = {a.split("=", 1)[0] for a in args}
        args += [f"{k}={v}" for k, v in defaults.items() if v is not None and k not in given]
    monkeypatch.chdir(tmp_path)
    inputs, cache, artifacts = _snapshot(bad_dir), _snapshot(root), _artifacts(root)

    code, _, lines = run_cli(args, capsys, monkeypatch)

    expected = "error: " + _fill(case.message, values)
    assert len(lines) == 1 and re.fullmatch(_pattern(expected), lines[0]), (lines, expected)
    assert code == 2
    assert _snapshot(bad_dir) == inputs  # the input files untouched, no merge output left behind
    after = _snapshot(root)
    assert {k: after.get(k) for k in cache} == cache  # nothing already written was lost or rewritten
    if not case.builds_first:
        assert _artifacts(root) == artifacts  # refused before building anything new
    if not (case.builds_first or case.after_work):
        assert not (root / "cache").exists()  # refused before any work
    assert not list((root / "cache").glob("*/.tmp-*")) and not list((root / "cache").glob("*/*/.tmp-*"))


def test_cases_cover_every_area_and_are_unique():
    assert len(CASES) >= 24
    assert {c.area for c in CASES} == set(AREAS)
    assert len({c.id for c in CASES}) == len(CASES) and len({c.args for c in CASES}) == len(CASES)


def test_troubleshooting_doc_matches_the_cases():
    assert render_table() in DOC.read_text(), (
        "docs/TROUBLESHOOTING.md is stale: run python tests/test_bad_input.py"
    )


def test_readme_lists_real_error_lines():
    """The README's commonest errors are cases of the suite (`…` standing for any text)."""
    section = README.read_text().split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)
    assert len(shown) >= 5
    for line in shown:
        pattern = ".*".join(re.escape(part) for part in line.split("…"))
        assert any(re.fullmatch(pattern, c.message) for c in CASES), line


if __name__ == "__main__":
    write_doc()
    print(f"wrote {len(CASES)} cases to {DOC}")
