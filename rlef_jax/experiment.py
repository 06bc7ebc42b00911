"""What a run is built from, once per command: the mesh, models, tokenizer, executor pool and typed
settings (`Run`, `build`), the datasets and problems, and the initial policy's params.

The train, evaluate and warm-start commands all start here; nothing in this module writes to the
workdir.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from etils import epath
import jax

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import config as config_lib
from rlef_jax import errors
from rlef_jax import model as model_lib
from rlef_jax import ppo
from rlef_jax import rollout as rollout_lib
from rlef_jax import sharding
from rlef_jax import storage


@dataclasses.dataclass
class Run:
  """Everything built from the config once."""
  config: Any
  workdir: epath.Path  # local or an object-store URL (rlef_jax.storage)
  mesh: jax.sharding.Mesh
  llama_config: model_lib.LlamaConfig
  policy_model: model_lib.Llama
  value_model: model_lib.LlamaValue
  tokenizer: Any
  pool: Any
  ppo_settings: ppo.PPOSettings

  def close(self):
    self.pool.close()


def build(config: Any, workdir: str) -> Run:
  """Validates `config` against the devices, checks its input paths (tokenizer, initial checkpoint:
  their shapes against `config.model`) and builds the run; writes nothing."""
  from rlef_jax.execution import ExecutionPool  # pylint: disable=g-import-not-at-top

  config_lib.validate(config, num_devices=jax.device_count())
  mesh = sharding.make_mesh(config.mesh)
  llama_config = config_lib.llama_config(config.model)
  policy_model = model_lib.Llama(llama_config)
  check_init_checkpoint(config.model.init_checkpoint, policy_model)
  tokenizer = load_tokenizer(config)
  if tokenizer.vocab_size != llama_config.vocab_size:
    # A larger model vocabulary would let the sampler emit ids the tokenizer cannot decode.
    raise errors.ConfigError(
        f"the tokenizer config.tokenizer.path={config.tokenizer.path!r} has {tokenizer.vocab_size} "
        f"tokens but config.model.vocab_size is {llama_config.vocab_size}; set them equal")
  workers = config.execution.workers or os.cpu_count() or 1
  pool = ExecutionPool(workers=workers, sandbox=config.execution.sandbox,
                       allow_weak=config.execution.allow_weak_isolation)
  return Run(config, storage.path(workdir), mesh, llama_config, policy_model,
             model_lib.LlamaValue(llama_config), tokenizer, pool,
             ppo.PPOSettings.from_config(config.rl))


def cwd_note(path: str) -> str:
  """For messages about a relative path: where it was looked for."""
  return "" if os.path.isabs(path) or storage.is_url(path) else f" (relative paths are taken from the current directory {os.getcwd()})"


def load_tokenizer(config: Any) -> Any:
  """The `ChatTokenizer` of `config.tokenizer` (its directory's chat template and stop ids)."""
  from rlef_jax.tokenizer import ChatTokenizer  # pylint: disable=g-import-not-at-top
  path = config.tokenizer.path
  if not path:
    raise errors.ConfigError("config.tokenizer.path is empty; point it at the Instruct model's tokenizer "
                             "directory")
  if not os.path.isdir(path):
    raise errors.MissingPathError(f"config.tokenizer.path={path!r}: no such directory{cwd_note(path)}")
  kwargs = {"date_string": config.tokenizer.date_string} if config.tokenizer.date_string else None
  try:
    return ChatTokenizer.load(path, template_kwargs=kwargs)
  except errors.UserError as e:
    raise type(e)(f"config.tokenizer.path={path!r}: {e}") from None


def check_init_checkpoint(path: str, policy_model: Any) -> None:
  """`config.model.init_checkpoint` (if set) exists and holds params of `policy_model`'s shapes."""
  if not path:
    return
  where = f"config.model.init_checkpoint={path!r}"
  try:
    source = storage.path(path)  # local, or an orbax params directory in a bucket
  except errors.ConfigError as e:
    raise errors.ConfigError(f"{where}: {e}") from None
  if not source.is_dir():
    raise errors.MissingPathError(f"{where}: no such directory{cwd_note(path)}")
  if storage.is_url(path) and (source / "config.json").exists():
    raise errors.ConfigError(f"{where}: a Hugging Face directory is read from a local path; convert it "
                             "to an orbax params directory (python -m rlef_jax.convert), which may live "
                             "in the bucket")
  expected = _param_shapes(policy_model)
  if not storage.is_url(path) and os.path.exists(os.path.join(path, "config.json")):
    from rlef_jax import hf  # pylint: disable=g-import-not-at-top
    c = policy_model.config
    try:
      found = hf.config_from_hf(hf.read_config(path))
    except ValueError as e:
      raise errors.InputError(f"{where}: {e}") from None
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "num_kv_heads", "tie_word_embeddings")
    for field in fields:
      if getattr(found, field) != getattr(c, field):
        raise errors.ConfigError(
            f"{where} has {field}={getattr(found, field)} (its config.json) but config.model implies "
            f"{getattr(c, field)}; make config.model match the checkpoint")
    return
  found = _saved_shapes(path)
  if _stored_layout_differs(found, policy_model):
    # The same model with its layers stored the other way (scanned <-> unrolled): converted on load.
    expected = _param_shapes(model_lib.Llama(model_lib.other_layer_layout(policy_model.config)))
  for key, shape in expected.items():
    if key not in found:
      raise errors.ConfigError(
          f"{where} has no parameter {key} (the architecture differs from the checkpoint's; it has "
          f"e.g. {sorted(found)[:3]})")
    if found[key] != shape:
      raise errors.ConfigError(
          f"{where}: parameter {key} has shape {found[key]} but config.model implies {shape}; "
          "make config.model (vocab_size, sizes, preset) match the checkpoint")
  extra = sorted(set(found) - set(expected))
  if extra:
    raise errors.ConfigError(f"{where} has parameters config.model does not, e.g. {extra[:3]}")


def _param_shapes(model: Any) -> dict[str, tuple[int, ...]]:
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  return {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_leaves_with_path(nn.unbox(sharding.abstract_params(model)))}


def _saved_shapes(path: str) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_leaves_with_path(checkpoint_lib.params_metadata(path))}


def _stored_layout_differs(saved: dict[str, tuple[int, ...]], policy_model: Any) -> bool:
  """Whether an orbax params directory stores the layers the other way from `policy_model`: stacked
  (`['layers']...`, from `convert --scan_layers`) for an unrolled model, or unrolled for a scanned one."""
  stacked = any(k.startswith("['layers']") for k in saved)
  unrolled = any(k.startswith("['layers_") for k in saved)
  return (unrolled and not stacked) if policy_model.config.scan_layers else (stacked and not unrolled)


def data_source(config: Any, split: str, name: str = ""):
  """The TFDS array_record data source of dataset `name` (default `config.data.name`) / `split`,
  prepared on first use.

  `split` may use TFDS slicing ("train[:64]", "train[10%:]") to train or evaluate on part of a split.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import rlef_jax.data.builders  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

  data_dir = config.data.data_dir or None
  name = name or config.data.name
  builder = tfds.builder(name, data_dir=data_dir)
  download_config = None
  if config.data.source_dir:
    download_config = tfds.download.DownloadConfig(manual_dir=config.data.source_dir)
  builder.download_and_prepare(download_config=download_config)
  if split.split("[", 1)[0] not in builder.info.splits:
    raise errors.ConfigError(f"dataset {name!r} has no split {split!r}; it has "
                             f"{sorted(builder.info.splits)} (config.data.train_split / config.eval.split)")
  return builder.as_data_source(split=split)


def to_problems(examples: Sequence[dict], config: Any, pool: Any) -> list[Any]:
  """Problems of decoded examples; EvalPlus ones get their expected outputs from `pool` (cached)."""
  from rlef_jax import problem as problem_lib  # pylint: disable=g-import-not-at-top
  return problem_lib.from_examples(examples, env_config=config.env, pool=pool)


def eval_problems(config: Any, split: str, pool: Any) -> list[Any]:
  """The evaluation problems: `config.eval.dataset` (default: the training dataset) / `split`."""
  source = data_source(config, split, config.eval.dataset)
  n = len(source) if not config.eval.max_problems else min(len(source), config.eval.max_problems)
  from rlef_jax.data import records  # pylint: disable=g-import-not-at-top
  return to_problems([records.decode_example(source[i]) for i in range(n)], config, pool)


def rollout_settings(config: Any, *, evaluation: bool) -> rollout_lib.RolloutSettings:
  return rollout_lib.RolloutSettings(
      max_new_tokens=config.sampling.max_new_tokens,
      max_context_length=config.sampling.max_context_length,
      temperature=config.eval.temperature if evaluation else config.sampling.temperature,
      top_p=config.eval.top_p if evaluation else config.sampling.top_p,
      draw=config.sampling.draw,
      # Evaluation's own episode batch (eval.batch_size) when set: the engine runs that many at a time.
      max_episodes=(config.eval.batch_size if evaluation and config.eval.batch_size
                    else config.sampling.max_concurrent_episodes),
      prefill_chunk=config.sampling.prefill_chunk)


def run_rngs(config: Any) -> tuple[jax.Array, ...]:
  """(init, value, eval, train) keys of a run: the initial policy's key is the warm start's too."""
  return tuple(jax.random.split(jax.random.key(config.train.seed), 4))


def initial_policy_params(run: Run, rng: jax.Array) -> Any:
  """Random init or `config.model.init_checkpoint` (an HF directory or an orbax params directory)."""
  path = run.config.model.init_checkpoint
  if not path:
    return sharding.init_params(run.policy_model, run.mesh, rng)
  if not storage.is_url(path) and os.path.exists(os.path.join(path, "config.json")):
    from rlef_jax import hf  # pylint: disable=g-import-not-at-top
    return hf.load_params(path, run.llama_config,
                          shardings=sharding.param_shardings(run.policy_model, run.mesh))
  return restore_policy_params(run, path)


def restore_policy_params(run: Run, path: str | os.PathLike) -> Any:
  """An orbax params directory as `run.policy_model`'s params on their shardings, its layers stored
  either way: one converted with `--scan_layers` or without serves both `model.scan_layers` settings."""
  shardings = sharding.param_shardings(run.policy_model, run.mesh)
  verify = run.config.train.verify_checkpoints
  if not _stored_layout_differs(_saved_shapes(path), run.policy_model):
    params, _ = checkpoint_lib.restore_params(path, shardings=shardings, verify=verify)
    return params
  # Stored the other way (scanned <-> unrolled): restore in its own layout and sharding, then stack
  # or unstack into the model's (the stored tree is freed on return: two copies at the peak).
  stored_model = model_lib.Llama(model_lib.other_layer_layout(run.llama_config))
  stored, _ = checkpoint_lib.restore_params(
      path, shardings=sharding.param_shardings(stored_model, run.mesh), verify=verify)
  relayout = model_lib.stack_layers if run.llama_config.scan_layers else model_lib.unstack_layers
  return jax.jit(relayout, out_shardings=shardings)(stored)


def problem_stream(run: Run, seed: int):
  """Endless (problem, reference solutions) pairs from the train split (warm start)."""
  from rlef_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  c = run.config
  iterator = pipeline.make_iterator(data_source(c, c.data.train_split), seed=seed, shuffle=True)
  for example in iterator:
    if example["problem"].get("solutions"):
      yield to_problems([example], c, run.pool)[0], example["problem"]
