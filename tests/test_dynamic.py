import json
import re

import pytest
from conftest import micro_cfg

from mergemix.artifacts import read_manifest
from mergemix.errors import MergeMixError

STATIC, REOPTIMISED = "static (alpha* -> alpha*)", "re-optimised (alpha* -> alpha*_mid)"


def _artifacts(cache):
    return {p.relative_to(cache).as_posix() for p in cache.glob("*/*") if (p / "manifest.json").is_file()}


@pytest.fixture(scope="module")
def dynamic_run(micro_root, tmp_path_factory):
    from mergemix.cli import _quiet, execute

    _quiet()
    run = tmp_path_factory.mktemp("dynamic")
    cfg = micro_cfg(micro_root, f"paths.run_dir={run}")
    execute("dynamic", cfg)
    return cfg, json.loads((run / "dynamic.json").read_text()), run


def test_dynamic_end_to_end(dynamic_run):
    from mergemix.pipeline import Pipeline

    cfg, r, run = dynamic_run
    for f in ("dynamic.json", "dynamic.md", "dynamic.png"):
        assert (run / f).is_file(), f
    pipe = Pipeline(cfg, run)
    alpha, mid_alpha = r["mixtures"]["alpha*"], r["mixtures"]["alpha*_mid"]
    assert sum(alpha.values()) == pytest.approx(1) and sum(mid_alpha.values()) == pytest.approx(1)
    assert r["l1"] == pytest.approx(sum(abs(alpha[d] - mid_alpha[d]) for d in pipe.domain_names))
    half = cfg["mix"]["tokens"] // 2
    assert r["tokens"] == {"first": half, "second": cfg["mix"]["tokens"] - half}
    mid = read_manifest(r["checkpoints"]["mid"])
    assert mid["inputs"]["spec"]["tokens"] == half and mid["inputs"]["init"] == pipe.store.ref(pipe.base_dir)
    mid_ref = pipe.store.ref(r["checkpoints"]["mid"])
    search = read_manifest(r["searches"]["mid"])  # the second search: the mid-point as base, experts from it
    assert search["inputs"]["base"] == mid_ref
    for expert in search["inputs"]["experts"].values():
        assert read_manifest(pipe.store.root / expert)["inputs"]["init"] == mid_ref
    assert r["searches"]["base"] == str(pipe.search_dir)
    assert list(r["rows"]) == ["mid-point", STATIC, REOPTIMISED]
    for label in (STATIC, REOPTIMISED):  # the second half continues from the mid-point with other windows
        m = read_manifest(r["checkpoints"][label])
        assert m["inputs"]["init"] == mid_ref and m["inputs"]["spec"]["tokens"] == r["tokens"]["second"]
        assert m["inputs"]["seed"] == cfg["search_seed"] + 1
    assert f"{REOPTIMISED} vs {STATIC}" in r["margins"]


def test_rerun_reuses_the_cached_first_half(dynamic_run, tmp_path):
    from mergemix.analysis.dynamic import run
    from mergemix.pipeline import Pipeline

    cfg, first, _ = dynamic_run
    cache = Pipeline(cfg, tmp_path).store.root
    before = _artifacts(cache)
    again = run(Pipeline({**cfg, "paths": {**cfg["paths"], "run_dir": str(tmp_path)}}, tmp_path))
    assert _artifacts(cache) == before  # nothing trained, searched or evaluated again
    assert again["checkpoints"] == first["checkpoints"] and again["mixtures"] == first["mixtures"]


def test_bad_dynamic_input_is_refused(micro_root):
    from mergemix import schema
    from mergemix.analysis.dynamic import check_config as check_dynamic

    def check_config(cfg):  # as `execute` runs them: the typed schema, then the study's own rules
        schema.check(cfg)
        check_dynamic(cfg)

    cases = [
        ("dynamic.fraction=0", "strictly between 0 and 1"),
        ("dynamic.fraction=1.5", "strictly between 0 and 1"),
        ("dynamic.fraction=true", "strictly between 0 and 1"),
        (
            "dynamic.fraction=0.1",
            (
                "the first part of mix.tokens (800 tokens at fraction 0.1) must cover at "
                "least one batch (2,048 tokens)"
            ),
        ),
        ("dynamic.fraction=0.9", "the second part of mix.tokens (800 tokens"),
    ]
    for override, message in cases:
        with pytest.raises(MergeMixError, match=re.escape(message)):
            check_config(micro_cfg(micro_root, override))
    check_config(micro_cfg(micro_root, "dynamic.fraction=0.9", "dynamic.train_second_half=false"))
