import json

import pytest
import torch
from conftest import run_cli

from mergemix.errors import MergeMixError
from mergemix.merging import ExpertBank, export_merge
from mergemix.models import build_model, load_checkpoint

NAMES = ["code", "math", "prose", "sft"]


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_one_hot_alpha_gives_the_expert(micro_models):
    _, _, base, experts = micro_models
    bank = ExpertBank(base, experts)
    target = build_model(
        {
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": 176,
            "max_position_embeddings": 128,
        },
        base.config.vocab_size,
        1,
    )
    for name in NAMES:
        bank.merge_into(target, {n: float(n == name) for n in NAMES})
        for pname, p in experts[name].named_parameters():
            torch.testing.assert_close(dict(target.named_parameters())[pname], p, rtol=0, atol=1e-6)


def test_zero_task_vectors_give_the_base(micro_models):
    _, _, base, _ = micro_models
    bank = ExpertBank(base, {n: base for n in NAMES})
    target = load_checkpoint(micro_models[1]["code"])
    bank.merge_into(target, [0.1, 0.2, 0.3, 0.4])
    for pname, p in base.named_parameters():
        torch.testing.assert_close(dict(target.named_parameters())[pname], p, rtol=0, atol=1e-7)


def test_merge_is_linear_in_alpha(micro_models):
    _, _, base, experts = micro_models
    bank = ExpertBank(base, experts)
    a, b = torch.tensor([0.7, 0.1, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    models = {}
    for key, w in {"a": a, "b": b, "mid": (a + b) / 2}.items():
        bank.merge_into(base_copy := load_checkpoint(micro_models[0]), w.tolist())
        models[key] = _params(base_copy)
    for pname in models["a"]:
        torch.testing.assert_close(
            models["mid"][pname], (models["a"][pname] + models["b"][pname]) / 2, rtol=1e-5, atol=1e-6
        )
    # and equal to the formula on every parameter
    theta = {n: p for n, p in base.named_parameters()}
    for pname, t0 in theta.items():
        expect = t0 + sum(
            w * (dict(experts[n].named_parameters())[pname] - t0) for n, w in zip(NAMES, a.tolist())
        )
        torch.testing.assert_close(models["a"][pname], expect, rtol=1e-5, atol=1e-6)


def test_tied_embeddings_are_merged_once(micro_models):
    _, _, base, experts = micro_models
    assert base.config.tie_word_embeddings
    target = load_checkpoint(micro_models[0])
    ExpertBank(base, experts).merge_into(target, [0.25] * 4)
    assert target.lm_head.weight.data_ptr() == target.model.embed_tokens.weight.data_ptr()
    expect = base.model.embed_tokens.weight + sum(
        0.25 * (experts[n].model.embed_tokens.weight - base.model.embed_tokens.weight) for n in NAMES
    )
    torch.testing.assert_close(target.lm_head.weight, expect, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5, 0.6, -0.1, 0.0], "non-negative"),
        ([0.5, 0.5, 0.5, 0.5], "sum to 1"),
        ([0.5, 0.5], "have 2 entries"),
        ({"code": 0.5, "poetry": 0.5, "math": 0, "prose": 0, "sft": 0}, "unknown domains ['poetry']"),
        ([float("nan"), 0.5, 0.25, 0.25], "finite"),
    ],
)
def test_bad_weights(micro_models, weights, message):
    _, _, base, experts = micro_models
    with pytest.raises(MergeMixError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ExpertBank(base, experts).merge_into(load_checkpoint(micro_models[0]), weights)


def test_expert_of_another_architecture_is_refused(micro_models):
    _, _, base, _ = micro_models
    other = build_model(
        {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 4,
            "num_kv_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
        },
        base.config.vocab_size,
        0,
    )
    with pytest.raises(MergeMixError, match="another architecture than the base"):
        ExpertBank(base, {"code": other})


def test_nan_expert_is_refused(micro_models):
    _, _, base, _ = micro_models
    bad = load_checkpoint(micro_models[0])
    with torch.no_grad():
        bad.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(
        MergeMixError,
        match=r"^expert 'code' has NaN or Inf weights \(first in "
        r"model.layers.0.mlp.up_proj.weight\)",
    ):
        ExpertBank(base, {"code": bad})


def test_export_loads_with_transformers_and_matches(micro_models, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, expert_dirs, base, experts = micro_models
    out = export_merge(base_dir, [expert_dirs[n] for n in NAMES], [0.4, 0.3, 0.2, 0.1], tmp_path / "merged")
    loaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    target = load_checkpoint(base_dir)
    ExpertBank(base, experts).merge_into(target, [0.4, 0.3, 0.2, 0.1])
    for pname, p in target.named_parameters():
        torch.testing.assert_close(dict(loaded.named_parameters())[pname], p)


def test_merge_cli_writes_a_checkpoint(micro_models, tmp_path, capsys, monkeypatch):
    """`mergemix merge` exports a checkpoint that transformers loads (its bad inputs: tests/test_bad_input.py)."""
    base_dir, expert_dirs, _, _ = micro_models
    e = [str(expert_dirs[n]) for n in NAMES]
    code, out, err = run_cli(
        [
            "merge",
            f"base={base_dir}",
            f"experts=[{','.join(e)}]",
            "weights=[0.25,0.25,0.25,0.25]",
            f"out={tmp_path}/good",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0 and out.strip() == f"merged checkpoint: {tmp_path}/good", err
    assert json.loads((tmp_path / "good" / "config.json").read_text())["tie_word_embeddings"]
