"""A cache that a cluster shares: nothing in it runs code (checkpoints are loaded as data, lock and temporary files
never follow a planted link), digests follow contents rather than timestamps, evaluation-cache lines that fail
their digest are evaluated again, a storage URL's password is printed, logged, tracked and keyed nowhere, names
cannot lead outside their root, and artifacts keep the modes the umask gives."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import micro_cfg, run_cli

from mergemix import artifacts
from mergemix.artifacts import ArtifactStore, locked, write_atomic
from mergemix.errors import MergeMixError, mask_secrets

TESTS = Path(__file__).resolve().parent


class Payload:
    """Unpickling this creates `marker`: what a checkpoint planted in a shared cache would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# ------------------------------------------------------------------------------------ no code from the cache ---
def test_a_planted_checkpoint_is_ignored_with_a_warning_and_its_payload_never_runs(
    tmp_path, capsys, monkeypatch
):
    """A pickle payload at the path resume reads: ignored (removed, one warning), training starts over."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    sys.path.insert(0, str(TESTS))
    from test_resume import STEPS, train

    scratch, marker = tmp_path / "scratch", tmp_path / "pwned"
    scratch.mkdir()
    torch.save({"state_dict": {}, "global_step": 3, "x": Payload(marker)}, scratch / "step-00000003.ckpt")
    assert train(tmp_path / "out", scratch)["steps"] == STEPS
    out = capsys.readouterr()
    assert not marker.exists() and "resuming" not in out.out
    assert (
        "step-00000003.ckpt cannot be read as weights and plain values (damaged, or holding code): it is "
        "ignored and training starts over" in out.err
    )


def test_lightning_itself_resumes_weights_only(tmp_path, monkeypatch):
    """Even past mergemix's own check (a file swapped in after it), Lightning's loader refuses the payload:
    trainer.fit(ckpt_path=...) loads with weights_only=True, also where the environment turns torch's default off."""
    sys.path.insert(0, str(TESTS))
    from test_resume import train

    from mergemix import resume

    scratch, marker = tmp_path / "scratch", tmp_path / "pwned"
    scratch.mkdir()
    torch.save({"state_dict": {}, "x": Payload(marker)}, scratch / "step-00000003.ckpt")
    monkeypatch.setattr(resume, "check_data_only", lambda path: None)
    monkeypatch.setenv(
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1"
    )  # only a load that does not ask is unsafe then
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        train(tmp_path / "out", scratch)
    assert not marker.exists()


def test_a_sharded_checkpoint_is_checked_as_data_before_fsdp_reads_it(tmp_path):
    """FSDP's sharded checkpoints are DCP directories, whose metadata and non-tensor items DCP unpickles without
    restriction: a payload among the items makes the checkpoint ignored; plain items resume."""
    import torch.distributed.checkpoint as dcp

    from mergemix.resume import latest_checkpoint

    marker = tmp_path / "pwned"
    good, bad = tmp_path / "good", tmp_path / "bad"
    state = {
        "model": {"w": torch.zeros(3)},
        "optimizer": {"param_groups": [{"lr": 0.1, "betas": (0.9, 0.95)}]},
    }
    dcp.save(state, checkpoint_id=good / "step-00000004.ckpt")
    torch.save({"global_step": 4, "loops": {"x": [1, 2]}}, good / "step-00000004.ckpt" / "meta.pt")
    dcp.save({**state, "extra": Payload(marker)}, checkpoint_id=bad / "step-00000004.ckpt")
    assert latest_checkpoint(good) == (good / "step-00000004.ckpt", 4)
    assert latest_checkpoint(bad) is None and not marker.exists() and not list(bad.iterdir())
    dcp.save(state, checkpoint_id=bad / "step-00000005.ckpt")
    torch.save({"x": Payload(marker)}, bad / "step-00000005.ckpt" / "meta.pt")  # Lightning's own metadata
    assert latest_checkpoint(bad) is None and not marker.exists()


@pytest.mark.parametrize("where", ["store", "evalcache", "write_atomic"])
def test_a_link_planted_at_a_lock_or_temporary_file_is_never_written_through(where, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("42 bytes of somebody else's important data\n")
    root = tmp_path / "cache"
    if where == "write_atomic":
        (root).mkdir()
        (root / f".summary.json.tmp-{os.getpid()}").symlink_to(target)
        write_atomic(root / "summary.json", "{}")
        assert (root / "summary.json").read_text() == "{}"
    else:
        inputs = {"x": 1}
        lock = (
            root / ".locks" / f"corpus-{artifacts.stage_key('corpus', inputs)}.lock"
            if where == "store"
            else root / "evalcache" / ".e.jsonl.lock"
        )
        lock.parent.mkdir(parents=True)
        lock.symlink_to(target)
        with pytest.raises(
            MergeMixError,
            match=r"\.lock is a symbolic link or a special file: mergemix only uses "
            r"regular files in its cache; remove it",
        ):
            if where == "store":
                ArtifactStore(root).get_or_build("corpus", inputs, lambda tmp: None)
            else:
                from mergemix.search.evalcache import EvalCache

                EvalCache(root / "evalcache" / "e.jsonl").get_or_eval([1.0], lambda: {"U": 0.5})
    assert target.read_text() == "42 bytes of somebody else's important data\n"
    with locked(tmp_path / "plain.lock"):  # a regular lock file is kept as it is (never truncated)
        pass


# ----------------------------------------------------------------------------- content, not timestamps ---
def _same_size_edit(path: Path, data: bytes) -> None:
    """Rewrite in place with the same length and put the modification time back (`cp -p`, `touch -r`)."""
    st = path.stat()
    time.sleep(0.05)  # past the clock tick of the first write: the kernel stamps ctime on each change
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


@pytest.mark.parametrize("small_file", [artifacts.SMALL_FILE, 0], ids=["hashed-each-time", "memoised"])
def test_a_same_size_edit_with_the_mtime_kept_changes_a_domain_files_digest(
    small_file, tmp_path, monkeypatch
):
    from mergemix.data.domains import source_fingerprint

    monkeypatch.setattr(artifacts, "SMALL_FILE", small_file)
    f = tmp_path / "code.jsonl"
    f.write_bytes(b'{"text": "def f(): return 1"}\n' * 100)
    spec, memo = {"source": "files", "paths": [str(f)]}, {}
    before = source_fingerprint("code", spec, memo)
    assert source_fingerprint("code", spec, memo) == before  # unchanged: the same digest (from the memo)
    _same_size_edit(f, b'{"text": "def f(): return 2"}\n' * 100)
    assert source_fingerprint("code", spec, memo)["files"] != before["files"]


def test_a_replaced_base_checkpoint_with_an_older_mtime_changes_its_key(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "SMALL_FILE", 0)  # through the memo, as for a large checkpoint
    store = ArtifactStore(tmp_path / "cache")
    ckpt = tmp_path / "my_base"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"a": 1}')
    (ckpt / "model.safetensors").write_bytes(b"\x01" * 4096)
    ref = store.ref(ckpt)
    assert ref.startswith("sha256:") and str(tmp_path) not in ref and store.ref(ckpt) == ref
    replacement = tmp_path / "other"  # another checkpoint of the same size, older, moved into place
    replacement.mkdir()
    (replacement / "config.json").write_text('{"a": 1}')
    (replacement / "model.safetensors").write_bytes(b"\x02" * 4096)
    for f in replacement.iterdir():
        os.utime(f, (1_000_000, 1_000_000))
    os.rename(ckpt, tmp_path / "old")
    os.rename(replacement, ckpt)
    assert store.ref(ckpt) != ref
    _same_size_edit(ckpt / "model.safetensors", b"\x03" * 4096)  # and edited in place, the mtime put back
    assert ArtifactStore(tmp_path / "cache").ref(ckpt) not in (ref, store.ref(tmp_path / "old"))
    assert json.loads(store.memo_path.read_text())  # the digests are memoised for the next run


# --------------------------------------------------------------------------------- evaluation-cache lines ---
def _result(u: float) -> dict:
    return {"capabilities": {"math": u}, "U": u, "U_std": 0.01}


def test_an_edited_evaluation_cache_line_is_evaluated_again_with_a_warning(tmp_path, caplog):
    from mergemix.search.evalcache import EvalCache, alpha_key, record_line

    path = tmp_path / "0123abcd.jsonl"
    cache = EvalCache(path)
    cache.get_or_eval([1.0, 0.0], lambda: _result(0.2))
    cache.get_or_eval([0.0, 1.0], lambda: _result(0.3))
    lines = path.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["result"]["U"] = 0.9
    old = {k: v for k, v in json.loads(lines[1]).items() if k != "digest"}  # a line from before digests
    other = record_line("another-cache", [0.5, 0.5], _result(0.8))  # copied from another cache's merges
    path.write_text("\n".join([json.dumps(edited), json.dumps(old), other.strip()]) + "\n")
    with caplog.at_level(logging.WARNING, logger="mergemix"):
        again = EvalCache(path)
    assert again.entries == {}
    assert [r.getMessage() for r in caplog.records] == [
        (
            f"3 line(s) of the evaluation cache {path} fail their digest (edited, damaged, or written before lines "
            f"carried one): those merges are evaluated again"
        )
    ]
    calls = []
    assert again.get_or_eval([1.0, 0.0], lambda: calls.append(1) or _result(0.2))["U"] == 0.2
    assert calls == [1] and EvalCache(path).entries[alpha_key([1.0, 0.0])]["U"] == 0.2  # the new line holds


# --------------------------------------------------------------------------------------------- secrets ---
URL = "postgresql://mergemix:s3cret@db-host:5432/mergemix"


def test_mask_secrets_hides_every_urls_password():
    assert mask_secrets(URL) == "postgresql://mergemix:***@db-host:5432/mergemix"
    assert mask_secrets({"a": [f"x {URL} y", 3], "b": "postgresql://u@h/db"}) == {
        "a": ["x postgresql://mergemix:***@db-host:5432/mergemix y", 3],
        "b": "postgresql://u@h/db",
    }
    assert "p@ss" not in mask_secrets("postgresql+psycopg2://u:p@ss@h/db")


def test_a_storage_urls_password_is_in_no_error_line(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(
        [
            "search",
            "experiment=micro",
            "logger=none",
            f"paths.root={tmp_path}",
            "search=tpe",
            "search.storage=foo://user:s3cret@db/x",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 2 and err == [
        ("error: cannot open Optuna storage foo://user:***@db/x: Can't load plugin: sqlalchemy.dialects:foo")
    ]


def test_a_storage_urls_password_is_in_no_cache_key(micro_root):
    from mergemix.stages.keys import config_inputs

    plain = config_inputs(micro_cfg(micro_root, "search=tpe"), "search")
    assert config_inputs(micro_cfg(micro_root, "search=tpe", f"search.storage={URL}"), "search") == plain
    assert plain["search"]["storage"] is None


@pytest.mark.parametrize("logger", ["csv", "wandb"])
def test_a_storage_urls_password_is_in_no_tracked_config(logger, tmp_path, monkeypatch):
    from mergemix.loggers import Tracker

    seen = {}
    if logger == "wandb":
        import wandb

        real = wandb.init
        monkeypatch.setattr(
            wandb, "init", lambda **kw: seen.update(kw["config"]) or real(**{**kw, "mode": "disabled"})
        )
        cfg = {"kind": "wandb", "mode": "disabled"}
    else:
        cfg = {"_target_": "pytorch_lightning.loggers.CSVLogger"}
    with Tracker(cfg, tmp_path, "g").stage("search", "search", {"search": {"storage": URL}}):
        pass
    written = (
        seen
        if logger == "wandb"
        else (tmp_path / "logs" / "search" / "version_0" / "hparams.yaml").read_text()
    )
    assert "s3cret" not in str(written) and "mergemix:***@db-host" in str(written)


def test_a_storage_urls_password_is_in_no_file_hydra_writes(tmp_path, capsys, monkeypatch):
    code, _, _ = run_cli(
        [
            "info",
            "experiment=micro",
            "logger=none",
            f"paths.root={tmp_path}",
            "search=tpe",
            f"search.storage={URL}",
        ],
        capsys,
        monkeypatch,
    )
    written = [f.read_text() for f in (tmp_path / "runs").rglob("*.yaml")]
    assert code == 0 and written and all("s3cret" not in t for t in written)
    assert any("mergemix:***@db-host" in t for t in written)


def test_console_lines_mask_passwords(capsys):
    from mergemix.log import log

    log.warning(f"cannot reach {URL}")
    assert (
        capsys.readouterr().err == "warning: cannot reach postgresql://mergemix:***@db-host:5432/mergemix\n"
    )


# --------------------------------------------------------------------------------- paths and permissions ---
@pytest.mark.parametrize(
    "override, line",
    [
        ("run_name=../../x", "run_name '../../x' cannot name a file"),
        ("run_name='a b'", "run_name 'a b' cannot name a file"),
        ("+benchmarks.tasks.../../../../tmp/x={source: jsonl, path: /dev/null}", None),
    ],
    ids=["run-up", "run-space", "task-up"],
)
def test_a_name_that_would_leave_its_root_is_one_error_line_before_any_work(
    override, line, tmp_path, capsys, monkeypatch
):
    code, _, err = run_cli(
        ["run", "experiment=micro", "logger=none", f"paths.root={tmp_path}/root", override],
        capsys,
        monkeypatch,
    )
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    if line:
        assert (
            line in err[0]
            and "use one path component without '/', '\\', '..', whitespace or a leading" in err[0]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, inside or outside the root


@pytest.mark.parametrize("names", [{"a b": {}}, {"x/y": {}}, {".hidden": {}}, {"tab\t": {}}])
def test_schema_refuses_domain_and_task_names_that_are_not_one_path_component(names, micro_root):
    from mergemix import schema

    cfg = micro_cfg(micro_root)
    for section, key, what in (("domains", "sources", "domain"), ("benchmarks", "tasks", "benchmark task")):
        bad = json.loads(json.dumps(cfg))
        bad[section][key].update(names)
        with pytest.raises(MergeMixError, match=f"^{what} '.*' cannot name a file"):
            schema.check(bad)
    schema.check(cfg)


def test_the_python_api_refuses_a_bad_domain_name_before_any_work(micro_root, tmp_path):
    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(tmp_path / "root")
    cfg["domains"]["sources"]["../up"] = cfg["domains"]["sources"].pop("code")
    with pytest.raises(MergeMixError, match=r"^domain '\.\./up' cannot name a file"):
        Pipeline(cfg, tmp_path / "root" / "run")
    assert not (tmp_path / "root").exists()


def test_artifacts_honour_the_umask(tmp_path):
    from safetensors.torch import save_file

    def build(tmp: Path) -> None:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors writes 0600
        (tmp / "sub").mkdir(mode=0o700)
        (tmp / "sub" / "run.sh").write_text("#!/bin/sh\n")
        (tmp / "sub" / "run.sh").chmod(0o700)

    old = os.umask(0o022)
    try:
        out = ArtifactStore(tmp_path / "cache").get_or_build("base", {"x": 1}, build)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes == {
        out.name: 0o755,
        "model.safetensors": 0o644,
        "manifest.json": 0o644,
        "sub": 0o755,
        "run.sh": 0o755,
    }
