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

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluations.")


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that cannot be one, before anything is built or written: a URL (`gs://...`:
  paths here go through `os.path`, so one would silently become a local directory named `gs:` on each
  host instead of the shared bucket), a path that is not a directory, or one this user cannot read,
  write or create."""
  workdir = str(workdir)
  if "://" in workdir:
    raise errors.ConfigError(
        f"--workdir={workdir}: URL workdirs are not supported yet; mount the bucket at the same path on "
        "every host (gcsfuse, or an NFS share) and pass that path (experiments/tpu/README.md, \"Workdir\")")
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise errors.InputError(f"--workdir={workdir} exists and is not a directory; pass a directory "
                              "(a new one is created)")
    if not os.access(workdir, os.R_OK | os.W_OK | os.X_OK):
      raise errors.InputError(f"--workdir={workdir}: this user cannot read and write it (permissions "
                              f"{oct(os.stat(workdir).st_mode & 0o777)})")
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise errors.InputError(f"--workdir={workdir} cannot be created: {parent} is not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.InputError(f"--workdir={workdir} cannot be created: this user cannot write {parent}")


def make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
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
