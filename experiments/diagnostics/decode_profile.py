"""Where a decode step's time goes: the sampler's decoding loop under `jax.profiler`, its ops' time per
step summed by kind and output shape (matmuls, the attention's products, sampling, copies).

  python experiments/diagnostics/decode_profile.py --preset=smollm2-135m --num_layers=17 --batch=32 \
      [--prompt=64] [--new=64] [--cache=0] [--history=0] [--temperature=0] [--draw=gumbel] [--top=25]

It builds the case as benchmarks/sampler.py does (a random model of the preset, a right-padded prompt
chunk, `--history` tokens already in the cache), times two `generate` calls after a compiling one,
then traces two more and reads the trace: only ops of the compiled decoding loop (`_decode`) count,
divided by the number of steps (the calls of the output projection). Each op is named by its kind
(`ynn_fusion`, `iota_reduce_fusion`, ...) and the output shape read from XLA's dump of the compiled
loop, so the matmuls of a layer show as `[B, 576]` / `[B, 1536]` rows, the vocabulary-wide work as
`[B, V]` rows and the attention as `[B, K, G, W]` rows. On a busy machine the times stretch, but
their shares say where a change would pay. A diagnostic, not a test: figures go to BUILD_NOTES.md.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import sys
import tempfile
import types

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _dump_dir() -> str:
  """XLA's dump directory, set before jax is imported (the flag is read once)."""
  path = tempfile.mkdtemp(prefix="decode_profile_")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={path}").strip()
  return path


def _bench():
  spec = importlib.util.spec_from_file_location("sampler_benchmark", os.path.join(ROOT, "benchmarks", "sampler.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def breakdown(trace_events: list, hlo_text: str, module: str = "jit__decode"):
  """(steps, {(kind, output shape): microseconds}) of `module`'s ops in a perfetto trace; steps are
  the most common number of calls of one op (the loop body's ops run once a step; the widest op is
  not a safe clock: at temperature 1 the random draw's `[B, V]` ops run several times a step)."""
  shapes = dict(re.findall(r"\n\s*%?([\w.\-]+) = (\S+)", hlo_text))
  total, calls = collections.Counter(), collections.Counter()
  for e in trace_events:
    if e.get("ph") != "X" or e.get("args", {}).get("hlo_module") != module:
      continue
    name = e["name"]
    shape = shapes.get(name, "?")
    total[(re.sub(r"\.\d+$", "", name), shape)] += e["dur"]
    calls[name] += 1
  counts = collections.Counter(calls.values())
  # The most common count; a tie goes to the larger (ops outside the loop body run fewer times).
  steps = max(counts, key=lambda n: (counts[n], n), default=0)
  return steps, total


def main(argv=None) -> None:
  dump = _dump_dir()  # before jax is imported (by the benchmark module)
  bench = _bench()
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  bench.add_case_args(ap, new=64)
  ap.add_argument("--cache", type=int, default=0, help="allocated slots (0: just enough)")
  ap.add_argument("--history", type=int, default=0, help="tokens already in the cache")
  ap.add_argument("--top", type=int, default=25)
  args = ap.parse_args(argv)
  import jax  # noqa: E402  (after XLA_FLAGS)
  import numpy as np  # noqa: E402
  from rlef_jax import model as model_lib  # noqa: E402
  ns = types.SimpleNamespace(**vars(args), dtype="float32", param_dtype="float32", scan_layers=False)
  cache = args.cache or args.history + args.prompt + args.new + 1
  ns.cache = [cache]
  cfg = bench.llama_config(ns)
  params = model_lib.Llama(cfg).init(jax.random.key(0), np.zeros((1, 1), np.int32))["params"]
  from rlef_jax import sampler  # noqa: E402
  if args.draw not in sampler.DRAWS:
    sys.exit(f"decode_profile: --draw takes one of {', '.join(sampler.DRAWS)}, got {args.draw!r}")
  once = bench.generate_timer(params, cfg, ns, cache, args.new, history=args.history, draw=args.draw)
  times = [once() for _ in range(2)]
  trace_dir = tempfile.mkdtemp(prefix="decode_trace_")
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    once()
    once()
  trace = sorted(glob.glob(os.path.join(trace_dir, "**", "*perfetto_trace.json.gz"), recursive=True))
  hlo = sorted(glob.glob(os.path.join(dump, "*jit__decode*after_optimizations.txt")))
  if not trace or not hlo:
    sys.exit("decode_profile: no trace or no dump of the decoding loop was written")
  events = json.load(gzip.open(trace[-1]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  steps, total = breakdown(events, open(hlo[-1]).read())
  if not steps:
    sys.exit("decode_profile: the trace holds no op of the decoding loop")
  grand = sum(total.values())
  print(f"{args.preset} {cfg.num_layers} layers, batch {args.batch}, prompt {args.prompt}, new {args.new}, "
        f"cache {cache}, history {args.history}, temperature {args.temperature}, draw {args.draw}; untraced calls "
        f"{', '.join(f'{t:.2f}' for t in times)} s")
  print(f"decoding loop: {steps} steps traced, {grand / steps / 1e3:.2f} ms of ops per step")
  for (kind, shape), us in total.most_common(args.top):
    print(f"{us / steps / 1e3:8.2f} ms/step {100 * us / grand:5.1f}%  {kind:24s} {shape}")


if __name__ == "__main__":
  main()
