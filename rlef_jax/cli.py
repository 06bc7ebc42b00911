"""Running a command: bad input ends in one line `error: <message>` on stderr and exit status 2.

`run(main)` is `absl.app.run(main)` with two changes:

* flags are parsed by `parse_flags`: a flag absl or ml_collections rejects (an unknown flag, a
  malformed value such as `--config.rl.kl_coef=abc`, an override of a field the config does not have
  such as `--config.rl.no_such_field=1`, a config file that does not exist) is reported in one line
  naming the flag, instead of absl's usage text or ml_collections' chained tracebacks;
* `main` runs under `guard`: an `rlef_jax.errors.UserError` (config validation, missing paths, bad
  input files) or an `absl.app.UsageError` is reported the same way; so is a write that failed for
  lack of space (`rlef_jax.errors.out_of_space`: a full disk, a quota, a file size limit), naming the
  file, with exit status `NO_SPACE_EXIT_STATUS`. Checkpoints already written stay valid (a save
  that fails never becomes a step), so the same command resumes once there is space.

Anything else is a bug and propagates with its traceback. A config file whose own code raises is
such a bug too: its traceback is printed, followed by the one line.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags

from rlef_jax import errors

EXIT_STATUS = 2  # bad input (argparse's status for usage errors); 1 stays an uncaught exception
NO_SPACE_EXIT_STATUS = 74  # sysexits.h EX_IOERR: not bad input, the same command works once there is space


def one_line(message: Any) -> str:
  """`message` with its line breaks and runs of blanks folded into single spaces."""
  return " ".join(str(message).split())


def fail(message: Any, status: int = EXIT_STATUS) -> NoReturn:
  """Prints `error: <message>` (one line) on stderr and exits with `status`."""
  sys.stdout.flush()
  sys.stderr.write(f"error: {one_line(message)}\n")
  sys.stderr.flush()
  sys.exit(status)


def guard(main: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]], Any]:
  """`main` with `UserError`, `app.UsageError` and out-of-space failures reported by `fail`."""
  def guarded(argv: Sequence[str]) -> Any:
    try:
      return main(argv)
    except (errors.UserError, app.UsageError) as e:
      fail(e)
    except Exception as e:  # noqa: BLE001 - anything but a full disk is re-raised as it is
      full = errors.out_of_space(e)
      if full is None:
        raise
      fail(full, status=NO_SPACE_EXIT_STATUS)
  return guarded


def run(main: Callable[[Sequence[str]], Any], *, required: Sequence[str] = ()) -> None:
  """`app.run(main)` with one-line errors (module docstring); `required` flags must be given."""
  for name in required:
    flags.mark_flag_as_required(name)
  try:
    app.run(guard(main), flags_parser=parse_flags)
  except SystemExit as e:
    if e.code == NO_SPACE_EXIT_STATUS:
      # The line is printed. A failed asynchronous save leaves orbax's write tasks behind, and the
      # interpreter reports each one it drops while shutting down: that would bury the line.
      try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
      except (AttributeError, OSError, ValueError):  # a stderr without a file descriptor
        pass
    raise


# ---------------------------------------------------------------------------------------------
# Flag parsing


def parse_flags(argv: Sequence[str]) -> list[str]:
  """`flags.FLAGS(argv)`, with rejected flags and config files reported by `fail`."""
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as e:
    message = str(e)
    if "Traceback (most recent call last)" in message:  # the config file's own code raised
      sys.stderr.write(message + "\n")
      fail(f"{_config_flag_culprit(argv)}the config file raised an error (traceback above)")
    fail(message)
  except (AttributeError, KeyError, OSError):
    # ml_collections: an override of a field the config lacks, or overrides of a config file that
    # did not load. Anything else is not ours to explain.
    problem = _config_problem(argv)
    if problem is None:
      raise
    fail(problem)
  problem = _unloaded_config(argv)
  if problem is not None:
    fail(problem)
  return remaining


def _config_flags() -> list[str]:
  # The module itself: its package does not re-export is_config_flag / ConfigFileFlagParser.
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  return [name for name, flag in flags.FLAGS._flags().items()  # pylint: disable=protected-access
          if config_flags.is_config_flag(flag) and name == flag.name]


def _config_flag_culprit(argv: Sequence[str]) -> str:
  for name in _config_flags():
    path = _flag_value(argv, name)
    if path is not None:
      return f"--{name}={path}: "
  return ""


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The last value of `--name=VALUE` / `--name VALUE` in `argv`."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    match = re.fullmatch(rf"--?{re.escape(name)}(=(.*))?", arg, re.DOTALL)
    if match:
      if match.group(1) is not None:
        value = match.group(2)
      elif i + 1 < len(argv):
        value = argv[i + 1]
  return value


def _unloaded_config(argv: Sequence[str]) -> str | None:
  """After a successful parse: the problem of a config flag whose file did not load (ml_collections
  only raises when the config is first used)."""
  for name in _config_flags():
    value = flags.FLAGS[name].value
    if value is None:
      continue
    try:
      getattr(value, "keys")
    except OSError as e:
      return _missing_config_file(argv, name) or f"--{name}: {e}"
  return None


def _missing_config_file(argv: Sequence[str], name: str) -> str | None:
  path = _flag_value(argv, name)
  if path is None:
    return None
  file = path.split(":", 1)[0]
  if not os.path.isfile(file):
    where = "" if os.path.isabs(file) else f" (relative to the current directory {os.getcwd()})"
    return f"--{name}={path}: the config file {file} does not exist{where}"
  return None


def _config_problem(argv: Sequence[str]) -> str | None:
  """The bad override or missing config file behind an error ml_collections raised, else None."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  for name in _config_flags():
    missing = _missing_config_file(argv, name)
    if missing:
      return missing
    path = _flag_value(argv, name)
    if path is None:
      continue
    config = config_flags.ConfigFileFlagParser(name=name, lock_config=False).parse(path)
    for arg in argv[1:]:
      match = re.match(rf"--?(no)?{re.escape(name)}\.([^=]+)", arg)
      if match:
        problem = _override_problem(config, name, match.group(2))
        if problem:
          return f"--{name}.{match.group(2)}: {problem}"
  return None


def _override_problem(config: Any, name: str, field_path: str) -> str | None:
  """Why `config` has no field `field_path` ("a.b.c"), or None when it has one."""
  node, where = config, name
  for part in field_path.split("."):
    if not hasattr(node, "keys"):
      return f"{where} is {node!r}, not a group of fields"
    keys = list(node.keys())
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f"did you mean {where}.{close[0]}?" if close else f"the fields of {where} are {sorted(keys)}"
      return f"{where} has no field {part!r}; {hint} (rlef_jax/config.py base_config lists them)"
    node, where = node[part], f"{where}.{part}"
  return None
