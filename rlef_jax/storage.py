"""Where a run's files live: a local directory or an object-store URL, through `etils.epath`.

Every file under a workdir -- train checkpoints, the reference params, metrics, evaluation records,
`best.json` -- is reached through `path()`, so `--workdir=gs://bucket/run` (or `s3://`, `az://`) is
used like a local directory: orbax writes the checkpoint arrays through TensorStore's own drivers
and everything else goes through epath's backend for the scheme (fsspec: install `gcsfs`, `s3fs` or
`adlfs`; or TensorFlow's `tf.io.gfile`). `file://` URLs name local paths.

Object stores differ from local disks in two ways this module hides:

* **No rename.** `write_atomic` writes a file through a temporary name and an atomic rename on a
  local disk, and as a single object upload on a store (an upload appears whole or not at all).
* **No directories.** A "directory" is a prefix of some object: `makedirs` may do nothing, and
  `files_under` lists what is under a prefix by listing, not by `os.walk`.

Checked offline against a local GCS double (tests/gcs_double.py: TensorStore's GCS driver over HTTP
and an fsspec `gs://` file system over the same objects), through these same code paths.
"""
from __future__ import annotations

import os
from typing import Union

from etils import epath

from rlef_jax import errors

URL_SCHEMES = ("gs", "s3", "az")  # what etils.epath resolves (besides local paths)

PathLike = Union[str, os.PathLike]


def is_url(path: PathLike) -> bool:
  """True for `scheme://...` (after `file://` is taken as a local path)."""
  text = os.fspath(path)
  return "://" in text and not text.startswith("file://")


def path(spec: PathLike) -> epath.Path:
  """The `epath.Path` of a workdir or a file in it: URLs of `URL_SCHEMES` as given, `file://` URLs
  and local paths made absolute (a relative workdir stays where it was started even if the process
  changes directory). Another scheme is a `errors.ConfigError` naming it."""
  if isinstance(spec, epath.Path) and not isinstance(spec, epath.gpath.PosixGPath):
    return spec  # another epath class (e.g. a resource path): trust it
  text = os.fspath(spec)
  if text.startswith("file://"):
    text = text[len("file://"):]
    if not text.startswith("/"):
      raise errors.ConfigError(f"{spec}: a file:// URL needs an absolute path (file:///abs/path)")
  elif "://" in text:
    scheme = text.split("://", 1)[0]
    if scheme not in URL_SCHEMES:
      raise errors.ConfigError(f"{spec}: unsupported URL scheme {scheme!r}; use a local path or "
                               + ", ".join(f"{s}://" for s in URL_SCHEMES))
    if not text[len(scheme) + 3:].strip("/"):
      raise errors.ConfigError(f"{spec}: the URL names no bucket")
    return epath.Path(text.rstrip("/"))
  return epath.Path(os.path.abspath(os.path.expanduser(text)))


def makedirs(directory: PathLike) -> epath.Path:
  """Creates `directory` and its parents (nothing to create on an object store); returns its path."""
  directory = path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  return directory


def write_atomic(target: PathLike, data: Union[str, bytes]) -> None:
  """Writes `target` so that readers see the old content or the new, never part of it: a temporary
  file renamed over it on a local disk, one upload on an object store."""
  target = path(target)
  mode = "w" if isinstance(data, str) else "wb"
  if is_url(target):
    with errors.writing(os.fspath(target)), target.open(mode) as f:
      f.write(data)
    return
  tmp = target.parent / (target.name + ".tmp")
  with errors.writing(os.fspath(target)), open(tmp, mode) as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, target)


def size(file: PathLike) -> int:
  return int(path(file).stat().length)


def files_under(directory: PathLike) -> list[str]:
  """Relative paths ('/'-separated, sorted) of the files under `directory`, found by listing
  (`Path.walk` of an fsspec store yields roots without their scheme)."""
  top = path(directory)
  found, pending = [], [(top, "")]
  while pending:
    here, prefix = pending.pop()
    for child in here.iterdir():
      rel = prefix + child.name
      if child.is_dir():
        pending.append((child, rel + "/"))
      else:
        found.append(rel)
  return sorted(found)
