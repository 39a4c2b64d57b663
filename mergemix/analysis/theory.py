"""Second-order diagnostics of the merge proxy at theta_base (paper Sec. 3.3, App. B).

Idealised SGD over a summed learning rate S = sum_t eta_t (= eta*T at constant LR), quadratic around theta_base,
g_k = grad L_k, H_k = hess L_k on a fixed batch per domain:

    theta_mix - theta_merge ~ 1/2 S^2 [ sum_{k!=j} a_k a_j H_k g_j   (cross-domain interference)
                                      + sum_k (a_k^2 - a_k) H_k g_k ] (self-domain scaling)

    gamma_kj = (|H_k g_j| / |g_j|) / (|H_k g_k| / |g_k|)   (relative effective curvature, gamma_kk = 1)

Hessian-vector products are forward-over-reverse (`torch.func.jvp` of `torch.func.grad`) in the model's dtype;
the model runs eager attention, since the fused SDPA kernels have no forward-mode (or double-backward) derivative.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.func import functional_call, grad, jvp

from mergemix.artifacts import read_manifest, write_atomic
from mergemix.errors import MergeMixError
from mergemix.simplex import check_weights

if TYPE_CHECKING:
    from mergemix.pipeline import Pipeline

Params = dict[str, torch.Tensor]
Loss = Callable[[Params], torch.Tensor]


# ------------------------------------------------------------------------------------- math on parameters ---
def flat(tensors: Params) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def model_loss(model, batch: torch.Tensor) -> Loss:
    """The training loss (next-token cross-entropy) of `model` on `batch` as a function of its parameters."""
    return lambda params: functional_call(model, params, (batch,), {"labels": batch}).loss


def hvp(loss: Loss, params: Params, v: Params) -> Params:
    """H v with H the Hessian of `loss` at `params`: the directional derivative of the gradient along v."""
    return jvp(grad(loss), (params,), (v,))[1]


def cosine_matrix(rows: torch.Tensor) -> np.ndarray:
    """Cosine similarity of the rows of a [K, N] matrix (computed in float64)."""
    r = rows.double()
    dots = r @ r.T
    norm = dots.diagonal().sqrt()
    return (dots / torch.outer(norm, norm).clamp_min(1e-300)).numpy()


@dataclass
class SecondOrder:
    grads: torch.Tensor  # [K, N] g_k
    hg_norms: np.ndarray  # [K, K] |H_k g_j|
    cross: torch.Tensor  # [A, N] sum_{k!=j} a_k a_j H_k g_j, one row per mixture a
    self_: torch.Tensor  # [A, N] sum_k (a_k^2 - a_k) H_k g_k


def second_order(losses: Sequence[Loss], params: Params, alphas: np.ndarray) -> SecondOrder:
    """All K^2 products H_k g_j, reduced on the fly to their norms and to each mixture's second-order terms
    (memory: K + 2A parameter vectors, not K^2)."""
    k_dom, alphas = len(losses), np.asarray(alphas, dtype=float).reshape(-1, len(losses))
    grads = [grad(f)(params) for f in losses]
    n = sum(p.numel() for p in params.values())
    dtype = next(iter(params.values())).dtype
    cross, self_ = torch.zeros(len(alphas), n, dtype=dtype), torch.zeros(len(alphas), n, dtype=dtype)
    norms = np.zeros((k_dom, k_dom))
    for k, f in enumerate(losses):
        for j, g in enumerate(grads):
            hg = flat(hvp(f, params, g))
            norms[k, j] = float(hg.double().norm())
            for a, alpha in enumerate(alphas):
                if k == j:
                    self_[a].add_(hg, alpha=alpha[k] ** 2 - alpha[k])
                else:
                    cross[a].add_(hg, alpha=alpha[k] * alpha[j])
    return SecondOrder(torch.stack([flat(g) for g in grads]), norms, cross, self_)


def relative_curvature(hg_norms: np.ndarray, grad_norms: np.ndarray) -> np.ndarray:
    """gamma_kj = (|H_k g_j| / |g_j|) / (|H_k g_k| / |g_k|); row k is domain k's curvature."""
    per_dir = (
        np.asarray(hg_norms, dtype=float) / np.maximum(np.asarray(grad_norms, dtype=float), 1e-300)[None, :]
    )
    return per_dir / np.maximum(np.diag(per_dir), 1e-300)[:, None]


def summed_lr(checkpoint: Path) -> float:
    """S = sum_t eta_t over the run that produced a pipeline checkpoint (its schedule, warm-up included)."""
    from mergemix.training import lr_factor

    m = read_manifest(checkpoint)
    spec, steps = m["inputs"]["spec"], int(m["steps"])
    # decay_fraction 0.2 and min ratio 0.1 are CausalLMModule's defaults (only `wsd`/`cosine` use them)
    return float(spec["lr"]) * sum(
        lr_factor(t, steps, int(spec.get("warmup_steps", 0)), spec.get("schedule", "constant"), 0.2, 0.1)
        for t in range(steps)
    )


# ------------------------------------------------------------------------------------------ the pipeline ---
def domain_batches(pipe: Pipeline, n_seqs: int, seed: int) -> dict[str, torch.Tensor]:
    """A fixed batch of `n_seqs` training windows per domain, drawn as training draws them."""
    from mergemix.data.sampler import plan_mixture
    from mergemix.training import WindowDataset

    seq_len, lengths = int(pipe.cfg["model"]["seq_len"]), pipe.token_counts
    out = {}
    for name in pipe.domain_names:
        plan = plan_mixture(lengths, {name: 1.0}, n_seqs, seq_len, seed)
        ds = WindowDataset(pipe.arrays, plan)
        out[name] = torch.stack([ds[i] for i in range(len(ds))])
    return out


def resolve_mixtures(pipe: Pipeline, specs) -> list[dict[str, float]]:
    """Mixtures named in `theory.mixtures`: 'token' (token-proportional), 'equal' (1/K) or {domain: weight}.
    Every entry is checked before the first 'token' needs the token counts."""
    specs = list(specs or [])
    for i, s in enumerate(specs):
        if isinstance(s, dict):
            check_weights(s, pipe.domain_names, f"theory.mixtures[{i}]")
        elif s not in ("token", "equal"):
            raise MergeMixError(
                f"theory.mixtures[{i}] must be 'token', 'equal' or {{domain: weight}}, got {s!r}"
            )
    equal = {d: 1.0 / len(pipe.domain_names) for d in pipe.domain_names}
    return [
        check_weights(s, pipe.domain_names)
        if isinstance(s, dict)
        else dict(pipe.uniform_mixture)
        if s == "token"
        else equal
        for s in specs
    ]


def _flat_model(model, names: list[str]) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[n].detach().reshape(-1) for n in names])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = float(a.double().norm()), float(b.double().norm())
    return float(a.double() @ b.double()) / (na * nb) if na > 0 and nb > 0 else None


def run(pipe: Pipeline) -> dict:
    """`mergemix theory`: the report on the config's `theory.mixtures`, into the run directory."""
    t = pipe.cfg["theory"]
    return theory_report(pipe, pipe.run_dir, resolve_mixtures(pipe, t["mixtures"]), int(t["n_seqs"]))


def theory_report(
    pipe: Pipeline, out_dir: str | Path, alphas: Sequence | None = None, n_seqs: int = 8
) -> dict:
    """Cosines of task vectors and gradients, gamma, and (for each trained mixture in `alphas`) the measured
    gap |theta_mix - theta_merge| against the first-order update and the predicted second-order terms.
    Writes theory.json, theory.md, theory_cosines.png and theory_gamma.png into `out_dir`."""
    from mergemix.merging import ExpertBank
    from mergemix.models import load_checkpoint

    names = pipe.domain_names
    mixtures = [check_weights(a, names, f"theory mixture {i}") for i, a in enumerate(alphas or [])]
    if n_seqs < 1:
        raise MergeMixError(f"theory.n_seqs must be at least 1, got {n_seqs}")
    base = load_checkpoint(pipe.base_dir).eval()
    base.set_attn_implementation("eager")
    bank = ExpertBank(base, {n: load_checkpoint(p) for n, p in pipe.expert_dirs.items()})
    pnames = [n for n, _ in base.named_parameters()]  # what gradients cover (no merged buffers)
    tau = torch.cat([bank.deltas[p] for p in pnames], dim=1)  # [K, N]
    theta0 = torch.cat([bank.base_params[p].reshape(-1) for p in pnames])
    batches = domain_batches(pipe, n_seqs, pipe.seed)
    params = {n: p.detach() for n, p in base.named_parameters()}
    losses = [model_loss(base, batches[d]) for d in names]
    with torch.no_grad():
        base_loss = {d: float(f(params)) for d, f in zip(names, losses)}
    a_mat = np.array([[m[d] for d in names] for m in mixtures]).reshape(-1, len(names))
    so = second_order(losses, params, a_mat)
    g_norm = so.grads.double().norm(dim=1).numpy()
    gamma = relative_curvature(so.hg_norms, g_norm)
    s_exp = summed_lr(next(iter(pipe.expert_dirs.values())))

    gaps = []
    for i, m in enumerate(mixtures):
        mix_dir = pipe.train_mixture(m, f"theory:{i}")
        a = torch.tensor(a_mat[i], dtype=tau.dtype)
        first, g_mix = a @ tau, a @ so.grads
        gap = _flat_model(load_checkpoint(mix_dir), pnames) - theta0 - first
        pred_unit = 0.5 * (so.cross[i] + so.self_[i])  # the gap per S^2
        s_eff = float(first.double().norm() / g_mix.double().norm().clamp_min(1e-300))
        cross_n, self_n = float(so.cross[i].double().norm()), float(so.self_[i].double().norm())
        gaps.append(
            {
                "alpha": m,
                "mix_update_norm": float((gap + first).double().norm()),
                "first_order_norm": float(first.double().norm()),
                "gap_norm": float(gap.double().norm()),
                "gap_over_first": float(gap.double().norm() / first.double().norm().clamp_min(1e-300)),
                "S_mix": summed_lr(mix_dir),
                "S_effective": s_eff,
                "cross_over_self": cross_n / self_n if self_n > 0 else None,
                "cos_first_vs_minus_grad": _cos(first, -g_mix),
                "cos_gap_vs_predicted": _cos(gap, pred_unit),
                "predicted": {
                    label: {
                        "cross_norm": 0.5 * s * s * cross_n,
                        "self_norm": 0.5 * s * s * self_n,
                        "gap_norm": s * s * float(pred_unit.double().norm()),
                    }
                    for label, s in (("sgd", s_exp), ("effective", s_eff))
                },
            }
        )

    off = ~np.eye(len(names), dtype=bool)
    cos_tau = cosine_matrix(tau)
    result = {
        "domains": names,
        "n_params": int(tau.shape[1]),
        "batch_tokens_per_domain": n_seqs * int(pipe.cfg["model"]["seq_len"]),
        "base_loss": base_loss,
        "S_expert": s_exp,
        "task_vector_norms": dict(zip(names, tau.double().norm(dim=1).tolist())),
        "task_vector_cosines": cos_tau.tolist(),
        "gradient_cosines": cosine_matrix(so.grads).tolist(),
        "grad_norms": dict(zip(names, g_norm.tolist())),
        "self_curvature": dict(zip(names, (np.diag(so.hg_norms) / np.maximum(g_norm, 1e-300)).tolist())),
        "gamma": gamma.tolist(),
        "gaps": gaps,
        "summary": {
            "mean_abs_offdiag_cosine": float(np.abs(cos_tau[off]).mean()) if off.any() else 0.0,
            "max_offdiag_gamma": float(gamma[off].max()) if off.any() else 1.0,
            "gamma_offdiag_below_1": float((gamma[off] < 1).mean()) if off.any() else 1.0,
        },
    }
    out_dir = Path(out_dir)
    write_atomic(out_dir / "theory.json", json.dumps(result, indent=2))
    write_atomic(out_dir / "theory.md", _markdown(result))
    _heatmaps(
        out_dir / "theory_cosines.png",
        names,
        [("task vectors", cos_tau), ("gradients at base", np.array(result["gradient_cosines"]))],
        signed=True,
    )
    _heatmaps(
        out_dir / "theory_gamma.png", names, [("gamma_kj (row k: H_k, column j: g_j)", gamma)], signed=False
    )
    return result


# ----------------------------------------------------------------------------------------------- outputs ---
def _matrix_md(title: str, names: list[str], mat) -> list[str]:
    lines = [f"**{title}**", "", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for n, row in zip(names, mat)]
    return [*lines, ""]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _markdown(r: dict) -> str:
    names = r["domains"]
    lines = [
        "# Second-order diagnostics at the base",
        "",
        f"{r['n_params']} parameters; fixed batch of {r['batch_tokens_per_domain']} tokens per domain.",
        "",
    ]
    lines += _matrix_md("Task-vector cosines", names, r["task_vector_cosines"])
    lines += _matrix_md("Gradient cosines at the base", names, r["gradient_cosines"])
    lines += _matrix_md("Relative effective curvature gamma_kj", names, r["gamma"])
    lines += ["| domain | loss | |g| | |H g|/|g| | |tau| |", "|---|---|---|---|---|"]
    lines += [
        f"| {d} | {r['base_loss'][d]:.3f} | {r['grad_norms'][d]:.3g} | {r['self_curvature'][d]:.3g} | "
        f"{r['task_vector_norms'][d]:.3g} |"
        for d in names
    ]
    if r["gaps"]:
        head = (
            "| alpha | |mix-base| | |first order| | |gap| | gap/first | pred |gap| SGD | pred |gap| eff | "
            "cross/self | cos(gap, pred) | S mix |"
        )
        title = (
            f"**Merge vs data mixing** (S = summed LR; experts S = {r['S_expert']:.3g}; predicted terms at the "
            "SGD S and at the S that matches the first-order norm)"
        )
        lines += ["", title, "", head, "|---" * 10 + "|"]
        for g in r["gaps"]:
            a = ", ".join(f"{d}={w:.2f}" for d, w in g["alpha"].items())
            lines.append(
                f"| {a} | {g['mix_update_norm']:.3g} | {g['first_order_norm']:.3g} | {g['gap_norm']:.3g} | "
                f"{g['gap_over_first']:.3g} | {_fmt(g['predicted']['sgd']['gap_norm'])} | "
                f"{_fmt(g['predicted']['effective']['gap_norm'])} | {_fmt(g['cross_over_self'])} | "
                f"{_fmt(g['cos_gap_vs_predicted'])} | {g['S_mix']:.3g} |"
            )
        if any(abs(g["S_mix"] - r["S_expert"]) > 0.01 * r["S_expert"] for g in r["gaps"]):
            lines += [
                "",
                (
                    "Note: the mixture runs and the experts have different horizons (S); the expansion "
                    "assumes equal horizons, so the gap also holds a first-order part."
                ),
            ]
    return "\n".join(lines) + "\n"


def _heatmaps(path: Path, names: list[str], panels: list[tuple[str, np.ndarray]], signed: bool) -> None:
    """One annotated heatmap per panel; `signed` (cosines) uses a diverging map on [-1, 1]."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (title, mat) in zip(axes[0], panels):
        mat = np.asarray(mat)
        im = ax.imshow(
            mat,
            cmap="RdBu_r" if signed else "viridis",
            vmin=-1 if signed else None,
            vmax=1 if signed else None,
        )
        for (i, j), v in np.ndenumerate(mat):
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="k",
                bbox={"facecolor": "white", "alpha": 0.6, "lw": 0, "pad": 1},
            )
        ax.set_xticks(range(len(names)), names, rotation=45)
        ax.set_yticks(range(len(names)), names)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("domain", fontsize=8)
        ax.set_ylabel("domain", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046).set_label(
            "cosine" if signed else "relative curvature γ", fontsize=8
        )
    fig.suptitle("Second-order diagnostics at the base, per pair of domains", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
