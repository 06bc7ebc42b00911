"""Tests for rlef_jax.config and configs/*.py: schema, validation, CLI overrides, parameter counts."""

import ast
import importlib.util
import inspect
import os
import re

import jax
import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from rlef_jax import config as rc
from rlef_jax import env_config
from rlef_jax import model
from rlef_jax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = ("tiny", "llama8b", "llama70b")


def load(name: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs",
                                                                            f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_files_validate(name):
  config = load(name)
  rc.validate(config)
  rc.validate(config, num_devices=8)


# Official totals: Meta's model cards / the safetensors index "total_size" divided by 2 (bf16).
@pytest.mark.parametrize("preset, expected", [
    ("llama3.0-8b", 8_030_261_248),
    ("llama3.1-8b", 8_030_261_248),
    ("llama3.1-70b", 70_553_706_496),
    ("llama3.2-1b", 1_235_814_400),
    ("llama3.2-3b", 3_212_749_824),
])
def test_param_counts_match_official(preset, expected):
  cfg = rc.base_config()
  cfg.model.preset = preset
  before = {id(a) for a in jax.live_arrays()}
  assert rc.llama_config(cfg.model).num_params() == expected
  new = [a for a in jax.live_arrays() if id(a) not in before]
  assert sum(a.size for a in new) < 1_000_000, "counting must not allocate the weights"


def test_config_file_models_have_paper_sizes():
  assert rc.llama_config(load("llama8b").model).num_params() == 8_030_261_248
  assert rc.llama_config(load("llama70b").model).num_params() == 70_553_706_496


def test_paper_hyperparameters():
  c8, c70 = load("llama8b"), load("llama70b")
  for c in (c8, c70):
    assert (c.rl.rollouts_per_round, c.rl.minibatch_size, c.rl.updates_per_round) == (1024, 256, 4)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_steps) == (2e-7, 0.1, 50)
    assert (c.rl.kl_coef, c.rl.clip_eps, c.rl.value_clip, c.rl.gamma) == (0.05, 0.2, 0.2, 1.0)
    assert (c.sampling.temperature, c.sampling.top_p) == (1.0, 1.0)
    assert (c.eval.temperature, c.eval.top_p, c.train.eval_every) == (0.2, 0.95, 800)
    assert (c.env.max_turns, c.env.invalid_code_penalty) == (3, -0.2)
  assert (c8.train.num_updates, c70.train.num_updates) == (12000, 8000)
  assert rc.llama_config(c8.model).rope_scaling == model.RopeScaling(8.0, 1.0, 4.0, 8192)


# The schema is written in two places: base_config() and the environment group it takes from
# rlef_jax/env_config.py.
_SCHEMA_SOURCES = (rc.base_config, env_config.default_env_config)


def test_every_schema_field_has_a_comment():
  fields = 0
  for function in _SCHEMA_SOURCES:
    source = inspect.getsource(function)
    tree = ast.parse(source.lstrip())
    lines = source.lstrip().splitlines()
    for node in ast.walk(tree):
      if isinstance(node, ast.Assign) and isinstance(node.targets[-1], ast.Attribute):
        value_is_group = (isinstance(node.value, ast.Call)
                          and getattr(node.value.func, "attr", "") == "ConfigDict")
        if not value_is_group:
          fields += 1
          line = lines[node.end_lineno - 1]
          assert re.search(r"#\s*\S", line), f"field without comment: {line.strip()}"
  assert fields > 90


def test_unknown_choices_are_marked():
  """Each [U] of the paper that the brief lists is a named field commented as our choice."""
  source = "\n".join(inspect.getsource(f) for f in _SCHEMA_SOURCES)
  for field in ("final_turn_invalid_penalty_stacks", "use_generated_tests_for_reward",
                "code_extraction", "advantage_norm", "prefill_format", "system_message", "schedule_after_warmup",
                "value_lr", "grad_clip_norm", "max_new_tokens", "loss_aggregation"):
    line = next(l for l in source.splitlines() if f".{field} =" in l)
    assert "[U]" in line, line


def _override(argv):
  argv = ["prog", f"--config={os.path.join(ROOT, 'configs', 'llama8b.py')}", *argv]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def test_command_line_overrides():
  config = _override(["--config.rl.kl_coef=0.1", "--config.mesh.tensor=2",
                      "--config.env.feedback=random", "--config.model.hidden_size=1024"])
  assert config.rl.kl_coef == 0.1 and config.mesh.tensor == 2 and config.env.feedback == "random"
  assert rc.llama_config(config.model).hidden_size == 1024
  rc.validate(config)


def test_command_line_unknown_field_and_bad_type_fail():
  with pytest.raises(AttributeError, match='Did you mean "kl_coef"'):
    _override(["--config.rl.kl_coeff=0.1"])
  with pytest.raises(flags.Error, match="clip_eps"):
    _override(["--config.rl.clip_eps=abc"])


def test_command_line_invalid_value_gives_clear_error():
  config = _override(["--config.rl.clip_eps=1.5"])
  with pytest.raises(ValueError, match=re.escape("config.rl.clip_eps must be in (0, 1), got 1.5")):
    rc.validate(config)


def _bad(edit):
  config = load("llama8b")
  edit(config)
  return config


def _set(path, value):
  def edit(config):
    group, field = path.split(".")
    with config.unlocked(), config.ignore_type():
      config[group][field] = value
  return edit


@pytest.mark.parametrize("edit, message", [
    (_set("rl.clip_eps", 0.0), r"config\.rl\.clip_eps must be in \(0, 1\), got 0\.0"),
    (_set("env.feedback", "loud"), r"config\.env\.feedback must be one of .*'rich'.*got 'loud'"),
    (_set("model.preset", "llama9"), r"config\.model\.preset must be one of"),
    (_set("model.dtype", "float16"), r"config\.model\.dtype must be one of"),
    (_set("optim.lr", -1.0), r"config\.optim\.lr must be > 0, got -1\.0"),
    (_set("sampling.top_p", 1.5), r"config\.sampling\.top_p must be in \(0, 1\]"),
    (_set("mesh.fsdp", 0), r"config\.mesh\.fsdp must be >= 1, or -1"),
    (_set("rl.minibatch_size", 300), r"config\.rl\.rollouts_per_round \(1024\) must be a multiple "
                                     r"of config\.rl\.minibatch_size \(300\)"),
    (_set("rl.minibatch_size", "256"), r"config\.rl\.minibatch_size must be of type int, got '256'"),
    (_set("rl.behaviour_correction", 1), r"config\.rl\.behaviour_correction must be of type bool"),
    (_set("rl.kl_coeff", 0.1), r"config\.rl\.kl_coeff is not a known field"),
    (_set("tokenizer.path", None), r"config\.tokenizer\.path must be set"),
    (_set("mesh.tensor", -1), r"config\.mesh: at most one of data/fsdp/tensor may be -1"),
    (_set("mesh.tensor", 3), r"config\.mesh\.tensor \(3\) must divide config\.model\.num_heads"),
    (_set("model.num_kv_heads", 5), r"config\.model\.num_heads \(32\) must be a multiple of "
                                    r"config\.model\.num_kv_heads \(5\)"),
    (_set("sampling.max_new_tokens", 8192), r"config\.sampling\.max_new_tokens \(8192\) must be "
                                            r"below config\.sampling\.max_context_length"),
    (_set("sampling.max_context_length", 200000), r"exceeds the model's max_position_embeddings"),
    (_set("env.success_reward", -2.0), r"config\.env\.success_reward \(-2\.0\) must exceed"),
    (_set("model.preset", "custom"), r"config\.model\.preset='custom' needs every architecture "
                                     r"field; set config\.model\.vocab_size"),
    (_set("train.num_updates", 12002), r"config\.train\.num_updates \(12002\) must be a multiple "
                                       r"of config\.rl\.updates_per_round \(4\)"),
    (_set("warmstart.feedback_fraction", 1.5), r"config\.warmstart\.feedback_fraction must be in "
                                               r"\[0\.0, 1\.0\], got 1\.5"),
    (_set("warmstart.feedback_fraction", 0.5), r"config\.warmstart\.feedback_fraction > 0 needs "
                                               r"config\.warmstart\.dialogue_turns > 1"),
    (_set("model.rope_scaling", ml_collections.ConfigDict({"factor": 8.0})),
     r"config\.model\.rope_scaling must have exactly the fields"),
])
def test_validate_errors(edit, message):
  with pytest.raises(ValueError, match=message):
    rc.validate(_bad(edit))


def test_validate_missing_group_field():
  config = load("tiny")
  del config.rl["kl_clamp"]
  with pytest.raises(ValueError, match=r"config\.rl\.kl_clamp is missing"):
    rc.validate(config)


def test_validate_against_device_count():
  config = load("llama8b")  # data -1, fsdp 4, tensor 2
  with pytest.raises(ValueError, match=r"8 slots but there are 4 devices|not divisible"):
    rc.validate(config, num_devices=4)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 3, 1
  config.rl.score_batch_size, config.rl.num_microbatches = 64, 8
  config.rl.rollouts_per_round, config.rl.minibatch_size = 960, 240
  with pytest.raises(ValueError, match=r"config\.rl\.score_batch_size \(64\) must be a multiple of "
                                       r"the data-parallel size"):
    rc.validate(config, num_devices=3)
  config.rl.score_batch_size = 100
  with pytest.raises(ValueError, match=r"rollouts_per_round \(960\) must be a multiple of "
                                       r"config\.rl\.score_batch_size \(100\), or set it to 0"):
    rc.validate(config, num_devices=3)
  config.rl.score_batch_size = 120
  rc.validate(config, num_devices=3)
  config.rl.num_microbatches = 7
  with pytest.raises(ValueError, match=r"minibatch_size \(240\) must be a multiple of "
                                       r"config\.rl\.num_microbatches \(7\)"):
    rc.validate(config, num_devices=3)
  config.rl.num_microbatches = 48  # 5 episodes per microbatch: not a multiple of 3 devices
  with pytest.raises(ValueError, match=r"a microbatch .* = 5\) must be a multiple of the data-parallel"):
    rc.validate(config, num_devices=3)
  config.rl.num_microbatches = 16  # 15 episodes each: fine
  rc.validate(config, num_devices=3)
  with pytest.raises(ValueError, match=r"config\.rl\.minibatch_size \(240\) must be a multiple of "
                                       r"the data-parallel size mesh\.data \* mesh\.fsdp = 9"):
    rc.validate(config, num_devices=9)


@pytest.mark.parametrize("name, num_devices", [
    ("llama8b", 8), ("llama8b", 64), ("llama8b", 128),  # one 8-GPU host; the paper's 64 and 128 (App. A.1)
    ("llama70b", 64), ("llama70b", 1024),  # eight hosts; the paper's 1024 (App. A.1)
])
def test_paper_device_counts_validate(name, num_devices):
  """The paper's device counts (and the smallest host counts benchmarks/fit.py shows fitting) are
  accepted: per-shard microbatches and scoring passes divide any data-parallel size."""
  config = load(name)
  rc.validate(config, num_devices=num_devices)
  data, fsdp, _ = sharding.mesh_shape(config.mesh, num_devices)
  assert config.rl.minibatch_size % (data * fsdp) == 0


def test_per_shard_sizes_and_reference_dtype_are_checked():
  config = load("tiny")
  config.rl.num_microbatches, config.rl.score_batch_size = -1, -1
  rc.validate(config, num_devices=8)  # 64 / 8 = 8 microbatches of 8; scoring passes of 8
  config.rl.num_microbatches = -4  # 4 episodes per shard: 2 microbatches of 32 on 8 devices
  rc.validate(config, num_devices=8)
  rc.validate(config, num_devices=1)  # 16 microbatches of 4
  with pytest.raises(ValueError, match=r"config\.rl\.minibatch_size \(64\) must be a multiple of 4 episodes "
                                       r"per shard .* = 32 on 32 devices"):
    rc.validate(config, num_devices=32)
  config.rl.num_microbatches = -3
  with pytest.raises(ValueError, match=r"minibatch_size \(64\) must be a multiple of the 3 episodes per "
                                       r"shard of config\.rl\.num_microbatches = -3"):
    rc.validate(config)
  config.rl.num_microbatches = 0
  with pytest.raises(ValueError, match=r"config\.rl\.num_microbatches must be >= 1, or -k"):
    rc.validate(config)
  config.rl.num_microbatches = -1
  config.rl.score_batch_size = -2
  with pytest.raises(ValueError, match=r"config\.rl\.score_batch_size must be >= -1"):
    rc.validate(config)
  config.rl.score_batch_size = -1
  config.rl.reference_dtype = "bfloat16"  # tiny computes in float32
  with pytest.raises(ValueError, match=r"reference_dtype='bfloat16' needs config\.model\.dtype='bfloat16'"):
    rc.validate(config)


def test_llama_config_presets_and_overrides():
  config = load("tiny")
  tiny = rc.llama_config(config.model)
  assert (tiny.hidden_size, tiny.num_layers, tiny.num_heads, tiny.num_kv_heads) == (128, 2, 4, 2)
  assert tiny.vocab_size == 491 and tiny.head_dim == 32 and tiny.dtype == "float32"
  config.model.num_layers = 3
  config.model.rope_scaling = ml_collections.ConfigDict(dict(
      factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=256))
  changed = rc.llama_config(config.model)
  assert changed.num_layers == 3
  assert changed.rope_scaling == model.RopeScaling(4.0, 1.0, 4.0, 256)


def test_custom_model():
  config = load("tiny")
  config.model.preset = "custom"
  for key, value in dict(vocab_size=100, hidden_size=64, intermediate_size=96, num_layers=1,
                         num_heads=4, num_kv_heads=1, rms_norm_eps=1e-6, rope_theta=1e4,
                         max_position_embeddings=512, tie_word_embeddings=True).items():
    config.model[key] = value
  rc.validate(config)
  cfg = rc.llama_config(config.model)
  assert cfg.head_dim == 16 and cfg.rope_scaling is None and cfg.tie_word_embeddings
  # embed + per layer (q, k, v, o, gate, up, down, 2 norms) + final norm; lm_head tied.
  D, F, Dh = 64, 96, 16
  per_layer = D * 4 * Dh + 2 * D * Dh + 4 * Dh * D + 3 * D * F + 2 * D
  assert cfg.num_params() == 100 * D + per_layer + D
