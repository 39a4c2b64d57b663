"""Resumable training: a SIGKILLed run continues from its last checkpoint to the weights of an uninterrupted run
(bitwise on CPU: the same operations in the same order on one thread), seeds fix the data order and the weights,
and a diverging run stops at its first non-finite step."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import micro_cfg
from safetensors.torch import load_file

from mergemix.errors import MergeMixError
from mergemix.training import PlanSampler

VOCAB, SEQ, BATCH, MICRO, STEPS, EVERY, HANG = 128, 32, 8, 2, 12, 3, 5
TESTS = Path(__file__).resolve().parent


def train(out, checkpoint_dir=None, hang_at=0, lr=3e-3, every=EVERY):
    """A micro model on random tokens, 4 micro-batches per step, warm-up + WSD decay (so the LR schedule, the
    optimizer moments and the data position must all be restored). `hang_at`: park after that step."""
    import pytorch_lightning as pl

    from mergemix.models import build_model
    from mergemix.training import train_causal_lm

    class Tok:
        def save_pretrained(self, d):
            Path(d, "tokenizer_config.json").write_text("{}")

    class Hang(pl.Callback):
        def on_train_batch_end(self, trainer, *_):
            if trainer.global_step == hang_at:
                print("hanging", flush=True)
                time.sleep(600)

    rng = np.random.default_rng(0)
    arrays = {d: rng.integers(0, VOCAB, 8000).astype(np.uint16) for d in "ab"}
    spec = {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 176,
        "max_position_embeddings": SEQ,
    }
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "enable_progress_bar": False,
        "gradient_clip_val": 1.0,
        "micro_batch_size": MICRO,
        "checkpoint_every_n_steps": every,
        "callbacks": [Hang()] if hang_at else [],
    }
    optim = {"weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 2, "schedule": "wsd"}
    return train_causal_lm(
        build_model(spec, VOCAB, seed=0),
        Tok(),
        arrays,
        {"a": 0.7, "b": 0.3},
        Path(out),
        SEQ * BATCH * STEPS,
        SEQ,
        BATCH,
        lr,
        0,
        optim,
        kwargs,
        desc="t",
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
    )


def test_plan_sampler_continues_the_plan_order_on_any_layout():
    for world in (1, 2, 4):
        ranks = [list(PlanSampler(32, r, world, start=8)) for r in range(world)]
        assert sorted(i for r in ranks for i in r) == list(
            range(8, 32)
        )  # every later window once, none before
        assert all(ranks[r][0] == 8 + r for r in range(world))  # step by step as one process would
        assert all(
            len(PlanSampler(32, r, world, start=8)) == 32 // world for r in range(world)
        )  # whole epoch


def test_sigkilled_training_resumes_bitwise(tmp_path, capsys):
    """Kill -9 a training process two steps after its checkpoint (with a torn later checkpoint left behind), rerun
    (here, in this process): it resumes from the checkpoint and ends at the uninterrupted run's weights, bit for bit."""
    scratch = tmp_path / "scratch"
    code = (
        f"import sys, torch; torch.set_num_threads({torch.get_num_threads()}); sys.path.insert(0, {str(TESTS)!r});"
        f"from test_resume import train; train({str(tmp_path / 'out')!r}, {str(scratch)!r}, {HANG})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    while (line := proc.stdout.readline()) and "hanging" not in line:
        pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert line and proc.returncode == -signal.SIGKILL
    assert sorted(p.name for p in scratch.iterdir()) == [f"step-{EVERY:08d}.ckpt"]  # the older ones removed
    (scratch / f"step-{3 * EVERY:08d}.ckpt.tmp").write_bytes(b"torn")  # a checkpoint write cut by a kill
    train(tmp_path / "out", scratch)
    assert f"[t] resuming from step {EVERY}/{STEPS}" in capsys.readouterr().out
    assert sorted(p.name for p in scratch.iterdir()) == [
        f"step-{3 * EVERY:08d}.ckpt"
    ]  # none at the last step
    assert train(tmp_path / "ref")["steps"] == STEPS  # uninterrupted, no checkpoints
    ref, resumed = (
        load_file(tmp_path / "ref" / "model.safetensors"),
        load_file(tmp_path / "out" / "model.safetensors"),
    )
    assert ref.keys() == resumed.keys() and all(torch.equal(ref[k], resumed[k]) for k in ref)


def test_diverging_training_stops_at_its_first_bad_step_and_keeps_the_checkpoint(tmp_path, capsys):
    with pytest.raises(
        MergeMixError,
        match=r"^\[t\] training diverged at step \d+/12 \(loss .*\); lower the learning "
        r"rate \(now 1e\+06\); the checkpoint of step \d+ stays in ",
    ) as err:
        train(tmp_path / "out", tmp_path / "scratch", lr=1e6, every=1)
    step, kept = map(int, re.search(r"at step (\d+)/.* of step (\d+)", str(err.value)).groups())
    assert kept == step - 1 >= 1 and not (tmp_path / "out" / "model.safetensors").exists()
    state = torch.load(tmp_path / "scratch" / f"step-{kept:08d}.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(t).all() for t in state.values())  # the kept checkpoint is a good one
    with pytest.raises(MergeMixError, match=f"diverged at step {step}/"):  # a rerun continues from it
        train(tmp_path / "out", tmp_path / "scratch", lr=1e6, every=1)
    assert f"[t] resuming from step {kept}/{STEPS}" in capsys.readouterr().out


def test_bad_checkpoint_interval_is_one_clear_error(tmp_path):
    from mergemix.pipeline import Pipeline

    with pytest.raises(MergeMixError, match="trainer.checkpoint_every_n_steps must be null"):
        Pipeline(micro_cfg(tmp_path, "trainer.checkpoint_every_n_steps=-1"), tmp_path / "run")


# ------------------------------------------------------------------------------------- pipeline stages ---
def _weights_bytes(path: Path) -> bytes:
    return (path / "model.safetensors").read_bytes()


def test_same_seed_same_expert_across_fresh_caches(micro_run, micro_root, tmp_path):
    """Two fresh caches (only the generated corpus copied: test_data checks that generation) rebuild the tokenizer,
    tokens, base and expert bit for bit, on the micro run's data order; another seed gives the expert another data
    order and other weights. Both are built in this process: the session's micro run may come from another test
    worker, and float sums on another thread count differ in the last bits."""
    from mergemix.pipeline import Pipeline
    from mergemix.stages.experts import expert_job
    from mergemix.training import MixtureDataModule

    pipe, _ = micro_run

    def fresh_pipeline(name):
        shutil.copytree(micro_root / "cache" / "corpus", tmp_path / name / "cache" / "corpus")
        return Pipeline(micro_cfg(tmp_path / name), tmp_path / name / "run")

    fresh, again = fresh_pipeline("a"), fresh_pipeline("b")
    m, tokens = fresh.cfg["model"], fresh.cfg["experts"]["tokens"]

    def plan(p, seed):
        return MixtureDataModule(p.arrays, {"code": 1.0}, tokens, m["seq_len"], m["batch_size"], seed).plan

    assert np.array_equal(plan(fresh, 0).start, plan(pipe, 0).start)
    assert not np.array_equal(plan(fresh, 1).start, plan(pipe, 0).start)
    expert, twin = fresh.expert_dir("code"), again.expert_dir("code")
    assert (
        expert.parent.parent != twin.parent.parent != pipe.expert_dirs["code"].parent.parent
    )  # other caches
    assert fresh.tokenizer_dir != pipe.tokenizer_dir and fresh.tokenizer_dir.name == pipe.tokenizer_dir.name
    assert (tokens_dir := fresh.token_dirs["code"]).name == pipe.token_dirs["code"].name
    assert _weights_bytes(fresh.base_dir) == _weights_bytes(again.base_dir)
    assert _weights_bytes(expert) == _weights_bytes(twin) and tokens_dir.name == again.token_dirs["code"].name
    other = fresh._train(expert_job("code", fresh.cfg["experts"], fresh.base_dir, seed=1))
    assert other != expert and _weights_bytes(other) != _weights_bytes(expert)


def test_diverging_stage_leaves_no_artifact(micro_run, micro_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(
        micro_root / "cache",
        root / "cache",
        ignore=shutil.ignore_patterns("expert", "mixture", "search", "eval", "evalcache", "studies"),
    )
    from mergemix.pipeline import Pipeline

    pipe = Pipeline(
        micro_cfg(root, "experts.lr=1e6", "experts.tokens=20480", "trainer.checkpoint_every_n_steps=1"),
        tmp_path / "run",
    )
    with pytest.raises(MergeMixError, match=r"\[expert:code\] training diverged at step \d+/10 \(loss"):
        pipe.expert_dir("code")
    assert not list((root / "cache" / "expert").glob("*/manifest.json"))
    assert len(list((root / "cache" / "expert").glob(".partial-*/step-*.ckpt"))) == 1


# Killed stages through the real CLI: the micro run with budgets long enough to kill mid-training (40 steps).
BUDGETS = (
    "experiment=micro",
    "logger=none",
    "expert_domain=code",
    "base.tokens=81920",
    "experts.tokens=81920",
    "mix.tokens=81920",
    "trainer.num_threads=1",
)
MIX = {"code": 0.5, "math": 0.2, "prose": 0.2, "sft": 0.1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The base, the code expert and one mixture, trained without checkpoints (the interval is no input)."""
    from mergemix.cli import execute

    root = tmp_path_factory.mktemp("uninterrupted")
    for command, weights in (("experts", None), ("mix", MIX)):
        cfg = micro_cfg(
            root, *BUDGETS, "trainer.checkpoint_every_n_steps=0", f"paths.run_dir={root}/{command}"
        )
        execute(command, cfg, weights)
    return root / "cache"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["base", "expert", "mixture"])
def test_sigkilled_stage_resumes_to_the_uninterrupted_weights(stage, uninterrupted, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(uninterrupted, home / "cache", ignore=shutil.ignore_patterns(stage))
    command = ["mix", f"weights={MIX}".replace("'", "")] if stage == "mixture" else ["experts"]
    args = [
        sys.executable,
        "-m",
        "mergemix.cli",
        *command,
        *BUDGETS,
        "trainer.checkpoint_every_n_steps=4",
        f"paths.run_dir={tmp_path}/run",
    ]
    env = {**os.environ, "MERGEMIX_HOME": str(home)}
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    scratch, deadline = home / "cache" / stage, time.time() + 300
    while not list(scratch.glob(".partial-*/step-*.ckpt")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed mid-training
    assert not list(scratch.glob("*/manifest.json"))  # nothing partial reads as complete
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed = re.search(r"\] resuming from step (\d+)/40\n", res.stdout)
    assert resumed and int(resumed[1]) >= 4, res.stdout[-2000:]
    (reference,) = (uninterrupted / stage).iterdir()
    assert _weights_bytes(scratch / reference.name) == _weights_bytes(reference)  # same key, same bits
    assert not list(scratch.glob(".partial-*")) and not list(scratch.glob(".tmp-*"))  # scratch removed
