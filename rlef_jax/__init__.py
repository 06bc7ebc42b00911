"""rlef_jax: RLEF (Gehring et al. 2025, arXiv 2410.02089) in JAX.

Importing the package registers the dataset builders with TFDS (on TFDS's own import, so that this
import stays cheap): afterwards `tfds.data_source("code_contests", data_dir=...)` works.
"""
from rlef_jax.data import registration as _registration

_registration.install()
