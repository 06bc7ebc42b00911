"""Imports every rlef_jax TFDS builder, which registers it with TFDS by name.

After this, `tfds.builder(name, data_dir=...)` and `tfds.data_source(name, data_dir=...)` work for
`code_contests`, `humaneval_plus`, `mbpp_plus`, `mbpp` and `synthetic`. `import rlef_jax` arranges for this
module to be imported as soon as `tensorflow_datasets` is (see `rlef_jax.data.registration`).
"""
from rlef_jax.data.code_contests import CodeContests
from rlef_jax.data.evalplus import HumanevalPlus, MbppPlus
from rlef_jax.data.mbpp import Mbpp
from rlef_jax.data.synthetic import Synthetic, SyntheticConfig

BUILDERS = {b.name: b for b in (CodeContests, HumanevalPlus, MbppPlus, Mbpp, Synthetic)}

__all__ = ["BUILDERS", "CodeContests", "HumanevalPlus", "Mbpp", "MbppPlus", "Synthetic", "SyntheticConfig"]
