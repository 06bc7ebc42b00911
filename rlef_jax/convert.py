"""Convert Llama weights between a Hugging Face checkpoint and an orbax params directory.

  python -m rlef_jax.convert --direction=hf_to_orbax --src=HF_DIR --dst=CKPT_DIR \
      [--param_dtype=auto|float32|bfloat16] [--scan_layers]
  python -m rlef_jax.convert --direction=orbax_to_hf --src=CKPT_DIR --dst=HF_DIR \
      [--dtype=auto|float32|bfloat16] [--max_shard_gb=5] [--tokenizer_from=HF_DIR]

The orbax directory (`rlef_jax.checkpoint.save_params`) keeps the HF `config.json` dict in its
metadata under `hf_config`, so the reverse direction rebuilds the same `config.json`. Tensors stream
one at a time in both directions (`rlef_jax.hf`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Sequence

import jax
import numpy as np

from rlef_jax import checkpoint, hf

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "generation_config.json")
_DTYPES = ("auto", "float32", "bfloat16")


def _hf_param_dtype(hf_config: dict) -> str:
  """A checkpoint's own dtype when we support it as a param dtype, else float32."""
  stored = hf_config.get("dtype", hf_config.get("torch_dtype"))
  return stored if stored in ("float32", "bfloat16") else "float32"


def hf_to_orbax(src: str, dst: str, *, param_dtype: str = "auto", scan_layers: bool = False) -> None:
  """HF checkpoint directory -> orbax params directory (metadata: the HF config dict)."""
  hf_config = hf.read_config(src)
  if param_dtype == "auto":
    param_dtype = _hf_param_dtype(hf_config)
  config = hf.config_from_hf(hf_config, param_dtype=param_dtype, scan_layers=scan_layers)
  params = hf.load_params(src, config)
  checkpoint.save_params(dst, params, metadata={"hf_config": hf_config})


def orbax_to_hf(src: str, dst: str, *, dtype: str = "auto", max_shard_bytes: int = 5 * 10**9,
                tokenizer_from: str | None = None) -> None:
  """Orbax params directory (written by `hf_to_orbax` or the trainer) -> HF checkpoint directory."""
  params, metadata = checkpoint.restore_params(src)
  if "hf_config" not in metadata:
    raise ValueError(f"{src}: metadata has no 'hf_config' (keys {sorted(metadata)}); only params "
                     "directories written by `python -m rlef_jax.convert --direction=hf_to_orbax` "
                     "or with metadata={'hf_config': ...} can be exported")
  leaf_dtype = np.dtype(jax.tree.leaves(params)[0].dtype).name
  param_dtype = leaf_dtype if leaf_dtype in ("float32", "bfloat16") else "float32"
  config = hf.config_from_hf(metadata["hf_config"], param_dtype=param_dtype,
                             scan_layers="layers" in params)
  if os.path.exists(dst) and os.listdir(dst):
    raise FileExistsError(f"{dst} exists and is not empty; choose a new output directory")
  hf.save(dst, params, config, dtype=None if dtype == "auto" else dtype,
          max_shard_bytes=max_shard_bytes, base_config=metadata["hf_config"])
  if tokenizer_from is not None:
    for name in _TOKENIZER_FILES:
      path = os.path.join(tokenizer_from, name)
      if os.path.isfile(path):
        shutil.copy(path, os.path.join(dst, name))


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlef_jax.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--direction", required=True, choices=("hf_to_orbax", "orbax_to_hf"))
  parser.add_argument("--src", required=True, help="input directory")
  parser.add_argument("--dst", required=True, help="output directory (must not exist yet)")
  parser.add_argument("--param_dtype", default="auto", choices=_DTYPES,
                      help="hf_to_orbax: dtype of the saved params (auto: the checkpoint's own)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="hf_to_orbax: stack layers for LlamaConfig(scan_layers=True)")
  parser.add_argument("--dtype", default="auto", choices=_DTYPES,
                      help="orbax_to_hf: dtype of the exported tensors (auto: the params' own)")
  parser.add_argument("--max_shard_gb", type=float, default=5.0,
                      help="orbax_to_hf: largest safetensors file, in GB (10^9 bytes)")
  parser.add_argument("--tokenizer_from", default=None,
                      help="orbax_to_hf: HF directory whose tokenizer files to copy into --dst")
  args = parser.parse_args(argv)
  try:
    if args.direction == "hf_to_orbax":
      hf_to_orbax(args.src, args.dst, param_dtype=args.param_dtype, scan_layers=args.scan_layers)
    else:
      orbax_to_hf(args.src, args.dst, dtype=args.dtype,
                  max_shard_bytes=int(args.max_shard_gb * 10**9), tokenizer_from=args.tokenizer_from)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
