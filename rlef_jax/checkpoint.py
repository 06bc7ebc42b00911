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
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from rlef_jax import errors

_BYTES_TAG = "__rlef_bytes_b64__"


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


def _params_checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      params=ocp.StandardCheckpointHandler(), metadata=ocp.JsonCheckpointHandler()))


def save_params(directory: str | os.PathLike, params: Any, *, metadata: dict) -> None:
  """Writes `params` and a JSON `metadata` dict to a new params directory (blocks until written)."""
  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory):
    raise FileExistsError(f"save_params: {directory} already exists; choose a new directory or "
                          "delete it first")
  _check_json("save_params metadata", metadata)
  with _params_checkpointer() as ckptr:
    ckptr.save(directory, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params),
        metadata=ocp.args.JsonSave(_encode_json(metadata))))


def restore_params(directory: str | os.PathLike, *, shardings: Any = None) -> tuple[Any, dict]:
  """Reads a params directory written by `save_params`.

  Args:
    directory: the params directory.
    shardings: a pytree of `jax.sharding.Sharding` with the params' structure (e.g. from
      `rlef_jax.sharding.param_shardings`); None puts every array on the first local device.

  Returns:
    `(params, metadata)`: arrays with the saved dtypes on the requested shardings, and the JSON dict.
  """
  directory = _params_directory(directory)
  with _params_checkpointer() as ckptr:
    tree_metadata = ckptr.metadata(directory).item_metadata["params"].tree
    abstract = _abstract_from_metadata(tree_metadata, shardings)
    restored = ckptr.restore(directory, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract),
        metadata=ocp.args.JsonRestore()))
  return restored["params"], _decode_json(restored["metadata"])


def params_metadata(directory: str | os.PathLike) -> Any:
  """The saved params' tree of array metadata (`.shape`, `.dtype`), read without the arrays."""
  directory = _params_directory(directory)
  with _params_checkpointer() as ckptr:
    return ckptr.metadata(directory).item_metadata["params"].tree


def _params_directory(directory: str | os.PathLike) -> str:
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(os.path.join(directory, "params")):
    raise errors.MissingPathError(
        f"{directory} is not a params directory (no 'params' item); write one with "
        "rlef_jax.checkpoint.save_params or `python -m rlef_jax.convert`")
  return directory


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
               async_save: bool = True, keep_period: int | None = None):
    """`max_to_keep` most recent checkpoints are kept, and besides them every step that is a
    multiple of `keep_period` (the evaluated steps, for checkpoint selection)."""
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"Checkpointer max_to_keep must be >= 1 or None (keep all), got {max_to_keep}")
    self.directory = os.path.abspath(os.fspath(directory))
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, keep_period=keep_period or None,
            enable_async_checkpointing=async_save, create=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "extra": ocp.JsonCheckpointHandler()})

  def save(self, step: int, state: Any, extra: dict | None = None) -> None:
    """Starts saving `state` and `extra` as `step`; returns once arrays are copied off device."""
    extra = {} if extra is None else extra
    _check_json("Checkpointer.save extra", extra)
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
    different mesh than the one the checkpoint was saved from.
    """
    self.wait()
    if step is None:
      step = self.latest_step()
      if step is None:
        raise errors.MissingPathError(f"Checkpointer.restore: no checkpoint in {self.directory}")
    if step not in self._manager.all_steps():
      raise errors.MissingPathError(f"Checkpointer.restore: no checkpoint for step {step} in "
                                    f"{self.directory}; available steps: {self.all_steps()}")
    restored = self._manager.restore(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), extra=ocp.args.JsonRestore()))
    return restored["state"], _decode_json(restored["extra"])

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
