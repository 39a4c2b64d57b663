"""MergeMix: find mid-training data mixtures by merging domain experts instead of training trial runs."""

import os

__version__ = "0.1.0"

os.environ.setdefault(
    "MPLBACKEND", "Agg"
)  # figures are files: matplotlib's file-only back-end unless one is chosen
