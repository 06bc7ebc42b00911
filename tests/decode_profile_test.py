"""experiments/diagnostics/decode_profile.py: a trace's ops of the decoding loop, per step, by kind and
output shape (a hand-built trace and HLO text; the profiler run itself is the script's)."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
  path = os.path.join(ROOT, "experiments", "diagnostics", "decode_profile.py")
  spec = importlib.util.spec_from_file_location("decode_profile", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_breakdown_counts_the_decoding_loop_only_per_step_by_kind_and_shape():
  hlo = """
  %ynn_fusion.1 = f32[4,500]{1,0} fusion(%a, %b), kind=kCustom
  %ynn_fusion.7 = f32[4,64]{1,0} fusion(%c, %d), kind=kCustom
  ynn_fusion.9 = f32[4,64]{1,0} fusion(%e, %f), kind=kCustom
  %iota_reduce_fusion = (f32[4]{0}, s32[4]{0}) fusion(%ynn_fusion.1), kind=kLoop
  %threefry_fusion = u32[4,500]{1,0} fusion(%g), kind=kLoop
  %init_fusion = f32[4,500]{1,0} fusion(%h), kind=kLoop
"""
  ev = lambda name, dur, module="jit__decode": {"ph": "X", "name": name, "dur": dur,
                                                "args": {"hlo_module": module}}
  events = []
  events.append(ev("init_fusion", 4.0))  # before the loop: once
  for _ in range(3):  # three steps: the [4, 500] product runs once a step
    events += [ev("ynn_fusion.1", 10.0), ev("ynn_fusion.7", 2.0), ev("ynn_fusion.9", 3.0),
               ev("iota_reduce_fusion", 1.0)]
    events += [ev("threefry_fusion", 0.5)] * 5  # as wide as the product, five times a step
  events += [ev("ynn_fusion.1", 1000.0, module="jit__prefill"),  # another program's op: not counted
             {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99.0},  # no module: not counted
             {"ph": "i", "name": "ynn_fusion.1", "args": {"hlo_module": "jit__decode"}}]  # not a span
  steps, total = _module().breakdown(events, hlo)
  assert steps == 3
  assert dict(total) == {("ynn_fusion", "f32[4,500]{1,0}"): 30.0, ("ynn_fusion", "f32[4,64]{1,0}"): 15.0,
                         ("iota_reduce_fusion", "(f32[4]{0},"): 3.0,
                         ("threefry_fusion", "u32[4,500]{1,0}"): 7.5, ("init_fusion", "f32[4,500]{1,0}"): 4.0}
