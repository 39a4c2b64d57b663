"""What each stage reads from the config: the config part of its cache key."""

from __future__ import annotations

# Dotted paths (a section stands for all its leaves). A stage's key hashes the resolved values at these paths (named
# by their last part), with the keys of the artifacts it is built from and the inputs it is given (a domain's spec, a
# run's ratios, spec and seed). A setting that no stage lists changes no artifact: the process layout, logging,
# paths, checks and the studies' own settings. tests/test_cache_safety.py changes every leaf of the composed config
# and checks that exactly the stages listing it get new keys.
READS = {
    "corpus": ("seed", "domains.heldout_fraction"),
    "tokenizer": ("tokenizer.vocab_size", "tokenizer.train_chars"),
    "train": ("model", "optim", "trainer.precision", "trainer.gradient_clip_val"),  # base, experts, mixtures
    "benchmarks": ("benchmarks.tasks", "seed"),
    "eval": (
        "benchmarks.metric",
        "benchmarks.capabilities",
        "benchmarks.max_length",
        "benchmarks.bootstrap",
        "trainer.eval_dtype",
    ),
    "search": ("search",),
}


# search settings that change only the wall time of back-ends evaluating designs known in advance (fanout.py);
# Optuna's workers propose in parallel, so there they stay in the key. `search.storage` (the study's database URL)
# is keyed as null: a study is identified by the search's inputs, and a URL's password must not reach a manifest.
LAYOUT = ("n_workers",)


def config_inputs(cfg: dict, stage: str) -> dict:
    """The config values `stage` reads (READS), by the last part of their path."""
    out = {}
    for dotted in READS[stage]:
        node = cfg
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[dotted.rsplit(".", 1)[-1]] = node
    search = out.get("search")
    if (
        isinstance(search, dict) and search.get("backend") != "optuna"
    ):  # the same trials on any number of workers
        out["search"] = search = {k: v for k, v in search.items() if k not in LAYOUT}
    if isinstance(search, dict) and "storage" in search:  # where the study is kept (with its password) is not
        out["search"] = {**search, "storage": None}  # what it is: the key stays that of a null storage
    return out
