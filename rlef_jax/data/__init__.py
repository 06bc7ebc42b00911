"""Datasets (paper §4): TFDS builders for CodeContests, HumanEval+, MBPP+ and the synthetic family, and
the Grain input pipeline.

Importing this package is cheap: the builders (`rlef_jax.data.builders`) import TFDS and are registered
with it by `import rlef_jax` (see `registration`); the record format lives in `records`, the pipeline in
`pipeline`.
"""
