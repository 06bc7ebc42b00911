"""PPO update throughput: seconds per update, tokens/s and MFU of the trainer's own update step.

  python benchmarks/ppo_step.py --config=configs/llama8b.py [--set model.preset='llama3.2-1b' ...]
      [--batch=16] [--length=1024] [--steps=3] [--peak_gflops=X] [--json]

The config gives the model (preset, dtypes, remat, scan_layers, attention), the PPO settings and
`rl.num_microbatches`; the mesh is `config.mesh` over every device of the default backend (set
`XLA_FLAGS=--xla_force_host_platform_device_count=N` for N CPU devices). The train state is the
trainer's (`train_state.fresh` from random policy params: policy, value model, both AdamW states)
and the step is `ppo_update.make_update_step`, donating the state, on a minibatch of `--batch` episodes of
`--length` tokens (three turns, the policy's tokens the last three quarters of each; with `--min_end`
episodes of random lengths, padded: `--set rl.update_bucket_tokens=64` then shows the length-bucketed
update's gain). After one
warm-up call (compilation excluded) it times `--steps` updates and reports

* s/step and tokens/s (batch × length per step),
* model FLOP/s: 6 × (policy + value params) × tokens per step (forward and backward of both models;
  remat's recomputation and attention not counted, the usual MFU convention), also with attention
  (12 × layers × heads × head_dim × length² / 2 per episode and model: causal half of QK and PV),
* MFU: model FLOP/s over the peak FLOP/s of all devices, measured here (a large jitted matmul in
  the compute dtype, on one device, times the device count) unless `--peak_gflops` (per device) is
  given; on the CPU the measured matmul rate is the limit the issue's "≥ 50% of the matmul limit"
  is checked against.

Nothing here is a test: figures go to BUILD_NOTES.md with the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

import fit  # noqa: E402  (benchmarks/fit.py: the trainer's setup from a config)
from sampler import measure_peak_gflops  # noqa: E402  (benchmarks/sampler.py)
from rlef_jax import ppo  # noqa: E402
from rlef_jax import ppo_update  # noqa: E402
from rlef_jax import sharding  # noqa: E402
from rlef_jax import train_state  # noqa: E402


def minibatch(config, batch: int, length: int, vocab: int, rng: np.random.Generator,
              min_end: int = 0) -> dict:
  """A minibatch in the update's format: three turns of equal length, each a prompt quarter and a
  policy three quarters, random tokens, log-probs and advantages. With `min_end` each episode ends at
  a uniform random position in [min_end, length] (its turns laid out in that span, the rest padding),
  like a round of episodes of different lengths padded to the longest."""
  turns = config.env.max_turns
  ends = rng.integers(min_end, length + 1, size=batch) if min_end else np.full(batch, length)
  policy_mask = np.zeros((batch, length), np.float32)
  turn_id = np.full((batch, length), -1, np.int32)
  value_index = np.zeros((batch, turns), np.int32)
  for b, end in enumerate(ends):
    span = end // turns
    for t in range(turns):
      lo, hi = t * span, (t + 1) * span if t < turns - 1 else end
      policy_mask[b, lo + span // 4:hi] = 1
      turn_id[b, lo + span // 4:hi] = t
      value_index[b, t] = lo + span // 4 - 1
  return {
      "tokens_BxL": rng.integers(3, vocab, size=(batch, length)).astype(np.int32),
      "policy_mask_BxL": policy_mask,
      "turn_id_BxL": turn_id,
      "behaviour_logp_BxL": -policy_mask,
      "old_logp_BxL": -policy_mask,
      "advantages_BxT": rng.choice([-1.0, 1.0], size=(batch, turns)).astype(np.float32),
      "returns_BxT": rng.choice([-1.0, 1.0], size=(batch, turns)).astype(np.float32),
      "old_values_BxT": np.zeros((batch, turns), np.float32),
      "value_index_BxT": value_index,
      "turn_mask_BxT": np.ones((batch, turns), np.float32),
  }


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", required=True, help="a configs/*.py file")
  ap.add_argument("--set", action="append", default=[], metavar="GROUP.FIELD=VALUE",
                  help="config override (repeatable), e.g. --set model.preset='llama3.2-1b'")
  ap.add_argument("--batch", type=int, default=0, help="episodes per update (default rl.minibatch_size)")
  ap.add_argument("--length", type=int, default=0,
                  help="tokens per episode (default sampling.max_context_length)")
  ap.add_argument("--min_end", type=int, default=0,
                  help="episodes end at uniform random positions in [min_end, length] (0: all full)")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--peak_gflops", type=float, default=None, help="per device; measured if not given")
  ap.add_argument("--json", action="store_true")
  args = ap.parse_args(argv)

  config = fit.load_config(args.config, args.set)
  if args.batch:  # one round of one minibatch: the round's other fields are not used here
    config.rl.minibatch_size = config.rl.rollouts_per_round = args.batch
    config.rl.score_batch_size = 0
  B, L = config.rl.minibatch_size, args.length or config.sampling.max_context_length
  devices = jax.devices()
  s = fit.make_setup(config, devices)
  cfg = s.llama_config

  key = jax.random.key(0)
  reference = sharding.init_params(s.policy_model, s.mesh, key)
  state = train_state.fresh(reference, cfg, s.policy_opt, s.value_opt, key, key, s.mesh)
  del reference
  n_policy = cfg.num_params()
  n_value = sum(x.size for x in jax.tree.leaves(state.value_params))
  update = ppo_update.make_update_step(s.policy_model, s.value_model, s.policy_opt, s.value_opt,
                                ppo.PPOSettings.from_config(config.rl),
                                mesh=s.mesh, num_microbatches=config.rl.num_microbatches,
                                bucket_tokens=config.rl.update_bucket_tokens)
  host_batch = minibatch(config, B, L, cfg.vocab_size, np.random.default_rng(0), args.min_end)
  padding = 1 - float(np.sum(ppo_update.response_ends_B(host_batch["policy_mask_BxL"]))) / (B * L)
  batch = sharding.shard_batch(s.mesh, host_batch)

  t = time.perf_counter()
  state, metrics = update(state, batch)
  jax.block_until_ready((state, metrics))
  compile_s = time.perf_counter() - t
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, metrics = update(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))

  peak = (args.peak_gflops or measure_peak_gflops(cfg.compute_jnp_dtype)) * len(devices)
  tokens = B * L
  model_flops = 6 * (n_policy + n_value) * tokens
  attention_flops = 2 * 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * L * L / 2 * B
  row = {"devices": len(devices), "platform": devices[0].platform, "kind": devices[0].device_kind,
         "policy_params": n_policy, "value_params": n_value, "batch": B, "length": L,
         "dtype": cfg.dtype, "param_dtype": cfg.param_dtype, "remat": cfg.remat,
         "scan_layers": cfg.scan_layers, "attention": cfg.attention,
         "num_microbatches": config.rl.num_microbatches,
         "update_bucket_tokens": config.rl.update_bucket_tokens, "padding_fraction": padding, "compile_s": compile_s, "step_s": step_s,
         "tokens_s": tokens / step_s, "peak_gflops_total": peak,
         "mfu": model_flops / step_s / (peak * 1e9),
         "mfu_with_attention": (model_flops + attention_flops) / step_s / (peak * 1e9),
         "finite": bool(np.isfinite(float(metrics["policy_loss"])))}
  print(f"device {row['platform']}:{row['kind']} x{row['devices']}, jax {jax.__version__}; peak "
        f"{peak:.0f} GFLOP/s in all ({'given' if args.peak_gflops else 'measured matmul'})")
  print(f"{args.config} {' '.join(args.set)}: policy {n_policy / 1e6:.1f}M + value {n_value / 1e6:.1f}M "
        f"params, dtype {cfg.dtype}, params {cfg.param_dtype}, remat {cfg.remat}, scan {cfg.scan_layers}, "
        f"attention {cfg.attention}; {B} x {L} tokens ({padding:.0%} padding), "
        f"{config.rl.num_microbatches} microbatches, length buckets {config.rl.update_bucket_tokens or 'off'}")
  print(f"update: {step_s:.3f} s/step (median of {args.steps}; compile {compile_s:.1f} s), "
        f"{row['tokens_s']:.0f} tokens/s, MFU {row['mfu']:.1%} (with attention {row['mfu_with_attention']:.1%})"
        f"{'' if row['finite'] else '; policy loss not finite'}")
  if args.json:
    print(json.dumps(row))


if __name__ == "__main__":
  main()
