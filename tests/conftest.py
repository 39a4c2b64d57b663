"""Shared fixtures: configs composed once with the compose API, a micro pipeline built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def micro_cfg(tmp_root, *overrides: str) -> dict:
    from mergemix.cli import compose, to_plain

    cfg = to_plain(
        compose(
            [
                "experiment=micro",
                "logger=none",
                f"paths.root={tmp_root}",
                f"paths.run_dir={tmp_root}/run",
                *overrides,
            ]
        )
    )
    return cfg


def load_domain(name: str, spec, seed: int, heldout_fraction: float) -> tuple[list[str], list[str]]:
    """A domain's documents as two lists (train, held-out), read in memory: the reference the shards must match."""
    from pathlib import Path

    from mergemix.data import domains

    domains.check_source(name, spec)
    if spec.get("source", "embedded") == "embedded":
        return domains.load_embedded(name, spec, seed, heldout_fraction)
    swap = not domains.probe(name, domains.shards(name, spec, Path(), heldout_fraction, 1 << 62))
    parts = domains.shards(name, spec, Path(), heldout_fraction, 1 << 62, swap)
    return list(domains.iter_docs(parts, "train")), list(domains.iter_docs(parts, "heldout"))


def assert_cli_error(command: str, override: str, message: str, root, monkeypatch, capsys) -> None:
    """`mergemix <command>` on the micro experiment with one bad override stops with one `error:` line that
    contains `message`, exit code 2, before anything is trained."""
    from mergemix import training
    from mergemix.cli import main

    monkeypatch.setattr(training, "train_causal_lm", lambda *a, **k: pytest.fail("trained despite bad input"))
    with pytest.raises(SystemExit) as exc:
        main([command, "experiment=micro", "logger=none", f"paths.root={root}", override])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, list[str]]:
    """`mergemix ARGV` in this process: (exit code, stdout, non-empty stderr lines); Hydra's global state reset."""
    import logging
    import sys

    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from mergemix.cli import main

    monkeypatch.setattr(sys, "argv", ["mergemix"])
    monkeypatch.setenv("MERGEMIX_COMMAND", "")  # main sets it for Lightning's re-runs; undone afterwards
    handlers, level = logging.root.handlers[:], logging.root.level  # Hydra configures logging for its job
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
        logging.root.handlers[:], logging.root.level = handlers, level
    out = capsys.readouterr()
    return code, out.out, [ln for ln in out.err.splitlines() if ln.strip()]


@pytest.fixture(scope="session")
def micro_root(tmp_path_factory):
    """The session's micro cache. Under pytest-xdist one worker builds it and every worker gets its own copy
    (tests that check the cache is left unchanged must not see another worker's writes)."""
    root = tmp_path_factory.mktemp("micro")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import shutil

        from mergemix.artifacts import locked

        shared = tmp_path_factory.getbasetemp().parent / "micro-shared"
        with locked(shared.parent / "micro-shared.lock"):
            if not (shared / "built").exists():
                _micro_pipeline(shared)
                (shared / "built").touch()
        shutil.copytree(shared / "cache", root / "cache")
    return root


def _micro_pipeline(root):
    from mergemix.cli import _quiet
    from mergemix.pipeline import Pipeline

    _quiet()
    cfg = micro_cfg(root)
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    return pipe, pipe.run()


@pytest.fixture(scope="session")
def micro_run(micro_root):
    """One end-to-end micro run (tokenizer, base, experts, search, two mixtures, report)."""
    return _micro_pipeline(micro_root)


@pytest.fixture(scope="session")
def micro_models(micro_run):
    """(base, {domain: expert}) models and their paths from the micro run."""
    from mergemix.models import load_checkpoint

    pipe, _ = micro_run
    return (
        pipe.base_dir,
        dict(pipe.expert_dirs),
        load_checkpoint(pipe.base_dir),
        {n: load_checkpoint(p) for n, p in pipe.expert_dirs.items()},
    )
