"""alpha* exported for other tools: mergekit config, per-domain weight YAML, Megatron/OLMo blend list."""

import pytest
import torch
import yaml

from mergemix.errors import MergeMixError
from mergemix.exports import blend_list, mergekit_config, write_exports
from mergemix.merging import mergeable
from mergemix.models import load_checkpoint

ALPHA = {"math": 0.3, "code": 0.5, "sft": 0.0, "prose": 0.2000001}


def _parse_blend(text: str) -> dict[str, float]:
    tokens = text.split()
    assert len(tokens) % 2 == 0
    return {tokens[i + 1]: float(tokens[i]) for i in range(0, len(tokens), 2)}


def test_blend_list_interleaves_weights_and_prefixes():
    blend = _parse_blend(blend_list(ALPHA, "/mnt/tok/{domain}_text_document"))
    assert list(blend) == [
        "/mnt/tok/code_text_document",
        "/mnt/tok/math_text_document",
        "/mnt/tok/prose_text_document",
    ]  # canonical order, weight-0 domain left out
    assert sum(blend.values()) == pytest.approx(1, abs=1e-5)
    assert blend["/mnt/tok/code_text_document"] == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(MergeMixError, match="must contain '{domain}'"):
        blend_list(ALPHA, "/data/all")


def test_mergekit_config_needs_every_domain(tmp_path):
    with pytest.raises(MergeMixError, match="do not match the mixture's domains"):
        mergekit_config(tmp_path, {"code": tmp_path}, ALPHA)


def test_run_writes_exports_that_reproduce_the_merge(micro_run):
    pipe, summary = micro_run
    run_dir = pipe.run_dir
    weights = yaml.safe_load((run_dir / "mixture_weights.yaml").read_text())
    assert list(weights) == pipe.domain_names and sum(weights.values()) == pytest.approx(1, abs=1e-9)
    for d, w in summary["alpha_star"].items():
        assert weights[d] == pytest.approx(w, abs=1e-5)
    blend = _parse_blend((run_dir / "blend.txt").read_text())
    assert blend == pytest.approx({f"/data/{d}": w for d, w in weights.items() if w > 0}, abs=1e-5)

    mk = yaml.safe_load((run_dir / "mergekit.yaml").read_text())
    assert mk["merge_method"] == "task_arithmetic" and mk["dtype"] == "float32"
    assert mk["base_model"] == str(pipe.base_dir.absolute())
    assert {m["model"]: m["parameters"]["weight"] for m in mk["models"]} == {
        str(pipe.expert_dirs[d].absolute()): w for d, w in weights.items()
    }
    # task_arithmetic as mergekit defines it, applied to the listed checkpoints, is the merge the search verified
    base = mergeable(load_checkpoint(mk["base_model"]))
    experts = [(m["parameters"]["weight"], mergeable(load_checkpoint(m["model"]))) for m in mk["models"]]
    merged = {n: t + sum(w * (e[n] - t) for w, e in experts) for n, t in base.items()}
    target = load_checkpoint(pipe.base_dir)
    from mergemix.merging import ExpertBank

    ExpertBank.from_paths(pipe.base_dir, pipe.expert_dirs).merge_into(target, weights)
    for n, t in mergeable(target).items():
        torch.testing.assert_close(merged[n], t, rtol=0, atol=1e-6)


def test_write_exports_uses_the_configured_prefix(micro_run, tmp_path):
    pipe, _ = micro_run
    paths = write_exports(tmp_path, pipe.alpha_star, pipe.base_dir, pipe.expert_dirs, "s3://bucket/{domain}/")
    assert all(p.parent == tmp_path and p.is_file() for p in paths.values())
    assert all(k.startswith("s3://bucket/") for k in _parse_blend(paths["blend"].read_text()))


def test_exports_hold_absolute_paths_that_work_from_another_directory(micro_run, tmp_path, monkeypatch):
    """Checkpoints and a data prefix given relative to the launch directory: mergekit.yaml and blend.txt hold
    absolute paths, so they are read from any directory (mergekit-yaml is run from another one when installed)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    pipe, _ = micro_run
    monkeypatch.chdir(pipe.base_dir.parent.parent)  # the cache root: the stage directories are relative to it
    rel = {d: Path(os.path.relpath(p)) for d, p in pipe.expert_dirs.items()}
    paths = write_exports(
        tmp_path / "run",
        pipe.alpha_star,
        Path(os.path.relpath(pipe.base_dir)),
        rel,
        "data/{domain}_text_document",
    )
    monkeypatch.chdir(tmp_path)
    mk = yaml.safe_load(paths["mergekit"].read_text())
    models = [mk["base_model"], *(m["model"] for m in mk["models"])]
    assert all(Path(m).is_absolute() and (Path(m) / "config.json").is_file() for m in models)
    assert Path(mk["base_model"]).samefile(pipe.base_dir)
    prefixes = _parse_blend(paths["blend"].read_text())
    assert all(p.startswith(f"{pipe.base_dir.parent.parent.absolute()}/data/") for p in prefixes)
    cli = shutil.which("mergekit-yaml", path=os.pathsep.join([os.path.dirname(sys.executable), os.defpath]))
    if cli:
        res = subprocess.run(
            [cli, str(paths["mergekit"]), str(tmp_path / "merged")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert (tmp_path / "merged" / "config.json").is_file()
