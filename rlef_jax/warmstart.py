"""Supervised warm start: statement → reference solution, single turn (tiny synthetic model only).

The paper starts RL from Llama 3.x Instruct, which already answers in fenced Python code (paper §3,
"no SFT warm-start"). A tiny random model cannot, so `configs/tiny.py` first fine-tunes it on single-turn
dialogues: the initial user prompt (the real CodeContests template) followed by one of the problem's
reference `solutions` as the assistant response. No feedback turn is ever shown: whatever the model
learns about using feedback comes from RLEF.

  python -m rlef_jax.warmstart --config=configs/tiny.py --workdir=DIR   (train runs it on its own too)
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlef_jax import env as env_lib


def sft_example(problem: Any, solution: str, tokenizer: Any, env_config: Any) -> tuple[list[int], int]:
  """(token ids, index of the first response token) of one single-turn dialogue."""
  prompt = list(env_lib.start(problem, tokenizer, env_config).tokens)
  response = tokenizer.encode(f"```python\n{solution.strip()}\n```") + [tokenizer.eot_id]
  return prompt + response, len(prompt)


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


def make_sft_step(model: Any, optimizer: optax.GradientTransformation) -> Callable:
  """Jitted `(params, opt_state, batch) -> (params, opt_state, loss)`: token-mean cross-entropy of the
  response tokens given everything before them."""

  def loss_fn(params, batch):
    logits_BxLxV, _ = model.apply({"params": params}, batch["tokens_BxL"])
    logp_BxLxV = jax.nn.log_softmax(logits_BxLxV[:, :-1], axis=-1)
    target_logp_BxL = jnp.take_along_axis(logp_BxLxV, batch["tokens_BxL"][:, 1:, None], -1)[..., 0]
    mask_BxL = batch["loss_mask_BxL"][:, 1:]
    return -jnp.sum(target_logp_BxL * mask_BxL) / jnp.maximum(jnp.sum(mask_BxL), 1.0)

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def run(params: Any, model: Any, problems: Iterator[Any], tokenizer: Any, *, env_config: Any,
        steps: int, lr: float, batch_size: int, context_length: int, seed: int,
        log: Callable[[int, dict[str, float]], None] | None = None) -> Any:
  """`steps` AdamW steps (linear warm-up over the first 10%, then cosine decay) on problems drawn
  from `problems` (each yields one example with a random reference solution). Returns the params."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), max(steps, 2))
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  opt_state = optimizer.init(params)
  step_fn = make_sft_step(model, optimizer)
  rng = np.random.default_rng(seed)
  start = time.perf_counter()
  for step in range(steps):
    examples = []
    for _ in range(batch_size):
      problem, solutions = next(problems)
      examples.append(sft_example(problem, solutions[rng.integers(len(solutions))], tokenizer,
                                  env_config))
    length = min(context_length, -(-max(len(e[0]) for e in examples) // 32) * 32)
    params, opt_state, loss = step_fn(params, opt_state, make_batch(examples, tokenizer.pad_id, length))
    if log is not None and (step % 20 == 0 or step == steps - 1):
      log(step, {"warmstart/loss": float(loss), "warmstart/seconds": time.perf_counter() - start})
  return params
