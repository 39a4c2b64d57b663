"""Real multi-process training on CPU (gloo): DDP and the `trainer=fsdp` strategy config, two ranks each, on the
micro model; both must reproduce a single-process run with the same global batch."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import micro_cfg

VOCAB, SEQ, BATCH, STEPS = 128, 32, 8, 3  # BATCH: the global batch, 4 per rank with two ranks

# Runs under Lightning's subprocess launcher: rank 0 re-executes this file for rank 1, and every rank runs both
# trainings (the second reuses the process group). Lightning refuses FSDP on CPU (an exact-type check) and hands
# torch's FSDP no CPU device, so the worker subclasses the strategy to pass device_id=cpu; nothing else changes.
WORKER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    import torch
    from pytorch_lightning.strategies import FSDPStrategy
    from pytorch_lightning.strategies.fsdp import _setup_activation_checkpointing
    from torch.distributed.fsdp import FullyShardedDataParallel
    import mergemix.strategies as st
    from mergemix.training import train_causal_lm
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import Tok, arrays, fresh_model, train_args

    class CPUFSDPStrategy(FSDPStrategy):
        def _setup_model(self, model):
            model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                             mixed_precision=self.mixed_precision_config,
                                             sharding_strategy=self.sharding_strategy,
                                             device_id=torch.device("cpu"), **self.kwargs)
            _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
            return model

    _build = st.build_strategy
    def build_on_cpu(spec, model):
        strategy = _build(spec, model)
        if type(strategy) is FSDPStrategy:
            strategy.__class__ = CPUFSDPStrategy
        return strategy
    st.build_strategy = build_on_cpu

    out = Path(sys.argv[1])
    for name, spec in json.loads(sys.argv[2]).items():
        model, micro = fresh_model(), spec.pop("micro_batch_size", None)
        stats = train_causal_lm(model, Tok(), arrays(), {"a": 0.5, "b": 0.5}, out / name / "ckpt",
                                **train_args(devices=2, strategy=spec, micro_batch_size=micro))
        rank = stats["global_rank"]
        kinds = [type(m).__name__ for m in model.modules()]
        (out / name / f"rank{rank}.json").write_text(json.dumps({
            **stats, "local_numel": sum(p.numel() for p in model.parameters()),
            "fsdp_units": kinds.count("FullyShardedDataParallel"), "checkpointed": kinds.count("CheckpointWrapper")}))
        if name == "ddp":  # the weights each rank holds
            torch.save(model.state_dict(), out / name / f"rank{rank}.pt")
""")

COMMON = textwrap.dedent(f"""
    from pathlib import Path
    import numpy as np
    from mergemix.models import build_model
    SPEC = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=176,
                max_position_embeddings={SEQ})

    class Tok:
        def save_pretrained(self, d):
            Path(d, "tokenizer_config.json").write_text("{{}}")

    def fresh_model():
        return build_model(SPEC, {VOCAB}, seed=0)

    def arrays():
        rng = np.random.default_rng(0)
        return {{d: rng.integers(0, {VOCAB}, 5000).astype(np.uint16) for d in "ab"}}

    def train_args(devices, strategy, batch_size={BATCH}, micro_batch_size=None):
        kwargs = dict(accelerator="cpu", devices=devices, precision="32-true", enable_progress_bar=False,
                      gradient_clip_val=0.5, strategy=strategy, micro_batch_size=micro_batch_size)
        return dict(n_tokens={SEQ} * {BATCH} * {STEPS}, seq_len={SEQ}, batch_size=batch_size, lr=3e-3, seed=0,
                    optim={{"weight_decay": 0.1, "betas": [0.9, 0.95]}}, trainer_kwargs=kwargs)
""")


def _weights(path):
    from mergemix.models import load_checkpoint

    return {k: v.detach().clone() for k, v in load_checkpoint(path).state_dict().items()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Both strategies trained by two gloo ranks, and the single-process reference (the same global batch)."""
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "common.py").write_text(COMMON)
    (tmp / "worker.py").write_text(WORKER)
    specs = {
        "ddp": {"name": "ddp"},
        "fsdp": micro_cfg(tmp, "trainer=fsdp")["trainer"]["strategy"],
        "ddp_accumulate": {"name": "ddp", "micro_batch_size": 2},
    }
    res = subprocess.run(
        [sys.executable, str(tmp / "worker.py"), str(tmp / "out"), json.dumps(specs)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sys.path.insert(0, str(tmp))
    try:
        import common

        from mergemix.training import train_causal_lm

        start = {k: v.clone() for k, v in common.fresh_model().state_dict().items()}
        ref_model = common.fresh_model()
        stats = train_causal_lm(
            ref_model,
            common.Tok(),
            common.arrays(),
            {"a": 0.5, "b": 0.5},
            tmp / "ref",
            **common.train_args(devices=1, strategy=None),
        )
    finally:
        sys.path.remove(str(tmp))
        sys.modules.pop("common", None)
    assert stats["steps"] == STEPS and stats["world_size"] == 1
    return tmp / "out", start, _weights(tmp / "ref"), specs


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _rel_gap(w, ref, start):
    """|w - ref| / |w - start| over all weights: 0 when w is the reference run, 1 when as far as training moved."""
    gap = sum(float((w[k] - ref[k]).norm()) ** 2 for k in w) ** 0.5
    return gap / sum(float((w[k] - start[k]).norm()) ** 2 for k in w) ** 0.5


@pytest.mark.slow  # two gloo ranks train in a subprocess (the fixture takes a minute)
def test_ddp_ranks_agree_and_match_one_process(two_ranks):
    out, start, ref, _ = two_ranks
    r0, r1 = (torch.load(out / "ddp" / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)  # identical on both ranks
    moved = _max_diff(r0, start)
    assert moved > 1e-3  # training changed the weights
    saved = _weights(out / "ddp" / "ckpt")
    assert all(torch.equal(saved[k], r0[k]) for k in saved)  # rank 0 wrote what it holds
    assert _rel_gap(saved, ref, start) < 1e-4  # = one process with the same global batch
    info = [json.loads((out / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["global_rank"] for i in info] == [0, 1] and {i["world_size"] for i in info} == {2}
    assert {i["steps"] for i in info} == {STEPS} and info[0]["final_loss"] != info[1][
        "final_loss"
    ]  # own shards


@pytest.mark.slow  # two gloo ranks train in a subprocess (the fixture takes a minute)
def test_micro_batches_accumulate_to_the_same_step(two_ranks):
    out, start, ref, _ = two_ranks
    info = json.loads((out / "ddp_accumulate" / "rank0.json").read_text())
    assert (
        info["steps"] == STEPS
    )  # optimizer steps: 2 ranks x 2 micro-batches x 2 sequences = the global batch
    assert _rel_gap(_weights(out / "ddp_accumulate" / "ckpt"), ref, start) < 1e-4


@pytest.mark.slow  # two gloo ranks train in a subprocess (the fixture takes a minute)
def test_fsdp_config_shards_checkpoints_and_consolidates(two_ranks):
    out, start, ref, specs = two_ranks
    assert specs["fsdp"]["auto_wrap"] and specs["fsdp"]["activation_checkpointing"]
    info = [json.loads((out / "fsdp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = sum(v.numel() for k, v in start.items() if k != "lm_head.weight")  # tied to the embedding
    for i in info:
        assert (
            i["fsdp_units"] == 2 and i["checkpointed"] == 2
        )  # one unit per decoder layer, each checkpointed
        assert i["local_numel"] < 0.75 * total  # each rank holds about half the weights
    assert sum(i["local_numel"] for i in info) >= total
    saved = _weights(out / "fsdp" / "ckpt")  # one consolidated safetensors directory
    assert saved.keys() == ref.keys()
    assert _max_diff(saved, start) > 1e-3
    # = one process with the same global batch, up to the reduce-scatter's rounding (measured 0.3%, which Adam's
    # normalisation amplifies on near-zero gradients)
    assert _rel_gap(saved, ref, start) < 2e-2


def test_strategy_configs_build_lightning_strategies():
    from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from mergemix.errors import MergeMixError
    from mergemix.models import build_model
    from mergemix.strategies import build_strategy

    model = build_model(
        {
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "num_kv_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
        },
        64,
        0,
    )
    fsdp = build_strategy(micro_cfg("/tmp/unused", "trainer=fsdp")["trainer"]["strategy"], model)
    assert isinstance(fsdp, FSDPStrategy) and fsdp._state_dict_type == "sharded"
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert fsdp._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    multi = micro_cfg("/tmp/unused", "trainer=fsdp_multinode")["trainer"]
    assert multi["num_nodes"] == 2 and multi["devices"] == 8 and multi["strategy"]["name"] == "fsdp"
    assert isinstance(build_strategy({"name": "ddp", "find_unused_parameters": False}, model), DDPStrategy)
    assert build_strategy(None, model) == "auto"
    with pytest.raises(MergeMixError, match="unknown trainer.strategy.name 'deepspeed'"):
        build_strategy({"name": "deepspeed"}, model)
    with pytest.raises(MergeMixError, match=r"for fsdp: unknown option\(s\) \['shard_everything'\]"):
        build_strategy({"name": "fsdp", "shard_everything": True}, model)


def test_global_batch_must_split_evenly_over_the_devices(tmp_path):
    from mergemix.errors import MergeMixError
    from mergemix.models import build_model
    from mergemix.training import train_causal_lm

    model = build_model(
        {
            "hidden_size": 32,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
        },
        64,
        0,
    )
    arrays = {"a": np.arange(4000, dtype=np.uint16) % 64}
    kwargs = {"accelerator": "cpu", "devices": 3, "strategy": {"name": "ddp"}, "enable_progress_bar": False}
    with pytest.raises(MergeMixError, match="model.batch_size 8 .* must be a multiple of the 3 devices"):
        train_causal_lm(model, None, arrays, {"a": 1.0}, tmp_path, 16 * 8 * 2, 16, 8, 1e-3, 0, {}, kwargs)
    assert not list(tmp_path.iterdir())


def test_expert_domain_must_be_a_domain(tmp_path):
    from mergemix.errors import MergeMixError
    from mergemix.pipeline import Pipeline

    with pytest.raises(MergeMixError, match="expert_domain 'chem' is not a configured domain"):
        Pipeline(micro_cfg(tmp_path, "expert_domain=chem"), tmp_path / "run")


def test_pipeline_rejects_a_bad_strategy_before_any_work(tmp_path):
    from mergemix.errors import MergeMixError
    from mergemix.pipeline import Pipeline

    cfg = micro_cfg(tmp_path, "trainer=fsdp", "+trainer.strategy.buckets=3")
    with pytest.raises(
        MergeMixError, match=r"bad trainer.strategy for fsdp: unknown option\(s\) \['buckets'\]"
    ):
        Pipeline(cfg, tmp_path / "run")
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_cli_relaunches_ranks_and_rank0_writes_the_artifacts(tmp_path):
    """`mergemix experts expert_domain=code` with two CPU devices: Lightning re-runs the command for rank 1, both
    ranks train base and expert, rank 0 alone writes each artifact and rank 1 reuses it (~40 s)."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mergemix.cli",
            "experts",
            "experiment=micro",
            "logger=none",
            f"paths.root={tmp_path}",
            "trainer.devices=2",
            "trainer.strategy={name: ddp}",
            "expert_domain=code",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.stdout + res.stderr).count("Initializing distributed") == 2
    experts = list((tmp_path / "cache" / "expert").iterdir())
    assert len(experts) == 1 and not [p for p in experts if p.name.startswith(".tmp")]  # only the code expert
    manifest = json.loads((experts[0] / "manifest.json").read_text())
    cfg = micro_cfg(tmp_path)
    assert manifest["world_size"] == 2  # and the global batch of one process:
    assert manifest["steps"] == cfg["experts"]["tokens"] // (
        cfg["model"]["seq_len"] * cfg["model"]["batch_size"]
    )
    assert res.stdout.count('"code": "' + str(experts[0])) == 2  # both ranks ended with the same artifact
    assert np.isfinite(manifest["final_loss"])
