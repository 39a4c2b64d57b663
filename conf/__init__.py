"""MergeMix's Hydra configs (the repository's top-level conf/, shipped in the wheel as mergemix.conf)."""
