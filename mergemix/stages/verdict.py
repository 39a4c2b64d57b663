"""The run's verdict: one line a user can act on, then the findings behind it.

    no search      merged U barely moves over the seed merges (spread within its item noise) or the surrogate
                   cannot rank unseen merges of U: a search has nothing to find here
    do not trust   the merges misjudge this testbed: an expert clearly lifts its capability yet no merge moves it
                   (merges hide that domain's gain), the best merge is a vertex, the surrogate's alpha* merged below
                   its best seed merge, or alpha* trained below token-proportional beyond noise
    act, flat      alpha* is sound; some capabilities are flat (their expert does not clearly lift them and no
                   mixture moves them), so they carry no information for or against any mixture
    act            every check passed

Before anything is trained the U-level checks decide whether a search is worth it; after, the trained check
(alpha* against token-proportional, paired over items, one training seed) can only lower the verdict: a flat
capability whose trained scores do differ beyond noise is one the merges hide, not a flat one."""

from __future__ import annotations

NO_SEARCH, DO_NOT_TRUST, ACT_FLAT, ACT = "no search", "do not trust", "act, flat", "act"


def search_worth(u_check: dict, min_ratio: float = 2.0, min_cv: float = 0.5) -> list[str]:
    """Why a search is not worth it here (empty: it is): merged U's spread over the seed merges against the paired
    item noise of one merge (under twice that, the spread is mostly noise), and the surrogate's cross-validated
    ranking of U."""
    out = []
    if u_check["ratio"] is not None and u_check["ratio"] <= min_ratio:
        out.append(
            f"merged U moves {100 * u_check['merged_spread_std']:.2f} U (std over the seed merges), within "
            f"{min_ratio:g}x its paired item noise {100 * u_check['item_noise_std']:.2f} U: no mixture "
            "scores clearly apart from another"
        )
    cv = u_check.get("cv_spearman")
    if cv is not None and not cv >= min_cv:
        out.append(
            f"the surrogate ranks unseen merges' U poorly (CV Spearman {cv:.2f} < {min_cv}): raise "
            "search.budget"
        )
    return out


def distrust(calib: dict, choice: dict | None, trained: dict | None, sigmas: float = 2.0) -> list[str]:
    """Why the merges' alpha* should not be trusted here, each with what to do; empty when none."""
    out = []
    resp = calib.get("responsiveness", {})
    for cap, g in calib["expert_gains"].items():
        if g["clear"] and cap in resp and not resp[cap]["responsive"]:
            out.append(
                f"expert:{g['domain']} lifts {cap} ({g['sigmas']:+.1f} sigma) but no merge moves it beyond "
                "noise: merges hide that domain's gain; refine alpha* with a few trained runs "
                "(strategy=refine)"
            )
    if not calib["tradeoff"]["best_is_interior"]:
        out.append(
            "the best seed merge is a vertex: the optimum may lie at the simplex's edge, beyond where the merges' "
            "alpha* stops (or the capabilities do not trade off); refine alpha* with a few trained runs "
            "(strategy=refine) and check the benchmarks' coverage of the other domains"
        )
    if choice and choice.get("switched_to_best_merge"):
        out.append(
            "the surrogate's alpha* merged below the best seed merge beyond noise; alpha* is that merge "
            "(mixture.yaml alpha_choice): raise search.budget"
        )
    for cap, (diff, noise) in hidden(calib, trained, sigmas).items():
        out.append(
            f"no merge moves {cap}, yet alpha* and token-proportional trained {100 * diff:+.2f} U apart on "
            f"it ({diff / noise:+.1f} sigma): merges hide its trained response; use strategy=refine"
        )
    if trained and trained["U_diff"] < -sigmas * trained["noise_std"]:
        out.append(
            f"alpha* trained {100 * -trained['U_diff']:.2f} U below token-proportional "
            f"({trained['sigmas']:+.1f} sigma of item noise): use strategy=refine or the token mixture"
        )
    return out


def flat(calib: dict) -> list[str]:
    """Capabilities that are just flat here: their expert does not clearly lift them and no merge moves them."""
    resp = calib.get("responsiveness", {})
    gains = {g_cap: g for g_cap, g in calib["expert_gains"].items()}
    return sorted(
        c for c, r in resp.items() if not r["responsive"] and not gains.get(c, {}).get("clear", False)
    )


def hidden(calib: dict, trained: dict | None, sigmas: float = 2.0) -> dict[str, tuple[float, float]]:
    """Flat capabilities whose trained scores (alpha* vs token-proportional) differ beyond noise: {cap: (diff,
    noise)}."""
    diffs, stds = (trained or {}).get("capabilities_diff", {}), (trained or {}).get("capabilities_std", {})
    return {
        c: (diffs[c], stds[c])
        for c in flat(calib)
        if c in diffs and stds.get(c) and abs(diffs[c]) > sigmas * stds[c]
    }


def weak_experts(calib: dict) -> list[str]:
    """Experts that do not clearly lift a capability the mixture does move (a finding, not a verdict)."""
    resp = calib.get("responsiveness", {})
    return [
        f"expert:{g['domain']} does not clearly lift {cap} ({g['sigmas']:+.1f} sigma): train it longer or at a "
        f"higher experts.lr, or check that its benchmark measures what its domain teaches"
        for cap, g in calib["expert_gains"].items()
        if not g["clear"] and resp.get(cap, {}).get("responsive")
    ]


def verdict(calib: dict, u_check: dict, choice: dict | None = None, trained: dict | None = None) -> dict:
    """{"action", "line", "findings"}: the one line and the findings behind it (see the module's text)."""
    no_search, bad = search_worth(u_check), distrust(calib, choice, trained)
    dull = [c for c in flat(calib) if c not in hidden(calib, trained)]
    findings = [*no_search, *bad, *weak_experts(calib)]
    if dull:
        others = [c for c in calib.get("responsiveness", {}) if c not in dull]
        fix = (
            f"search.objective=[{','.join(others)}] searches without them"
            if others
            else "no capability moves: stronger experts or more benchmark items first"
        )
        findings.append(
            f"capabilities {dull} are flat here (no expert clearly lifts them, no merge moves them): "
            f"they only add noise to U; {fix}"
        )
    if no_search:
        action, line = (
            NO_SEARCH,
            (
                f"a search is not worth it here: {no_search[0]}; keep the token-proportional "
                "mixture, or strengthen the experts or the benchmarks first"
            ),
        )
    elif bad:
        action, line = DO_NOT_TRUST, f"do not trust the merges' alpha* yet: {bad[0]}"
    elif dull:
        action, line = (
            ACT_FLAT,
            (
                f"act on alpha*: {', '.join(dull)} {'is' if len(dull) == 1 else 'are'} just "
                "flat here (no mixture moves them), the other capabilities decide it"
            ),
        )
    else:
        action, line = (
            ACT,
            (
                "act on alpha*: every expert lifts its capability, merged U moves beyond its noise, "
                "the optimum is interior and the surrogate ranks unseen merges"
            ),
        )
    return {"action": action, "line": line, "findings": findings}
