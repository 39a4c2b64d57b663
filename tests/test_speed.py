"""Training speed settings (mergemix/speed.py): the chunked loss equals the model's own loss and gradient; compile
falls back to eager with one warning on a CPU or when it fails; fused AdamW only on CUDA; CPU defaults unchanged."""

from pathlib import Path

import numpy as np
import pytest
import torch

from mergemix.models import build_model
from mergemix.speed import Compiled, adamw_options, chunked_lm_loss, lm_parts

SPEC = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,
    "intermediate_size": 176,
    "max_position_embeddings": 32,
}
VOCAB = 300


def _model(tied=True):
    return build_model({**SPEC, "tie_word_embeddings": tied}, VOCAB, seed=0)


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_and_gradient_equal_the_models_own(tied):
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (3, 32))
    labels = ids.clone()
    labels[1, 5:9] = -100  # positions without a target are skipped by both
    plain, chunked = _model(tied), _model(tied)
    ref = plain(input_ids=ids, labels=labels).loss
    ref.backward()
    body, head = lm_parts(chunked)
    loss = chunked_lm_loss(
        body(input_ids=ids).last_hidden_state, head.weight, labels, chunk=7
    )  # uneven chunks
    loss.backward()
    assert float(loss) == pytest.approx(float(ref), abs=1e-5)
    for (name, p), q in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_loss_without_gradient_is_the_loss():
    labels = torch.randint(0, VOCAB, (2, 16))
    model = _model()
    with torch.no_grad():
        ref = model(input_ids=labels, labels=labels).loss
        body, head = lm_parts(model)
        loss = chunked_lm_loss(body(input_ids=labels).last_hidden_state, head.weight, labels, chunk=5)
    assert float(loss) == pytest.approx(float(ref), abs=1e-5)


def test_models_whose_logits_are_not_the_head_keep_their_own_loss():
    model = _model()
    assert lm_parts(model) is not None
    model.lm_head = torch.nn.Linear(64, VOCAB, bias=True)
    assert lm_parts(model) is None
    assert lm_parts(torch.nn.Linear(2, 2)) is None


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_compile_on_a_cpu_warns_once_and_runs_eagerly(caplog):
    model = torch.nn.Linear(3, 2)
    fwd = Compiled(model, enabled=True, on_cuda=False)
    x = torch.ones(1, 3)
    torch.testing.assert_close(fwd(x), model(x))
    fwd(x)
    assert _warnings(caplog) == ["trainer.compile needs a CUDA device: training runs eagerly"]


def test_a_failed_compile_warns_once_and_runs_eagerly(monkeypatch, caplog):
    def broken(module):
        def fn(*_a, **_k):
            raise RuntimeError("no C++ compiler\nmore lines")

        return fn

    monkeypatch.setattr(torch, "compile", broken)
    model = torch.nn.Linear(3, 2)
    fwd = Compiled(model, enabled=True, on_cuda=True)
    x = torch.ones(1, 3)
    torch.testing.assert_close(fwd(x), model(x))
    fwd(x)  # eager from now on, without another warning
    assert _warnings(caplog) == [
        "trainer.compile failed (RuntimeError: no C++ compiler): training runs eagerly"
    ]


def test_fused_adamw_only_on_cuda():
    params = list(torch.nn.Linear(2, 2).parameters())
    assert adamw_options(params, True) == {} and adamw_options(params, False) == {}


def _train(tmp_path, name, **speed):
    from mergemix.training import train_causal_lm

    class Tok:
        def save_pretrained(self, d):
            Path(d, "tokenizer_config.json").write_text("{}")

    rng = np.random.default_rng(0)
    arrays = {d: rng.integers(0, VOCAB, 4000).astype(np.uint16) for d in "ab"}
    kwargs = {
        "accelerator": "cpu",
        "devices": 1,
        "precision": "32-true",
        "enable_progress_bar": False,
        "gradient_clip_val": 1.0,
        "checkpoint_every_n_steps": 0,
        **speed,
    }
    optim = {"weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 1, "schedule": "constant"}
    out = tmp_path / name
    stats = train_causal_lm(
        _model(),
        Tok(),
        arrays,
        {"a": 0.5, "b": 0.5},
        out,
        32 * 8 * 4,
        32,
        8,
        3e-3,
        0,
        optim,
        kwargs,
        desc=name,
    )
    from safetensors.torch import load_file

    return stats, load_file(out / "model.safetensors")


def test_training_with_the_speed_settings_matches_the_default_on_cpu(tmp_path, caplog):
    base, w0 = _train(tmp_path, "default")
    off, w1 = _train(tmp_path, "off", chunked_loss=None, compile=False, fused_adamw=False)
    assert base["final_loss"] == off["final_loss"] and all(
        torch.equal(w0[k], w1[k]) for k in w0
    )  # bit-identical
    assert not _warnings(caplog)
    fast, w2 = _train(tmp_path, "fast", chunked_loss=50, compile=True, fused_adamw=True)
    assert _warnings(caplog) == ["trainer.compile needs a CUDA device: training runs eagerly"]
    assert fast["final_loss"] == pytest.approx(base["final_loss"], rel=1e-4)
    for k in w0:
        torch.testing.assert_close(w2[k], w0[k], atol=1e-4, rtol=1e-3)


def test_presets_cpu_off_gpu_on():
    from conftest import micro_cfg

    cpu = micro_cfg("/tmp/x")["trainer"]
    gpu = micro_cfg("/tmp/x", "trainer=fsdp")["trainer"]
    assert (cpu["chunked_loss"], cpu["compile"], cpu["fused_adamw"]) == (None, False, False)
    assert gpu["chunked_loss"] and gpu["fused_adamw"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_chunked_bf16_loss_compile_and_fused_adamw():
    labels = torch.randint(0, VOCAB, (4, 32), device="cuda")
    model = _model().cuda()
    body, head = lm_parts(model)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(input_ids=labels, labels=labels).loss
        fwd = Compiled(body, enabled=True, on_cuda=True)
        loss = chunked_lm_loss(fwd(input_ids=labels).last_hidden_state, head.weight, labels, chunk=33)
    assert float(loss) == pytest.approx(float(ref), rel=2e-2)
    loss.backward()
    assert adamw_options(model.parameters(), True) == {"fused": True}


def test_chunked_loss_of_an_moe_model():
    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "conf/model/micro_moe.yaml").read_text())
    spec = {k: v for k, v in spec.items() if k != "defaults"}
    ids = torch.randint(0, VOCAB, (2, 16))
    plain, chunked = (build_model({**spec, "max_position_embeddings": 16}, VOCAB, seed=0) for _ in range(2))
    ref = plain(input_ids=ids, labels=ids).loss
    ref.backward()
    body, head = lm_parts(chunked)
    loss = chunked_lm_loss(body(input_ids=ids).last_hidden_state, head.weight, ids, chunk=9)
    loss.backward()
    assert float(loss) == pytest.approx(float(ref), abs=1e-5)
    for p, q in zip(plain.parameters(), chunked.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4)
