"""Supervised warm start: statement → reference solution, single turn (tiny synthetic model only).

The paper starts RL from Llama 3.x Instruct, which already answers in fenced Python code (paper §3,
"no SFT warm-start"). A tiny random model cannot, so `configs/tiny.py` first fine-tunes it on single-turn
dialogues: the initial user prompt (the real CodeContests template) followed by one of the problem's
reference `solutions` as the assistant response. By default whatever the model learns about *using*
feedback must come from RLEF, so the warm start contains no target that depends on a feedback message
(but see `feedback_fraction` below).

Two forms (`config.warmstart.dialogue_turns`):
* 1: statement → solution, single turn.
* n > 1 (synthetic family only): dialogues of 1..n turns whose earlier turns are incorrect solutions
  followed by their real execution feedback (run on the pool), and whose last turn — the only one in
  the loss — is a program drawn uniformly from those the *statement alone* allows
  (`synthetic.statement_programs`), i.e. with a separator independent of the feedback. The model
  learns the multi-turn format (keep answering in code after a feedback message) but nothing about
  reading the feedback: its multi-turn 1@3 stays at the feedback-blind level. We use this for the
  tiny model because after a single-turn warm start it answered a feedback message with code in only
  ~1/3 of turns, and RL then spends its budget re-learning the format.
  `warmstart.feedback_fraction` f > 0 makes the model *partly* feedback-aware: with probability f the
  last answer of a dialogue with feedback is the correct program (the separator the feedback message
  shows). This stands in for the paper's starting point, an Instruct model that already uses feedback
  somewhat but unreliably; RLEF must then make it reliable.

`reference_params(run, rng)` makes the frozen initial policy ρ of a workdir once (the initial params,
then this warm start when `config.warmstart.enabled`) and reads it back afterwards; the trainer and
this module's command both call it.

  python -m rlef_jax.warmstart --config=configs/tiny.py --workdir=DIR   (train runs it on its own too)
  python -m rlef_jax.evaluate --config=configs/tiny.py --workdir=DIR --checkpoint=warmstart
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlef_jax import checkpoint as checkpoint_lib
from rlef_jax import cli
from rlef_jax import commands
from rlef_jax import distributed
from rlef_jax import env as env_lib
from rlef_jax import errors
from rlef_jax import experiment
from rlef_jax import ppo_update
from rlef_jax import sharding
from rlef_jax import storage


def sft_example(problem: Any, solution: str, tokenizer: Any, env_config: Any) -> tuple[list[int], int]:
  """(token ids, index of the first response token) of one single-turn dialogue."""
  prompt = list(env_lib.start(problem, tokenizer, env_config).tokens)
  response = tokenizer.encode(f"```python\n{solution.strip()}\n```") + [tokenizer.eot_id]
  return prompt + response, len(prompt)


def feedback_blind_dialogues(problems: Sequence[tuple[Any, dict]], tokenizer: Any, env_config: Any,
                             pool: Any, *, max_turns: int, seed: int, feedback_fraction: float = 0.0
                             ) -> list[tuple[list[int], int]]:
  """Multi-turn warm-start examples (see the module docstring): (token ids, index of the first token
  of the final response). `problems` holds (Problem, synthetic record) pairs. With
  `feedback_fraction` f > 0, the final answer of a dialogue that has a feedback message is, with
  probability f, the correct program (the separator the feedback shows) instead of a blind draw."""
  if not 0.0 <= feedback_fraction <= 1.0:
    raise ValueError(f"feedback_fraction must be in [0, 1], got {feedback_fraction}")
  from rlef_jax import synthetic  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  states, wrong = [], []
  for problem, record in problems:
    separator = synthetic.separator_of(record)
    programs = [p for p in synthetic.statement_programs(record["description"])
                if synthetic.separator_in_program(p) != separator]
    wrong.append(list(rng.permutation(programs)))
    states.append((env_lib.start(problem, tokenizer, env_config), int(rng.integers(1, max_turns + 1))))
  # Earlier turns: incorrect programs and the feedback the executor really gives on them.
  for turn in range(max_turns - 1):
    jobs = {}
    for i, (state, turns) in enumerate(states):
      if turn < turns - 1 and not state.done:
        response = tokenizer.encode(f"```python\n{wrong[i][turn]}\n```") + [tokenizer.eot_id]
        state, job = env_lib.on_response(state, response)
        states[i] = (state, turns)
        jobs[i] = pool.submit(job)
    for i, future in jobs.items():
      state, turns = states[i]
      states[i] = (env_lib.on_public_result(state, future.result()), turns)
  examples = []
  coins = np.random.default_rng([seed, 1])  # its own stream: the blind draws stay the same for any f
  for (state, turns), (_, record) in zip(states, problems):
    choices = synthetic.statement_programs(record["description"])
    target = choices[rng.integers(len(synthetic.SEPARATORS))]
    if turns > 1 and not state.done and coins.random() < feedback_fraction:
      target = choices[synthetic.SEPARATORS.index(synthetic.separator_of(record))]
    prompt = list(state.tokens)
    examples.append((prompt + tokenizer.encode(f"```python\n{target}\n```") + [tokenizer.eot_id],
                     len(prompt)))
  return examples


def make_batch(examples: Sequence[tuple[list[int], int]], pad_id: int,
               length: int) -> dict[str, np.ndarray]:
  """Right-padded tokens and a loss mask on the response tokens (the targets)."""
  tokens = np.full((len(examples), length), pad_id, np.int32)
  mask = np.zeros((len(examples), length), np.float32)
  for b, (ids, start) in enumerate(examples):
    if len(ids) > length:
      raise ValueError(f"a warm-start dialogue has {len(ids)} tokens, more than the context of {length}; "
                       "raise config.sampling.max_context_length")
    tokens[b, :len(ids)] = ids
    mask[b, start:len(ids)] = 1.0
  return {"tokens_BxL": tokens, "loss_mask_BxL": mask}


def make_sft_step(model: Any, optimizer: optax.GradientTransformation,
                  num_microbatches: int = 1) -> Callable:
  """Jitted `(params, opt_state, batch) -> (params, opt_state, loss)`: token-mean cross-entropy of the
  response tokens given everything before them. With `num_microbatches` > 1 the batch's gradient is
  summed over that many row chunks (the mean's denominator is the whole batch's token count, so the
  result is the one-pass gradient up to float rounding): on a CPU, small chunks stay in cache and run
  ~1.7x faster (BUILD_NOTES "A faster main job")."""

  def nll_sum(params, batch):
    logits_BxLxV, _ = model.apply({"params": params}, batch["tokens_BxL"])
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1], axis=-1)
    target_logp_BxL = jnp.take_along_axis(logp_BxLxV, batch["tokens_BxL"][:, 1:, None], -1)[..., 0]
    return -jnp.sum(target_logp_BxL * batch["loss_mask_BxL"][:, 1:])

  def loss_fn(params, batch):
    return nll_sum(params, batch) / jnp.maximum(jnp.sum(batch["loss_mask_BxL"][:, 1:]), 1.0)

  def loss_and_grads(params, batch):
    if num_microbatches == 1:
      return jax.value_and_grad(loss_fn)(params, batch)
    count = jnp.maximum(jnp.sum(batch["loss_mask_BxL"][:, 1:]), 1.0)
    grad_fn = jax.value_and_grad(lambda p, mb: (nll_sum(p, mb) / count, ()), has_aux=True)
    (loss, _), grads = ppo_update.accumulate_grads(
        grad_fn, params, ppo_update.split_microbatches(batch, num_microbatches), num_microbatches)[0]
    return loss, grads

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = loss_and_grads(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def fine_tune(params: Any, model: Any, problems: Iterator[Any], tokenizer: Any, *, env_config: Any,
              steps: int, lr: float, batch_size: int, context_length: int, seed: int,
              dialogue_turns: int = 1, pool: Any = None, num_dialogues: int = 2048,
              feedback_fraction: float = 0.0, num_microbatches: int = 1,
              log: Callable[[int, dict[str, float]], None] | None = None) -> Any:
  """`steps` AdamW steps (linear warm-up over the first 10%, then cosine decay). `problems` yields
  (Problem, record) pairs. With `dialogue_turns == 1` each example is one problem with a random
  reference solution; otherwise `num_dialogues` feedback-blind dialogues are built first (needs the
  execution `pool`) and batches are drawn from them. Returns the params."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), max(steps, 2))
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  opt_state = optimizer.init(params)
  step_fn = make_sft_step(model, optimizer, num_microbatches)
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  dialogues = None
  if dialogue_turns > 1:
    if pool is None:
      raise ValueError("a multi-turn warm start needs the execution pool for its feedback messages")
    dialogues = feedback_blind_dialogues([next(problems) for _ in range(num_dialogues)], tokenizer,
                                         env_config, pool, max_turns=dialogue_turns, seed=seed,
                                         feedback_fraction=feedback_fraction)
  for step in range(steps):
    if dialogues is not None:
      examples = [dialogues[i] for i in rng.integers(len(dialogues), size=batch_size)]
    else:
      examples = []
      for _ in range(batch_size):
        problem, record = next(problems)
        solutions = record["solutions"]
        examples.append(sft_example(problem, solutions[rng.integers(len(solutions))], tokenizer,
                                    env_config))
    # Coarse length buckets: each new length is a new compilation, which costs more than padding.
    length = min(context_length, -(-max(len(e[0]) for e in examples) // 128) * 128)
    params, opt_state, loss = step_fn(params, opt_state, make_batch(examples, tokenizer.pad_id, length))
    if log is not None and (step % 20 == 0 or step == steps - 1):
      log(step, {"warmstart/loss": float(loss), "warmstart/seconds": time.perf_counter() - start})
  return params


# ---------------------------------------------------------------------------------------------
# The frozen initial policy ρ of a workdir, and the warm-start command

REFERENCE_DIR = "reference_params"   # the frozen initial policy ρ (after the warm start, if any)


def reference_params(run: experiment.Run, rng: jax.Array) -> Any:
  """The frozen initial policy ρ, made once per workdir (after the warm start when enabled)."""
  ref_dir = storage.path(run.workdir) / REFERENCE_DIR
  shardings = sharding.param_shardings(run.policy_model, run.mesh)
  # Process 0 decides for all: another host may look after process 0 has started writing it.
  if distributed.allgather_objects(ref_dir.exists())[0]:
    params, _ = checkpoint_lib.restore_params(ref_dir, shardings=shardings,
                                              verify=run.config.train.verify_checkpoints)
    return params
  params = experiment.initial_policy_params(run, rng)
  c = run.config
  if c.warmstart.enabled and distributed.is_multiprocess():
    raise errors.ConfigError("the supervised warm start (config.warmstart.enabled, a tiny-model phase) runs in "
                             "one process: run it once with a single process on this workdir (it writes "
                             f"{ref_dir}), or start from weights (config.model.init_checkpoint)")
  if c.warmstart.enabled:
    problems = experiment.problem_stream(run, seed=c.data.seed + 1)
    form = ("statement -> solution, single turn" if c.warmstart.dialogue_turns == 1 else
            f"dialogues of up to {c.warmstart.dialogue_turns} turns, feedback-following final answers: "
            f"{c.warmstart.feedback_fraction:.0%}")
    print(f"[warmstart] {c.warmstart.steps} supervised steps ({form})", flush=True)
    params = fine_tune(
        params, run.policy_model, problems, run.tokenizer, env_config=c.env, steps=c.warmstart.steps,
        lr=c.warmstart.lr, batch_size=c.warmstart.batch_size,
        context_length=c.sampling.max_context_length, seed=c.train.seed,
        dialogue_turns=c.warmstart.dialogue_turns, pool=run.pool,
        num_dialogues=c.warmstart.num_dialogues, feedback_fraction=c.warmstart.feedback_fraction,
        num_microbatches=c.warmstart.num_microbatches,
        log=lambda step, m: print(f"[warmstart] step {step}: " + ", ".join(
            f"{k.split('/')[-1]} {v:.4g}" for k, v in m.items()), flush=True))
  checkpoint_lib.save_params(ref_dir, params, metadata={"what": "initial policy (KL reference)"})
  return params


def main(argv: Sequence[str]) -> None:
  """`python -m rlef_jax.warmstart`: the warm-start phase alone; writes WORKDIR/reference_params, which
  `rlef_jax.train` on the same workdir then starts RL from (and `rlef_jax.evaluate
  --checkpoint=warmstart` evaluates)."""
  c, workdir = commands.command_args(argv)
  if (storage.path(workdir) / REFERENCE_DIR).exists():
    print(f"[warmstart] {workdir}/{REFERENCE_DIR} exists already; nothing to do", flush=True)
    return
  distributed.initialize(c)
  run = experiment.build(c, workdir)
  try:
    if c.warmstart.enabled:
      experiment.data_source(c, c.data.train_split)  # a bad dataset fails before the workdir is made
    commands.make_workdir(workdir)
    reference_params(run, experiment.run_rngs(c)[0])
    print(f"[warmstart] wrote {workdir}/{REFERENCE_DIR}", flush=True)
  finally:
    run.close()


if __name__ == "__main__":
  cli.run(main, required=["config"])
