"""Figures a person reads: each is drawn by a function that returns its Figure, checked by its artists (titles,
axis labels, legend entries, where the points sit) rather than by pixels."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

CAPS = {"code": ["c"], "math": ["m1", "m2"]}


def _row(items: dict[str, np.ndarray], with_items: bool = True) -> dict:
    from mergemix.benchmarks.suite import bootstrap

    caps = {k: float(np.mean([items[t].mean() for t in ts])) for k, ts in CAPS.items()}
    cap_std, u_std = bootstrap(items, CAPS, 200, 0)
    row = {
        "capabilities": caps,
        "capabilities_std": cap_std,
        "U": float(np.mean(list(caps.values()))),
        "U_std": u_std,
    }
    return {**row, "items": {t: v.tolist() for t, v in items.items()}} if with_items else row


def _rows(with_items: bool = True) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    base = {t: rng.uniform(0, 1, 300) for t in ("c", "m1", "m2")}
    shifted = {t: np.clip(v + 0.03 + rng.normal(0, 0.01, 300), 0, 1) for t, v in base.items()}
    return {
        "base": _row(base, with_items),
        "uniform (trained)": _row(shifted, with_items),
        "mergemix (trained)": _row({t: np.clip(v + 0.01, 0, 1) for t, v in shifted.items()}, with_items),
    }


def _error_halves(ax) -> list[float]:
    """Half-lengths of the error bars drawn in `ax` (errorbar's LineCollection segments)."""
    return [abs(seg[1][1] - seg[0][1]) / 2 for coll in ax.collections for seg in coll.get_segments()]


def test_table_shows_differences_to_uniform_with_paired_intervals():
    from mergemix.benchmarks.suite import paired_gap
    from mergemix.stages.report import draw_table

    rows = _rows()
    fig = draw_table(rows, CAPS)
    scores, gaps = fig.axes
    assert "uniform (trained)" in fig.get_suptitle()
    assert scores.get_title() and "x100" in scores.get_ylabel() and "capability" in scores.get_xlabel()
    assert [t.get_text() for t in scores.get_legend().get_texts()] == list(rows)
    assert not scores.collections  # no unpaired item error bars on the scores
    assert "paired" in gaps.get_title() and gaps.get_ylabel() == "score minus uniform (trained) (x100)"
    assert [t.get_text() for t in gaps.get_xticklabels()] == ["code", "math", "U"]
    gap = paired_gap(rows["mergemix (trained)"], rows["uniform (trained)"], CAPS)
    heights = [p.get_height() for p in gaps.patches]
    assert heights[-3:] == pytest.approx(
        [100 * gap["capabilities"]["code"], 100 * gap["capabilities"]["math"], 100 * gap["U"]]
    )
    assert _error_halves(gaps)[-1] == pytest.approx(200 * gap["U_std"])  # +-2 paired std
    assert 2 * gap["U_std"] < rows["mergemix (trained)"]["U_std"]  # tighter than one model's item std


def test_table_without_items_falls_back_to_unpaired_noise_and_the_base():
    from mergemix.stages.report import draw_table

    rows = _rows(with_items=False)
    rows.pop("uniform (trained)")
    fig = draw_table(rows)
    gaps = fig.axes[1]
    assert "minus base" in gaps.get_ylabel() and "unpaired" in gaps.get_title()
    a, b = rows["mergemix (trained)"], rows["base"]
    assert _error_halves(gaps)[-1] == pytest.approx(200 * np.hypot(a["U_std"], b["U_std"]))
    assert len(draw_table({"base": rows["base"]}).axes) == 1  # nothing to compare with: the scores alone


def test_validation_figure_has_a_title_labels_and_seeds():
    from mergemix.analysis.validate import draw

    scores = {
        "merged": {"overall": [0.1, 0.2, 0.3], "code": [0.2, 0.1, 0.3]},
        "trained": {
            0: {"overall": [0.1, 0.3, 0.2], "code": [0.2, 0.2, 0.4]},
            1: {"overall": [0.15, 0.25, 0.3], "code": [0.1, 0.2, 0.3]},
        },
    }
    fig = draw(scores, {"overall": 0.5, "capabilities": {"code": 1.0}}, "prob")
    assert "Rank consistency" in fig.get_suptitle() and "3 mixtures" in fig.get_suptitle()
    assert [ax.get_title() for ax in fig.axes] == ["U: ρ = 0.50", "code: ρ = 1.00"]
    assert all(ax.get_xlabel() == "trained (x100)" for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "merged (x100, prob)"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["seed 0", "seed 1"]


def test_regime_figure_names_every_regime_and_keeps_them_apart():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import regime

    def row(what, eta, rho):
        block = {"overall": [rho, rho - 0.2, rho + 0.1, 0.9]}
        return {"what": what, "eta_T": eta, "mix_tokens": 800_000, "prob": block, "acc": block}

    table = {
        "a": row("experts A", 0.02, 0.8),
        "b": row("experts B", 0.02, 0.7),
        "c": row("experts C", 0.2, 0.1),
    }
    fig = regime.draw(table)
    assert fig.get_suptitle() and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "a: experts A",
        "b: experts B",
        "c: experts C",
    ]
    for ax in fig.axes:
        assert "Σ η" in ax.get_xlabel() and ax.get_title()
        xs = [line.get_xdata()[0] for line in ax.get_lines() if line.get_marker() in ("o", "s")]
        assert len(xs) == 3 and len(set(xs)) == 3  # regimes at the same Σ η side by side, not on top
    assert fig.axes[0].get_ylabel() == "Spearman ρ"
