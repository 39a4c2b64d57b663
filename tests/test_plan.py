"""The paper-scale plan (mergemix/plan.py): its arithmetic on the micro models, built on the meta device."""

import json

import pytest
from conftest import micro_cfg

from mergemix import plan
from mergemix.models import describe


@pytest.fixture(scope="module")
def micro():
    cfg = micro_cfg("/tmp/plan")
    return plan.shape(cfg["model"], cfg["tokenizer"]["vocab_size"]), cfg


def test_shape_of_the_micro_model(micro):
    sh, cfg = micro
    counts = describe(cfg["model"], cfg["tokenizer"]["vocab_size"])
    assert sh["params"] == counts["total_params"] and sh["active"] == counts["active_params"]
    assert sh["root"] + 2 * sh["max_layer"] == sh["params"]  # two equal layers and the root unit
    assert (sh["layers"], sh["d"], sh["d_kv"], sh["f"], sh["vocab"]) == (2, 64, 32, 176, 512)


def test_training_memory_arithmetic(micro):
    sh, _ = micro
    layer = 4 * 64 + 2 * 32 + 2 * 64 + 4 * 176  # attention, then the dense MLP, per token
    assert plan.layer_activations(sh, False) == layer == 1152
    tokens, v, d, p = 4 * 128, 512, 64, sh["params"]
    off = plan.training_memory(sh, 8, 4, 128, False, None)
    assert off["state"] == 16 * p / 8
    assert off["gathered"] == 2 * (sh["root"] + 2 * sh["max_layer"]) + 2 * sh["max_layer"]
    assert off["activations"] == 2 * tokens * (2 * layer + 3 * d) and off["loss"] == 14 * tokens * v
    on = plan.training_memory(sh, 8, 4, 128, True, 100)
    assert on["activations"] == 2 * tokens * (2 * d + layer + 3 * d)
    assert on["loss"] == 6 * 100 * v + 4 * tokens * d + 4 * v * d
    assert on["total"] == sum(on[k] for k in ("state", "gathered", "activations", "loss"))
    single = plan.training_memory(sh, 1, 4, 128, False, None, fsdp=False)
    assert single["state"] == 16 * p and single["gathered"] == 0


def test_moe_layer_and_evaluation_arithmetic():
    cfg = micro_cfg("/tmp/plan", "model=micro_moe")
    sh = plan.shape(cfg["model"], cfg["tokenizer"]["vocab_size"])
    assert any(sh["moe_layers"]) and sh["experts"] > sh["k"] > 0
    d = sh["d"]
    want = (
        4 * d
        + 2 * sh["d_kv"]
        + 2 * d
        + 2 * sh["experts"]
        + 2 * sh["k"] * d
        + 4 * sh["f_e"] * (sh["k"] + sh["shared"])
    )
    assert plan.layer_activations(sh, True) == want
    ev = plan.evaluation_memory(sh, 3, 2, 10)
    assert ev["bank_bf16"] - ev["merged_bf16"] == 2 * 4 * sh["params"]
    assert ev["bank_fp32"] - ev["bank_bf16"] == 2 * 5 * sh["params"]


def test_hours(micro):
    sh, _ = micro
    h = plan.hours(
        sh, experts=4, expert_tokens=1e9, candidates=40, eval_tokens=1e6, gpus=8, mfu=0.5, peak=1e15
    )
    assert h["train_h"] == pytest.approx(6 * sh["active"] * 4e9 / 4e15 / 3600)
    assert h["eval_h"] == pytest.approx(2 * sh["active"] * 4e7 / 4e15 / 3600)
    assert h["total_h"] == pytest.approx(h["train_h"] + h["eval_h"])


def test_the_plan_names_its_command_and_checks_the_measurement(tmp_path):
    rep = {
        "model": "micro",
        "strategy": "single-process",
        "activation_checkpointing": False,
        "train": {"batch_size": 2, "seq_len": 16, "peak_memory_gib": 0.01},
    }
    (tmp_path / "gpu_check-single-nockpt.json").write_text(json.dumps(rep))
    text = plan.main(
        [
            "--models",
            "micro",
            "--measured",
            str(tmp_path),
            "--out",
            str(tmp_path / "plan.md"),
            "--expert-tokens",
            "1e9",
        ]
    )
    assert (tmp_path / "plan.md").read_text() == text
    assert "`python scripts/gpu_check.py --plan --models micro" in text and "## micro:" in text
    row = next(line for line in text.splitlines() if line.startswith("| gpu_check-single-nockpt.json"))
    sh = plan.shape(
        micro_cfg("/tmp/plan")["model"], 2048
    )  # the default tokenizer: the report names only the model
    est = plan.training_memory(sh, 1, 2, 16, False, None, fsdp=False)["total"] / plan.GIB
    assert row.endswith(f"| 0.01 | {est:.3g} | {est / 0.01:.2f} |")
