"""The cost ledger charges active parameters (MoE: dense, shared and top-k routed experts) and trained tokens."""

import numpy as np
import pytest

from mergemix.models import build_model, count_params, describe
from mergemix.search.cost import Ledger, trained_tokens
from mergemix.training import MixtureDataModule


@pytest.mark.parametrize(
    "tokens, seq_len, batch, want",
    [(60_000, 256, 16, 57_344), (8_000, 128, 16, 6_144), (100, 128, 16, 2_048), (65_536, 256, 16, 65_536)],
)
def test_trained_tokens_are_the_windows_training_draws(tokens, seq_len, batch, want):
    arrays = {"a": np.zeros(50_000, np.uint16), "b": np.ones(50_000, np.uint16)}
    plan = MixtureDataModule(arrays, {"a": 0.3, "b": 0.7}, tokens, seq_len, batch, seed=0).plan
    assert (
        trained_tokens(tokens, {"seq_len": seq_len, "batch_size": batch})
        == sum(plan.realised_tokens().values())
        == want
    )


def test_moe_flops_use_active_parameters(tmp_path):
    from conftest import micro_cfg

    cfg = micro_cfg(tmp_path, "model=micro_moe")["model"]
    model = build_model(cfg, 256, 0)
    ledger = Ledger.for_model(model)
    assert ledger.n_params == describe(cfg, 256)["active_params"] < count_params(model)
    ledger.train(trained_tokens(60_000, {"seq_len": 128, "batch_size": 16}))
    ledger.evaluation(1_000, 0.5)
    assert ledger.summary()["flops"] == 6.0 * ledger.n_params * 59_392 + 2.0 * ledger.n_params * 1_000
    dense = build_model(micro_cfg(tmp_path)["model"], 256, 0)
    assert Ledger.for_model(dense).n_params == count_params(dense)
