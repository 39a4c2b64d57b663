import json
import re

import numpy as np
import pytest
from conftest import micro_cfg

from mergemix.analysis.hierarchical import combine, groups_of
from mergemix.artifacts import read_manifest
from mergemix.errors import MergeMixError

# one two-domain group and two one-domain groups: a coarse search over 3 experts, one search inside a group
GROUPS = "hierarchical.groups={technical: [code, math], prose: [prose], sft: [sft]}"


def test_combine_is_coarse_times_fine_and_sums_to_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        coarse = dict(zip("ab", rng.dirichlet(np.ones(2))))
        within = {"a": dict(zip(["x", "y", "z"], rng.dirichlet(np.ones(3)))), "b": {"w": 1.0}}
        alpha = combine(coarse, within)
        assert list(alpha) == ["w", "x", "y", "z"]
        assert sum(alpha.values()) == pytest.approx(1)
        assert alpha["w"] == pytest.approx(coarse["b"])
        assert alpha["y"] == pytest.approx(coarse["a"] * within["a"]["y"])


def test_default_groups_partition_the_embedded_domains(micro_root):
    assert groups_of(micro_cfg(micro_root)) == {"technical": ["code", "math"], "text": ["prose", "sft"]}


def test_groups_must_partition_the_domains(micro_root):
    cases = [
        ("hierarchical.groups=null", "hierarchical.groups is not set"),
        ("hierarchical.groups={a: [code, math, prose, sft, web]}", "unknown domains ['web']"),
        (
            "hierarchical.groups={a: [code, math], b: [math, prose, sft]}",
            "put ['math'] in more than one group",
        ),
        ("hierarchical.groups={a: [code, math], b: [prose]}", "leave out ['sft']"),
        ("hierarchical.groups={a: [code, math, prose, sft], b: []}", "non-empty list of domains"),
    ]
    for override, message in cases:
        with pytest.raises(MergeMixError, match=re.escape(message)):
            groups_of(micro_cfg(micro_root, override))


@pytest.fixture(scope="module")
def hierarchical_run(micro_root, tmp_path_factory):
    from mergemix.cli import _quiet, execute

    _quiet()
    run = tmp_path_factory.mktemp("hierarchical")
    cfg = micro_cfg(micro_root, f"paths.run_dir={run}", GROUPS)
    execute("hierarchical", cfg)
    return cfg, json.loads((run / "hierarchical.json").read_text()), run


def test_hierarchical_end_to_end(hierarchical_run):
    from mergemix.pipeline import Pipeline

    cfg, r, run = hierarchical_run
    for f in ("hierarchical.json", "hierarchical.md", "hierarchical.png"):
        assert (run / f).is_file(), f
    pipe = Pipeline(cfg, run)
    coarse, alpha = r["coarse"]["weights"], r["mixtures"]["hierarchical"]
    assert sum(alpha.values()) == pytest.approx(1) and sum(coarse.values()) == pytest.approx(1)
    for g, members in r["groups"].items():
        beta = r["within"][g]["weights"]
        assert sum(beta.values()) == pytest.approx(1)
        for d in members:
            assert alpha[d] == pytest.approx(coarse[g] * beta[d])
    assert r["within"]["prose"] == {"weights": {"prose": 1.0}}  # one domain: no search
    assert r["mixtures"]["flat alpha*"] == pytest.approx(
        {d: w / sum(pipe.alpha_star.values()) for d, w in pipe.alpha_star.items()}
    )

    coarse_search = read_manifest(r["coarse"]["search"])["inputs"]
    assert set(coarse_search["experts"]) == {"technical", "prose", "sft"}
    assert coarse_search["experts"]["prose"] == pipe.store.ref(pipe.expert_dir("prose"))
    group_expert = pipe.store.root / coarse_search["experts"]["technical"]
    counts = pipe.token_counts
    tech = {d: counts[d] / (counts["code"] + counts["math"]) for d in ("code", "math")}
    assert read_manifest(group_expert)["inputs"]["ratios"] == pytest.approx(tech)
    assert pipe.expert_dir("any name", tech) == group_expert  # a mixture expert is keyed by its ratios
    within_search = read_manifest(r["within"]["technical"]["search"])["inputs"]
    assert within_search["experts"] == {d: pipe.store.ref(pipe.expert_dir(d)) for d in ("code", "math")}
    assert within_search["prior"] == pytest.approx(tech)

    assert list(r["rows"]) == ["token-proportional", "flat alpha*", "hierarchical"]
    assert set(r["merged"]) == {"flat alpha*", "hierarchical"}
    assert r["cost"]["hierarchical"]["expert_tokens"] == 5 * cfg["experts"]["tokens"]
    md = (run / "hierarchical.md").read_text()
    assert "| technical | code, math |" in md and "hierarchical vs flat alpha*" in md
