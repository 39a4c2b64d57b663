"""`make bench`: the hot paths (merge, candidate evaluation, training, search scaling) against their baselines."""
