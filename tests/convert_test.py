"""Tests for `python -m rlef_jax.convert`: HF -> orbax -> HF gives identical tensors and a config that
transformers loads; bad inputs give one clear error and exit status 2."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open

from rlef_jax import checkpoint, convert, hf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hf_checkpoint(directory, dtype):
  config = transformers.LlamaConfig(
      vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=131072,
      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                       "original_max_position_embeddings": 8192},
      bos_token_id=5, eos_token_id=[6, 7])
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).to(dtype)
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p))
  model.save_pretrained(directory, max_shard_size="20KB")
  (directory / "tokenizer_config.json").write_text("{}")
  return {k: v.clone() for k, v in model.state_dict().items()}


def _read_all(directory):
  out = {}
  for name in os.listdir(directory):
    if name.endswith(".safetensors"):
      with safe_open(directory / name, "pt") as f:
        out.update({k: f.get_tensor(k) for k in f.keys()})
  return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_hf_orbax_hf_round_trip_is_exact(tmp_path, dtype):
  original = _hf_checkpoint(tmp_path / "hf", dtype)
  ckpt, out = tmp_path / "ckpt", tmp_path / "out"
  assert convert.main(["--direction=hf_to_orbax", f"--src={tmp_path / 'hf'}", f"--dst={ckpt}",
                       "--scan_layers"]) == 0
  params, metadata = checkpoint.restore_params(ckpt)
  assert params["layers"]["attn"]["q"]["kernel"].shape == (2, 32, 4, 8)
  assert params["embed"]["embedding"].dtype == (jnp.bfloat16 if dtype == torch.bfloat16
                                                else jnp.float32)
  assert metadata["hf_config"]["eos_token_id"] == [6, 7]
  assert convert.main(["--direction=orbax_to_hf", f"--src={ckpt}", f"--dst={out}",
                       "--max_shard_gb=0.00003", f"--tokenizer_from={tmp_path / 'hf'}"]) == 0
  assert (out / "model.safetensors.index.json").exists() and (out / "tokenizer_config.json").exists()
  exported = _read_all(out)
  assert set(exported) == set(original)
  for name, tensor in original.items():
    assert exported[name].dtype == dtype
    np.testing.assert_array_equal(exported[name].float().numpy(), tensor.float().numpy(),
                                  err_msg=name)
  assert hf.config_from_hf(hf.read_config(out)) == hf.config_from_hf(
      hf.read_config(tmp_path / "hf"))
  reloaded = transformers.LlamaForCausalLM.from_pretrained(out)
  assert reloaded.config.eos_token_id == [6, 7]
  assert reloaded.config.rope_parameters["factor"] == 8.0


def test_cli_module_entry_point_and_errors(tmp_path):
  _hf_checkpoint(tmp_path / "hf", torch.float32)
  run = lambda *args: subprocess.run([sys.executable, "-m", "rlef_jax.convert", *args], cwd=REPO,
                                     capture_output=True, text=True, timeout=300)
  ok = run("--direction=hf_to_orbax", f"--src={tmp_path / 'hf'}", f"--dst={tmp_path / 'ckpt'}",
           "--param_dtype=bfloat16")
  assert ok.returncode == 0, ok.stderr
  params, _ = checkpoint.restore_params(tmp_path / "ckpt")
  assert params["layers_0"]["mlp"]["up"]["kernel"].dtype == jnp.bfloat16
  bad_config = tmp_path / "bad"
  bad_config.mkdir()
  cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
  (bad_config / "config.json").write_text(json.dumps({**cfg, "attention_bias": True}))
  assert convert.main(["--direction=hf_to_orbax", f"--src={bad_config}",
                       f"--dst={tmp_path / 'x'}"]) == 2
  checkpoint.save_params(tmp_path / "nometa", {"w": np.zeros(2, np.float32)}, metadata={})
  assert convert.main(["--direction=orbax_to_hf", f"--src={tmp_path / 'nometa'}",
                       f"--dst={tmp_path / 'y'}"]) == 2
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
