"""The RLEF trainer (paper §2–3, App. A.1): `python -m rlef_jax.train --config=configs/X.py --workdir=DIR`.

`train()` reads top to bottom as its phases: build the run (`experiment.build`: mesh, tokenizer,
models, executor, typed settings) → `_start` (datasets, the frozen reference ρ after the warm start,
a fresh or resumed train state) → `_evaluate_before` → rounds of `_round_rollouts` (rollouts with the
current policy), `round_batch.make_round_batch` (old/reference log-probs, values, per-turn targets),
`_update` (K minibatch PPO updates), `_log`, `_evaluate_and_checkpoint` → `_finish` (final
checkpoint and evaluation).

With `rl.async_rollouts` (one process) the next round's rollouts are sampled in a thread, from a copy
of the policy before this round's updates, while those updates run (`_start_next_rollouts`): the
paper's split of inference and training, one round (K updates) stale, which the behaviour-policy
correction of the loss accounts for; `rollout/policy_lag_updates` and `logp/behaviour_kl` log it.

A round collects `rl.rollouts_per_round` episodes, computes per-turn rewards with the KL penalty to ρ,
returns, values and advantages once for the whole round, then makes `rl.updates_per_round` updates of
`rl.minibatch_size` episodes. The step counter counts updates (paper: 12,000 updates for 8B).
Checkpoints hold both models' params and optimizer states, the step, the RNG and the data iterator's
state, and are written at round boundaries; a run restarted with the same workdir resumes from the
latest one. SIGTERM finishes the current round, writes a checkpoint and exits 0.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import signal
import time
from typing import Any, Optional, Sequence

from absl import logging
import jax
import numpy as np

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import cli
from rlef_jax import commands
from rlef_jax import distributed
from rlef_jax import errors
from rlef_jax import evaluate as evaluate_lib
from rlef_jax import experiment
from rlef_jax import metrics as metrics_lib
from rlef_jax import model as model_lib
from rlef_jax import ppo
from rlef_jax import ppo_update
from rlef_jax import rollout as rollout_lib
from rlef_jax import round_batch
from rlef_jax import train_state
from rlef_jax import warmstart

CONSOLE_KEYS = ("solve/private", "reward/task_mean", "episode/turns", "kl/turn_mean")


@dataclasses.dataclass
class _Training:
  """What the rounds read and advance: the train state and where it stands, the frozen reference,
  the data order, the jitted functions, and the checkpoint and metrics writers."""
  state: ppo.TrainState
  step: int
  ref_params: Any
  iterator: Any
  problems_eval: list
  eval_rng: jax.Array
  engine: rollout_lib.RolloutEngine
  score_fns: dict
  update: Any
  checkpointer: checkpoint_lib.Checkpointer
  writer: metrics_lib.MetricsWriter
  last_checkpoint: int
  pending: Optional["_PendingRollouts"] = None  # rl.async_rollouts: the next round's, in flight

  def close(self):
    self.drop_pending()
    self.checkpointer.wait()
    self.writer.close()
    self.checkpointer.close()

  def drop_pending(self):
    """Waits for rollouts still in flight and discards them (a stop, an error): nothing is left
    running on the executor pool or the devices."""
    if self.pending is not None:
      concurrent.futures.wait([self.pending.future])
      self.pending.thread.shutdown()
      self.pending = None


@dataclasses.dataclass
class _PendingRollouts:
  """The next round's rollouts (`rl.async_rollouts`), sampled in a thread while this round's updates
  run, from a copy of the policy as it was before them."""
  future: concurrent.futures.Future
  thread: concurrent.futures.ThreadPoolExecutor
  policy_step: int  # the updates the sampling policy had seen
  iterator_state: Any  # the data order before their problems were drawn: what a checkpoint keeps


def train(config: Any, workdir: str, *, stop_after_updates: Optional[int] = None) -> dict:
  """Runs (or resumes) training; returns the evaluation summaries ("before", "after"). With
  `stop_after_updates` it stops early at a round boundary with a checkpoint, as a SIGTERM would."""
  commands.check_workdir(workdir)
  _Stop.install()  # before the warm start and first evaluation, which can take minutes
  run = experiment.build(config, workdir)
  t = None
  try:
    t = _start(run)
    results = _evaluate_before(run, t)
    while t.step < config.train.num_updates:
      round_start = time.perf_counter()
      round_rng = jax.random.fold_in(t.state.rng, t.step)
      timers = metrics_lib.Timers()
      with timers("rollout"):  # with rl.async_rollouts: the wait for the rollouts sampled last round
        records, stats, lag = _round_rollouts(run, t, round_rng)
      with timers("score"):
        batch, round_metrics = round_batch.make_round_batch(run, t.state, t.ref_params, records,
                                                            t.score_fns)
      if config.rl.async_rollouts and t.step + config.rl.updates_per_round < config.train.num_updates:
        t.pending = _start_next_rollouts(run, t)  # sampled while this round's updates run
      with timers("update"):
        update_metrics = _update(run, t, batch, round_rng)
      _log(t, batch, {**round_metrics, **stats.as_metrics(), "rollout/policy_lag_updates": lag},
           update_metrics, timers, round_start)
      if _evaluate_and_checkpoint(run, t, stop_after_updates):
        t.close()
        print(f"[train] stopped at step {t.step}; rerun the same command to resume", flush=True)
        return results
    t.close()
    return _finish(run, t, results)
  finally:
    try:
      run.close()  # first: rollouts still in flight then fail fast on the closed executor pool
    finally:
      if t is not None:
        t.drop_pending()


# ---------------------------------------------------------------------------------------------
# Phases


def _start(run: experiment.Run) -> _Training:
  """Datasets (a bad input file fails before the workdir is made or minutes are spent), the workdir,
  the reference ρ (after the warm start), optimizers, the train state (fresh, or the latest
  checkpoint's restored onto an abstract target: never two states at once) and the jitted functions
  of a round."""
  from rlef_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  c = run.config
  if c.rl.async_rollouts and jax.process_count() > 1:
    raise errors.ConfigError("config.rl.async_rollouts runs in one process only (its rollout thread's "
                             "collectives would interleave with the updates' across hosts); set it "
                             "to False for a multi-host run")
  if c.rl.rollouts_per_round % jax.process_count():
    raise errors.ConfigError(f"rl.rollouts_per_round={c.rl.rollouts_per_round} must divide evenly over "
                             f"the {jax.process_count()} processes")
  train_source = experiment.data_source(c, c.data.train_split)
  problems_eval = experiment.eval_problems(c, c.eval.split, run.pool)
  commands.make_workdir(run.workdir)
  init_rng, value_rng, eval_rng, train_rng = experiment.run_rngs(c)
  ref_params = warmstart.reference_params(run, init_rng)

  policy_opt, value_opt = ppo.make_optimizers(c.optim, total_steps=c.train.num_updates)
  iterator = pipeline.make_iterator(
      train_source, seed=c.data.seed, shuffle=c.data.shuffle,
      process_index=jax.process_index(), process_count=jax.process_count())
  checkpointer = checkpoint_lib.Checkpointer(run.workdir / "checkpoints",
                                             max_to_keep=c.train.keep_checkpoints,
                                             keep_period=c.train.eval_every,
                                             verify=c.train.verify_checkpoints)
  step = 0
  if checkpointer.latest_step() is None:
    state = train_state.fresh(ref_params, run.llama_config, policy_opt, value_opt, value_rng,
                              train_rng, run.mesh)
  else:  # restored onto an abstract target: one train state in memory, never two
    target, _ = train_state.abstract(run.policy_model, policy_opt, value_opt, run.mesh,
                                     c.rl.reference_dtype)
    state, extra = checkpointer.restore(None, target)
    iterator.set_state(_this_process_iterator_state(extra["data_iterator"]))
    step = int(state.step)
    print(f"[train] resumed from step {step} in {run.workdir}", flush=True)
  ref_params = model_lib.cast_floating(ref_params, c.rl.reference_dtype)  # ρ: forward passes only

  settings = run.ppo_settings
  return _Training(
      state=state, step=step, ref_params=ref_params, iterator=iterator,
      problems_eval=problems_eval, eval_rng=eval_rng,
      engine=rollout_lib.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool,
                                       c.env, experiment.rollout_settings(c, evaluation=False),
                                       run.mesh),
      score_fns=round_batch.make_score_fns(run),
      update=ppo_update.make_update_step(run.policy_model, run.value_model, policy_opt, value_opt, settings,
                                  mesh=run.mesh, num_microbatches=c.rl.num_microbatches,
                                  bucket_tokens=c.rl.update_bucket_tokens),
      checkpointer=checkpointer,
      writer=metrics_lib.MetricsWriter(run.workdir,
                                       total_steps=c.train.num_updates, resume_step=step,
                                       log_every=c.train.log_every, console_keys=CONSOLE_KEYS),
      last_checkpoint=step)


def _evaluate_before(run: experiment.Run, t: _Training) -> dict:
  """The reference policy's evaluation (step_0), once per workdir."""
  # Process 0 writes the evaluations; it decides for all (other hosts may not see its files).
  done = distributed.allgather_objects(
      (run.workdir / evaluate_lib.EVAL_DIR / "step_0.json").exists())[0]
  if t.step or done:
    return {}
  before = evaluate_lib.run_evaluation(run, t.ref_params, t.problems_eval, "step_0",
                                       jax.random.fold_in(t.eval_rng, 0), checkpoint="reference",
                                       step=0)
  evaluate_lib.record_best(run.workdir, before, run.config.eval.select_metric)
  return {"before": before}


def _draw_problems(run: experiment.Run, t: _Training) -> list:
  """This process's share of the next round's problems, from the data order."""
  count = run.config.rl.rollouts_per_round // jax.process_count()
  examples = [next(t.iterator) for _ in range(count)]
  return experiment.to_problems(examples, run.config, run.pool)


def _round_rollouts(run: experiment.Run, t: _Training, round_rng: jax.Array):
  """(records, stats, policy lag in updates) of this round: the rollouts started during the last
  round's updates when there are some (`rl.async_rollouts`), else sampled now with the current policy
  (the first round, and the first after a resume: lag 0)."""
  if t.pending is not None:
    pending, t.pending = t.pending, None
    records, stats = pending.future.result()
    pending.thread.shutdown()
    return records, stats, t.step - pending.policy_step
  records, stats = t.engine.run(t.state.policy_params, _draw_problems(run, t), round_rng)
  return records, stats, 0


def _start_next_rollouts(run: experiment.Run, t: _Training) -> _PendingRollouts:
  """Starts sampling the round after this one with the policy as it is now (a copy: the updates
  donate the state), its problems drawn here so the data order stays on this thread. Its key is the
  one that round would have had (the RNG of the state does not change in an update)."""
  iterator_state = t.iterator.get_state()
  problems = _draw_problems(run, t)
  params = jax.tree.map(lambda x: x.copy(), t.state.policy_params)
  next_rng = jax.random.fold_in(t.state.rng, t.step + run.config.rl.updates_per_round)
  thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts")
  future = thread.submit(t.engine.run, params, problems, next_rng)
  return _PendingRollouts(future, thread, t.step, iterator_state)


def _update(run: experiment.Run, t: _Training, batch: dict, round_rng: jax.Array) -> list[dict]:
  """`rl.updates_per_round` PPO updates on minibatches of the round. Minibatches walk through a fresh
  permutation of the round's episodes per pass (the paper's 4 × 256 = 1024 is one pass; more updates
  than that make further passes). Every process holds the whole round and draws the same rows."""
  c = run.config
  episodes = batch["tokens_BxL"].shape[0]
  per_pass = episodes // c.rl.minibatch_size
  metrics = []
  for k in range(c.rl.updates_per_round):
    if k % per_pass == 0:
      order = distributed.to_host(jax.random.permutation(
          jax.random.fold_in(jax.random.fold_in(round_rng, 1), k // per_pass), episodes))
    start = (k % per_pass) * c.rl.minibatch_size
    rows = order[start:start + c.rl.minibatch_size]
    minibatch = {key: round_batch.to_device(run, batch[key][rows])
                 for key in ppo.minibatch_keys(run.ppo_settings)}
    t.state, m = t.update(t.state, minibatch)
    metrics.append(m)
    t.step += 1
  jax.block_until_ready((t.state, metrics))  # time the updates, not their dispatch
  return metrics


def _log(t: _Training, batch: dict, round_metrics: dict, update_metrics: list[dict],
         timers: metrics_lib.Timers, round_start: float) -> None:
  """One metrics line per round: the round's, the updates' means, phase times and throughput."""
  seconds = time.perf_counter() - round_start
  tokens = float(np.sum(batch["policy_mask_BxL"]))
  means = {k: float(np.mean([metrics_lib.to_scalar(k, m[k]) for m in update_metrics]))
           for k in update_metrics[0]}
  t.writer.write(t.step, {**round_metrics, **means, **timers.report(),
                          "throughput/policy_tokens_per_second": tokens / seconds,
                          "round/seconds": seconds})


def _evaluate_and_checkpoint(run: experiment.Run, t: _Training,
                             stop_after_updates: Optional[int]) -> bool:
  """Evaluates every `train.eval_every` updates (recording the best), checkpoints when due; returns
  whether to stop now (SIGTERM, or `stop_after_updates`), with the checkpoint written."""
  c = run.config
  last = t.step >= c.train.num_updates
  # A signal reaches the hosts of a pod at different times; all stop after the same round.
  stopping = bool(distributed.agree_max(
      _Stop.requested or (stop_after_updates is not None and t.step >= stop_after_updates)))
  evaluating = bool(c.train.eval_every) and t.step % c.train.eval_every == 0 and not last
  if t.pending is not None and (stopping or evaluating):
    # One sampler at a time on the executor pool and the devices: the evaluation waits for the
    # rollouts in flight (kept for the next round; a stop discards them in `close`).
    concurrent.futures.wait([t.pending.future])
  if evaluating:
    summary = evaluate_lib.run_evaluation(
        run, t.state.policy_params, t.problems_eval, f"step_{t.step}",
        jax.random.fold_in(t.eval_rng, t.step),
        single_turn=c.eval.select_metric != "multi_turn_1at3", checkpoint=f"step_{t.step}",
        step=t.step)
    evaluate_lib.record_best(run.workdir, summary, c.eval.select_metric)
  if last or stopping or evaluating or t.step - t.last_checkpoint >= c.train.checkpoint_every:
    # With rollouts in flight, the data order saved is the one before their problems were drawn:
    # a resume draws the same problems and samples them with the policy it resumes (lag 0).
    t.checkpointer.save(t.step, t.state, {"data_iterator": _iterator_states(
        t.iterator, t.pending.iterator_state if t.pending is not None else None)})
    t.last_checkpoint = t.step
  return stopping and not last


def _finish(run: experiment.Run, t: _Training, results: dict) -> dict:
  """The final evaluation, the best checkpoint's record, and the before/after lines."""
  c = run.config
  results["after"] = evaluate_lib.run_evaluation(
      run, t.state.policy_params, t.problems_eval, f"step_{t.step}_final",
      jax.random.fold_in(t.eval_rng, 10**9), checkpoint=f"step_{t.step}", step=t.step)
  evaluate_lib.record_best(run.workdir, results["after"], c.eval.select_metric)
  if "before" not in results:
    before_path = run.workdir / evaluate_lib.EVAL_DIR / "step_0.json"
    if before_path.exists():
      results["before"] = json.loads(before_path.read_text())
  if "before" in results:
    print(f"[result] before RLEF: {evaluate_lib.format_summary(results['before'])}", flush=True)
  print(f"[result] after RLEF:  {evaluate_lib.format_summary(results['after'])}", flush=True)
  return results


# ---------------------------------------------------------------------------------------------
# Data order across processes, signals


def _iterator_states(iterator, state: Any = None) -> list:
  """Every process's data-iterator state (process order; this process's `state`, or the iterator's
  own), for the checkpoint."""
  return distributed.allgather_objects(iterator.get_state() if state is None else state)


def _this_process_iterator_state(saved: Any) -> Any:
  """This process's state from a checkpoint's `data_iterator` (a single state: one process)."""
  if not isinstance(saved, list):
    saved = [saved]
  if len(saved) != jax.process_count():
    raise errors.ConfigError(f"the checkpoint was written by {len(saved)} process(es) and this run has "
                             f"{jax.process_count()}: the data order cannot be resumed with another process "
                             "count; resume with the same layout")
  return saved[jax.process_index()]


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


def main(argv: Sequence[str]) -> None:
  config, workdir = commands.command_args(argv)
  distributed.initialize(config)
  train(config, workdir)


if __name__ == "__main__":
  cli.run(main, required=["config"])
