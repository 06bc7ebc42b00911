"""Registers the rlef_jax TFDS builders the moment TFDS is imported, without importing TFDS ourselves.

`import rlef_jax` must stay cheap (e.g. for `python -m rlef_jax.execute` and execution workers), while
`tfds.data_source("code_contests", data_dir=...)` must work after `import rlef_jax`. So `install()`
registers at once when `tensorflow_datasets` is already imported, and otherwise puts a one-shot finder
on `sys.meta_path` that, when `tensorflow_datasets` is imported, runs its module body as usual and then
imports `rlef_jax.data.builders` (whose classes register themselves with TFDS).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

TFDS_MODULE = "tensorflow_datasets"
# The modules defining the builder classes (a class registers itself with TFDS when it is defined).
BUILDER_MODULES = ("rlef_jax.data.code_contests", "rlef_jax.data.evalplus", "rlef_jax.data.mbpp",
                   "rlef_jax.data.synthetic")


def register_builders() -> None:
    """Imports the builder modules not imported yet. One already in `sys.modules` is done or still
    running its body (TFDS was imported *by* it, e.g. `import rlef_jax.data.synthetic` first): it
    defines, so registers, its builder itself; importing it again here would be a circular import."""
    for name in BUILDER_MODULES:
        if name not in sys.modules:
            importlib.import_module(name)


class _RegisterAfterLoad(importlib.abc.Loader):
    """Delegates to TFDS's own loader, then registers the builders."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register_builders()

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _TfdsImportHook(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != TFDS_MODULE:
            return None
        uninstall()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoad(spec.loader)
        return spec


def _hooks() -> list:
    return [f for f in sys.meta_path if isinstance(f, _TfdsImportHook)]


def install() -> None:
    """Registers now if TFDS is loaded, else on its import. Safe to call repeatedly."""
    if TFDS_MODULE in sys.modules:
        register_builders()
    elif not _hooks():
        sys.meta_path.insert(0, _TfdsImportHook())


def uninstall() -> None:
    for hook in _hooks():
        sys.meta_path.remove(hook)
