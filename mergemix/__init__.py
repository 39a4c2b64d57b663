"""MergeMix: find mid-training data mixtures by merging domain experts instead of training trial runs."""

__version__ = "0.1.0"
