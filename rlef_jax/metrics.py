"""Training metrics: console progress, TensorBoard event files and a JSONL log, plus phase timers.

One `MetricsWriter.write(step, scalars)` per training step sends the same scalar dict to three sinks:

* the console: a tqdm progress bar (step/total, a few key metrics, ETA) when stdout is a terminal,
  plain periodic log lines otherwise (cluster logs, `nohup`, CI);
* TensorBoard event files under `<workdir>/tensorboard` (tensorboardX), openable with
  `tensorboard --logdir <workdir>/tensorboard`;
* `<workdir>/metrics.jsonl`: one JSON object per step, `{"step": s, "<name>": value, ...}`, flushed on
  every write so a crash loses nothing already logged.

Resume (a resumed run must log exactly what an uninterrupted one does): a run restored from the
checkpoint of step `k` passes `resume_step=k`. Lines with `step > k` are dropped from `metrics.jsonl`
and TensorBoard is told to purge events with `step > k`, so the logs of an interrupted-and-resumed run match an uninterrupted one. Steps are
numbered by the number of updates done: the first write of a fresh run is step 1, the first write
after resuming from step `k` is step `k + 1`.

Object-store workdirs (`gs://bucket/run`, see `rlef_jax.storage`): objects cannot be appended to,
so the writer keeps the three files in a local staging directory (`local_metrics_dir`) and uploads
`metrics.jsonl` and the event files, whole, to `<workdir>/` at most every `mirror_every_s` seconds
and on `close`. A resumed run on a fresh host starts from the workdir's `metrics.jsonl`.
TensorBoard reads the workdir's `tensorboard/` directly (`tensorboard --logdir gs://bucket/run/tensorboard`).

Multi-host: only one process should write (`enabled` defaults to `jax.process_index() == 0`); the
others accept writes and do nothing. Metrics returned by a jitted step on a multi-host mesh are
replicated global arrays that no single process fully addresses; `to_scalar` reads the local replica.
What to log follows verl's list (rewards, returns, values, advantages, explained variance, KL,
clip fractions, entropy, lengths, turns, phase times, sampler-vs-trainer log-prob gap); the trainer
chooses the names.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import sys
import time
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np

from rlef_jax import errors
from rlef_jax import storage

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def to_scalar(name: str, value: Any) -> int | float:
  """A Python int/float from a Python, numpy or jax scalar (bools become ints).

  Raises a `ValueError` naming `name` for anything that is not a single number.
  """
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    if not value.is_fully_replicated:
      raise ValueError(f"metric {name!r} is a jax.Array sharded across processes; reduce it inside "
                       "the jitted step (e.g. jnp.mean) so that it is replicated before logging")
    value = value.addressable_data(0)
  if isinstance(value, (bool, int, float)) and not isinstance(value, np.generic):
    return int(value) if isinstance(value, bool) else value
  try:
    array = np.asarray(value)
  except Exception as e:  # noqa: BLE001 - any conversion failure is the same user error
    raise ValueError(f"metric {name!r} must be a number, got {type(value).__name__}: {e}") from None
  if array.size != 1 or array.dtype.kind not in "biuf":
    raise ValueError(f"metric {name!r} must be a single real number, got dtype {array.dtype} and "
                     f"shape {array.shape}; log a reduction (e.g. summarize()) instead")
  item = array.reshape(()).item()
  return int(item) if array.dtype.kind in "biu" else float(item)


def summarize(values: Iterable[Any], prefix: str | None = None) -> dict[str, float]:
  """Mean, min and max of a per-episode list (e.g. rewards, turns, response lengths).

  Keys are `mean`/`min`/`max`, or `<prefix>/mean` etc. An empty list gives an empty dict: a metric
  without samples this step is left out rather than logged as NaN.
  """
  array = np.asarray([to_scalar(prefix or "value", v) for v in values], dtype=np.float64)
  if array.size == 0:
    return {}
  stats = {"mean": float(array.mean()), "min": float(array.min()), "max": float(array.max())}
  return {f"{prefix}/{k}" if prefix else k: v for k, v in stats.items()}


class Timers:
  """Wall-clock seconds accumulated per named phase: `with timers("rollout"): ...`.

  `report()` returns `{"time/<phase>": seconds}` for every phase timed since the last reset. JAX
  dispatches asynchronously: block on a phase's outputs (`jax.block_until_ready`) inside its `with`
  block, or its time lands in whichever later phase first waits for the result.
  """

  def __init__(self):
    self._seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, phase: str) -> Iterator[None]:
    if not phase or not isinstance(phase, str):
      raise ValueError(f"timer phase must be a non-empty string, got {phase!r}")
    start = time.perf_counter()
    try:
      yield
    finally:
      self._seconds[phase] += time.perf_counter() - start

  def report(self, reset: bool = True) -> dict[str, float]:
    out = {f"time/{phase}": seconds for phase, seconds in self._seconds.items()}
    if reset:
      self._seconds.clear()
    return out


def local_metrics_dir(workdir: str | os.PathLike, metrics_dir: str = "") -> str:
  """Where a run's metrics are written first: `metrics_dir` if set, else `workdir` if it is local,
  else `~/rlef_metrics/<bucket>/<path>` for an object-store workdir such as `gs://bucket/path` (the
  writer's staging directory; appending to a JSONL file and flushing event files every step needs a
  local file system)."""
  if metrics_dir:
    if storage.is_url(metrics_dir):
      raise ValueError(f"the metrics directory must be local, got {metrics_dir!r}")
    return str(metrics_dir)
  if not storage.is_url(workdir):
    return os.fspath(workdir)
  scheme, rest = os.fspath(workdir).split("://", 1)
  parts = [p for p in rest.split("/") if p and p not in (".", "..")]
  if not parts:
    raise ValueError(f"cannot derive a metrics directory from workdir {workdir!r}")
  return os.path.join(os.path.expanduser("~"), "rlef_metrics", scheme, *parts)


def _truncate_jsonl(path: str, resume_step: int) -> None:
  """Keeps the lines of `path` with `step <= resume_step` (atomically, via a temporary file)."""
  if not os.path.exists(path):
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        step = json.loads(line)["step"]
      except (ValueError, KeyError, TypeError):
        if line.endswith("\n"):
          raise ValueError(f"{path}:{line_no} is not a metrics line with a 'step' field; move the "
                           "file away or pick a fresh workdir") from None
        continue  # A last line cut off by a crash mid-write.
      if step <= resume_step:
        kept.append(line if line.endswith("\n") else line + "\n")
  tmp = path + ".tmp"
  with errors.writing(tmp), open(tmp, "w", encoding="utf-8") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _write_all(f: IO[bytes], data: bytes) -> None:
  """Writes `data` to an unbuffered file, continuing after partial writes."""
  view = memoryview(data)
  while view:
    view = view[f.write(view):]


def _format_value(value: int | float) -> str:
  if isinstance(value, int):
    return str(value)
  return f"{value:.4g}"


def _format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class MetricsWriter:
  """Writes each step's scalars to the console, TensorBoard and `<workdir>/metrics.jsonl`.

  Args:
    workdir: a local directory (created if missing) or an object-store URL (written through a local
      staging directory, see the module docstring).
    total_steps: the run's number of steps (progress bar and ETA).
    enabled: whether this process writes; default `jax.process_index() == 0`, resolved when the
      writer is built (after `rlef_jax.distributed.initialize`).
    resume_step: the step of the restored checkpoint (0 for a fresh run); logged steps after it are
      dropped.
    console_keys: metrics shown on the console; default the first four of each step's dict.
    log_every: when stdout is not a terminal, print a line every this many steps (and the last).
    stream: console stream (default `sys.stdout`); a TTY gets a tqdm bar, anything else plain lines.
  """

  def __init__(self, workdir: str, *, total_steps: int, enabled: bool | None = None,
               resume_step: int = 0, console_keys: Sequence[str] | None = None,
               log_every: int = 10, stream: IO[str] | None = None, mirror_every_s: float = 30.0):
    if enabled is None:
      enabled = jax.process_index() == 0
    if not isinstance(total_steps, int) or total_steps < 1:
      raise ValueError(f"MetricsWriter: total_steps must be a positive int, got {total_steps!r}")
    if not isinstance(resume_step, int) or not 0 <= resume_step <= total_steps:
      raise ValueError(f"MetricsWriter: resume_step must be an int in [0, total_steps={total_steps}], "
                       f"got {resume_step!r}")
    if not isinstance(log_every, int) or log_every < 1:
      raise ValueError(f"MetricsWriter: log_every must be a positive int, got {log_every!r}")
    self.enabled = enabled
    self.workdir = storage.path(workdir)
    self.remote = storage.is_url(self.workdir)
    self.mirror_every_s = mirror_every_s
    self._mirrored_at = -math.inf
    self.total_steps = total_steps
    self.console_keys = tuple(console_keys) if console_keys is not None else None
    self.log_every = log_every
    self._last_step = resume_step
    self._jsonl = self._tb = self._bar = None
    if not enabled:
      return
    local = local_metrics_dir(self.workdir)
    os.makedirs(local, exist_ok=True)
    self.jsonl_path = os.path.join(local, JSONL_NAME)
    if self.remote:
      self._fetch_jsonl()
    _truncate_jsonl(self.jsonl_path, resume_step)
    # Unbuffered: each line goes to the OS at once, and a write that fails (a full disk) leaves no
    # buffered bytes behind for a later flush, or the interpreter's exit, to fail on again.
    self._jsonl = open(self.jsonl_path, "ab", buffering=0)

    import tensorboardX  # Imported here: non-writing processes never need it.
    self.tensorboard_dir = os.path.join(local, TENSORBOARD_DIR)
    self._tb = tensorboardX.SummaryWriter(
        self.tensorboard_dir, purge_step=resume_step + 1, flush_secs=30,
        filename_suffix=f".{time.time_ns()}")

    self._stream = stream if stream is not None else sys.stdout
    self._start_time = time.monotonic()
    self._start_step = resume_step
    if getattr(self._stream, "isatty", lambda: False)():
      import tqdm
      self._bar = tqdm.tqdm(total=total_steps, initial=resume_step, file=self._stream,
                            dynamic_ncols=True, unit="step")

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Logs `scalars` (name -> Python/numpy/jax scalar) for `step`; steps must increase."""
    if not self.enabled:
      return
    if self._jsonl is None:
      raise RuntimeError("MetricsWriter.write after close()")
    step = to_scalar("step", step)
    if not isinstance(step, int) or step <= self._last_step:
      raise ValueError(f"MetricsWriter: step must be an int greater than the last written step "
                       f"{self._last_step}, got {step!r}")
    values = {}
    for name, value in scalars.items():
      if not isinstance(name, str) or not name or name == "step":
        raise ValueError(f"MetricsWriter: metric names must be non-empty strings other than 'step', "
                         f"got {name!r}")
      values[name] = to_scalar(name, value)
    self._last_step = step

    # A failed write does not name its file: a full disk is reported with the path.
    with errors.writing(self.jsonl_path):
      _write_all(self._jsonl, (json.dumps({"step": step, **values}) + "\n").encode("utf-8"))
    with errors.writing(self.tensorboard_dir):
      for name, value in values.items():
        self._tb.add_scalar(name, value, global_step=step)
      self._tb.flush()
    self._mirror()
    self._write_console(step, values)

  def _fetch_jsonl(self) -> None:
    """An object-store workdir's `metrics.jsonl` replaces the staging copy (the workdir's is the
    run's record; the staging copy may be missing, on a fresh host, or from an older attempt)."""
    remote = self.workdir / JSONL_NAME
    if remote.exists():
      storage.write_atomic(self.jsonl_path, remote.read_bytes())
    elif os.path.exists(self.jsonl_path):
      os.remove(self.jsonl_path)

  def _mirror(self, force: bool = False) -> None:
    """Uploads the staging files to an object-store workdir (whole; at most every `mirror_every_s`)."""
    if not self.remote or (not force and time.monotonic() - self._mirrored_at < self.mirror_every_s):
      return
    uploads = [(self.jsonl_path, self.workdir / JSONL_NAME)]
    uploads += [(os.path.join(self.tensorboard_dir, name), self.workdir / TENSORBOARD_DIR / name)
                for name in sorted(os.listdir(self.tensorboard_dir))]
    for local, remote in uploads:
      with open(local, "rb") as f:
        storage.write_atomic(remote, f.read())
    self._mirrored_at = time.monotonic()

  def _write_console(self, step: int, values: Mapping[str, int | float]) -> None:
    keys = self.console_keys if self.console_keys is not None else list(values)[:4]
    shown = {k: _format_value(values[k]) for k in keys if k in values}
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(shown, refresh=True)
      return
    if step % self.log_every and step != self.total_steps:
      return
    elapsed = time.monotonic() - self._start_time
    done = step - self._start_step
    eta = elapsed / done * (self.total_steps - step) if done > 0 else math.nan
    text = " ".join(f"{k}={v}" for k, v in shown.items())
    eta_text = _format_duration(eta) if math.isfinite(eta) else "?"
    print(f"step {step}/{self.total_steps} [{100 * step / self.total_steps:.0f}%] {text} "
          f"elapsed={_format_duration(elapsed)} eta={eta_text}", file=self._stream, flush=True)

  def close(self) -> None:
    """Flushes and closes every sink; safe to call twice."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._tb is not None:
      tb, self._tb = self._tb, None
      with errors.writing(self.tensorboard_dir):
        tb.close()
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
      self._mirror(force=True)

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The step dicts of a `metrics.jsonl` file (local or a URL), in order (for tests, notebooks and
  evaluation)."""
  text = storage.path(path).read_text(encoding="utf-8")
  return [json.loads(line) for line in text.splitlines() if line.strip()]
