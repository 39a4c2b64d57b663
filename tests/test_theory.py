import json

import numpy as np
import pytest
import torch

from mergemix.analysis import theory
from mergemix.errors import MergeMixError
from mergemix.models import build_model

TINY = {
    "hidden_size": 16,
    "num_layers": 1,
    "num_heads": 2,
    "num_kv_heads": 1,
    "intermediate_size": 24,
    "max_position_embeddings": 16,
}


def _tiny_model(dtype=torch.float64):
    model = build_model(TINY, 40, 0).to(dtype).eval()
    model.set_attn_implementation("eager")
    return model


def test_hvp_matches_central_differences_of_the_gradient():
    torch.manual_seed(0)
    model = _tiny_model()
    params = {n: p.detach() for n, p in model.named_parameters()}
    loss = theory.model_loss(model, torch.randint(0, 40, (3, 12)))
    v = {n: torch.randn_like(p) for n, p in params.items()}
    hv = theory.flat(theory.hvp(loss, params, v))
    eps = 1e-4
    g_plus = theory.flat(torch.func.grad(loss)({n: p + eps * v[n] for n, p in params.items()}))
    g_minus = theory.flat(torch.func.grad(loss)({n: p - eps * v[n] for n, p in params.items()}))
    fd = (g_plus - g_minus) / (2 * eps)
    assert hv.norm() > 0
    assert float((hv - fd).norm() / fd.norm()) < 1e-3


def _quadratics(mats, centres):
    """L_k(w) = 1/2 (w - c_k)^T A_k (w - c_k): g_k = A_k (w0 - c_k), H_k = A_k exactly."""

    def loss(a, c):
        a, c = torch.tensor(a), torch.tensor(c)
        return lambda p: 0.5 * (p["w"] - c) @ a @ (p["w"] - c)

    return [loss(a, c) for a, c in zip(mats, centres)]


def test_gamma_on_quadratics_with_known_hessians():
    # g_1 = -e1, g_2 = -e2; H_1 = diag(1, 4), H_2 = diag(9, 1): H_1 g_2 = 4 g_2 and H_2 g_1 = 9 g_1
    mats = [np.diag([1.0, 4.0]), np.diag([9.0, 1.0])]
    losses = _quadratics(mats, [np.array([1.0, 0.0]), np.array([0.0, 1.0])])
    so = theory.second_order(losses, {"w": torch.zeros(2, dtype=torch.float64)}, np.zeros((0, 2)))
    gamma = theory.relative_curvature(so.hg_norms, so.grads.norm(dim=1).numpy())
    np.testing.assert_allclose(gamma, [[1.0, 4.0], [9.0, 1.0]], rtol=1e-12)


def test_second_order_terms_on_random_quadratics():
    rng = np.random.default_rng(0)
    k, n = 3, 5
    mats = [(m := rng.normal(size=(n, n))) @ m.T + np.eye(n) for _ in range(k)]
    centres = [rng.normal(size=n) for _ in range(k)]
    w0 = rng.normal(size=n)
    alphas = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    so = theory.second_order(_quadratics(mats, centres), {"w": torch.tensor(w0)}, alphas)
    g = [a @ (w0 - c) for a, c in zip(mats, centres)]
    hg = [[mats[i] @ g[j] for j in range(k)] for i in range(k)]
    for a, alpha in enumerate(alphas):
        cross = sum(alpha[i] * alpha[j] * hg[i][j] for i in range(k) for j in range(k) if i != j)
        self_ = sum((alpha[i] ** 2 - alpha[i]) * hg[i][i] for i in range(k))
        np.testing.assert_allclose(so.cross[a].numpy(), cross, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(so.self_[a].numpy(), self_, rtol=1e-10, atol=1e-12)
    assert np.allclose(so.self_[1].numpy(), 0) and np.allclose(
        so.cross[1].numpy(), 0
    )  # a vertex is its expert
    expected = np.array(
        [[np.linalg.norm(hg[i][j]) / np.linalg.norm(g[j]) for j in range(k)] for i in range(k)]
    )
    gamma = theory.relative_curvature(so.hg_norms, so.grads.norm(dim=1).numpy())
    np.testing.assert_allclose(gamma, expected / np.diag(expected)[:, None], rtol=1e-10)


def test_cosine_matrix_is_symmetric_with_unit_diagonal(micro_models):
    from mergemix.merging import ExpertBank

    _, _, base, experts = micro_models
    bank = ExpertBank(base, experts)
    tau = torch.cat([d for d in bank.deltas.values()], dim=1)
    cos = theory.cosine_matrix(tau)
    np.testing.assert_allclose(cos, cos.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-9)
    assert np.all(np.abs(cos) <= 1 + 1e-9)
    np.testing.assert_allclose(cos, np.array(bank.cosines()), atol=1e-6)


def test_theory_report_on_the_micro_run(micro_run, tmp_path):
    pipe, _ = micro_run
    names = pipe.domain_names
    result = theory.theory_report(pipe, tmp_path, alphas=[pipe.uniform_mixture], n_seqs=4)
    for f in ("theory.json", "theory.md", "theory_cosines.png", "theory_gamma.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert json.loads((tmp_path / "theory.json").read_text())["gamma"] == result["gamma"]
    gamma = np.array(result["gamma"])
    assert gamma.shape == (len(names), len(names)) and np.all(np.isfinite(gamma)) and np.all(gamma > 0)
    np.testing.assert_allclose(np.diag(gamma), 1.0)
    assert all(np.isfinite(v) and v > 0 for v in result["grad_norms"].values())
    (row,) = result["gaps"]
    numbers = [
        row[k]
        for k in (
            "mix_update_norm",
            "first_order_norm",
            "gap_norm",
            "gap_over_first",
            "S_mix",
            "S_effective",
            "cross_over_self",
            "cos_gap_vs_predicted",
        )
    ]
    numbers += [v for p in row["predicted"].values() for v in p.values()]
    assert all(v is not None and np.isfinite(v) for v in numbers)
    assert row["gap_norm"] > 0 and row["first_order_norm"] > 0
    # |theta_mix - theta_base| is the first-order update plus the gap (triangle inequality)
    assert row["mix_update_norm"] <= row["first_order_norm"] + row["gap_norm"] + 1e-6
    assert result["S_expert"] > 0 and row["S_mix"] > 0


def test_bad_theory_mixtures_fail_clearly(micro_run, tmp_path):
    pipe, _ = micro_run
    with pytest.raises(MergeMixError, match="theory.mixtures\\[0\\]"):
        theory.resolve_mixtures(pipe, ["tokens"])
    with pytest.raises(MergeMixError, match="sum to 1"):
        theory.theory_report(pipe, tmp_path, alphas=[{d: 0.5 for d in pipe.domain_names}])
    equal = theory.resolve_mixtures(pipe, ["equal"])[0]
    assert set(equal) == set(pipe.domain_names) and abs(sum(equal.values()) - 1) < 1e-12


def test_theory_command(micro_root, micro_run, tmp_path, capsys):
    from conftest import micro_cfg

    from mergemix.cli import execute

    cfg = micro_cfg(micro_root, "theory.n_seqs=2", "theory.mixtures=[token]")
    cfg["paths"]["run_dir"] = str(tmp_path)
    execute("theory", cfg)
    assert "Relative effective curvature" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "theory.json").read_text())["gaps"]) == 1
    cfg["theory"]["mixtures"] = ["token", "tokens"]
    with pytest.raises(MergeMixError, match="theory.mixtures\\[1\\]"):
        execute("theory", cfg)
