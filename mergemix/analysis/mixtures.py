"""Mixtures side by side, for the analyses that compare them (transfer, dynamic, hierarchical): per-domain tables,
L1 distances, paired score margins, and their <stem>.{json,md,png} in the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mergemix.artifacts import write_atomic
from mergemix.stages.report import draw_scores, margin

Mixture = dict[str, float]


def l1(a: Mixture, b: Mixture) -> float:
    """Sum over domains of |a_d - b_d| (0: the same mixture, 2: disjoint supports)."""
    return float(sum(abs(a.get(d, 0.0) - b.get(d, 0.0)) for d in set(a) | set(b)))


def table(mixtures: dict[str, Mixture]) -> str:
    """Markdown: one row per domain, one column per mixture (weights x100)."""
    labels = list(mixtures)
    domains = sorted({d for m in mixtures.values() for d in m})
    lines = ["| domain | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    lines += [
        f"| {d} | " + " | ".join(f"{100 * mixtures[k].get(d, 0.0):.1f}" for k in labels) + " |"
        for d in domains
    ]
    return "\n".join(lines)


def margins(rows: dict[str, dict], pairs: list[tuple[str, str]], capabilities: dict[str, list[str]]) -> dict:
    """U(a) - U(b) with its paired-bootstrap noise, for each (a, b) whose rows were scored."""
    return {
        f"{a} vs {b}": margin(rows[a], rows[b], capabilities) for a, b in pairs if a in rows and b in rows
    }


def margin_lines(result: dict) -> list[str]:
    return [
        f"- {name}: U {100 * m['U_diff']:+.2f} (paired noise std {100 * m['noise_std']:.2f}, "
        f"{m['sigmas']:+.1f} sigma)"
        for name, m in result.items()
    ]


def scores(row: dict) -> dict:
    """An evaluation without its per-item arrays."""
    return {k: row[k] for k in ("U", "U_std", "capabilities", "capabilities_std", "tasks") if k in row}


def write(
    run_dir: Path,
    stem: str,
    result: dict,
    markdown: str,
    mixtures: dict[str, Mixture],
    rows: dict[str, dict] | None = None,
) -> None:
    """<stem>.json, <stem>.md and <stem>.png (the mixtures; beside them the scored rows, if any)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / f"{stem}.json", json.dumps(result, indent=2, default=float))
    write_atomic(run_dir / f"{stem}.md", markdown)
    plot(run_dir / f"{stem}.png", mixtures, rows)


def plot(path: Path, mixtures: dict[str, Mixture], rows: dict[str, dict] | None = None) -> None:
    import matplotlib.pyplot as plt

    domains = sorted({d for m in mixtures.values() for d in m})
    panels = 2 if rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 + 5 * (panels - 1), 3.8), squeeze=False)
    ax, width = axes[0][0], 0.8 / len(mixtures)
    for i, (label, m) in enumerate(mixtures.items()):
        ax.bar(
            np.arange(len(domains)) + i * width, [100 * m.get(d, 0.0) for d in domains], width, label=label
        )
    ax.set_xticks(np.arange(len(domains)) + 0.4 - width / 2, domains)
    ax.set_ylabel("weight (%)")
    ax.set_xlabel("domain")
    ax.set_title("mixtures", fontsize=9)
    ax.legend(fontsize=7)
    if rows:
        draw_scores(axes[0][1], rows)
        axes[0][1].set_title("trained", fontsize=9)
    fig.suptitle(
        "Data mixtures" + (" and the scores of the models trained on them" if rows else ""), fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
