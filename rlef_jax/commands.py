"""The command-line layer shared by `python -m rlef_jax.train`, `rlef_jax.evaluate` and
`rlef_jax.warmstart`: the `--config` and `--workdir` flags and the checks every command makes before
it builds or writes anything. Each command's own flags and `main` live in its module; `cli.run`
reports bad input in one line.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from rlef_jax import config as config_lib
from rlef_jax import errors
from rlef_jax import storage

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluations: a "
                                "local path or an object-store URL (gs://bucket/run; rlef_jax.storage).")


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that cannot be one, before anything is built or written: a URL of a scheme
  `rlef_jax.storage` does not handle, a path that is not a directory, or (local) one this user cannot
  read, write or create. An object-store URL (`gs://bucket/run`) is checked for what it holds only:
  the bucket's permissions show at the first write."""
  try:
    where = storage.path(workdir)
  except errors.ConfigError as e:  # an unknown URL scheme
    raise errors.ConfigError(f"--workdir={e}") from None
  if storage.is_url(where):
    try:
      exists, is_dir = where.exists(), where.is_dir()
    except Exception as e:  # noqa: BLE001 - a missing backend, credentials, network: one line
      raise errors.InputError(f"--workdir={workdir}: cannot reach it ({type(e).__name__}: {e})") from None
    if exists and not is_dir:
      raise errors.InputError(f"--workdir={workdir} is an object, not a directory (prefix); pass a "
                              "directory (a new one is created)")
    return
  workdir = str(workdir)
  local = os.fspath(where)
  if os.path.exists(local):
    if not os.path.isdir(local):
      raise errors.InputError(f"--workdir={workdir} exists and is not a directory; pass a directory "
                              "(a new one is created)")
    if not os.access(local, os.R_OK | os.W_OK | os.X_OK):
      raise errors.InputError(f"--workdir={workdir}: this user cannot read and write it (permissions "
                              f"{oct(os.stat(local).st_mode & 0o777)})")
    return
  parent = os.path.dirname(local)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise errors.InputError(f"--workdir={workdir} cannot be created: {parent} is not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.InputError(f"--workdir={workdir} cannot be created: this user cannot write {parent}")


def make_workdir(workdir: str) -> None:
  try:
    storage.makedirs(workdir)
  except OSError as e:
    raise errors.InputError(f"--workdir={workdir} cannot be created: {e.strerror or e}") from None


def command_args(argv: Sequence[str]) -> tuple[Any, str]:
  """(config, workdir) of the train / evaluate / warmstart commands, after checking the command line,
  the config (`config.validate`, without the devices: before `distributed.initialize`) and the
  workdir. Nothing is written yet."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  config_lib.validate(_CONFIG.value)
  check_workdir(_WORKDIR.value)
  return _CONFIG.value, _WORKDIR.value
