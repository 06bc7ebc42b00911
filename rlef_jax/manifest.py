"""The integrity manifest of a checkpoint directory: `rlef_manifest.json`, the path, size and sha256
of each file, written as orbax finalizes a step or params directory (`rlef_jax.checkpoint` checks it
on restore).

Orbax does not notice flipped bytes in an OCDBT data file, so every step directory and params
directory carries one, written by the primary process (process 0; the other processes' files are in the same
directory on shared storage) and checked on restore.

* **Where it is written.** On a local (or mounted) file system orbax writes a checkpoint into
  `STEP.orbax-checkpoint-tmp` and finalizes it by an atomic rename to `STEP`; on an object store
  (`gs://...`, see `rlef_jax.storage`), which has no rename, it writes `STEP` in place and finalizes
  it by writing `STEP/commit_success.txt` last, and only steps with that file are listed.
  `_ManifestTemporaryPath` / `_ManifestCommitFilePath` (orbax's `temporary_path_class` hook, for
  `CheckpointManager` and `ocp.Checkpointer` alike, async or not) write the manifest after every
  process has written its data and the handlers have finalized (OCDBT merge), just before that rename
  or commit file. So a step that orbax lists always has its manifest: a SIGKILL at any point of a save
  leaves either a temporary (or uncommitted) directory that orbax ignores (the next start resumes
  from the last complete step) or a complete step with its manifest. No crash window lets a finished
  step lack one. (Orbax 0.12 marks `temporary_path_class` deprecated in favour of
  `atomicity_options`, which has no hook; tests/checkpoint_integrity_test.py fails if an orbax
  upgrade stops calling it.)
* **What it covers.** Every file in the directory at that moment except orbax's own top-level
  `_CHECKPOINT_METADATA` (orbax rewrites its commit timestamp afterwards) and `commit_success.txt`
  (written afterwards); both only describe the step, the arrays and the JSON items are all covered.
  Files that are not listed are not checked (nothing orbax restores can come from them: the listed
  OCDBT manifests name the data files they read).
* **Cost.** Hashing reads the whole checkpoint once on save (in orbax's background thread for async
  saves) and once on restore, in parallel threads: about 1 s per GB (measured 0.33 s for 370 MB on
  2 busy cores, from the page cache), so seconds for the 135M model with its Adam states and a
  minute or more for 8B (~100 GB, plus the time to read it from disk).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os

from etils import epath
import orbax.checkpoint as ocp

from rlef_jax import storage

MANIFEST = "rlef_manifest.json"
_MANIFEST_FORMAT = "rlef_manifest/1"
# Orbax's own top-level files, (re)written after the manifest while finalizing (see the docstring).
_UNLISTED = frozenset({MANIFEST, MANIFEST + ".tmp", "_CHECKPOINT_METADATA", "commit_success.txt"})
_HASH_CHUNK = 16 << 20
# The items this module saves: their own directories inside a step get no manifest (the step's covers them).
_ITEM_NAMES = frozenset({"state", "extra", "params", "metadata"})


def _sha256(path: epath.Path) -> str:
  digest = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _hash_all(paths: list[epath.Path]) -> list[str]:
  """sha256 of each file, in threads (hashlib releases the GIL on large buffers)."""
  workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return list(pool.map(_sha256, paths))


def _listed_files(directory: epath.Path) -> list[str]:
  """Relative paths of the files a manifest of `directory` covers, sorted."""
  return [rel for rel in storage.files_under(directory) if rel not in _UNLISTED]


def write(directory: str | os.PathLike) -> None:
  """Writes `directory/rlef_manifest.json` (path, size, sha256 of each file), atomically."""
  directory = storage.path(directory)
  rels = _listed_files(directory)
  paths = [directory / r for r in rels]
  sizes = [storage.size(p) for p in paths]
  digests = _hash_all(paths)
  manifest = {"format": _MANIFEST_FORMAT,
              "files": {r: {"size": n, "sha256": h} for r, n, h in zip(rels, sizes, digests)}}
  storage.write_atomic(directory / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


class NoManifest(Exception):
  """The directory has no manifest."""


def problem(directory: str | os.PathLike) -> str | None:
  """Why `directory` does not match its manifest (the first bad file), or None when it does.

  Raises `NoManifest` when there is no manifest."""
  directory = storage.path(directory)
  path = directory / MANIFEST
  if not path.exists():
    raise NoManifest(directory)
  try:
    manifest = json.loads(path.read_text())
    files = manifest["files"]
    if manifest.get("format") != _MANIFEST_FORMAT or not isinstance(files, dict):
      raise ValueError(f"unknown format {manifest.get('format')!r}")
    entries = sorted((str(rel), int(e["size"]), str(e["sha256"])) for rel, e in files.items())
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    return f"{MANIFEST}: unreadable ({e})"
  for rel, size, _ in entries:  # cheap checks first: a truncated or missing file needs no hashing
    full = directory / rel
    if not full.exists() or full.is_dir():
      return f"{rel}: missing"
    actual = storage.size(full)
    if actual != size:
      return f"{rel}: size {actual} bytes, expected {size}"
  digests = _hash_all([directory / rel for rel, _, _ in entries])
  for (rel, _, expected), actual in zip(entries, digests):
    if actual != expected:
      return f"{rel}: checksum mismatch (sha256 {actual[:12]}..., expected {expected[:12]}...)"
  return None


class _ManifestTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's atomic-rename temporary directory, with the manifest written just before the rename.

  Orbax calls `finalize` of a step's directory on the primary process only, once every process's
  data is written and the handlers are finalized. `CheckpointManager` also uses this class for the
  items inside a step (`STEP.orbax-checkpoint-tmp/state`): those get no manifest of their own, the
  step's covers them."""

  async def finalize(self, *args, **kwargs):
    if ocp.path.atomicity.TMP_DIR_SUFFIX not in self.get_final().parent.name:
      write(self.get())
    return await super().finalize(*args, **kwargs)


class _ManifestCommitFilePath(ocp.path.atomicity.CommitFileTemporaryPath):
  """Orbax's object-store finalization (the step written in place, `commit_success.txt` last), with
  the manifest written just before the commit file. Items (`STEP/state`, `DIR/params`, ...) are
  finalized first and get no manifest of their own."""

  async def finalize(self, *args, **kwargs):
    if self.get_final().name not in _ITEM_NAMES:
      write(self.get())
    return await super().finalize(*args, **kwargs)


def temporary_path_class(directory: epath.Path) -> type:
  """Orbax's `temporary_path_class` for checkpoints under `directory` (local or an object store)."""
  return _ManifestCommitFilePath if storage.is_url(directory) else _ManifestTemporaryPath
