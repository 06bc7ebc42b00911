"""Does a config fit its devices? Per-device memory of the trainer's compiled steps, nothing allocated.

  python benchmarks/fit.py --config=configs/llama8b.py --devices=8 [--limit_gb=70]
      [--phases=update,score,sampler] [--length=0] [--prefill_tokens=0] [--devices_per_process=8]
      [--cpu_licm] [--set rl.num_microbatches=4 ...] [--json]

The mesh is `--devices` forced host (CPU) devices (`XLA_FLAGS=--xla_force_host_platform_device_count`,
set here before JAX starts). Every input is a `jax.ShapeDtypeStruct` carrying the sharding the trainer
gives it, and every step is the trainer's own jitted function, lowered and compiled for that mesh:

* update: `ppo_update.jit_sharded_update` of `ppo_update.make_update_fn` (what `ppo_update.make_update_step` runs) on a
  minibatch of `rl.minibatch_size` episodes of `--length` tokens (default the longest an episode can
  be, `sampling.max_context_length`), the train state donated;
* score: `ppo.make_logprob_fn` on the policy's and on the reference's params and `ppo.make_value_fn`,
  each on one scoring pass (`round_batch.score_batch_size` episodes of `--length` tokens);
* sampler: `sampler.prepare` (the policy's params cast and unrolled for decoding), then the
  sampler's `_prefill` (one chunk of `--prefill_tokens` new tokens per row; default the longest a
  prefill can take: `sampling.prefill_chunk` when set, long chunks then being fed in pieces by
  `_feed` (`sampler.feed`, compiled too), else the longest prompt an episode can start with,
  `sampling.max_context_length - sampling.max_new_tokens - 1`) and `_decode` steps on one rollout
  group (`rollout.sampler_rows` rows) whose KV cache holds the full `sampling.max_context_length`
  slots, attending over all of them.

For each compiled step it prints, per device, XLA's `compiled.memory_analysis()`: argument, output,
aliased (donated) and temporary bytes, and the bound args + out - alias + temp. On the CPU backend
`peak_memory_in_bytes` is args + out - alias only (it leaves out the temporaries; checked on jax
0.10.2), so the bound is what is compared, and printed beside it. Then "in loop": the bound plus what
the trainer keeps alive on the device at that moment without passing it to the step (the train state
and the reference params during scoring and sampling, the reference during the update, the other
rollout groups' KV caches and the sampler's params while sampling). A step passes when that is at
most `--limit_gb` (GB = 10^9 bytes).

Caveats: the CPU compiler fuses and schedules differently from the GPU one, so its temporaries are an
estimate of a GPU's, not a measurement; a GPU run adds its runtime's own reservations (cuBLAS / NCCL
workspaces) and by default lets XLA take only 75% of the memory (set `XLA_PYTHON_CLIENT_MEM_FRACTION`
or `XLA_PYTHON_CLIENT_PREALLOCATE=false`). One process holds all devices here; `--devices_per_process`
(one process per 8-GPU host by default) only sets how many episodes each process samples at once.
Nothing here is a test: figures go to BUILD_NOTES.md with the command line (tests/fit_test.py runs it).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

GB = 1e9
LIMIT_GB = 70.0  # per device: an 80 GB GPU with room for its runtime


def _force_host_devices(argv: Sequence[str]) -> None:
  """`--devices N` as `XLA_FLAGS=--xla_force_host_platform_device_count=N` on the CPU platform."""
  n = None
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      n = arg.split("=", 1)[1]
    elif arg == "--devices" and i + 1 < len(argv):
      n = argv[i + 1]
  if n is None:
    return
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()
  os.environ["JAX_PLATFORMS"] = "cpu"


if __name__ == "__main__":  # before JAX is imported: it reads the device count once
  _force_host_devices(sys.argv[1:])

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from rlef_jax import config as config_lib  # noqa: E402
from rlef_jax import model as model_lib  # noqa: E402
from rlef_jax import ppo  # noqa: E402
from rlef_jax import ppo_update  # noqa: E402
from rlef_jax import rollout as rollout_lib  # noqa: E402
from rlef_jax import round_batch  # noqa: E402
from rlef_jax import sampler  # noqa: E402
from rlef_jax import sharding  # noqa: E402
from rlef_jax import train_state  # noqa: E402

# Dtypes of the minibatch arrays as `rollout.to_batch` and `round_batch.make_round_batch` make them.
MINIBATCH_DTYPES = {"tokens_BxL": jnp.int32, "policy_mask_BxL": jnp.float32, "turn_id_BxL": jnp.int32,
                    "behaviour_logp_BxL": jnp.float32, "old_logp_BxL": jnp.float32,
                    "advantages_BxT": jnp.float32, "returns_BxT": jnp.float32,
                    "old_values_BxT": jnp.float32, "value_index_BxT": jnp.int32,
                    "turn_mask_BxT": jnp.float32,
                    "advantages_BxL": jnp.float32, "old_values_BxL": jnp.float32}  # rl.value_level "token"


def minibatch_dtypes(settings: ppo.PPOSettings) -> dict[str, Any]:
  """The dtype of each array of a minibatch under `settings` (`ppo.minibatch_keys`)."""
  return {k: MINIBATCH_DTYPES[k] for k in ppo.minibatch_keys(settings)}


# ---------------------------------------------------------------------------------------------
# Abstract arrays and their per-device bytes


def shard_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded `ShapeDtypeStruct`s (the largest shard of each
  leaf; a replicated leaf counts whole), computed from the shardings alone."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += math.prod(shape) * leaf.dtype.itemsize
  return total


def _with_shardings(shapes: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                      shardings)


def _data_sds(mesh, shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.data_sharding(mesh, len(shape)))


@dataclasses.dataclass
class Setup:
  """What the trainer builds from a config (`experiment.build`), without tokenizer, data or weights."""
  config: Any
  mesh: jax.sharding.Mesh
  llama_config: model_lib.LlamaConfig
  policy_model: model_lib.Llama
  value_model: model_lib.LlamaValue
  policy_opt: Any
  value_opt: Any


def make_setup(config: Any, devices: Sequence[jax.Device]) -> Setup:
  config_lib.validate(config, num_devices=len(devices))
  llama_config = config_lib.llama_config(config.model)
  policy_opt, value_opt = ppo.make_optimizers(config.optim, total_steps=config.train.num_updates)
  return Setup(config, sharding.make_mesh(config.mesh, devices), llama_config,
               model_lib.Llama(llama_config), model_lib.LlamaValue(llama_config), policy_opt,
               value_opt)


def abstract_state(s: Setup) -> tuple[ppo.TrainState, Any]:
  """(train state, reference params) as sharded `ShapeDtypeStruct`s, laid out as `train.train`
  makes them (`rlef_jax.train_state.abstract`, the trainer's own restore target)."""
  return train_state.abstract(s.policy_model, s.policy_opt, s.value_opt, s.mesh,
                              s.config.rl.reference_dtype)


# ---------------------------------------------------------------------------------------------
# Compiled steps


@dataclasses.dataclass
class Measure:
  """One compiled step's per-device bytes (`compiled.memory_analysis()`) and its compile time."""
  phase: str
  step: str
  argument: int
  output: int
  alias: int
  temp: int
  xla_peak: int  # memory_analysis().peak_memory_in_bytes (on CPU: argument + output - alias)
  live_beside: int  # bytes the trainer keeps alive on the device beside this step's arguments
  compile_s: float
  shape: str = ""

  @property
  def bound(self) -> int:
    return self.argument + self.output - self.alias + self.temp

  @property
  def in_loop(self) -> int:
    return self.bound + self.live_beside

  def row(self, limit: float) -> dict:
    return {**dataclasses.asdict(self), "bound": self.bound, "in_loop": self.in_loop,
            "limit": limit, "fits": self.in_loop <= limit}


def compile_step(phase: str, step: str, jitted: Callable, args: Sequence[Any], mesh, live_beside: int,
                 shape: str = "", static: Optional[dict] = None,
                 compiler_options: Optional[dict] = None) -> tuple[Measure, Any]:
  """Lowers `jitted(*args, **static)` under the mesh's logical-axis rules (as the trainer calls it)
  and compiles it; returns its `Measure` and the compiled executable."""
  start = time.perf_counter()
  with sharding.use_mesh(mesh):
    compiled = jitted.lower(*args, **(static or {})).compile(compiler_options=compiler_options)
  seconds = time.perf_counter() - start
  m = compiled.memory_analysis()
  return Measure(phase, step, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                 int(m.alias_size_in_bytes), int(m.temp_size_in_bytes),
                 int(getattr(m, "peak_memory_in_bytes", 0)), live_beside, seconds, shape), compiled


def episode_length(config: Any, length: int = 0) -> int:
  """Tokens per episode row: `length`, or the longest an episode can be (`to_batch` pads to 128)."""
  return length or rollout_lib.round_up(config.sampling.max_context_length, 128)


def update_phase(s: Setup, state, reference, length: int) -> list[Measure]:
  c = s.config
  B, L, T = c.rl.minibatch_size, episode_length(c, length), c.env.max_turns
  settings = ppo.PPOSettings.from_config(c.rl)
  batch = {k: _data_sds(s.mesh, (B, L) if k.endswith("BxL") else (B, T), dtype)
           for k, dtype in minibatch_dtypes(settings).items()}
  update = ppo_update.make_update_fn(s.policy_model, s.value_model, s.policy_opt, s.value_opt, settings,
                              s.mesh, c.rl.num_microbatches)
  jitted = ppo_update.jit_sharded_update(update, jax.tree.map(lambda x: x.sharding, state),
                                  jax.tree.map(lambda x: x.sharding, batch))
  M = ppo_update.microbatch_count(B, c.rl.num_microbatches, s.mesh)
  m, _ = compile_step("update", "update", jitted, (state, batch), s.mesh, shard_bytes(reference),
                      f"{B} x {L} tokens, {M} microbatches of {B // M}")
  return [m]


def score_phase(s: Setup, state, reference, length: int) -> list[Measure]:
  c = s.config
  n = round_batch.score_batch_size(c, c.rl.rollouts_per_round, s.mesh)
  L, T = episode_length(c, length), c.env.max_turns
  tokens = _data_sds(s.mesh, (n, L), jnp.int32)
  per_token = c.rl.value_level == "token"  # values read where turn_id_BxL says, else at value_index_BxT
  where = _data_sds(s.mesh, (n, L) if per_token else (n, T), jnp.int32)
  resident = shard_bytes((state, reference))
  shape = f"{n} x {L} tokens"
  # The trainer's functions (ppo.make_*_fn with mesh=None are the same jitted functions; with a
  # mesh they are only called under sharding.use_mesh, which compile_step does).
  logprob = ppo.make_logprob_fn(s.policy_model, chunk=c.rl.logprob_chunk)
  value = ppo.make_value_fn(s.value_model, value_level=c.rl.value_level)
  out = []
  for step, fn, params in (("policy logprob", logprob, state.policy_params),
                           ("reference logprob", logprob, reference),
                           ("value", value, state.value_params)):
    args = (params, tokens) if fn is logprob else (params, tokens, where)
    out.append(compile_step("score", step, fn, args, s.mesh, resident - shard_bytes(params), shape)[0])
  return out


# The CPU backend has no bfloat16 dots: it converts their bf16 operands to f32 first, and XLA's
# loop-invariant code motion then hoists those converts of the (loop-invariant) weights out of the
# decoding loop, holding an f32 copy of every layer's weights (twice the sampler's weights) that a
# GPU, multiplying in bf16, never makes. The sampler's steps are compiled without that pass; their
# weights are laid out so that nothing else in the loop could be hoisted (no all-gathers:
# sharding.sampling_param_shardings). `--cpu_licm` compiles them with it, for comparison.
SAMPLER_COMPILER_OPTIONS = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}


def sampler_phase(s: Setup, state, reference, prefill_tokens: int, devices_per_process: int,
                  cpu_licm: bool = False) -> list[Measure]:
  c = s.config
  mesh = s.mesh
  resident = shard_bytes((state, reference))
  processes = max(1, mesh.size // devices_per_process)
  settings = rollout_lib.RolloutSettings(
      max_new_tokens=c.sampling.max_new_tokens, max_context_length=c.sampling.max_context_length,
      temperature=c.sampling.temperature, top_p=c.sampling.top_p,
      max_episodes=c.sampling.max_concurrent_episodes, prefill_chunk=c.sampling.prefill_chunk)
  local = c.rl.rollouts_per_round // processes
  rows, groups = rollout_lib.sampler_rows(settings, local, mesh.shape["data"] * mesh.shape["fsdp"],
                                          processes)
  S = c.sampling.max_context_length
  T = c.sampling.max_new_tokens
  # The longest chunk a prefill takes: a whole prompt (at most S - T - 1 tokens leave room to
  # answer) unless sampling.prefill_chunk feeds long ones in pieces (sampler.feed) first.
  longest = rollout_lib.round_up(S - T - 1, settings.length_bucket)
  if settings.prefill_chunk:
    longest = min(longest, rollout_lib.round_up(settings.prefill_chunk, settings.length_bucket))
  width = min(prefill_tokens or longest, S - 1)

  # sampler.prepare: the policy's params cast to the compute dtype and unrolled, once per round.
  decoding_model = model_lib.Llama(model_lib.decoding_config(s.llama_config))
  options = None if cpu_licm else SAMPLER_COMPILER_OPTIONS
  prepare = jax.jit(lambda p: sampler.prepare(p, s.llama_config, mesh)[0])
  m_prepare, compiled = compile_step("sampler", "prepare", prepare, (state.policy_params,), mesh,
                                     resident - shard_bytes(state.policy_params), "policy params")
  params = _with_shardings(jax.eval_shape(prepare, state.policy_params), compiled.output_shardings)
  cache_shapes = jax.eval_shape(lambda: model_lib.init_cache(decoding_model.config, rows, S))
  cache = _with_shardings(cache_shapes, sharding.cache_sharding(mesh, cache_shapes))
  # While one group samples, the others' caches and the sampler's params stay alive.
  beside = resident + (groups - 1) * shard_bytes(cache)
  static = dict(model=decoding_model, max_new_tokens=T, temperature=float(c.sampling.temperature),
                top_p=float(c.sampling.top_p), stop_ids=(0,), pad_id=0, mesh=mesh, attend_slots=S)
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), rows))
  keys = jax.ShapeDtypeStruct(keys.shape, keys.dtype, sharding=sharding.data_sharding(mesh, 1))
  shape = f"{groups} groups of {rows} rows, cache {S} slots"
  m_prefill, compiled = compile_step(
      "sampler", "prefill", sampler._prefill,  # pylint: disable=protected-access
      (params, cache, _data_sds(mesh, (rows, width), jnp.int32), _data_sds(mesh, (rows,), jnp.int32),
       _data_sds(mesh, (rows,), jnp.bool_), keys), mesh, beside, f"{shape}, chunk {width}", static,
      options)
  carry = _with_shardings(
      jax.eval_shape(lambda *a: sampler._prefill(*a, **static),  # pylint: disable=protected-access
                     params, cache, jax.ShapeDtypeStruct((rows, width), jnp.int32),
                     jax.ShapeDtypeStruct((rows,), jnp.int32), jax.ShapeDtypeStruct((rows,), jnp.bool_),
                     keys),
      compiled.output_shardings)
  steps = [m_prepare, m_prefill]
  if settings.prefill_chunk:
    m_feed, _ = compile_step(
        "sampler", "feed", sampler._feed,  # pylint: disable=protected-access
        (params, cache, _data_sds(mesh, (rows, width), jnp.int32), _data_sds(mesh, (rows,), jnp.int32)),
        mesh, beside, f"{shape}, chunk {width}",
        dict(model=decoding_model, mesh=mesh, attend_slots=S), options)
    steps.append(m_feed)
  m_decode, _ = compile_step(
      "sampler", "decode", sampler._decode,  # pylint: disable=protected-access
      (params, carry, keys, jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))),
      mesh, beside, shape, static, options)
  return steps + [m_decode]


PHASES = ("update", "score", "sampler")


def measure(config: Any, devices: Sequence[jax.Device], phases: Sequence[str] = PHASES,
            length: int = 0, prefill_tokens: int = 0, devices_per_process: int = 8,
            cpu_licm: bool = False, limit_gb: float = LIMIT_GB,
            log: Optional[Callable[[str], None]] = None) -> tuple[dict, list[Measure]]:
  """(summary of the resident state, one `Measure` per compiled step) of `config` on `devices`."""
  s = make_setup(config, devices)
  state, reference = abstract_state(s)
  summary = {
      "devices": len(devices), "mesh": dict(s.mesh.shape),
      "policy_params": shard_bytes(state.policy_params), "value_params": shard_bytes(state.value_params),
      "policy_opt_state": shard_bytes(state.policy_opt_state),
      "value_opt_state": shard_bytes(state.value_opt_state), "reference_params": shard_bytes(reference),
      "param_dtype": config.model.param_dtype, "reference_dtype": config.rl.reference_dtype}
  summary["resident"] = shard_bytes((state, reference))
  out = []
  for phase in phases:
    if phase == "update":
      new = update_phase(s, state, reference, length)
    elif phase == "score":
      new = score_phase(s, state, reference, length)
    elif phase == "sampler":
      new = sampler_phase(s, state, reference, prefill_tokens, devices_per_process, cpu_licm)
    else:
      raise ValueError(f"unknown phase {phase!r}; choose from {PHASES}")
    for m in new:
      if log:
        log(format_measure(m, limit_gb * GB))
    out.extend(new)
  return summary, out


def format_measure(m: Measure, limit: float) -> str:
  g = lambda b: f"{b / GB:6.2f}"
  verdict = "fits" if m.in_loop <= limit else "DOES NOT FIT"
  return (f"{m.phase:7s} {m.step:17s} args {g(m.argument)} out {g(m.output)} alias {g(m.alias)} "
          f"temp {g(m.temp)} | bound {g(m.bound)} (xla peak {g(m.xla_peak)}) + beside {g(m.live_beside)}"
          f" = in loop {g(m.in_loop)} GB: {verdict} ({m.compile_s:.0f} s to compile; {m.shape})")


def load_config(path: str, overrides: Sequence[str] = ()) -> Any:
  spec = importlib.util.spec_from_file_location("fit_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for item in overrides:
    key, value = item.split("=", 1)
    group, field = key.split(".")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
    config[group][field] = value
  return config


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="a configs/*.py file")
  ap.add_argument("--devices", type=int, required=True, help="forced host devices (the mesh size)")
  ap.add_argument("--limit_gb", type=float, default=LIMIT_GB, help="per-device budget, GB = 1e9 bytes")
  ap.add_argument("--phases", default=",".join(PHASES))
  ap.add_argument("--length", type=int, default=0,
                  help="tokens per episode row (0: sampling.max_context_length, the longest)")
  ap.add_argument("--prefill_tokens", type=int, default=0,
                  help="new tokens per row in the prefill (0: the longest prompt an episode can have)")
  ap.add_argument("--devices_per_process", type=int, default=8)
  ap.add_argument("--cpu_licm", action="store_true",
                  help="compile the sampler's steps with XLA's loop-invariant code motion (see above)")
  ap.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                  help="config override, e.g. rl.num_microbatches=4")
  ap.add_argument("--json", action="store_true", help="also print one JSON line with every figure")
  args = ap.parse_args(argv)
  if jax.device_count() < args.devices:
    raise SystemExit(f"--devices={args.devices} but JAX sees {jax.device_count()} devices: run this file "
                     "as a script (it forces host devices before JAX starts)")
  config = load_config(args.config, args.set)
  start = time.perf_counter()
  print(f"{args.config} on {args.devices} forced {jax.devices()[0].platform} devices, jax {jax.__version__}; "
        f"limit {args.limit_gb:g} GB per device", flush=True)
  summary, measures = measure(config, jax.devices()[:args.devices], args.phases.split(","), args.length,
                              args.prefill_tokens, args.devices_per_process, args.cpu_licm,
                              args.limit_gb, log=lambda line: print(line, flush=True))
  print("resident per device (GB): " + ", ".join(
      f"{k} {v / GB:.2f}" for k, v in summary.items() if isinstance(v, int) and k != "devices")
        + f"; mesh {summary['mesh']}")
  worst = max(measures, key=lambda m: m.in_loop)
  fits = worst.in_loop <= args.limit_gb * GB
  print(f"{'PASS' if fits else 'FAIL'}: largest in-loop figure {worst.in_loop / GB:.2f} GB ({worst.phase} "
        f"{worst.step}) against {args.limit_gb:g} GB; {time.perf_counter() - start:.0f} s in all", flush=True)
  if args.json:
    print(json.dumps({"config": args.config, **summary,
                      "steps": [m.row(args.limit_gb * GB) for m in measures], "fits": fits}))
  if not fits:
    sys.exit(1)


if __name__ == "__main__":
  main()
