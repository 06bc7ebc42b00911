"""Parity of rlef_jax.model/hf against transformers' PyTorch LlamaForCausalLM on tiny random models:
logits (float32, atol 1e-4) incl. positions past 8192 with llama3 RoPE scaling, GQA, tied
embeddings; HF -> JAX -> HF round trips; config key checking; sharded streaming loads."""

import dataclasses
import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from rlef_jax import hf
from rlef_jax import model as M
from rlef_jax import sharding

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            max_position_embeddings=131072, rope_theta=500000.0, rope_scaling=LLAMA3)


def _hf_model(directory, seed=0, max_shard_size=None, **overrides):
  """A tiny random LlamaForCausalLM with O(1) logits, saved to `directory`."""
  config = transformers.LlamaConfig(**{**BASE, **overrides})
  torch.manual_seed(seed)
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) / (1.0 if "embed" in name else p.shape[1] ** 0.5))
  kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
  model.save_pretrained(directory, **kwargs)
  return model


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  return jax.jit(M.Llama(cfg).apply)


def _tokens(seed, shape):
  return np.random.default_rng(seed).integers(0, BASE["vocab_size"], shape).astype(np.int32)


@pytest.mark.parametrize("overrides", [
    dict(),                                                          # Llama 3.1 style, GQA
    dict(rope_scaling=None, num_key_value_heads=1),                  # Llama 3.0 style, MQA
    dict(num_key_value_heads=4, rope_theta=10000.0),                 # no GQA, other theta
    dict(tie_word_embeddings=True, rope_scaling={**LLAMA3, "factor": 32.0}, head_dim=32),  # 3.2
], ids=["llama31_gqa", "llama30_mqa", "mha", "llama32_tied"])
def test_logits_match_transformers(tmp_path, overrides):
  torch_model = _hf_model(tmp_path, **overrides)
  cfg, params = hf.load(tmp_path)
  assert cfg.tie_word_embeddings == overrides.get("tie_word_embeddings", False)
  tokens = _tokens(0, (2, 33))
  logits, _ = _apply(cfg)({"params": params}, tokens)
  np.testing.assert_allclose(logits, _hf_logits(torch_model, tokens), atol=1e-4, rtol=0)


def test_logits_match_past_8192_positions_via_cached_prefill(tmp_path):
  """Llama 3.1 scaling only changes low-frequency bands, visible only at long positions."""
  torch_model = _hf_model(tmp_path, seed=1, num_hidden_layers=1, head_dim=32)
  tokens = _tokens(1, (1, 8320))
  want = _hf_logits(torch_model, tokens)[0, 8100:]
  chunk = 1040

  def prefill(cfg, params):
    cache = M.init_cache(cfg, 1, tokens.shape[1])
    outs = []
    for start in range(0, tokens.shape[1], chunk):
      logits, cache = _apply(cfg)({"params": params}, tokens[:, start:start + chunk], cache)
      outs.append(np.asarray(logits[0]))
    return np.concatenate(outs)[8100:]

  cfg, params = hf.load(tmp_path)
  np.testing.assert_allclose(prefill(cfg, params), want, atol=1e-4, rtol=0)
  unscaled = prefill(dataclasses.replace(cfg, rope_scaling=None), params)
  assert np.abs(unscaled - want).max() > 1e-2


@pytest.mark.parametrize("torch_dtype", ["float32", "bfloat16"])
def test_round_trip_gives_identical_tensors_and_transformers_loads_export(tmp_path, torch_dtype):
  src, dst = tmp_path / "src", tmp_path / "dst"
  torch_model = _hf_model(src, seed=2, max_shard_size="40KB").to(getattr(torch, torch_dtype))
  torch_model.save_pretrained(src, max_shard_size="40KB")
  assert (src / "model.safetensors.index.json").exists()
  cfg, params = hf.load(src, param_dtype=torch_dtype, scan_layers=True)
  assert params["layers"]["attn"]["q"]["kernel"].dtype == cfg.param_jnp_dtype
  hf.save(dst, params, cfg, max_shard_bytes=50_000, base_config=hf.read_config(src))
  assert (dst / "model.safetensors.index.json").exists()
  with torch.no_grad():
    original = {k: v.float().numpy() for k, v in torch_model.state_dict().items()}
  exported = {}
  for file in set(json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
                  .values()):
    with safe_open(dst / file, "pt") as f:
      exported.update({k: f.get_tensor(k) for k in f.keys()})
  assert set(exported) == set(original)
  for name, tensor in exported.items():
    assert tensor.dtype == getattr(torch, torch_dtype), name
    np.testing.assert_array_equal(tensor.float().numpy(), original[name], err_msg=name)
  load = lambda d: transformers.LlamaForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
  back, ref = load(dst), load(src)
  assert back.config.rope_parameters == ref.config.rope_parameters
  assert back.config.bos_token_id == ref.config.bos_token_id
  tokens = _tokens(3, (1, 17))
  np.testing.assert_array_equal(_hf_logits(back, tokens), _hf_logits(ref, tokens))


def test_load_places_tensors_on_given_shardings(tmp_path):
  _hf_model(tmp_path, seed=3, max_shard_size="40KB")
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  for scan in (False, True):
    cfg = hf.config_from_hf(hf.read_config(tmp_path), scan_layers=scan)
    shardings = sharding.param_shardings(M.Llama(cfg), mesh)
    params = hf.load_params(tmp_path, cfg, shardings=shardings)
    for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
      assert leaf.sharding == want
  plain = hf.load_params(tmp_path, dataclasses.replace(cfg, scan_layers=False))
  np.testing.assert_array_equal(params["layers"]["mlp"]["down"]["kernel"][1],
                                plain["layers_1"]["mlp"]["down"]["kernel"])


def test_config_from_transformers_v5_and_legacy_formats_agree(tmp_path):
  transformers.LlamaConfig(**BASE).save_pretrained(tmp_path)
  v5 = hf.read_config(tmp_path)
  assert "rope_parameters" in v5 and "rope_scaling" not in v5
  legacy = hf.config_to_hf(hf.config_from_hf(v5))
  assert hf.config_from_hf(v5) == hf.config_from_hf(legacy)
  assert hf.config_from_hf(v5).rope_scaling == M.RopeScaling(8.0, 1.0, 4.0, 8192)
  assert hf.config_from_hf(v5).rope_theta == 500000.0


def test_official_llama31_8b_config_maps_to_8b_params():
  official = {
      "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
      "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
      "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
      "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
      "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
      "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": LLAMA3, "rope_theta": 500000.0,
      "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.43.0.dev0",
      "use_cache": True, "vocab_size": 128256}
  cfg = hf.config_from_hf(official)
  assert cfg.num_params() == 8_030_261_248 and cfg.head_dim == 128
  assert hf.config_to_hf(cfg, base=official)["eos_token_id"] == [128001, 128008, 128009]


@pytest.mark.parametrize("change,match", [
    ({"sliding_window": 4096}, "unknown keys \\['sliding_window'\\]"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_type 'yarn' is not supported"),
    ({"rope_scaling": {**LLAMA3, "extra": 1}}, "unknown \\['extra'\\]"),
    ({"attention_bias": True}, "attention_bias=True is not supported"),
    ({"mlp_bias": True}, "mlp_bias=True is not supported"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
    ({"pretraining_tp": 2}, "pretraining_tp=2 is not supported"),
    ({"model_type": "mistral"}, "model_type='mistral'"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0}}, "rope_theta=500000.0 disagrees"),
])
def test_unsupported_config_raises_one_clear_error(change, match):
  bad = {**BASE, **change}
  if "rope_parameters" in change:
    del bad["rope_scaling"]
  with pytest.raises(ValueError, match=match):
    hf.config_from_hf(bad)


def test_all_problems_reported_together():
  with pytest.raises(ValueError) as err:
    hf.config_from_hf({**BASE, "foo": 1, "hidden_act": "relu"})
  assert "foo" in str(err.value) and "hidden_act" in str(err.value)


def test_load_rejects_mismatched_checkpoint(tmp_path):
  _hf_model(tmp_path, seed=4)
  cfg = hf.config_from_hf(hf.read_config(tmp_path))
  with pytest.raises(ValueError, match="has shape"):
    hf.load_params(tmp_path, dataclasses.replace(cfg, intermediate_size=128))
  with pytest.raises(ValueError, match="unexpected tensor 'model.layers.1"):
    hf.load_params(tmp_path, dataclasses.replace(cfg, num_layers=1))
  with pytest.raises(ValueError, match="missing tensors"):
    hf.load_params(tmp_path, dataclasses.replace(cfg, num_layers=3))
  with pytest.raises(FileNotFoundError, match="config.json"):
    hf.read_config(tmp_path / "nowhere")
