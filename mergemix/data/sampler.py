"""Exact-ratio mixture sampler: a fixed number of training windows per domain, drawn deterministically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mergemix.errors import MergeMixError


def allocate(ratios: dict[str, float], total: int) -> dict[str, int]:
    """Largest-remainder rounding: counts sum to `total` and each is within 1 of ratio * total."""
    names = sorted(ratios)
    raw = np.array([ratios[n] * total for n in names])
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist()))


@dataclass
class MixturePlan:
    """Window starts per training step: `domain[i]` and `start[i]` for i in 0..n-1, already shuffled."""

    domains: list[str]
    domain: np.ndarray
    start: np.ndarray
    seq_len: int

    def realised_tokens(self) -> dict[str, int]:
        counts = np.bincount(self.domain, minlength=len(self.domains))
        return {d: int(c) * self.seq_len for d, c in zip(self.domains, counts)}


def plan_mixture(
    lengths: dict[str, int], ratios: dict[str, float], n_windows: int, seq_len: int, seed: int
) -> MixturePlan:
    unknown = sorted(set(ratios) - set(lengths))
    if unknown:
        raise MergeMixError(f"mixture names unknown domains {unknown}; known: {sorted(lengths)}")
    rng = np.random.default_rng(seed)
    counts = allocate({d: ratios.get(d, 0.0) for d in lengths}, n_windows)
    names = sorted(lengths)
    dom, start = [], []
    for i, name in enumerate(names):
        if counts[name] == 0:
            continue
        span = lengths[name] - seq_len
        if span <= 0:
            raise MergeMixError(
                f"domain '{name}' has {lengths[name]} tokens, fewer than one sequence ({seq_len})"
            )
        dom.append(np.full(counts[name], i))
        start.append(rng.integers(0, span, counts[name]))
    dom_arr, start_arr = np.concatenate(dom), np.concatenate(start)
    order = rng.permutation(len(dom_arr))
    return MixturePlan(names, dom_arr[order], start_arr[order], seq_len)


def trained_windows(n_tokens: int, seq_len: int, batch_size: int) -> int:
    """Training windows of a run of `n_tokens`: cut to whole global batches, at least one batch."""
    return max(batch_size, n_tokens // seq_len // batch_size * batch_size)


def epochs(
    lengths: dict[str, int], ratios: dict[str, float], n_tokens: int, seq_len: int, batch_size: int
) -> dict[str, float]:
    """Passes over each domain's tokens that a run of `n_tokens` on `ratios` draws (windows as the trainer
    plans them on one device: whole batches, each domain's share by largest-remainder rounding)."""
    counts = allocate(
        {d: ratios.get(d, 0.0) for d in lengths}, trained_windows(n_tokens, seq_len, batch_size)
    )
    return {d: counts[d] * seq_len / max(1, lengths[d]) for d in sorted(lengths)}


def check_epochs(
    lengths: dict[str, int],
    ratios: dict[str, float],
    n_tokens: int,
    seq_len: int,
    batch_size: int,
    limits: dict[str, float | None],
    label: str,
) -> None:
    """One clear error when the run would repeat a domain more often than its limit allows."""
    for d, e in epochs(lengths, ratios, n_tokens, seq_len, batch_size).items():
        if limits.get(d) is not None and e > limits[d]:
            raise MergeMixError(
                f"{label} would repeat domain '{d}' {e:.2f} times ({round(e * lengths[d]):,} tokens drawn from "
                f"{lengths[d]:,} available), more than its max_epochs {limits[d]:g}: lower the run's tokens or "
                f"that domain's share, add data, or raise max_epochs"
            )
