"""LoRA experts: the bank's merge theta_base + sum_k alpha_k s_k B_k A_k equals peft's own merged models."""

import json

import pytest
import torch

from mergemix.errors import MergeMixError
from mergemix.lora import LoraBank, load_merged, wrap
from mergemix.merging import ExpertBank, mergeable
from mergemix.models import build_model, load_checkpoint

SPEC = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": None}


def _adapters(tmp_path, model_name="micro", k=3, **spec):
    from conftest import micro_cfg

    base = build_model(micro_cfg(tmp_path, f"model={model_name}")["model"], 256, 0)
    base.save_pretrained(str(tmp_path / "base"))
    paths = {}
    for i in range(k):
        peft_model = wrap(load_checkpoint(tmp_path / "base"), {**SPEC, **spec})
        gen = torch.Generator().manual_seed(i + 1)
        with torch.no_grad():  # peft starts B at 0 (no change); give every factor a trained-like value
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        paths[f"e{i}"] = tmp_path / f"e{i}"
        peft_model.save_pretrained(str(paths[f"e{i}"]))
    return tmp_path / "base", paths


@pytest.mark.parametrize(
    "model_name, spec", [("micro", {}), ("micro", {"use_rslora": True}), ("micro_moe", {})]
)
def test_lora_merge_equals_peft_merged_models(tmp_path, model_name, spec):
    from peft import LoraConfig

    if spec and "use_rslora" not in LoraConfig.__dataclass_fields__:
        pytest.skip("peft without rsLoRA")
    base_dir, paths = _adapters(tmp_path, model_name, **spec)
    if spec:  # wrap() has no rsLoRA switch: set it in the saved config, as a user's adapter may have it
        for p in paths.values():
            cfg = json.loads((p / "adapter_config.json").read_text())
            (p / "adapter_config.json").write_text(json.dumps({**cfg, "use_rslora": True}))
    bank = ExpertBank.from_paths(base_dir, paths)
    assert isinstance(bank, LoraBank) and bank.factors
    base = mergeable(load_checkpoint(base_dir))
    merged = {n: mergeable(load_merged(p)) for n, p in paths.items()}  # peft's merge_and_unload, one by one
    target = load_checkpoint(base_dir)
    alpha = {"e0": 0.5, "e1": 0.3, "e2": 0.2}
    bank.merge_into(target, alpha)
    got = mergeable(target)
    changed = 0
    for pname, t0 in base.items():
        want = t0 + sum(a * (merged[n][pname] - t0) for n, a in alpha.items())
        torch.testing.assert_close(got[pname], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(bank.merged(pname, bank.alpha_vector(alpha)), want, rtol=0, atol=1e-6)
        changed += not torch.equal(want, t0)
    assert changed == len(bank.factors) > 0  # every adapted tensor moved, every other one is the base's
    for i, n in enumerate(bank.names):  # one-hot: exactly peft's merged expert; dense deltas on the fly
        bank.merge_into(target, [float(j == i) for j in range(3)])
        for pname, t in mergeable(target).items():
            torch.testing.assert_close(t, merged[n][pname], rtol=0, atol=1e-6)
            if pname in bank.factors:
                torch.testing.assert_close(
                    bank.deltas[pname][i].view_as(t), merged[n][pname] - base[pname], rtol=0, atol=1e-6
                )


def test_lora_bank_is_differentiable_in_alpha(tmp_path):
    base_dir, paths = _adapters(tmp_path, k=2)
    bank = ExpertBank.from_paths(base_dir, paths)
    alpha = torch.tensor([0.4, 0.6], requires_grad=True)
    pname = next(iter(bank.factors))
    bank.merged(pname, alpha).sum().backward()
    want = bank.deltas[pname].sum(dim=1)  # d/d alpha_k of sum(theta) = sum of task vector k
    torch.testing.assert_close(alpha.grad, want, rtol=1e-5, atol=1e-5)


def test_mixed_expert_kinds_and_bad_kind_are_clear_errors(tmp_path, monkeypatch, capsys):
    from conftest import assert_cli_error

    base_dir, paths = _adapters(tmp_path, k=1)
    with pytest.raises(MergeMixError, match="mix LoRA adapters and full checkpoints"):
        ExpertBank.from_paths(base_dir, {**paths, "full": base_dir})
    assert_cli_error(
        "experts",
        "experts.kind=qlora",
        "experts.kind must be one of full, lora",
        tmp_path,
        monkeypatch,
        capsys,
    )


def test_extrapolated_lora_merge_scales_every_adapted_delta(tmp_path):
    """merge_into(..., scale=s) = base + s * (merge(alpha) - base), as for full experts (search.merge_scale)."""
    base_path, paths = _adapters(tmp_path, k=2)
    bank = ExpertBank.from_paths(base_path, paths)
    one, two = load_checkpoint(base_path), load_checkpoint(base_path)
    bank.merge_into(one, [0.3, 0.7])
    bank.merge_into(two, [0.3, 0.7], scale=2.0)
    for name, p0 in mergeable(load_checkpoint(base_path)).items():
        torch.testing.assert_close(
            mergeable(two)[name], p0 + 2 * (mergeable(one)[name] - p0), rtol=0, atol=1e-6
        )


def test_an_adapter_directory_has_no_model_config_to_stamp(tmp_path):
    """Training saves the tokenizer and stamps its special tokens into the checkpoint's config: an adapter has no
    config.json, so nothing is stamped (and nothing fails)."""
    from types import SimpleNamespace

    from mergemix.models import stamp_special_tokens

    _, paths = _adapters(tmp_path, k=1)
    stamp_special_tokens(paths["e0"], SimpleNamespace(eos_token_id=2, bos_token_id=1, pad_token_id=None))
    assert (paths["e0"] / "adapter_config.json").is_file() and not (paths["e0"] / "config.json").exists()


@pytest.mark.slow
def test_lora_experts_train_as_adapters_and_merge_like_their_models(tmp_path):
    """experts.kind=lora on micro (rank 4): each expert directory holds an adapter (under a quarter of the base
    checkpoint's bytes), the expert report loads it merged, and the search's bank reproduces each expert."""
    from conftest import micro_cfg

    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(
        tmp_path, "experts.kind=lora", "experts.lora.r=4", "base.tokens=8000", "experts.tokens=4000"
    )
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    assert len(pipe.expert_report()) == len(pipe.domain_names)

    def size(d):
        return sum(f.stat().st_size for f in d.iterdir() if f.suffix == ".safetensors")

    for path in pipe.expert_dirs.values():
        assert (path / "adapter_model.safetensors").is_file() and not (path / "config.json").exists()
        assert size(path) < size(pipe.base_dir) / 4
    bank = ExpertBank.from_paths(pipe.base_dir, pipe.expert_dirs)
    assert isinstance(bank, LoraBank) and max(float(d.abs().max()) for d in bank.deltas.values()) > 0
    target = load_checkpoint(pipe.base_dir)
    for i, (_, path) in enumerate(sorted(pipe.expert_dirs.items())):
        bank.merge_into(target, [float(j == i) for j in range(len(bank.names))])
        for pname, t in mergeable(load_checkpoint(path)).items():
            torch.testing.assert_close(mergeable(target)[pname], t, rtol=0, atol=1e-6)


def test_export_merge_of_adapters_writes_the_merged_model(tmp_path):
    from mergemix.merging import export_merge

    base_dir, paths = _adapters(tmp_path, k=2)
    out = export_merge(base_dir, [paths["e0"], paths["e1"]], [0.7, 0.3], tmp_path / "merged")
    target = load_checkpoint(base_dir)
    ExpertBank.from_paths(base_dir, paths).merge_into(target, [0.7, 0.3])
    got = mergeable(load_checkpoint(out))
    assert (out / "config.json").is_file()
    for pname, t in mergeable(target).items():
        torch.testing.assert_close(got[pname], t, rtol=0, atol=0)
