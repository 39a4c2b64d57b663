"""Paper-size model configs (parameter counts on the meta device) and merging of a tiny MoE: routers, routed and
shared experts are merged like every other parameter."""

import json

import pytest
import torch

from mergemix.errors import MergeMixError
from mergemix.merging import ExpertBank, mergeable
from mergemix.models import build_model, describe


def _model_cfg(name: str, tmp_path) -> dict:
    from conftest import micro_cfg

    return micro_cfg(tmp_path, f"model={name}")["model"]


def _micro_moe(tmp_path, **over):
    return {**_model_cfg("micro_moe", tmp_path), **over}


@pytest.mark.parametrize("name, total, active", [("moe_8b", 8.6e9, 1.43e9), ("moe_16b", 16.3e9, 1.43e9)])
def test_paper_moe_sizes(name, total, active, tmp_path):
    d = describe(_model_cfg(name, tmp_path), 512)
    assert d["architecture"] == "Glm4MoeForCausalLM" and d["vocab_size"] == 157184
    assert abs(d["total_params"] / total - 1) < 0.03 and abs(d["active_params"] / active - 1) < 0.03, d


def test_active_params_count_the_routed_experts_used_per_token(tmp_path):
    m = _model_cfg("moe_8b", tmp_path)
    d = describe(m, 512)
    # routed experts: (layers - dense) x experts x (gate + up + down) of d_model x expert FFN
    per_expert = 3 * m["hidden_size"] * m["moe_intermediate_size"]
    routed = (m["num_layers"] - m["first_dense_layers"]) * m["num_experts"] * per_expert
    assert d["routed_expert_params"] == routed
    assert d["total_params"] - d["active_params"] == routed * (m["num_experts"] - m["num_experts_per_tok"]) // m[
        "num_experts"]


def test_dense_model_is_all_active_and_info_prints_json(tmp_path, capsys):
    from conftest import micro_cfg

    from mergemix.cli import execute

    execute("info", micro_cfg(tmp_path, "model=llama_8b"))
    d = json.loads(capsys.readouterr().out)
    assert d["total_params"] == d["active_params"] and abs(d["total_params"] / 8.03e9 - 1) < 0.01


def test_unknown_arch_is_one_clear_error(tmp_path):
    with pytest.raises(MergeMixError, match="unknown model arch 'mamba'"):
        build_model(_micro_moe(tmp_path, arch="mamba"), 256, 0)


def test_micro_moe_trains_every_expert_tensor(tmp_path):
    model = build_model(_micro_moe(tmp_path), 256, 0)
    x = torch.randint(0, 256, (4, 32))
    model(input_ids=x, labels=x).loss.backward()
    moe = model.model.layers[1].mlp
    for p in (moe.gate.weight, moe.experts.gate_up_proj, moe.experts.down_proj, moe.shared_experts.up_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def _perturbed(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in mergeable(model).values():
            t.add_(torch.randn(t.shape, generator=gen) * 0.01)
    return model


def test_expert_bank_merges_routers_and_experts(tmp_path):
    cfg = _micro_moe(tmp_path)
    base = build_model(cfg, 256, 0)
    experts = {f"e{i}": _perturbed(build_model(cfg, 256, 0), i + 1) for i in range(3)}
    bank = ExpertBank(base, experts)
    names = set(bank.base_params)
    assert {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.e_score_correction_bias",
            "model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj",
            "model.layers.1.mlp.shared_experts.down_proj.weight"} <= names
    assert names == set(mergeable(base))
    target = build_model(cfg, 256, 5)
    for k, name in enumerate(bank.names):
        bank.merge_into(target, [float(i == k) for i in range(3)])
        got = mergeable(target)
        for pname, t in mergeable(experts[name]).items():
            torch.testing.assert_close(got[pname], t, rtol=0, atol=1e-6)
    zero = torch.zeros(3)
    for pname, t in mergeable(base).items():  # alpha = 0: the base
        assert not torch.equal(t, mergeable(experts["e0"])[pname])
        torch.testing.assert_close(bank.merged(pname, zero), t, rtol=0, atol=0)


def test_expert_count_mismatch_is_one_clear_error(tmp_path):
    base = build_model(_micro_moe(tmp_path), 256, 0)
    other = build_model(_micro_moe(tmp_path, num_experts=8), 256, 0)
    with pytest.raises(MergeMixError, match="n_routed_experts=8 but the base has 4"):
        ExpertBank(base, {"code": other})


@pytest.mark.slow
def test_micro_moe_pipeline_trains_base_and_experts(tmp_path):
    from conftest import micro_cfg

    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(tmp_path, "model=micro_moe")
    pipe = Pipeline(cfg, cfg["paths"]["run_dir"])
    report = pipe.expert_report()
    assert len(report) == 4 and all(p.is_dir() for p in pipe.expert_dirs.values())
