"""The supervised warm start of the tiny model: which tokens are targets, the loss value, and that a
few steps lower it."""

import itertools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlef_jax import env as env_lib
from rlef_jax import model as model_lib
from rlef_jax import synthetic
from rlef_jax import warmstart
from rlef_jax.tokenizer import ChatTokenizer
from conftest import generation_prompt_ids, user_turn_ids

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
  return ChatTokenizer.load(ROOT / "rlef_jax/assets/synthetic_tokenizer")


@pytest.fixture(scope="module")
def records():
  return synthetic.generate_problems(4, seed=11)


@pytest.fixture(scope="module")
def pairs(records):
  return [(env_lib.Problem.from_record("synthetic", r), r) for r in records]


@pytest.fixture(scope="module")
def model(tokenizer):
  return model_lib.Llama(model_lib.LlamaConfig(
      vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_layers=1,
      num_heads=2, num_kv_heads=1, head_dim=16, rope_theta=10000.0, max_position_embeddings=512))


@pytest.fixture(scope="module")
def params(model):
  return nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])


def test_loss_mask_covers_exactly_the_response(tokenizer, pairs):
  env_config = env_lib.default_env_config()
  examples = [warmstart.sft_example(p, r["solutions"][0], tokenizer, env_config) for p, r in pairs]
  batch = warmstart.make_batch(examples, tokenizer.pad_id, 256)
  for b, ((problem, record), (ids, start)) in enumerate(zip(pairs, examples)):
    prompt = env_lib.start(problem, tokenizer, env_config).tokens
    response = tokenizer.encode(f"```python\n{record['solutions'][0].strip()}\n```") + [tokenizer.eot_id]
    assert ids == list(prompt) + response and start == len(prompt)
    mask = batch["loss_mask_BxL"][b]
    np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(len(prompt), len(ids)))
    np.testing.assert_array_equal(batch["tokens_BxL"][b, :len(ids)], ids)
    assert np.all(batch["tokens_BxL"][b, len(ids):] == tokenizer.pad_id)
  with pytest.raises(ValueError, match="max_context_length"):
    warmstart.make_batch(examples, tokenizer.pad_id, 16)


def test_multi_turn_dialogues_train_only_the_final_response(tokenizer, records, pairs):
  from rlef_jax.execution import ExecutionPool
  env_config = env_lib.default_env_config()
  env_config.default_time_s = 2.0
  with ExecutionPool(workers=2) as pool:
    examples = warmstart.feedback_blind_dialogues(pairs, tokenizer, env_config, pool, max_turns=3,
                                                  seed=0)
  header = generation_prompt_ids(tokenizer)
  for (problem, _), (ids, start) in zip(pairs, examples):
    prompt = list(env_lib.start(problem, tokenizer, env_config).tokens)
    assert ids[:len(prompt)] == prompt
    assert ids[start - len(header):start] == header  # the target starts a fresh assistant turn
    target = tokenizer.decode(ids[start:])
    assert target.startswith("```python\n") and ids[-1] == tokenizer.eot_id
    assert tokenizer.eot_id not in ids[start:-1]  # exactly one response is a target


def test_feedback_fraction_sets_how_often_the_final_answer_follows_the_feedback(tokenizer):
  from rlef_jax.execution import ExecutionPool
  records = synthetic.generate_problems(24, seed=5)
  pairs = [(env_lib.Problem.from_record("synthetic", r), r) for r in records]
  env_config = env_lib.default_env_config()
  env_config.default_time_s = 2.0
  header = generation_prompt_ids(tokenizer)
  with ExecutionPool(workers=2) as pool:
    make = lambda **kw: warmstart.feedback_blind_dialogues(pairs, tokenizer, env_config, pool,
                                                           max_turns=3, seed=3, **kw)
    blind, default, following = make(feedback_fraction=0.0), make(), make(feedback_fraction=1.0)
    with pytest.raises(ValueError, match="feedback_fraction"):
      make(feedback_fraction=1.5)
  assert blind == default  # 0 is the default and draws nothing extra: earlier runs are reproducible

  def answer(ids, start):
    program = tokenizer.decode(ids[start:]).split("```python\n")[1].split("\n```")[0]
    return synthetic.separator_in_program(program)

  def had_feedback(ids, start):  # the prompt's own assistant header, plus one per earlier answer
    return sum(ids[i:i + len(header)] == header for i in range(start)) > 1

  with_feedback = 0
  for (_, record), (ids, start), (ids0, start0) in zip(pairs, following, blind):
    assert ids[:start] == ids0[:start0]  # the same dialogue; only the final answer may differ
    if had_feedback(ids, start):
      with_feedback += 1
      assert answer(ids, start) == synthetic.separator_of(record)
    else:
      assert answer(ids, start) == answer(ids0, start0)  # a first turn stays a blind draw
  assert 0 < with_feedback < len(pairs)
  # Feedback-blind answers ignore the feedback: over the dialogues with feedback, they rarely match.
  matches = sum(answer(i, s) == synthetic.separator_of(r) for (_, r), (i, s) in zip(pairs, blind)
                if had_feedback(i, s))
  assert matches < with_feedback


def test_sft_loss_is_the_mean_response_cross_entropy(tokenizer, pairs, model, params):
  env_config = env_lib.default_env_config()
  examples = [warmstart.sft_example(p, r["solutions"][-1], tokenizer, env_config) for p, r in pairs]
  batch = warmstart.make_batch(examples, tokenizer.pad_id, 256)
  step = warmstart.make_sft_step(model, optax.sgd(0.0))
  _, _, loss = step(params, optax.sgd(0.0).init(params), batch)
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(batch["tokens_BxL"]))[0], np.float64)
  nll = []
  for b, (ids, start) in enumerate(examples):
    for i in range(start, len(ids)):
      z = logits[b, i - 1]
      nll.append(np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[ids[i]])
  assert float(loss) == pytest.approx(np.mean(nll), rel=1e-5)


def test_microbatched_sft_step_is_the_one_pass_step(tokenizer, pairs, model, params):
  """`warmstart.num_microbatches`: the gradient summed over row chunks, normalised by the whole
  batch's token count, is the one-pass gradient (rows of different lengths, so the chunks' token
  counts differ and a per-chunk mean would not match); SGD makes the update the gradient itself."""
  env_config = env_lib.default_env_config()
  examples = [warmstart.sft_example(p, solution, tokenizer, env_config)
              for p, r in pairs for solution in r["solutions"]]
  examples = sorted(examples, key=lambda e: len(e[0]) - e[1])
  examples = examples[:2] + examples[-2:]  # chunks: the 2 shortest responses, the 2 longest
  counts = [sum(len(ids) - start for ids, start in examples[i:i + 2]) for i in (0, 2)]
  assert counts[0] < counts[1], counts
  batch = warmstart.make_batch(examples, tokenizer.pad_id, 256)
  opt = optax.sgd(1.0)
  one = warmstart.make_sft_step(model, opt)(params, opt.init(params), batch)
  two = warmstart.make_sft_step(model, opt, num_microbatches=2)(params, opt.init(params), batch)
  assert float(two[2]) == pytest.approx(float(one[2]), rel=1e-6)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), one[0], params)
  assert max(jax.tree.leaves(moved)) > 1e-4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), two[0], one[0])
  # Chunk-wise means averaged would be another gradient: the test tells them apart.
  halves = [warmstart.make_sft_step(model, opt)(params, opt.init(params),
                                                 jax.tree.map(lambda x: x[i:i + 2], batch))[0]
            for i in (0, 2)]
  mean_of_means = jax.tree.map(lambda a, b: (a + b) / 2, *halves)
  gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), mean_of_means, one[0])
  assert max(jax.tree.leaves(gap)) > 1e-5


def test_a_few_steps_lower_the_loss(tokenizer, pairs, model, params):
  logged = {}
  out = warmstart.fine_tune(params, model, itertools.cycle(pairs), tokenizer,
                      env_config=env_lib.default_env_config(), steps=21, lr=1e-2, batch_size=4,
                      context_length=512, seed=0, log=lambda s, m: logged.update({s: m["warmstart/loss"]}))
  assert sorted(logged) == [0, 20]
  assert logged[20] < 0.8 * logged[0]
  assert jax.tree.structure(out) == jax.tree.structure(params)
