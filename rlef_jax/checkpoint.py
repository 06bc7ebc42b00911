"""Orbax checkpoints: params-only directories and the trainer's train-state checkpoints.

Two formats, both plain orbax composites:

* A **params directory** (`save_params` / `restore_params`): item `params` (a standard pytree of
  arrays) and item `metadata` (a JSON dict, e.g. the HF config the weights came from). This is what
  `rlef_jax.convert` writes and what `config.model.init_checkpoint` may point at.
* A **train-state checkpoint** (`Checkpointer`): one step directory per saved step under a root,
  items `state` (params, optimizer state, step, RNG, ...: any pytree of arrays) and `extra` (a JSON
  dict, e.g. the data iterator's state). Saves are asynchronous, the last `max_to_keep` are kept.
  Resuming restores everything the run needs to continue exactly (params, optimizer state, step,
  RNG and data position: a resume that drops one of them silently changes the run).

Restores always take the target layout from the caller (abstract arrays carrying shardings), never
from the saved files, so a checkpoint written on one mesh shape restores onto another.

Integrity (issue 14): every step directory and params directory carries `rlef_manifest.json`
(path, size and sha256 of each file), written just before orbax finalizes it and checked on restore;
`rlef_jax.manifest` says how and what it covers. Here: what is checked on restore
(`Checkpointer.restore`: the step train resumes from; `Checkpointer.restore_part`: the policy
evaluate reads; `restore_params`: reference params, converted checkpoints): every listed file is
present, has its size and its sha256. The first bad file raises `errors.InputError` naming the
directory, the file and why, and, for a train step, the newest older step that verifies, with the
directory to delete to resume from it. Nothing falls back silently: the user decides. Process 0
verifies and tells the others (one read of the checkpoint, not one per process). Checkpoints written
before manifests existed restore with a warning (unverified); a train step without a manifest while
an older step has one was written with manifests and lost it: refused like a corrupt one.
`config.train.verify_checkpoints = False` skips the check on restore (manifests are still written).

Out of space (issue 14): a save that fails because the disk is full (or a quota or file size limit is
reached) never becomes a step (orbax renames only finished saves), so the steps before it stay
complete and restorable. An asynchronous save fails in orbax's background thread and surfaces at the
next `save` or `wait`; either raises `errors.OutOfSpaceError` naming the file and the step that was
not written and the newest complete one (which `rlef_jax.cli` prints as one line). The failure's
aftermath is kept off stderr (`_quiet_out_of_space_logs`): orbax's and asyncio's log records that
carry an out-of-space failure, and the 'Event loop is closed' of each tensorstore write orbax left in
flight; the raised error reports the failure once.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import sys
from typing import Any, Callable, Mapping

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from rlef_jax import distributed
from rlef_jax import errors
from rlef_jax import manifest as manifest_lib
from rlef_jax import storage

_BYTES_TAG = "__rlef_bytes_b64__"

# The manifest's names as this module's (tests and callers read them here).
MANIFEST = manifest_lib.MANIFEST
write_manifest = manifest_lib.write
_manifest_problem = manifest_lib.problem
_NoManifest = manifest_lib.NoManifest
_temporary_path_class = manifest_lib.temporary_path_class


def _on_process_0(fn: Callable[[], Any]) -> Any:
  """`fn()` run by process 0 only, its result given to every process (a collective call)."""
  result = fn() if jax.process_index() == 0 else None
  return distributed.allgather_objects(result)[0]


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"[checkpoint] warning: {message}", file=sys.stderr, flush=True)


class _DropOutOfSpaceTracebacks(logging.Filter):
  """Drops log records carrying an out-of-space failure (see the module docstring): the caller gets
  that failure raised, once, naming the file."""

  def filter(self, record: logging.LogRecord) -> bool:
    failure = record.exc_info[1] if record.exc_info else None
    return failure is None or errors.out_of_space(failure) is None


def _is_closed_loop_callback(unraisable: Any) -> bool:
  """An asyncio callback that reached a closed event loop: tensorstore writes still in flight when a
  failed save's loop was closed (orbax does not cancel them)."""
  tb = unraisable.exc_traceback
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed" and tb is not None
          and os.path.basename(os.path.dirname(tb.tb_frame.f_code.co_filename)) == "asyncio")


def _quiet_out_of_space_logs() -> None:
  """Keeps a failed save's aftermath off stderr, where its one error line should be: orbax logs the
  failure from each failed thread (absl), asyncio logs the failure of each write task it drops, and
  each write completing after the failure prints 'Event loop is closed' (sys.unraisablehook)."""
  for name in ("absl", "asyncio"):  # orbax logs through absl.logging
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropOutOfSpaceTracebacks) for f in logger.filters):
      logger.addFilter(_DropOutOfSpaceTracebacks())
  if not getattr(sys.unraisablehook, "_rlef_quiet", False):
    previous = sys.unraisablehook

    def hook(unraisable):
      if not _is_closed_loop_callback(unraisable):
        previous(unraisable)
    hook._rlef_quiet = True
    sys.unraisablehook = hook


def _encode_json(value: Any) -> Any:
  """Makes bytes (e.g. a Grain iterator state) JSON-able by tagging them as base64 strings."""
  if isinstance(value, (bytes, bytearray)):
    return {_BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
  if isinstance(value, Mapping):
    return {str(k): _encode_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_encode_json(v) for v in value]
  return value


def _decode_json(value: Any) -> Any:
  if isinstance(value, dict):
    if set(value) == {_BYTES_TAG}:
      return base64.b64decode(value[_BYTES_TAG])
    return {k: _decode_json(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_decode_json(v) for v in value]
  return value


def _check_json(name: str, value: Any) -> None:
  if not isinstance(value, Mapping):
    raise TypeError(f"{name} must be a dict of JSON-able values, got {type(value).__name__}")
  try:
    json.dumps(_encode_json(value))
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must hold only JSON-able values (dict/list/str/int/float/bool/None/"
                    f"bytes): {e}") from None


def _default_sharding() -> jax.sharding.Sharding:
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _abstract_from_metadata(tree_metadata, shardings) -> Any:
  """Abstract arrays with the saved shapes/dtypes, placed on `shardings` (or the default device)."""
  if shardings is None:
    return jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_default_sharding()),
        tree_metadata)
  saved = jax.tree_util.tree_structure(tree_metadata)
  given = jax.tree_util.tree_structure(shardings)
  if saved != given:
    raise ValueError("restore_params: `shardings` must have the same tree structure as the saved "
                     f"params.\nsaved: {saved}\ngiven: {given}")
  return jax.tree.map(
      lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), tree_metadata, shardings)


def _params_checkpointer(directory: epath.Path) -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      params=ocp.StandardCheckpointHandler(), metadata=ocp.JsonCheckpointHandler()),
      temporary_path_class=_temporary_path_class(directory))


def save_params(directory: str | os.PathLike, params: Any, *, metadata: dict) -> None:
  """Writes `params` and a JSON `metadata` dict to a new params directory (blocks until written)."""
  directory = storage.path(directory)
  if directory.exists():
    raise FileExistsError(f"save_params: {directory} already exists; choose a new directory or "
                          "delete it first")
  _check_json("save_params metadata", metadata)
  _quiet_out_of_space_logs()
  with (errors.writing(os.fspath(directory), f"{directory} was not written"),
        _params_checkpointer(directory) as ckptr):
    ckptr.save(directory, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        metadata=ocp.args.JsonSave(_encode_json(metadata))))


def restore_params(directory: str | os.PathLike, *, shardings: Any = None,
                   verify: bool = True) -> tuple[Any, dict]:
  """Reads a params directory written by `save_params`.

  Args:
    directory: the params directory.
    shardings: a pytree of `jax.sharding.Sharding` with the params' structure (e.g. from
      `rlef_jax.sharding.param_shardings`); None puts every array on the first local device.
    verify: check the files against the directory's manifest first (`errors.InputError` if one
      differs; see the module docstring).

  Returns:
    `(params, metadata)`: arrays with the saved dtypes on the requested shardings, and the JSON dict.
  """
  directory = _params_directory(directory)
  if verify:
    _verify_params_directory(directory)
  with _params_checkpointer(directory) as ckptr:
    tree_metadata = ckptr.metadata(directory).item_metadata["params"].tree
    abstract = _abstract_from_metadata(tree_metadata, shardings)
    restored = ckptr.restore(directory, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract),
        metadata=ocp.args.JsonRestore()))
  return restored["params"], _decode_json(restored["metadata"])


def params_metadata(directory: str | os.PathLike) -> Any:
  """The saved params' tree of array metadata (`.shape`, `.dtype`), read without the arrays."""
  directory = _params_directory(directory)
  with _params_checkpointer(directory) as ckptr:
    return ckptr.metadata(directory).item_metadata["params"].tree


def _params_directory(directory: str | os.PathLike) -> epath.Path:
  directory = storage.path(directory)
  if not (directory / "params").is_dir():
    raise errors.MissingPathError(
        f"{directory} is not a params directory (no 'params' item); write one with "
        "rlef_jax.checkpoint.save_params or `python -m rlef_jax.convert`")
  return directory


def _verify_params_directory(directory: epath.Path) -> None:
  def check():
    try:
      return "bad", _manifest_problem(directory)
    except _NoManifest:
      return "none", None
  kind, problem = _on_process_0(check)
  if kind == "none":
    _warn(f"{directory} has no {MANIFEST} (written before checkpoints carried checksums): "
          "restored unverified")
  elif problem:
    raise errors.InputError(f"params directory {directory} is corrupt: {problem}; write it again from "
                            "its source (e.g. `python -m rlef_jax.convert` for converted weights)")


def abstract_like(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with shardings) for a pytree of arrays: a restore target."""
  def one(x):
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


class Checkpointer:
  """The trainer's checkpoints: train-state pytree + JSON `extra`, async, keeps the last N.

  `state` may hold params, optax state, the step, new-style PRNG keys (`jax.random.key`) and any
  other arrays. `extra` is a JSON-able dict; `bytes` values (a Grain iterator state) are allowed.
  """

  def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 3,
               async_save: bool = True, keep_period: int | None = None, verify: bool = True):
    """`max_to_keep` most recent checkpoints are kept, and besides them every step that is a
    multiple of `keep_period` (the evaluated steps, for checkpoint selection). Every step carries a
    manifest of its files' checksums; `verify` checks it on `restore` (see the module docstring)."""
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"Checkpointer max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
    self.directory = storage.path(directory)
    self.verify = verify
    self._saving: int | None = None  # the step of the last save started (may still be running)
    _quiet_out_of_space_logs()
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, keep_period=keep_period or None,
            enable_async_checkpointing=async_save, create=True,
            temporary_path_class=_temporary_path_class(self.directory)),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: Any, extra: dict | None = None) -> None:
    """Starts saving `state` and `extra` as `step`; returns once arrays are copied off device."""
    extra = {} if extra is None else extra
    _check_json("Checkpointer.save extra", extra)
    self.wait()  # the previous save's failure, if any, is reported as that step's
    self._saving = int(step)
    with self._out_of_space_named():
      saved = self._manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(_encode_json(extra))))
    if not saved:
      raise ValueError(f"Checkpointer.save: step {step} was not saved (a checkpoint for it "
                       f"exists already or it is older than the latest, {self.latest_step()})")

  def latest_step(self) -> int | None:
    """The newest completed step, or None when the directory holds no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
    """Restores `step` (None: the latest) onto `abstract_state`'s shapes, dtypes and shardings.

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with `sharding` set (e.g. from
    `jax.eval_shape` plus `rlef_jax.sharding` helpers, or `abstract_like(state)`); it may use a
    different mesh than the one the checkpoint was saved from. With `verify`, the step's files are
    first checked against its manifest: `errors.InputError` names the first bad file and offers the
    newest older step that verifies.
    """
    step = self._verified_step(step)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return restored["state"], _decode_json(restored["extra"])

  def restore_part(self, step: int | None, name: str, abstract: Any) -> Any:
    """Only the field `name` of the saved state (e.g. `"policy_params"` of a `ppo.TrainState`) of
    `step` (None: the latest), onto `abstract`'s shapes, dtypes and shardings: the rest of the state
    (value model, optimizer moments) is neither read nor allocated -- an evaluation of an 8B policy
    holds the policy alone, not the whole train state. Verified like `restore`."""
    step = self._verified_step(step)
    # A partial restore silently hands back the abstract leaves it did not find, and drops saved
    # leaves the target lacks: compare the key paths with the saved tree's first.
    saved = self._manager.item_metadata(step)["state"]
    saved = getattr(saved, "tree", saved)
    where = f"checkpoint {self.step_directory(step)}"
    if name not in saved:
      raise errors.InputError(f"{where}: its state has no {name!r} (it holds {sorted(saved)})")
    paths = lambda tree: {jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_leaves_with_path(tree)}
    missing, extra = sorted(paths(abstract) - paths(saved[name])), sorted(paths(saved[name]) - paths(abstract))
    if missing or extra:
      raise errors.InputError(f"{where}: its {name!r} differs from the model's: missing {missing[:3]}, "
                              f"unexpected {extra[:3]} (config.model differs from the run's?)")
    target = {name: abstract}
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as reader:
      restored = reader.restore(self.step_directory(step) / "state", args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    return restored[name]

  def _verified_step(self, step: int | None) -> int:
    """`step` (None: the latest) after checking that it exists and, with `verify`, its manifest."""
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise errors.MissingPathError(f"Checkpointer.restore: no checkpoint in {self.directory}")
    if step not in self._manager.all_steps():
      raise errors.MissingPathError(f"Checkpointer.restore: no checkpoint for step {step} in "
                                    f"{self.directory}; available steps: {self.all_steps()}")
    if self.verify:
      self.check(step)
    return int(step)

  def step_directory(self, step: int) -> epath.Path:
    return self.directory / str(int(step))

  def check(self, step: int) -> None:
    """Raises `errors.InputError` unless `step`'s files match its manifest (see the module
    docstring); a collective call in multi-process runs (process 0 reads, all raise)."""
    kind, message = _on_process_0(lambda: self._check_on_this_process(int(step)))
    if kind == "legacy":
      _warn(message)
    elif kind == "bad":
      raise errors.InputError(message)

  def _step_status(self, step: int, manifests_below: bool) -> tuple[str, str | None]:
    """("ok" | "legacy" | "bad", problem) of one step."""
    try:
      problem = _manifest_problem(self.step_directory(step))
    except _NoManifest:
      if manifests_below:  # written by this code (which always writes one), then lost it
        return "bad", f"{MANIFEST}: missing"
      return "legacy", None
    return ("bad", problem) if problem else ("ok", None)

  def _check_on_this_process(self, step: int) -> tuple[str, str | None]:
    steps = self.all_steps()
    has_manifest = {s: (self.step_directory(s) / MANIFEST).exists() for s in steps}
    below = lambda s: any(has_manifest[t] for t in steps if t < s)
    step_dir = self.step_directory(step)
    kind, problem = self._step_status(step, below(step))
    if kind == "legacy":
      return kind, (f"checkpoint {step_dir} has no {MANIFEST} (written before checkpoints carried "
                    "checksums): restored unverified")
    if kind == "ok":
      return kind, None
    for older in reversed([s for s in steps if s < step]):
      older_kind, _ = self._step_status(older, below(older))
      if older_kind == "bad":
        continue
      how = "verifies" if older_kind == "ok" else f"has no {MANIFEST} (unverified)"
      if step == steps[-1]:
        doomed = " ".join(str(self.step_directory(s)) for s in steps if s > older)
        offer = f"the previous checkpoint, step {older}, {how}: delete {doomed} to resume from it"
      else:
        offer = f"the previous checkpoint, step {older}, {how}: restore that step instead"
      break
    else:
      offer = "no older checkpoint verifies: restore its files from a copy, or start the run over"
    return kind, f"checkpoint {step_dir} is corrupt: {problem}; {offer}"

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk; `errors.OutOfSpaceError` if one ran out
    of space."""
    with self._out_of_space_named():
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _out_of_space_named(self):
    """Re-raises a save's out-of-space failure naming the step lost and the newest complete one."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - only out-of-space failures are changed
      found = errors.out_of_space(e)
      if found is None:
        raise
      complete = [s for s in self._manager.all_steps() if s != self._saving]
      kept = (f"the newest complete checkpoint, step {max(complete)}, is intact and a rerun resumes "
              "from it" if complete else "no complete checkpoint was written before it")
      note = f"checkpoint step {self._saving} in {self.directory} was not saved; {kept}"
      raise errors.OutOfSpaceError(found.errno, found.filename or os.fspath(self.directory), note) from e

  def close(self) -> None:
    with self._out_of_space_named():
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
