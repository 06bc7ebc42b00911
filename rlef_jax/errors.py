"""Errors that mean bad input rather than a bug, and running out of disk space.

The commands (`python -m rlef_jax.train` / `.evaluate` / `.warmstart` / `.convert`, through
`rlef_jax.cli`) print a `UserError` as one line, `error: <message>`, on stderr and exit with status 2,
without a traceback; every other exception is a bug and keeps its traceback. A message names the
culprit (the flag, config field, path, file and row) and, where there is one, the fix.

Each class also derives from the built-in exception of its kind, so `except ValueError` /
`except FileNotFoundError` (and `pytest.raises` of those) keep catching them.

A full disk is neither bad input nor a bug, and a long run meets it sooner or later: a write that
fails with ENOSPC, EDQUOT or EFBIG (a file size limit) anywhere, also inside orbax's background save
threads, is reported by the commands as one line naming the file (`out_of_space`, `OutOfSpaceError`),
with exit status `rlef_jax.cli.NO_SPACE_EXIT_STATUS`.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Iterator


class UserError(Exception):
  """Bad input: a command-line flag, a config value, a path or an input file."""


class ConfigError(UserError, ValueError):
  """A config value, or a combination of values, that cannot work (`rlef_jax.config.validate`)."""


class InputError(UserError, ValueError):
  """An input file or directory that exists but is not what it should be (a truncated parquet shard,
  a dataset row without tests, a checkpoint of another shape, a workdir that is a file)."""


class MissingPathError(UserError, FileNotFoundError):
  """An input path that does not exist."""


# The disk is full, a disk quota is reached, or a file would pass the file size limit (RLIMIT_FSIZE).
OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Tensorstore (orbax's array writer) raises ValueError, not OSError, naming the OS error this way.
_OS_ERROR_CODE = re.compile(r"\[os_error_code='(\d+)'\]")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"')


class OutOfSpaceError(OSError):
  """A write failed for lack of space; `filename` is the file (or directory) being written and `note`
  says what was lost and what was kept (e.g. which checkpoint is intact)."""

  def __init__(self, code: int, path: str | None = None, note: str = ""):
    super().__init__(code, os.strerror(code), path)
    self.note = note

  def __str__(self) -> str:
    where = f"writing {self.filename}" if self.filename else "writing a file"
    note = f"; {self.note}" if self.note else ""
    return (f"no space left {where}: {self.strerror} (the disk is full, or a disk quota or file size "
            f"limit is reached){note}; free some space and run the command again")


def out_of_space(exc: BaseException) -> OutOfSpaceError | None:
  """The out-of-space failure behind `exc` (itself or a cause or context), or None.

  Recognises OSErrors with an out-of-space errno and tensorstore's errors that carry one."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, OutOfSpaceError):
      return exc
    if isinstance(exc, OSError) and exc.errno in OUT_OF_SPACE_ERRNOS:
      return OutOfSpaceError(exc.errno, exc.filename)
    code = _OS_ERROR_CODE.search(str(exc))
    if code and int(code.group(1)) in OUT_OF_SPACE_ERRNOS:
      paths = _QUOTED_PATH.findall(str(exc))
      return OutOfSpaceError(int(code.group(1)), paths[-1] if paths else None)
    exc = exc.__cause__ or exc.__context__
  return None


@contextlib.contextmanager
def writing(path: str, note: str = "") -> Iterator[None]:
  """Re-raises an out-of-space failure inside the block as `OutOfSpaceError` naming `path` (unless
  the failure names its own file): a failed `write`/`flush`/`close` carries no file name."""
  try:
    yield
  except Exception as e:  # noqa: BLE001 - only out-of-space failures are changed
    found = out_of_space(e)
    if found is None:
      raise
    raise OutOfSpaceError(found.errno, found.filename or str(path), note or found.note) from e
