"""MergeMix's method as stages, one module each, in the paper's order:

    data -> tokenizer -> base -> experts -> merge -> evaluate -> search -> mix -> report

A stage is a function of the few values it reads that returns its artifact: a directory of the content-addressed
store (artifacts.py), keyed by what determines it, or a result dict. `keys` says what each stage reads from the
config; `validate` checks every input before any work; `train` runs one training (base, experts, mixtures).
`mergemix.pipeline.Pipeline` is the one place that chains the stages (cached per run); no stage imports it."""
