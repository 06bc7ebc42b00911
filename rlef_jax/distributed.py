"""Multi-process (multi-host) start-up: one `initialize(config)` call before any other JAX call.

A run on several hosts is one JAX program per host ("process"); `jax.distributed.initialize` connects
them through a coordinator (process 0), after which `jax.devices()` lists every device of every
process and one jitted step over a global mesh runs on all of them (each process feeds its own rows of
the global batch, see `local_rows` / `global_batch`). Where the process layout comes from, first match:

1. `config.distributed.cluster == "none"`: one process, nothing to do.
2. explicit fields `config.distributed.{coordinator_address, num_processes, process_id}`: all three.
3. environment `RLEF_COORDINATOR` (`host:port` of process 0), `RLEF_NUM_PROCESSES`,
   `RLEF_PROCESS_ID` (+ optional `RLEF_LOCAL_DEVICE_IDS`, e.g. `0,1`): all three; any GPU/CPU cluster.
4. SLURM (`srun`, `SLURM_NTASKS > 1`): JAX's own SLURM detection (coordinator = first node of the
   step, port from the job id). JAX gives each task one GPU (`SLURM_LOCALID`), so run one task per
   GPU, or one task per node with `local_device_ids` / `RLEF_LOCAL_DEVICE_IDS` listing its GPUs.
5. Cloud TPU VM (libtpu found TPU chips): `jax.distributed.initialize()` with no arguments; JAX reads
   the pod slice's workers from the TPU metadata server. Single-host TPU VMs get one process.
6. otherwise one process: nothing to do.

A layout of one process is a no-op, so the same command runs on a laptop and on a pod slice.
Multi-process CPU (tests, CPU clusters) uses gloo collectives: `jax_cpu_collectives_implementation`
is set to `config.distributed.cpu_collectives` ("gloo", the default of jax 0.10.2; older releases had
no cross-process CPU collectives unless it was set) before the backend starts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
from ml_collections import config_dict

ENV_COORDINATOR = "RLEF_COORDINATOR"
ENV_NUM_PROCESSES = "RLEF_NUM_PROCESSES"
ENV_PROCESS_ID = "RLEF_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "RLEF_LOCAL_DEVICE_IDS"
_SLURM_NEEDED = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                 "SLURM_LOCALID")


def default_config() -> ml_collections.ConfigDict:
  """The `config.distributed` group (see the module docstring for the order of the sources)."""
  c = ml_collections.ConfigDict()
  c.cluster = "auto"  # "auto": fields, then RLEF_* env, SLURM, Cloud TPU | "none": always one process
  c.coordinator_address = config_dict.placeholder(str)  # "host:port" of process 0; None = auto
  c.num_processes = config_dict.placeholder(int)  # processes in the run; None = auto
  c.process_id = config_dict.placeholder(int)  # this process, 0..num_processes-1; None = auto
  c.local_device_ids = config_dict.placeholder(str)  # "0,1": GPUs this process uses; None = JAX's default
  c.initialization_timeout_s = 300  # seconds to wait for every process to reach the coordinator
  c.cpu_collectives = "gloo"  # cross-process CPU collectives: "gloo" | "mpi"
  return c


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the run. `source == "single"` means no distributed initialisation.

  `None` fields are left to JAX's cluster auto-detection (SLURM, Cloud TPU).
  """
  source: str  # "single" | "config" | "env" | "slurm" | "tpu"
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def _parse_int(name: str, text: Any) -> int:
  try:
    return int(str(text).strip())
  except ValueError:
    raise ValueError(f"{name} must be an integer, got {text!r}") from None


def _parse_device_ids(name: str, text: str | None) -> tuple[int, ...] | None:
  if text is None or not str(text).strip():
    return None
  try:
    return tuple(int(part) for part in str(text).split(","))
  except ValueError:
    raise ValueError(f"{name} must be comma-separated device ids such as '0,1', got {text!r}") from None


def _checked(source: str, where: str, names: tuple[str, str, str], coordinator: Any, num: Any,
             pid: Any, device_ids: tuple[int, ...] | None) -> Plan:
  """A `Plan` from three values that must be all set, with one error naming what is wrong."""
  missing = [n for n, v in zip(names, (coordinator, num, pid)) if v is None or v == ""]
  if missing:
    raise ValueError(f"multi-process set-up from {where}: {', '.join(missing)} not set; set all of "
                     f"{', '.join(names)} (or none of them)")
  num, pid = _parse_int(names[1], num), _parse_int(names[2], pid)
  host, sep, port = str(coordinator).rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ValueError(f"{names[0]} must be 'host:port' of process 0, got {coordinator!r}")
  if num < 1 or not 0 <= pid < num:
    raise ValueError(f"{names[2]}={pid} must be in [0, {names[1]}={num}) and {names[1]} >= 1")
  if num == 1:
    return Plan("single")
  return Plan(source, str(coordinator), num, pid, device_ids)


def plan(dist_config: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None,
         on_cloud_tpu: bool | None = None) -> Plan:
  """Decides how this process joins the run (pure: reads only its arguments).

  Args:
    dist_config: `config.distributed` (None or missing fields: their defaults).
    environ: the environment (default `os.environ`).
    on_cloud_tpu: whether this is a Cloud TPU VM (default: what `import jax` detected).
  """
  fields = dict(default_config())
  fields.update({k: v for k, v in dict(dist_config or {}).items() if k in fields})
  unknown = sorted(set(dict(dist_config or {})) - set(fields))
  if unknown:
    raise ValueError(f"config.distributed.{unknown[0]} is not a known field; the fields are "
                     f"{sorted(fields)}")
  environ = os.environ if environ is None else environ
  if on_cloud_tpu is None:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
    on_cloud_tpu = bool(cloud_tpu_init.running_in_cloud_tpu_vm)
  if fields["cluster"] not in ("auto", "none"):
    raise ValueError(f"config.distributed.cluster must be 'auto' or 'none', got {fields['cluster']!r}")
  if fields["cluster"] == "none":
    return Plan("single")

  names = ("coordinator_address", "num_processes", "process_id")
  device_ids = _parse_device_ids("config.distributed.local_device_ids", fields["local_device_ids"])
  if any(fields[n] is not None for n in names):
    return _checked("config", "config.distributed", tuple(f"config.distributed.{n}" for n in names),
                    *(fields[n] for n in names), device_ids)

  if device_ids is None:
    device_ids = _parse_device_ids(ENV_LOCAL_DEVICE_IDS, environ.get(ENV_LOCAL_DEVICE_IDS))
  env_names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
  if any(environ.get(n) for n in env_names):
    return _checked("env", "the environment", env_names, *(environ.get(n) for n in env_names),
                    device_ids)

  if "SLURM_JOB_ID" in environ and "SLURM_NTASKS" in environ:
    if _parse_int("SLURM_NTASKS", environ["SLURM_NTASKS"]) > 1:
      missing = [n for n in _SLURM_NEEDED if n not in environ]
      if missing:
        raise ValueError(f"SLURM job with several tasks but {', '.join(missing)} unset: start the "
                         "trainer with `srun` inside the job (see experiments/gpu/README.md)")
      return Plan("slurm", local_device_ids=device_ids)

  if on_cloud_tpu:
    return Plan("tpu")
  return Plan("single")


def initialize(config: Any = None) -> Plan:
  """Joins the multi-process run described by `config.distributed` and the environment, if any.

  Must run before anything touches a JAX backend (`jax.devices()`, an array, a jit call). Calling
  it again once initialised is a no-op, so tests and notebooks may call the trainer twice.
  """
  dist_config = None
  if config is not None:
    dist_config = config.get("distributed") if hasattr(config, "get") else None
  the_plan = plan(dist_config)
  if the_plan.source == "single" or jax.distributed.is_initialized():
    return the_plan

  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  if xla_bridge.backends_are_initialized():
    raise RuntimeError("rlef_jax.distributed.initialize must run before any JAX computation or "
                       "jax.devices() call; call it first thing in main()")
  collectives = (dist_config or {}).get("cpu_collectives", "gloo")
  if collectives not in ("gloo", "mpi"):
    raise ValueError(f"config.distributed.cpu_collectives must be 'gloo' or 'mpi', got {collectives!r}")
  jax.config.update("jax_cpu_collectives_implementation", collectives)
  timeout = int((dist_config or {}).get("initialization_timeout_s", 300))
  jax.distributed.initialize(
      coordinator_address=the_plan.coordinator_address,
      num_processes=the_plan.num_processes,
      process_id=the_plan.process_id,
      local_device_ids=list(the_plan.local_device_ids) if the_plan.local_device_ids else None,
      initialization_timeout=timeout)
  return the_plan


def local_rows(sharding: jax.sharding.Sharding, global_shape: tuple[int, ...]) -> slice:
  """The rows (dim 0) of a global array that this process's devices hold under `sharding`.

  This is the part of a global batch this process must produce (e.g. which prompts it rolls out)
  and pass to `global_batch`. The rows must be one contiguous block per process, which holds for
  meshes built by `jax.make_mesh` (devices grouped by process).
  """
  starts, stops = [], []
  for index in sharding.addressable_devices_indices_map(tuple(global_shape)).values():
    rows = index[0] if index else slice(None)
    start, stop, _ = rows.indices(global_shape[0])
    starts.append(start)
    stops.append(stop)
  start, stop = min(starts), max(stops)
  covered = np.zeros(global_shape[0], bool)
  for a, b in zip(starts, stops):
    covered[a:b] = True
  if not covered[start:stop].all():
    raise ValueError(f"local_rows: this process holds non-contiguous rows of {global_shape} under "
                     f"{sharding}; build the mesh with jax.make_mesh so devices are grouped by process")
  return slice(start, stop)


def global_batch(local_tree: Any, sharding: jax.sharding.Sharding, global_batch_size: int) -> Any:
  """Global arrays from each process's rows `local_rows(sharding, ...)` of a batch pytree."""
  def one(x):
    x = np.asarray(x)
    global_shape = (global_batch_size,) + x.shape[1:]
    rows = local_rows(sharding, global_shape)
    if x.shape[0] != rows.stop - rows.start:
      raise ValueError(f"global_batch: this process must supply rows {rows.start}:{rows.stop} "
                       f"({rows.stop - rows.start} rows) of the global batch of "
                       f"{global_batch_size}, got {x.shape[0]}")
    return jax.make_array_from_process_local_data(sharding, x, global_shape)
  return jax.tree.map(one, local_tree)


# ---------------------------------------------------------------------------------------------
# Host-side exchange between processes. Every function is collective when there are several
# processes (all processes must call it, in the same order) and costs nothing in one process.


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def host_local(x: Any) -> np.ndarray:
  """This process's rows (dim 0) of `x` as NumPy: all of `x` when it is fully addressable (one
  process, or replicated), else the block `local_rows(x.sharding, x.shape)` assembled from the
  shards on this process's devices."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  rows = local_rows(x.sharding, x.shape)
  out = np.empty((rows.stop - rows.start,) + tuple(x.shape[1:]), x.dtype)
  for shard in x.addressable_shards:
    index = shard.index if shard.index else (slice(None),)
    start, stop, _ = index[0].indices(x.shape[0])
    out[(slice(start - rows.start, stop - rows.start),) + tuple(index[1:])] = np.asarray(shard.data)
  return out


def to_host(x: Any) -> np.ndarray:
  """All of a (possibly multi-process) array as NumPy, on every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def from_host(x: Any, sharding_: jax.sharding.Sharding) -> jax.Array:
  """A global array with `sharding_` from a host array that every process holds whole (the same
  values everywhere, e.g. a gathered batch); each process places only its own shards."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding_, lambda index: x[index])


def replicate(x: Any, sharding_: jax.sharding.Sharding) -> jax.Array:
  """`x` (an array or PRNG key on one device, the same value on every process) placed whole on
  every device of `sharding_` (a replicated sharding over a multi-process mesh)."""
  if not is_multiprocess():
    return jax.device_put(x, sharding_)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    data = from_host(np.asarray(jax.random.key_data(x)), sharding_)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return from_host(np.asarray(x), sharding_)


def allgather(x: Any) -> np.ndarray:
  """Every process's `x` (same shape everywhere) concatenated along dim 0 in process order."""
  x = np.asarray(x)
  if not is_multiprocess():
    return x
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's picklable `obj`, as a list in process order (`[obj]` in one process).

  For small host-side values (evaluation outcomes, iterator states, counts); bulk arrays go through
  `allgather`."""
  if not is_multiprocess():
    return [obj]
  import pickle  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), np.uint8)
  sizes = allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  rows = allgather(padded[None])
  return [pickle.loads(row[:int(n)].tobytes()) for row, n in zip(rows, sizes)]


def agree_max(value: int) -> int:
  """The largest of every process's integer `value` (e.g. a padded width all must use)."""
  if not is_multiprocess():
    return int(value)
  return int(allgather(np.array([int(value)], np.int32)).max())


def agree_equal(value: int, what: str) -> int:
  """`value`, after checking every process has the same one (a clear error instead of a hang)."""
  if not is_multiprocess():
    return int(value)
  values = allgather(np.array([int(value)], np.int32)).tolist()
  if len(set(values)) != 1:
    raise ValueError(f"{what} differs between processes: {values}; it must be the same everywhere")
  return int(value)
