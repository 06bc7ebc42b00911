"""Benchmark files shipped inside the package, under `rlef_jax/assets/benchmarks/<dataset>/`.

Each dataset folder holds the data, its licence and a SOURCE.md (origin, commit, sha256, fields, what
was changed). The names below are paths relative to `rlef_jax/assets/benchmarks`:

    from rlef_jax.data import assets
    path = assets.benchmark_file(assets.HUMANEVAL_PLUS)   # a pathlib.Path that exists

The lookup goes through `importlib.resources`, so it works from a source checkout and from an installed
package alike (the files must be installed as package data).
"""
from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import pathlib

from rlef_jax import errors

HUMANEVAL_PLUS = "humanevalplus/HumanEvalPlus.jsonl.gz"  # EvalPlus HumanEval+ v0.1.10, 164 tasks
HUMANEVAL_PLUS_MINI = "humanevalplus/HumanEvalPlus-Mini.jsonl.gz"  # same tasks, few plus inputs
# EvalPlus MBPP+ pre-release snapshot (399 tasks): NOT the official v0.2.0 release, see its SOURCE.md.
MBPP_PLUS_PRERELEASE = "mbppplus/MbppPlus-767efcc.jsonl.gz"
MBPP = "mbpp/mbpp.jsonl.gz"  # original MBPP, 974 tasks (split by task id: see mbpp/SOURCE.md)

_PACKAGE_DIR = ("assets", "benchmarks")
_extracted = contextlib.ExitStack()  # temporary copies, only when the package is not on a file system
atexit.register(_extracted.close)


def benchmark_file(name: str) -> pathlib.Path:
    """The path of the shipped benchmark file `name` (e.g. `HUMANEVAL_PLUS`), relative to
    `rlef_jax/assets/benchmarks`. Raises FileNotFoundError listing the shipped files if it is absent."""
    resource = _resource(*name.split("/"))
    if not resource.is_file():
        raise errors.MissingPathError(
            f"No shipped benchmark file {name!r} in rlef_jax/assets/benchmarks; shipped: {shipped_files()}. "
            "If rlef_jax is installed, its package data (rlef_jax/assets/**) was left out of the install."
        )
    if isinstance(resource, pathlib.Path):
        return resource
    return _extracted.enter_context(importlib.resources.as_file(resource))  # e.g. imported from a zip


def _resource(*parts: str):
    """`rlef_jax/assets/benchmarks/<parts>` as an `importlib.resources` Traversable."""
    resource = importlib.resources.files("rlef_jax")
    for part in (*_PACKAGE_DIR, *parts):
        resource = resource.joinpath(part)
    return resource


def shipped_files() -> list[str]:
    """The data files shipped under `rlef_jax/assets/benchmarks` (licences and notes left out)."""
    root = _resource()
    if not root.is_dir():
        return []
    return sorted(f"{d.name}/{f.name}" for d in root.iterdir() if d.is_dir()
                  for f in d.iterdir() if f.name.endswith((".jsonl", ".jsonl.gz", ".json")))
