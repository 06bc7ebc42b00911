"""The RLEF trainer (paper §2–3, App. A.1): `python -m rlef_jax.train --config=configs/X.py --workdir=DIR`.

Read top to bottom: build (mesh, tokenizer, models, data, executor) → restore or initialise → [warm
start, tiny model only] → evaluate → loop over rounds {collect rollouts, score them, K minibatch PPO
updates, log, evaluate, checkpoint} → final checkpoint and evaluation.

A round collects `rl.rollouts_per_round` episodes with the current policy, computes per-turn rewards
with the KL penalty to the frozen initial policy, returns, values and advantages once for the whole
round (`rlef_jax.round_batch`), then makes `rl.updates_per_round` updates of `rl.minibatch_size`
episodes. The step counter counts updates (paper: 12,000 updates for 8B). Checkpoints hold both
models' params and optimizer states, the step, the RNG and the data iterator's state, and are written
at round boundaries; a run restarted with the same workdir resumes from the latest one. SIGTERM
finishes the current round, writes a checkpoint and exits 0.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import cli
from rlef_jax import config as config_lib
from rlef_jax import distributed
from rlef_jax import env as env_lib
from rlef_jax import env_config as env_config_lib
from rlef_jax import errors
from rlef_jax import evaluate as evaluate_lib
from rlef_jax import metrics as metrics_lib
from rlef_jax import model as model_lib
from rlef_jax import ppo
from rlef_jax import rollout as rollout_lib
from rlef_jax import round_batch
from rlef_jax import sharding
from rlef_jax import warmstart as warmstart_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and evaluations.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "evaluate only: a train step in the workdir, 'best' (WORKDIR/best.json), "
                                  "'warmstart'/'reference', or a params directory (default: the latest "
                                  "train checkpoint).")
_SPLIT = flags.DEFINE_string("split", None, "evaluate only: the split (default config.eval.split).")
_FEEDBACK = flags.DEFINE_list("feedback", None, "evaluate only: feedback variants to evaluate, e.g. "
                              "true,random,none (default config.eval.feedback).")
_MAX_TURNS = flags.DEFINE_list("max_turns", None, "evaluate only: turn budgets to evaluate, e.g. "
                               "1,2,3,5,10 (default config.eval.max_turns).")

REFERENCE_DIR = "reference_params"   # the frozen initial policy ρ (after the warm start, if any)
EVAL_DIR = "eval"


# ---------------------------------------------------------------------------------------------
# Building blocks


@dataclasses.dataclass
class Run:
  """Everything built from the config once."""
  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  llama_config: model_lib.LlamaConfig
  policy_model: model_lib.Llama
  value_model: model_lib.LlamaValue
  tokenizer: Any
  pool: Any

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
  return Run(config, workdir, mesh, llama_config, policy_model,
             model_lib.LlamaValue(llama_config), tokenizer, pool)


def _cwd_note(path: str) -> str:
  return "" if os.path.isabs(path) else f" (relative paths are taken from the current directory {os.getcwd()})"


def load_tokenizer(config: Any) -> Any:
  """The `ChatTokenizer` of `config.tokenizer` (its directory's chat template and stop ids)."""
  from rlef_jax.tokenizer import ChatTokenizer  # pylint: disable=g-import-not-at-top
  path = config.tokenizer.path
  if not path:
    raise errors.ConfigError("config.tokenizer.path is empty; point it at the Instruct model's tokenizer "
                             "directory")
  if not os.path.isdir(path):
    raise errors.MissingPathError(f"config.tokenizer.path={path!r}: no such directory{_cwd_note(path)}")
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
  if not os.path.isdir(path):
    raise errors.MissingPathError(f"{where}: no such directory{_cwd_note(path)}")
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  expected = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
              jax.tree_util.tree_leaves_with_path(nn.unbox(sharding.abstract_params(policy_model)))}
  if os.path.exists(os.path.join(path, "config.json")):
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
  found = {jax.tree_util.keystr(k): tuple(v.shape)
           for k, v in jax.tree_util.tree_leaves_with_path(checkpoint_lib.params_metadata(path))}
  for key, shape in expected.items():
    if key not in found:
      raise errors.ConfigError(
          f"{where} has no parameter {key} (config.model.scan_layers or the architecture differs "
          f"from the checkpoint's; it has e.g. {sorted(found)[:3]})")
    if found[key] != shape:
      raise errors.ConfigError(
          f"{where}: parameter {key} has shape {found[key]} but config.model implies {shape}; "
          "make config.model (vocab_size, sizes, preset) match the checkpoint")
  extra = sorted(set(found) - set(expected))
  if extra:
    raise errors.ConfigError(f"{where} has parameters config.model does not, e.g. {extra[:3]}")


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
      max_episodes=config.sampling.max_concurrent_episodes, prefill_chunk=config.sampling.prefill_chunk)


def eval_env_config(config: Any, max_turns: int, feedback: str) -> Any:
  """`config.env` with the evaluation's turn limit and feedback variant (not the training ones)."""
  env_config = config.env.copy_and_resolve_references()
  with env_config.unlocked():
    env_config.max_turns = max_turns
    env_config.feedback = feedback
  return env_config


def evaluation_engines(run: Run, *, max_turns: Optional[int] = None, feedback: Optional[str] = None
                       ) -> tuple[rollout_lib.RolloutEngine, rollout_lib.RolloutEngine]:
  """Multi-turn and single-turn engines of the evaluation (default: config.eval's turns and feedback)."""
  c = run.config
  settings = rollout_settings(c, evaluation=True)
  max_turns = c.eval.max_turns if max_turns is None else max_turns
  feedback = c.eval.feedback if feedback is None else feedback
  mt = rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                 eval_env_config(c, max_turns, feedback), settings, run.mesh)
  st = rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                 eval_env_config(c, 1, "true"), settings, run.mesh)
  return mt, st


def run_evaluation(run: Run, params: Any, problems: Sequence[Any], name: str, rng: jax.Array,
                   single_turn: bool = True, *, checkpoint: str = "", step: Optional[int] = None,
                   split: str = "", max_turns: Optional[int] = None, feedback: Optional[str] = None
                   ) -> dict:
  """Evaluates `params` on `problems`; writes `eval/NAME.json` (summary with what was evaluated how)
  and `eval/NAME.episodes.jsonl` (every episode, rlef_jax/evaluate.py)."""
  c = run.config
  max_turns = c.eval.max_turns if max_turns is None else max_turns
  feedback = c.eval.feedback if feedback is None else feedback
  mt, st = evaluation_engines(run, max_turns=max_turns, feedback=feedback)
  summary, outcomes = evaluate_lib.evaluate(
      mt, st if single_turn and c.eval.single_turn else None, params, problems,
      num_rollouts=c.eval.num_rollouts_per_problem, rng=rng, seed=c.train.seed,
      resamples=c.eval.bootstrap_resamples)
  summary.update(name=name, checkpoint=checkpoint, step=step, dataset=c.eval.dataset or c.data.name,
                 split=split or c.eval.split, feedback=feedback, max_turns=max_turns,
                 temperature=c.eval.temperature, top_p=c.eval.top_p)
  if jax.process_index() == 0:
    path = evaluate_lib.write_results(os.path.join(run.workdir, EVAL_DIR), name, summary, outcomes)
    logging.info("evaluation %s: %s (%s)", name, evaluate_lib.format_summary(summary), path)
    print(f"[eval {name}] {evaluate_lib.format_summary(summary)}", flush=True)
  return summary


BEST_FILE = "best.json"


def record_best(workdir: str, summary: dict, metric: str) -> None:
  """Keeps `WORKDIR/best.json` pointing at the evaluated checkpoint with the highest `metric` on the
  evaluation split (paper App. A.1: the final checkpoint is selected on valid); ties keep the earlier."""
  if jax.process_index() != 0 or metric not in summary:
    return
  path = os.path.join(workdir, BEST_FILE)
  value = float(summary[metric]["mean"])
  if os.path.exists(path):
    with open(path) as f:
      best = json.load(f)
    if best.get("metric") == metric and best["value"] >= value:
      return
  entry = {"checkpoint": summary["checkpoint"], "step": summary["step"], "metric": metric, "value": value,
           "split": summary.get("split"), "evaluation": summary["name"]}
  with open(path + ".tmp", "w") as f:
    json.dump(entry, f, indent=2)
  os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# Params: initial policy, warm start, reference


def initial_policy_params(run: Run, rng: jax.Array) -> Any:
  """Random init or `config.model.init_checkpoint` (an HF directory or an orbax params directory)."""
  path = run.config.model.init_checkpoint
  shardings = sharding.param_shardings(run.policy_model, run.mesh)
  if not path:
    return sharding.init_params(run.policy_model, run.mesh, rng)
  if os.path.exists(os.path.join(path, "config.json")):
    from rlef_jax import hf  # pylint: disable=g-import-not-at-top
    return hf.load_params(path, run.llama_config, shardings=shardings)
  params, _ = checkpoint_lib.restore_params(path, shardings=shardings,
                                            verify=run.config.train.verify_checkpoints)
  return params


def reference_params(run: Run, rng: jax.Array) -> Any:
  """The frozen initial policy ρ, made once per workdir (after the warm start when enabled)."""
  ref_dir = os.path.join(run.workdir, REFERENCE_DIR)
  shardings = sharding.param_shardings(run.policy_model, run.mesh)
  # Process 0 decides for all: another host may look after process 0 has started writing it.
  if distributed.allgather_objects(os.path.exists(ref_dir))[0]:
    params, _ = checkpoint_lib.restore_params(ref_dir, shardings=shardings,
                                              verify=run.config.train.verify_checkpoints)
    return params
  params = initial_policy_params(run, rng)
  c = run.config
  if c.warmstart.enabled and distributed.is_multiprocess():
    raise errors.ConfigError("the supervised warm start (config.warmstart.enabled, a tiny-model phase) runs in "
                             "one process: run it once with a single process on this workdir (it writes "
                             f"{ref_dir}), or start from weights (config.model.init_checkpoint)")
  if c.warmstart.enabled:
    problems = _problem_stream(run, seed=c.data.seed + 1)
    form = ("statement -> solution, single turn" if c.warmstart.dialogue_turns == 1 else
            f"dialogues of up to {c.warmstart.dialogue_turns} turns, feedback-following final answers: "
            f"{c.warmstart.feedback_fraction:.0%}")
    print(f"[warmstart] {c.warmstart.steps} supervised steps ({form})", flush=True)
    params = warmstart_lib.run(
        params, run.policy_model, problems, run.tokenizer, env_config=c.env, steps=c.warmstart.steps,
        lr=c.warmstart.lr, batch_size=c.warmstart.batch_size,
        context_length=c.sampling.max_context_length, seed=c.train.seed,
        dialogue_turns=c.warmstart.dialogue_turns, pool=run.pool,
        num_dialogues=c.warmstart.num_dialogues, feedback_fraction=c.warmstart.feedback_fraction,
        log=lambda step, m: print(f"[warmstart] step {step}: " + ", ".join(
            f"{k.split('/')[-1]} {v:.4g}" for k, v in m.items()), flush=True))
  checkpoint_lib.save_params(ref_dir, params, metadata={"what": "initial policy (KL reference)"})
  return params


def _problem_stream(run: Run, seed: int):
  """Endless (problem, reference solutions) pairs from the train split (warm start)."""
  from rlef_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  c = run.config
  iterator = pipeline.make_iterator(data_source(c, c.data.train_split), seed=seed, shuffle=True)
  for example in iterator:
    if example["problem"].get("solutions"):
      yield to_problems([example], c, run.pool)[0], example["problem"]


# ---------------------------------------------------------------------------------------------
# Data order across processes


def _iterator_states(iterator) -> list:
  """Every process's data-iterator state (process order), for the checkpoint."""
  return distributed.allgather_objects(iterator.get_state())


def _this_process_iterator_state(saved: Any) -> Any:
  """This process's state from a checkpoint's `data_iterator` (a single state: one process)."""
  if not isinstance(saved, list):
    saved = [saved]
  if len(saved) != jax.process_count():
    raise errors.ConfigError(f"the checkpoint was written by {len(saved)} process(es) and this run has "
                             f"{jax.process_count()}: the data order cannot be resumed with another process "
                             "count; resume with the same layout")
  return saved[jax.process_index()]


def _round_problems(run: Run, iterator, count: int) -> list[Any]:
  return to_problems([next(iterator) for _ in range(count)], run.config, run.pool)


# ---------------------------------------------------------------------------------------------
# The command


def check_workdir(workdir: str) -> None:
  """Refuses a workdir that cannot be one, before anything is built or written: a URL (`gs://...`:
  paths here go through `os.path`, so one would silently become a local directory named `gs:` on each
  host instead of the shared bucket), a path that is not a directory, or one this user cannot read,
  write or create."""
  workdir = str(workdir)
  if "://" in workdir:
    raise errors.ConfigError(
        f"--workdir={workdir}: URL workdirs are not supported yet; mount the bucket at the same path on "
        "every host (gcsfuse, or an NFS share) and pass that path (experiments/tpu/README.md, \"Workdir\")")
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise errors.InputError(f"--workdir={workdir} exists and is not a directory; pass a directory "
                              "(a new one is created)")
    if not os.access(workdir, os.R_OK | os.W_OK | os.X_OK):
      raise errors.InputError(f"--workdir={workdir}: this user cannot read and write it (permissions "
                              f"{oct(os.stat(workdir).st_mode & 0o777)})")
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise errors.InputError(f"--workdir={workdir} cannot be created: {parent} is not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise errors.InputError(f"--workdir={workdir} cannot be created: this user cannot write {parent}")


def _make_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise errors.InputError(f"--workdir={workdir} cannot be created: {e.strerror or e}") from None


class _Stop:
  """Set by SIGTERM: finish the current phase and round, checkpoint, exit cleanly (SIGINT keeps
  Python's default: an immediate KeyboardInterrupt, the last checkpoint stays valid)."""
  requested = False

  @classmethod
  def install(cls):
    cls.requested = False

    def handler(signum, frame):
      del frame
      logging.warning("signal %d: stopping after this round with a final checkpoint", signum)
      cls.requested = True
    signal.signal(signal.SIGTERM, handler)


def _command_args(argv: Sequence[str]) -> tuple[Any, str]:
  """(config, workdir) of the train / evaluate / warmstart commands, after checking the command line,
  the config (`config.validate`, without the devices: before `distributed.initialize`) and the
  workdir. Nothing is written yet."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax and TFDS log every file at INFO
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  config_lib.validate(_CONFIG.value)
  check_workdir(_WORKDIR.value)
  return _CONFIG.value, _WORKDIR.value


def _run_rngs(c: Any) -> tuple[jax.Array, ...]:
  """(init, value, eval, train) keys of a run: the initial policy's key is the warm start's too."""
  return tuple(jax.random.split(jax.random.key(c.train.seed), 4))


def warmstart_main(argv: Sequence[str]) -> None:
  """`python -m rlef_jax.warmstart`: the warm-start phase alone; writes WORKDIR/reference_params, which
  `rlef_jax.train` on the same workdir then starts RL from (and `rlef_jax.evaluate
  --checkpoint=warmstart` evaluates)."""
  c, workdir = _command_args(argv)
  if os.path.exists(os.path.join(workdir, REFERENCE_DIR)):
    print(f"[warmstart] {workdir}/{REFERENCE_DIR} exists already; nothing to do", flush=True)
    return
  distributed.initialize(c)
  run = build(c, workdir)
  try:
    if c.warmstart.enabled:
      data_source(c, c.data.train_split)  # a bad dataset fails before the workdir is made
    _make_workdir(workdir)
    reference_params(run, _run_rngs(c)[0])
    print(f"[warmstart] wrote {workdir}/{REFERENCE_DIR}", flush=True)
  finally:
    run.close()


def train(config: Any, workdir: str, *, stop_after_updates: Optional[int] = None) -> dict:
  """Runs (or resumes) training; returns the final evaluation summaries. `stop_after_updates` stops
  early at a round boundary with a checkpoint, as a SIGTERM would (used by the resume test)."""
  from rlef_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  check_workdir(workdir)
  _Stop.install()  # before the warm start and first evaluation, which can take minutes
  run = build(config, workdir)
  c = config
  try:
    # The datasets first: a bad input file fails before the workdir is made or minutes are spent.
    train_source = data_source(c, c.data.train_split)
    problems_eval = eval_problems(c, c.eval.split, run.pool)
    _make_workdir(workdir)
    init_rng, value_rng, eval_rng, train_rng = _run_rngs(c)
    ref_params = reference_params(run, init_rng)

    policy_opt, value_opt = ppo.make_optimizers(c.optim, total_steps=c.train.num_updates)
    value_params = model_lib.value_params_from_policy(ref_params, value_rng, run.llama_config)
    # The update donates the state, so the policy must not share buffers with the frozen reference.
    policy_params = jax.tree.map(lambda x: jnp.array(x, copy=True), ref_params)
    ref_params = model_lib.cast_floating(ref_params, c.rl.reference_dtype)  # ρ: forward passes only
    state = ppo.init_train_state(policy_params, value_params, policy_opt, value_opt, train_rng)
    state = round_batch.on_mesh(state, run.mesh)

    iterator = pipeline.make_iterator(
        train_source, seed=c.data.seed, shuffle=c.data.shuffle,
        process_index=jax.process_index(), process_count=jax.process_count())

    checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                               max_to_keep=c.train.keep_checkpoints,
                                               keep_period=c.train.eval_every,
                                               verify=c.train.verify_checkpoints)
    start_step = 0
    if checkpointer.latest_step() is not None:
      state, extra = checkpointer.restore(None, checkpoint_lib.abstract_like(state))
      iterator.set_state(_this_process_iterator_state(extra["data_iterator"]))
      start_step = int(state.step)
      print(f"[train] resumed from step {start_step} in {workdir}", flush=True)

    results = {}
    # Process 0 writes the evaluations; it decides for all (other hosts may not see its files).
    before_done = distributed.allgather_objects(
        os.path.exists(os.path.join(workdir, EVAL_DIR, "step_0.json")))[0]
    if start_step == 0 and not before_done:
      results["before"] = run_evaluation(run, ref_params, problems_eval, "step_0",
                                         jax.random.fold_in(eval_rng, 0), checkpoint="reference", step=0)
      record_best(workdir, results["before"], c.eval.select_metric)

    engine = rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                       c.env, rollout_settings(c, evaluation=False), run.mesh)
    fns = {"logprob": ppo.make_logprob_fn(run.policy_model, mesh=run.mesh, chunk=c.rl.logprob_chunk),
           "value": ppo.make_value_fn(run.value_model, mesh=run.mesh)}
    update = ppo.make_update_step(run.policy_model, run.value_model, policy_opt, value_opt, c.rl,
                                  mesh=run.mesh, num_microbatches=c.rl.num_microbatches)
    writer = metrics_lib.MetricsWriter(metrics_lib.local_metrics_dir(workdir), total_steps=c.train.num_updates, resume_step=start_step,
                                       log_every=c.train.log_every,
                                       console_keys=("solve/private", "reward/task_mean", "episode/turns",
                                                     "kl/turn_mean"))
    timers = metrics_lib.Timers()
    step = start_step
    per_round = c.rl.updates_per_round
    if c.rl.rollouts_per_round % jax.process_count():
      raise errors.ConfigError(f"rl.rollouts_per_round={c.rl.rollouts_per_round} must divide evenly over "
                               f"the {jax.process_count()} processes")
    local_rollouts = c.rl.rollouts_per_round // jax.process_count()
    last_checkpoint = start_step
    while step < c.train.num_updates:
      round_start = time.perf_counter()
      round_rng = jax.random.fold_in(state.rng, step)
      with timers("rollout"):
        problems = _round_problems(run, iterator, local_rollouts)
        records, stats = engine.run(state.policy_params, problems, round_rng)
      with timers("score"):
        batch, round_metrics = round_batch.make_round_batch(run, state, ref_params, records, fns)
      with timers("update"):
        # Minibatches walk through a fresh permutation of the round's episodes per pass (the paper's
        # 4 x 256 = 1024 is one pass; more updates than that make further passes).
        # Every process holds the whole round (round_batch) and draws the same minibatches.
        episodes = batch["tokens_BxL"].shape[0]
        per_pass = episodes // c.rl.minibatch_size
        update_metrics = []
        for k in range(per_round):
          if k % per_pass == 0:
            order = distributed.to_host(jax.random.permutation(
                jax.random.fold_in(jax.random.fold_in(round_rng, 1), k // per_pass), episodes))
          rows = order[(k % per_pass) * c.rl.minibatch_size:(k % per_pass + 1) * c.rl.minibatch_size]
          minibatch = {key: round_batch.to_device(run, batch[key][rows]) for key in ppo.MINIBATCH_KEYS}
          state, m = update(state, minibatch)
          update_metrics.append(m)
          step += 1
        jax.block_until_ready((state, update_metrics))  # time the updates, not their dispatch
      seconds = time.perf_counter() - round_start
      tokens = float(np.sum(batch["policy_mask_BxL"]))
      log = {**round_metrics, **stats.as_metrics(),
             **{k: float(np.mean([metrics_lib.to_scalar(k, m[k]) for m in update_metrics]))
                for k in update_metrics[0]},
             **timers.report(), "throughput/policy_tokens_per_second": tokens / seconds,
             "round/seconds": seconds}
      writer.write(step, log)

      last = step >= c.train.num_updates
      # A signal reaches the hosts of a pod at different times; all stop after the same round.
      stopping = bool(distributed.agree_max(
          _Stop.requested or (stop_after_updates is not None and step >= stop_after_updates)))
      evaluating = bool(c.train.eval_every) and step % c.train.eval_every == 0 and not last
      if evaluating:
        summary = run_evaluation(run, state.policy_params, problems_eval, f"step_{step}",
                                 jax.random.fold_in(eval_rng, step),
                                 single_turn=c.eval.select_metric != "multi_turn_1at3",
                                 checkpoint=f"step_{step}", step=step)
        record_best(workdir, summary, c.eval.select_metric)
      if last or stopping or evaluating or step - last_checkpoint >= c.train.checkpoint_every:
        checkpointer.save(step, state, {"data_iterator": _iterator_states(iterator)})
        last_checkpoint = step
      if stopping and not last:
        checkpointer.wait()
        print(f"[train] stopped at step {step}; rerun the same command to resume", flush=True)
        writer.close()
        checkpointer.close()
        return results
    checkpointer.wait()
    writer.close()
    checkpointer.close()
    results["after"] = run_evaluation(run, state.policy_params, problems_eval, f"step_{step}_final",
                                      jax.random.fold_in(eval_rng, 10**9), checkpoint=f"step_{step}",
                                      step=step)
    record_best(workdir, results["after"], c.eval.select_metric)
    if "before" not in results:
      before_path = os.path.join(workdir, EVAL_DIR, "step_0.json")
      if os.path.exists(before_path):
        with open(before_path) as f:
          results["before"] = json.load(f)
    if "before" in results:
      print(f"[result] before RLEF: {evaluate_lib.format_summary(results['before'])}", flush=True)
    print(f"[result] after RLEF:  {evaluate_lib.format_summary(results['after'])}", flush=True)
    return results
  finally:
    run.close()


def _evaluated_params(run: Run, which: Optional[str]) -> tuple[Any, str, Optional[int]]:
  """(params, checkpoint name, step) of `--checkpoint`: a step, 'best', 'warmstart'/'reference', a
  params directory, or (None) the latest train checkpoint."""
  c, workdir = run.config, run.workdir
  shardings = sharding.param_shardings(run.policy_model, run.mesh)
  if which == "best":
    path = os.path.join(workdir, BEST_FILE)
    if not os.path.exists(path):
      raise errors.MissingPathError(f"--checkpoint=best: {path} does not exist (it is written by training "
                                    "runs that evaluate, train.eval_every > 0 or the final evaluation)")
    with open(path) as f:
      best = json.load(f)
    print(f"[evaluate] best checkpoint by {best['metric']} on {best.get('split')}: {best['checkpoint']} "
          f"({best['value']:.4f})", flush=True)
    which = "reference" if best["checkpoint"] == "reference" else str(best["step"])
  if which in ("warmstart", "reference"):
    params, _ = checkpoint_lib.restore_params(os.path.join(workdir, REFERENCE_DIR), shardings=shardings,
                                              verify=c.train.verify_checkpoints)
    return params, "reference", 0
  if which and os.path.isdir(which):
    params, _ = checkpoint_lib.restore_params(which, shardings=shardings,
                                              verify=c.train.verify_checkpoints)
    return params, os.path.basename(os.path.normpath(which)), None
  checkpointer = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                             verify=c.train.verify_checkpoints)
  step = int(which) if which else checkpointer.latest_step()
  if step is None:
    raise errors.MissingPathError(f"no train checkpoint in {workdir}/checkpoints; pass --checkpoint")
  policy_opt, value_opt = ppo.make_optimizers(c.optim, total_steps=c.train.num_updates)
  rng = jax.random.key(0)
  params0 = sharding.init_params(run.policy_model, run.mesh, rng)
  template = ppo.init_train_state(
      params0, model_lib.value_params_from_policy(params0, rng, run.llama_config),
      policy_opt, value_opt, rng)
  state, _ = checkpointer.restore(step, checkpoint_lib.abstract_like(template))
  return state.policy_params, f"step_{step}", step


def check_evaluated_checkpoint(workdir: str, which: Optional[str]) -> None:
  """`--checkpoint` (None: the latest train checkpoint) names something that exists."""
  if which == "best":
    path = os.path.join(workdir, BEST_FILE)
    if not os.path.isfile(path):
      raise errors.MissingPathError(f"--checkpoint=best: {path} does not exist (it is written by "
                                    "training runs that evaluate, train.eval_every > 0 or the final "
                                    "evaluation)")
  elif which in ("warmstart", "reference"):
    path = os.path.join(workdir, REFERENCE_DIR)
    if not os.path.isdir(path):
      raise errors.MissingPathError(f"--checkpoint={which}: {path} does not exist (a training run or "
                                    "python -m rlef_jax.warmstart on this workdir writes it)")
  elif which and os.path.isdir(which):
    return
  elif which and not which.isdigit():
    raise errors.MissingPathError(f"--checkpoint={which}: neither a step, 'best', 'warmstart'/"
                                  f"'reference' nor an existing params directory{_cwd_note(which)}")
  elif not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise errors.MissingPathError(f"no train checkpoint in {os.path.join(workdir, 'checkpoints')} "
                                  f"(--workdir={workdir}); train first, or pass --checkpoint")


def evaluate_main(argv: Sequence[str]) -> None:
  """`python -m rlef_jax.evaluate`: evaluate a checkpoint of a workdir on a split, for each feedback
  variant and turn budget asked for (`--feedback`, `--max_turns`: a sweep over one checkpoint)."""
  c, workdir = _command_args(argv)
  feedbacks = _FEEDBACK.value or [c.eval.feedback]
  bad = [f for f in feedbacks if f not in env_config_lib.FEEDBACK_VARIANTS]
  if bad:
    raise app.UsageError(f"--feedback: unknown variants {bad}; choose from "
                         f"{list(env_config_lib.FEEDBACK_VARIANTS)}")
  try:
    budgets = [int(t) for t in (_MAX_TURNS.value or [c.eval.max_turns])]
  except ValueError:
    raise app.UsageError(f"--max_turns must be positive integers, got {_MAX_TURNS.value}") from None
  if any(t < 1 for t in budgets):
    raise app.UsageError(f"--max_turns must be positive integers, got {budgets}")
  check_evaluated_checkpoint(workdir, _CHECKPOINT.value)
  distributed.initialize(c)
  run = build(c, workdir)
  try:
    params, name, step = _evaluated_params(run, _CHECKPOINT.value)
    split = _SPLIT.value or c.eval.split
    problems = eval_problems(c, split, run.pool)
    default = (c.eval.feedback, c.eval.max_turns)
    for i, (feedback, turns) in enumerate((f, t) for f in feedbacks for t in budgets):
      suffix = "" if (feedback, turns) == default else f"_{feedback}_t{turns}"
      # Single-turn samples do not depend on the feedback or the budget: drawn once per command.
      run_evaluation(run, params, problems, f"evaluate_{name}_{split}{suffix}",
                     jax.random.key(c.train.seed + 7), single_turn=i == 0, checkpoint=name, step=step,
                     split=split, max_turns=turns, feedback=feedback)
  finally:
    run.close()


def main(argv: Sequence[str]) -> None:
  config, workdir = _command_args(argv)
  distributed.initialize(config)
  train(config, workdir)


if __name__ == "__main__":
  cli.run(main, required=["config"])
