"""benchmarks/sampler.py: its matmul floor (`--matmuls`) covers every weight matrix of the model once, and
the benchmark reports consistent figures (the figures themselves are BUILD_NOTES.md's, not a test's)."""
import importlib.util
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from rlef_jax import config as config_lib
from rlef_jax import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench():
  spec = importlib.util.spec_from_file_location("sampler_benchmark", os.path.join(ROOT, "benchmarks", "sampler.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("scan_layers,tie", [(False, False), (True, True)])
def test_matmul_chain_takes_every_weight_matrix_once(scan_layers, tie):
  bench = _bench()
  c = config_lib.base_config().model
  c.preset, c.scan_layers, c.remat, c.tie_word_embeddings = "tiny", scan_layers, False, tie
  cfg = config_lib.llama_config(c)
  params = nn.unbox(model_lib.Llama(cfg).init(jax.random.key(0), np.zeros((1, 2), np.int32))["params"])
  layers = bench._layer_kernels(params, cfg.num_layers)
  D, H, K, Dh, F = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.intermediate_size
  assert len(layers) == cfg.num_layers
  for w in layers:
    assert {n: a.shape for n, a in w.items()} == {
        "q": (D, H * Dh), "k": (D, K * Dh), "v": (D, K * Dh), "o": (H * Dh, D),
        "gate": (D, F), "up": (D, F), "down": (F, D)}
  # Every matrix the decode step multiplies by: the layers' kernels and the output projection (the
  # tied embedding, or lm_head; an untied embedding is a lookup, not a product).
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  matrices = sum(x.size for p, x in paths if p[-1].key == "kernel") + (cfg.vocab_size * D if tie else 0)
  assert sum(a.size for w in layers for a in w.values()) + cfg.vocab_size * D == matrices
  once = bench.matmul_timer(params, cfg, batch=4)
  assert 0 < once() < 60


@pytest.mark.slow  # about 20 s: a benchmark in its own process
def test_sampler_benchmark_reports_consistent_figures():
  out = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "sampler.py"), "--preset=tiny", "--batch=4",
       "--prompt=8", "--new=8", "--cache=0,64", "--history=0,16", "--reps=1", "--matmuls", "--json",
       "--temperature=1", "--draw=gumbel,blocked",
       "--peak_gflops=100", "--bandwidth_gbs=20"],
      capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stdout + out.stderr
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  caches = [r for r in rows if "tok_s" in r]
  # 0: the prompt, the new tokens and the free slot; each case once per way of drawing the token
  assert [(r["draw"], r["cache"]) for r in caches] == [("gumbel", 17), ("gumbel", 64), ("blocked", 17),
                                                       ("blocked", 64)]
  for r in caches:  # ms_step is a difference of two timings: at these toy sizes noise can make it <= 0
    assert abs(r["roofline"] - r["roofline_ms"] / r["ms_step"]) < 1e-9
  assert [(r["draw"], r["history"]) for r in rows if "history" in r] == [
      ("gumbel", 0), ("gumbel", 16), ("blocked", 0), ("blocked", 16)]
  (mm,) = [r for r in rows if "matmuls_ms" in r]
  assert mm["matmuls_ms"] > 0 and abs(mm["roofline"] - mm["roofline_ms"] / mm["matmuls_ms"]) < 1e-9
