"""Streaming merge: tensor by tensor from memory-mapped safetensors, equal to the in-memory ExpertBank merge, and
one clear error for an expert that does not come from the base."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergemix.errors import MergeMixError
from mergemix.merging import ExpertBank, export_merge, mergeable
from mergemix.models import build_model, load_checkpoint
from mergemix.streaming import Reader, stream_merge

MICRO = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 176,
    "max_position_embeddings": 128,
}
MICRO_MOE = {
    **MICRO,
    "arch": "glm4_moe",
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
}
WEIGHTS = [0.2, 0.3, 0.5]


def _save(model, path, manifest: dict, **kw):
    model.save_pretrained(str(path), **kw)
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _checkpoints(root, cfg, dtype=torch.float32, **save_kw):
    """A base and 3 experts (base + noise on every tensor) with pipeline-style manifests."""
    base = build_model(cfg, 256, 0).to(dtype)
    _save(base, root / "base", {"stage": "base", "key": "b0"}, **save_kw)
    experts = []
    for i in range(3):
        e = build_model(cfg, 256, 0).to(dtype)
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():
            for t in mergeable(e).values():
                t.add_((torch.randn(t.shape, generator=gen) * 0.01).to(dtype))
        experts.append(
            _save(e, root / f"e{i}", {"stage": "expert", "key": f"x{i}", "inputs": {"init": "base/b0"}})
        )
    return root / "base", experts


def _in_memory(base, experts):
    target = load_checkpoint(base)
    ExpertBank(
        load_checkpoint(base), {f"e{i}": load_checkpoint(p) for i, p in enumerate(experts)}
    ).merge_into(target, WEIGHTS)
    return mergeable(target)


@pytest.mark.parametrize("cfg, shards", [(MICRO, None), (MICRO_MOE, "60KB")], ids=["llama", "moe-sharded"])
def test_stream_equals_in_memory_merge(tmp_path, cfg, shards):
    base, experts = _checkpoints(tmp_path, cfg, **({"max_shard_size": shards} if shards else {}))
    out = export_merge(base, experts, WEIGHTS, tmp_path / "out", stream=True)
    files = sorted(p.name for p in out.iterdir())
    assert "config.json" in files and ("model.safetensors.index.json" in files) == bool(shards)
    assert [f for f in files if f.endswith(".safetensors")] == sorted(
        p.name for p in base.iterdir() if p.suffix == ".safetensors"
    )
    got, expect = mergeable(load_checkpoint(out)), _in_memory(base, experts)
    assert set(got) == set(expect)
    for name, t in expect.items():
        torch.testing.assert_close(got[name], t, rtol=0, atol=1e-6)


def test_blocks_and_map_budget_do_not_change_the_result(tmp_path):
    base, experts = _checkpoints(tmp_path, MICRO)
    paths, w = {f"e{i}": p for i, p in enumerate(experts)}, dict(zip(["e0", "e1", "e2"], WEIGHTS))
    whole = stream_merge(base, paths, w, tmp_path / "whole")
    tiny = stream_merge(base, paths, w, tmp_path / "tiny", block=100, map_budget=10_000)
    assert (whole / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()
    r = Reader(base, budget=10_000)
    r.rows("model.embed_tokens.weight", 0, 200)  # 200 x 64 fp32 > budget: the mapping is dropped
    assert not r.handles


def test_stream_keeps_the_stored_dtype(tmp_path):
    base, experts = _checkpoints(tmp_path, MICRO, dtype=torch.bfloat16)
    out = export_merge(base, experts, WEIGHTS, tmp_path / "out", stream=True)
    got = load_file(out / "model.safetensors")
    b, es = load_file(base / "model.safetensors"), [load_file(e / "model.safetensors") for e in experts]
    for name, t in got.items():
        assert t.dtype == torch.bfloat16
        expect = b[name].double() + sum(
            w * (e[name].double() - b[name].double()) for w, e in zip(WEIGHTS, es)
        )
        torch.testing.assert_close(
            t.double(), expect, rtol=2**-8, atol=1e-6
        )  # one bf16 rounding of the exact merge
        assert not torch.equal(t, b[name])


def _fails(tmp_path, base, experts, message):
    with pytest.raises(MergeMixError, match=message):
        export_merge(base, experts, WEIGHTS, tmp_path / "out", stream=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.tmp").exists()


def test_expert_from_another_base_is_refused(tmp_path):
    base, experts = _checkpoints(tmp_path, MICRO)
    manifest = experts[1] / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "inputs": {"init": "base/other"}}))
    _fails(
        tmp_path,
        base,
        experts,
        "expert 'expert001:e1' was trained from another base: its manifest records "
        "'base/other', the base is 'base/b0'",
    )
    manifest.unlink()  # no record of its base (a user's checkpoint): only shapes and config are checked
    assert export_merge(base, experts, WEIGHTS, tmp_path / "out", stream=True).is_dir()


def test_expert_with_other_shapes_is_refused(tmp_path):
    base, experts = _checkpoints(tmp_path, MICRO)
    tensors = load_file(experts[2] / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(32)
    save_file(tensors, experts[2] / "model.safetensors", metadata={"format": "pt"})
    _fails(
        tmp_path,
        base,
        experts,
        r"expert 'expert002:e2' was not trained from this base: tensor model.norm.weight",
    )
    other = _save(build_model({**MICRO, "hidden_size": 32}, 256, 0), tmp_path / "small", {})
    _fails(tmp_path, base, [experts[0], experts[1], other], "another architecture than the base")


def test_moe_expert_count_mismatch_is_refused(tmp_path):
    base, experts = _checkpoints(tmp_path, MICRO_MOE)
    other = _save(
        build_model({**MICRO_MOE, "num_experts": 8}, 256, 0),
        tmp_path / "wide",
        {"stage": "expert", "key": "w", "inputs": {"init": "base/b0"}},
    )
    _fails(tmp_path, base, [experts[0], experts[1], other], "n_routed_experts=8 but the base has 4")


def test_nan_expert_and_corrupt_file_are_refused(tmp_path):
    base, experts = _checkpoints(tmp_path, MICRO)
    tensors = load_file(experts[0] / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 3] = float("nan")
    save_file(tensors, experts[0] / "model.safetensors", metadata={"format": "pt"})
    _fails(tmp_path, base, experts, "expert 'expert000:e0' has NaN or Inf weights")
    (experts[0] / "model.safetensors").write_bytes(b"not a safetensors file")
    _fails(tmp_path, base, experts, "cannot load checkpoint")


def test_pipeline_experts_stream_like_they_merge(micro_models, tmp_path):
    """Real pipeline artifacts: their manifests name the base they were trained from."""
    base_dir, expert_dirs, base, experts = micro_models
    names = sorted(expert_dirs)
    out = export_merge(
        base_dir, [expert_dirs[n] for n in names], [0.4, 0.3, 0.2, 0.1], tmp_path / "m", stream=True
    )
    target = load_checkpoint(base_dir)
    ExpertBank(base, experts).merge_into(target, [0.4, 0.3, 0.2, 0.1])
    got = mergeable(load_checkpoint(out))
    for name, t in mergeable(target).items():
        torch.testing.assert_close(got[name], t, rtol=0, atol=1e-6)
    assert (out / "tokenizer.json").is_file()
    shutil.rmtree(out)


def test_merge_cli_stream_flag(micro_models, tmp_path, capsys):
    from mergemix.cli import _merge

    base_dir, expert_dirs, _, _ = micro_models
    e = ",".join(str(expert_dirs[n]) for n in sorted(expert_dirs))
    _merge(
        [
            f"base={base_dir}",
            f"experts=[{e}]",
            "weights=[0.25,0.25,0.25,0.25]",
            f"out={tmp_path}/s",
            "stream=true",
        ]
    )
    assert "merged checkpoint" in capsys.readouterr().out and (tmp_path / "s" / "model.safetensors").is_file()
    with pytest.raises(MergeMixError, match="stream must be true or false"):
        _merge(
            [
                f"base={base_dir}",
                f"experts=[{e}]",
                "weights=[0.25,0.25,0.25,0.25]",
                f"out={tmp_path}/t",
                "stream=maybe",
            ]
        )
