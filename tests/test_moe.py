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
    assert (
        d["total_params"] - d["active_params"]
        == routed * (m["num_experts"] - m["num_experts_per_tok"]) // m["num_experts"]
    )


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
    for p in (
        moe.gate.weight,
        moe.experts.gate_up_proj,
        moe.experts.down_proj,
        moe.shared_experts.up_proj.weight,
    ):
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
    assert {
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.gate.e_score_correction_bias",
        "model.layers.1.mlp.experts.gate_up_proj",
        "model.layers.1.mlp.experts.down_proj",
        "model.layers.1.mlp.shared_experts.down_proj.weight",
    } <= names
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


# ------------------------------------------------------------------------------- aux-loss-free balancing ---
class _Trainer:
    """What RouterBalance reads of a Lightning trainer: the step counter and the cross-device sum."""

    global_step = 0
    strategy = type("S", (), {"reduce": staticmethod(lambda t, reduce_op: t)})()


def _route(model, x):
    """The top-k choices of every router (in model order) for the batch x."""
    from mergemix.balance import routers

    got = []
    hooks = [r.register_forward_hook(lambda m, i, o: got.append(o[-1])) for r in routers(model)]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    return got


def test_router_bias_moves_against_the_load_of_each_step(tmp_path):
    """Loads are summed over the micro-batches of a step; after the step every bias moves by rate x sign(mean -
    load), the imbalance max/mean is logged, and nothing moves before the step ends (gradient accumulation)."""
    from mergemix.balance import RouterBalance, routers

    model = build_model(_micro_moe(tmp_path), 256, 0)
    module = type("M", (), {"modules": model.modules, "log_dict": lambda self, d, **k: logged.append(d)})()
    logged, trainer, cb = [], _Trainer(), RouterBalance(0.25)
    cb.on_train_start(trainer, module)
    xs = [torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    loads = [
        sum(torch.bincount(c[j].reshape(-1), minlength=4) for c in (_route(model, x) for x in xs))
        for j in range(len(routers(model)))
    ]
    for x in xs:  # two micro-batches of one optimizer step
        model(input_ids=x)
        cb.on_train_batch_end(trainer, module, None, x, 0)
    assert all(r.e_score_correction_bias.abs().sum() == 0 for r in routers(model)) and not logged
    trainer.global_step = 1
    cb.on_train_batch_end(trainer, module, None, xs[-1], 1)
    for router, load in zip(routers(model), loads):
        assert load.sum() == 2 * 4 * 32 * 2  # tokens x top-2 per micro-batch
        want = 0.25 * torch.sign(load.float().mean() - load.float())
        torch.testing.assert_close(router.e_score_correction_bias, want, rtol=0, atol=0)
        assert want.abs().sum() > 0
    assert logged[0]["moe/load_imbalance"] == pytest.approx(float(loads[0].max() / loads[0].float().mean()))
    cb.teardown(trainer, module, "fit")
    model(input_ids=xs[0])
    assert all(c.sum() == 0 for c in cb._counts)  # counts reset after the step, hooks removed after fit


def _train_moe(tmp_path, rate: float, steps: int = 40):
    import numpy as np

    from mergemix.training import train_causal_lm

    rng = np.random.default_rng(0)
    arrays = {
        "a": rng.integers(0, 64, 50_000).astype(np.uint16),
        "b": (rng.zipf(1.5, 50_000) % 256).astype(np.uint16),
    }
    model = build_model(_micro_moe(tmp_path), 256, 0)
    tok = type("T", (), {"save_pretrained": lambda self, p: None})()
    result = train_causal_lm(
        model,
        tok,
        arrays,
        {"a": 0.5, "b": 0.5},
        tmp_path / f"out-{rate}",
        steps * 16 * 32,
        32,
        16,
        3e-3,
        0,
        {},
        {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False},
        router_bias_update_rate=rate,
    )
    from mergemix.balance import routers

    return result["moe_load_imbalance"], routers(model)[0].e_score_correction_bias


@pytest.mark.slow
def test_balanced_training_lowers_the_load_imbalance(tmp_path):
    """Unbalanced, micro_moe's router collapses onto two experts within a few steps (max/mean load 2.0, the worst
    for top-2 of 4) and mostly stays there; with micro_moe's configured bias update the imbalance falls again."""
    import numpy as np

    free, bias0 = _train_moe(tmp_path, 0.0)
    balanced, bias = _train_moe(tmp_path, _micro_moe(tmp_path)["router_bias_update_rate"])
    assert bias0.abs().sum() == 0 and bias.abs().sum() > 0
    late = slice(len(balanced) // 2, None)
    assert max(balanced[:10]) > 1.9 and np.mean(balanced[late]) < min(1.4, max(balanced[:10]) - 0.5), balanced
    assert np.mean(free[late]) > np.mean(balanced[late]) + 0.3, free
