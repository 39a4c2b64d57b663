"""Types shared by the search back-ends and their registry (backends.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Evaluate = Callable[[np.ndarray], dict]  # alpha -> merge + benchmarks result (cached)


@dataclass
class Outcome:
    alpha: np.ndarray
    predicted: dict[str, float] | None = None
    info: dict = field(default_factory=dict)
