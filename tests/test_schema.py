"""The typed config schema (mergemix/schema.py): it names settings that exist, checks each one the way its rule
says, and reports a violation as one line with the dotted key."""

from __future__ import annotations

import pytest

from mergemix import schema
from mergemix.cli import compose, to_plain
from mergemix.errors import MergeMixError

PRESETS = [
    ["experiment=micro"],
    ["experiment=micro", "search=iterative"],
    ["experiment=micro", "baseline=regmix"],
    ["experiment=micro", "experts.kind=lora"],
    ["experiment=micro", "model=micro_moe"],
    ["experiment=micro", "baseline=refine"],
]


@pytest.fixture(scope="module")
def configs():
    return [to_plain(compose(p)) for p in PRESETS]


def _has(cfg: dict, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_checked_setting_exists_in_a_shipped_config(configs):
    missing = [k for k in schema.leaves() if not any(_has(c, k) for c in configs)]
    assert not missing, f"the schema checks settings no shipped config has (renamed?): {missing}"


def test_the_shipped_configs_pass(configs):
    for cfg in configs:
        schema.check(cfg)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("search.lgbm.num_leaves", 1, "search.lgbm.num_leaves must be an integer of at least 2, got 1"),
        ("experts.schedule", "bogus", "experts.schedule must be one of constant, wsd, cosine, got 'bogus'"),
        ("dynamic.fraction", 1.0, "dynamic.fraction must be a number strictly between 0 and 1, got 1.0"),
        ("curves.train", "yes", "curves.train must be true or false, got 'yes'"),
        ("validate.design", "sobol", "validate.design must be one of dirichlet, grid, got 'sobol'"),
        ("search.lgbm", 7, "search.lgbm must be a mapping of settings, got 7"),
        ("mix.tokens", 2.5, "mix.tokens must be a positive integer, got 2.5"),
    ],
)
def test_a_violation_is_one_line_naming_the_key(configs, key, value, message):
    import copy

    cfg = copy.deepcopy(configs[0])
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(MergeMixError) as err:
        schema.check(cfg)
    assert str(err.value) == message


def test_rules_that_tie_settings_together(configs):
    cfg = {**configs[0], "search": {**configs[0]["search"], "backend": "iterative", "budget": 3}}
    with pytest.raises(
        MergeMixError, match="search.budget must be at least 4 for the iterative back-end, got 3"
    ):
        schema.check(cfg)
    cfg = {**configs[3], "trainer": {**configs[3]["trainer"], "strategy": {"name": "fsdp"}}}
    with pytest.raises(MergeMixError, match="experts.kind=lora trains on one device"):
        schema.check(cfg)


def test_integral_floats_null_and_unknown_keys_pass(configs):
    cfg = {**configs[0], "mix": {**configs[0]["mix"], "tokens": 3e5, "warmup_steps": None, "my_note": "kept"}}
    schema.check(cfg)
