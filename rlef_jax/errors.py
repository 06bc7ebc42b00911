"""Errors that mean bad input rather than a bug.

The commands (`python -m rlef_jax.train` / `.evaluate` / `.warmstart` / `.convert`, through
`rlef_jax.cli`) print a `UserError` as one line, `error: <message>`, on stderr and exit with status 2,
without a traceback; every other exception is a bug and keeps its traceback. A message names the
culprit (the flag, config field, path, file and row) and, where there is one, the fix.

Each class also derives from the built-in exception of its kind, so `except ValueError` /
`except FileNotFoundError` (and `pytest.raises` of those) keep catching them.
"""
from __future__ import annotations


class UserError(Exception):
  """Bad input: a command-line flag, a config value, a path or an input file."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that cannot work (`rlef_jax.config.validate`)."""


class InputError(UserError, ValueError):
  """An input file or directory that exists but is not what it should be (a truncated parquet shard,
  a dataset row without tests, a checkpoint of another shape, a workdir that is a file)."""


class MissingPathError(UserError, FileNotFoundError):
  """An input path that does not exist."""
