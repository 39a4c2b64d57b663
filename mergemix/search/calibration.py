"""Recovery calibration of merged scores (`search.calibration: recovery`).

A merge compresses training gains unequally: the merged model at alpha gains less over the base than a model
trained on the mixture alpha, and the ratio differs by capability (a capability whose domain keeps improving with
more tokens is compressed most). U over raw merges then under-weights exactly the capabilities a mixture run moves
most. Calibration measures, per capability c, the recovery

    r_c = (trained_c - base_c) / (merged_c - base_c)

at one mixture that is trained anyway (the token-proportional baseline), and rescales every merged score to
base_c + r_c * (merged_c - base_c) before the surrogate sees it. Where the merged gain is within noise of zero (the
paired bootstrap over the same items, when given) the ratio is not identified and r_c = 1; r_c is clipped to
[1/max_ratio, max_ratio]."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def recovery(
    base: Mapping,
    merged: Mapping,
    trained: Mapping,
    min_sigmas: float = 2.0,
    max_ratio: float = 4.0,
    gain_std: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """r_c per capability from three evaluated models (results of Suite.evaluate); `gain_std`: the paired noise of
    the merged gain (else the two models' stds combined as independent, which overstates it)."""
    out = {}
    for c, b in base["capabilities"].items():
        gain_m = merged["capabilities"][c] - b
        noise = (
            float(gain_std[c])
            if gain_std
            else float(np.hypot(merged["capabilities_std"][c], base["capabilities_std"][c]))
        )
        if abs(gain_m) <= min_sigmas * noise or gain_m == 0:
            out[c] = 1.0
            continue
        ratio = (trained["capabilities"][c] - b) / gain_m
        out[c] = float(np.clip(ratio, 1.0 / max_ratio, max_ratio))
    return out


def calibrate(result: Mapping, base_caps: Mapping[str, float], ratios: Mapping[str, float]) -> dict:
    """A merged result with its capability scores (and U) moved to the trained scale; the raw scores are kept."""
    caps = {c: base_caps[c] + ratios[c] * (v - base_caps[c]) for c, v in result["capabilities"].items()}
    stds = {c: ratios[c] * s for c, s in result["capabilities_std"].items()}
    u_scale = float(np.mean(list(ratios.values())))
    return {
        **result,
        "capabilities": caps,
        "capabilities_std": stds,
        "U": float(np.mean(list(caps.values()))),
        "U_std": result["U_std"] * u_scale,
        "raw": {"capabilities": result["capabilities"], "U": result["U"], "U_std": result["U_std"]},
    }
