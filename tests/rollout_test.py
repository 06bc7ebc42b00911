"""Rollouts of a tiny random Llama on synthetic problems: token-in/token-out bookkeeping, the training
arrays of `to_batch`, sampler-vs-trainer log-probs, determinism, grouping, random feedback and the
context limit (paper §2.1, §3)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlef_jax import env as env_lib
from rlef_jax import losses
from rlef_jax import model as model_lib
from rlef_jax import ppo
from rlef_jax import rollout as rollout_lib
from rlef_jax import sampler as sampler_lib
from rlef_jax import sharding
from rlef_jax import synthetic
from rlef_jax.execution import ExecutionPool
from rlef_jax.tokenizer import ChatTokenizer
from conftest import generation_prompt_ids, user_turn_ids

TOKENIZER_DIR = "rlef_jax/assets/synthetic_tokenizer"
MAX_TURNS = 3
NEW = 24  # max_new_tokens


@pytest.fixture(scope="module")
def tokenizer():
  import pathlib
  return ChatTokenizer.load(pathlib.Path(__file__).parent.parent / TOKENIZER_DIR)


@pytest.fixture(scope="module")
def llama_config(tokenizer):
  return model_lib.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                               num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                               rope_theta=10000.0, max_position_embeddings=1024)


@pytest.fixture(scope="module")
def model(llama_config):
  return model_lib.Llama(llama_config)


@pytest.fixture(scope="module")
def params(model):
  p = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
  return jax.device_get(p)


@pytest.fixture(scope="module")
def problems():
  return [env_lib.Problem.from_record("synthetic", r) for r in synthetic.generate_problems(6, seed=3)]


@pytest.fixture(scope="module")
def pool():
  with ExecutionPool(workers=2) as p:
    yield p


def _env_config(**overrides):
  c = env_lib.default_env_config()
  c.max_turns = MAX_TURNS
  c.default_time_s = 2.0
  c.default_memory_bytes = 256 << 20
  for k, v in overrides.items():
    c[k] = v
  return c


def _engine(model, llama_config, tokenizer, pool, *, num_groups=1, temperature=1.0,
            max_context_length=640, mesh=None, max_episodes=0, prefill_chunk=0, draw="gumbel",
            **env_overrides):
  settings = rollout_lib.RolloutSettings(max_new_tokens=NEW, max_context_length=max_context_length,
                                         temperature=temperature, top_p=1.0, num_groups=num_groups,
                                         max_episodes=max_episodes, prefill_chunk=prefill_chunk,
                                         draw=draw)
  return rollout_lib.RolloutEngine(model, llama_config, tokenizer, pool, _env_config(**env_overrides),
                                   settings, mesh)


def _key(records):
  """What makes two rollouts the same: every episode's tokens, mask, turns and log-probs."""
  return [(r.episode.tokens, r.episode.policy_mask, r.episode.task_rewards, r.truncated,
           [lp.tobytes() for lp in r.behaviour_logp]) for r in records]


@pytest.fixture(scope="module")
def recorded(model, llama_config, tokenizer, pool, params, problems):
  """One rollout (one group) with every sampler call recorded: (chunk, num_new, output)."""
  calls = []
  generate = sampler_lib.generate

  def spy(params, cache, new_BxL, num_new_B, rng, **kw):
    out = generate(params, cache, new_BxL, num_new_B, rng, **kw)
    calls.append((np.asarray(new_BxL), np.asarray(num_new_B), np.asarray(kw["active_B"]),
                  np.asarray(out.tokens_BxT), np.asarray(out.lengths_B),
                  np.asarray(out.raw_logprobs_BxT)))
    return out

  engine = _engine(model, llama_config, tokenizer, pool)
  mp = pytest.MonkeyPatch()
  mp.setattr(rollout_lib.sampler_lib, "generate", spy)
  try:
    records, stats = engine.run(params, problems, jax.random.key(7))
  finally:
    mp.undo()
  return records, stats, calls


def test_episode_tokens_are_the_fed_chunks_and_sampled_ids(recorded, tokenizer, problems):
  """Token-in/token-out: what the KV cache was fed (chunks + sampled ids) is the episode, exactly."""
  records, _, calls = recorded
  assert len(records) == len(problems)
  for b, rec in enumerate(records):
    ep = rec.episode
    fed, sampled_positions, responses = [], [], []
    for new_BxL, num_new_B, active_B, tokens_BxT, lengths_B, _ in calls:
      if not active_B[b]:
        continue
      fed += new_BxL[b, :num_new_B[b]].tolist()
      n = int(lengths_B[b])
      sampled_positions += range(len(fed), len(fed) + n)
      responses.append(tokens_BxT[b, :n].tolist())
      fed += responses[-1]
    assert len(responses) == len(ep.turns) >= 1
    # The episode's tokens continue the cache's tokens (only the last turn's appended eot may follow).
    tail = ep.tokens[len(fed):]
    assert list(ep.tokens[:len(fed)]) == fed
    assert tail == ((tokenizer.eot_id,) if ep.turns[-1].truncated else ())
    assert [i for i, m in enumerate(ep.policy_mask) if m] == sampled_positions
    # Each turn: its ids are the sampler's; then the env's eot (cut response) and feedback ids.
    expected = list(env_lib.start(problems[b], tokenizer, _env_config()).tokens)
    for turn, response in zip(ep.turns, responses):
      assert list(turn.response_ids) == response
      assert turn.prompt_end == len(expected)
      expected += response + ([tokenizer.eot_id] if turn.truncated else [])
      assert turn.response_end == len(expected)
      assert turn.truncated == (response[-1] not in tokenizer.stop_ids)
      if turn.feedback is not None:
        expected += user_turn_ids(tokenizer, turn.feedback)
    assert list(ep.tokens) == expected
    assert all(t.feedback is not None for t in ep.turns[:-1]) and ep.turns[-1].feedback is None
    assert [len(lp) for lp in rec.behaviour_logp] == [len(r) for r in responses]


def test_to_batch_layout(recorded, tokenizer):
  records, _, _ = recorded
  batch = rollout_lib.to_batch(records, max_turns=MAX_TURNS, pad_id=tokenizer.pad_id)
  B, L = batch["tokens_BxL"].shape
  assert L % 32 == 0 and L >= max(len(r.episode.tokens) for r in records)
  header_last = generation_prompt_ids(tokenizer)[-1]
  for b, rec in enumerate(records):
    ep = rec.episode
    n = len(ep.tokens)
    assert batch["length_B"][b] == n
    np.testing.assert_array_equal(batch["tokens_BxL"][b, :n], ep.tokens)
    assert np.all(batch["tokens_BxL"][b, n:] == tokenizer.pad_id)
    np.testing.assert_array_equal(batch["policy_mask_BxL"][b, :n], ep.policy_mask)
    expected_turn_id = np.full(L, -1)
    for t, turn in enumerate(ep.turns):
      idx = batch["value_index_BxT"][b, t]
      assert idx == turn.prompt_end - 1
      assert batch["tokens_BxL"][b, idx] == header_last  # the last prompt token before the response
      assert batch["policy_mask_BxL"][b, idx] == 0 and batch["policy_mask_BxL"][b, idx + 1] == 1
      assert batch["task_rewards_BxT"][b, t] == np.float32(turn.task_reward)
      expected_turn_id[turn.prompt_end:turn.prompt_end + len(turn.response_ids)] = t
    np.testing.assert_array_equal(batch["turn_id_BxL"][b], expected_turn_id)
    np.testing.assert_array_equal(batch["turn_mask_BxT"][b], [1.0] * len(ep.turns)
                                  + [0.0] * (MAX_TURNS - len(ep.turns)))
    # Behaviour log-probs sit exactly on the sampled tokens.
    flat = np.concatenate(rec.behaviour_logp)
    np.testing.assert_array_equal(batch["behaviour_logp_BxL"][b][batch["policy_mask_BxL"][b] > 0], flat)
    assert np.all(batch["behaviour_logp_BxL"][b][batch["policy_mask_BxL"][b] == 0] == 0)
  # Feedback, prompt, appended eot and padding carry no loss weight under either aggregation.
  for aggregation in ("token_mean", "turn_mean"):
    w = np.asarray(losses.token_weights_BxL(jnp.asarray(batch["policy_mask_BxL"]),
                                            jnp.asarray(batch["turn_id_BxL"]), MAX_TURNS, aggregation))
    assert np.all(w[batch["turn_id_BxL"] < 0] == 0) and np.all(w[batch["turn_id_BxL"] >= 0] > 0)
  # Truncated responses exist here, so the env-appended eot (turn_id -1, mask 0) is exercised.
  assert any(t.truncated for r in records for t in r.episode.turns)


def test_behaviour_logp_equals_trainer_full_forward(recorded, tokenizer, model, params):
  """The sampler-vs-trainer check: at temperature 1 the sampler's log-probs are the policy's."""
  records, _, calls = recorded
  batch = rollout_lib.to_batch(records, max_turns=MAX_TURNS, pad_id=tokenizer.pad_id)
  logp = np.asarray(ppo.make_logprob_fn(model)(params, jnp.asarray(batch["tokens_BxL"])))
  mask = batch["policy_mask_BxL"] > 0
  assert mask.sum() > 50
  np.testing.assert_allclose(batch["behaviour_logp_BxL"][mask], logp[mask], atol=1e-4, rtol=0)
  # At temperature 1 / top-p 1 the sampling distribution is the raw model: the same numbers.
  for b, rec in enumerate(records):
    raw = [raw_BxT[b, :lengths_B[b]] for _, _, active_B, _, lengths_B, raw_BxT in calls if active_B[b]]
    for behaviour, raw_turn in zip(rec.behaviour_logp, raw):
      np.testing.assert_allclose(behaviour, raw_turn, atol=1e-6, rtol=0)


def test_the_blocked_draw_reaches_the_sampler_and_keeps_the_behaviour_logp(
    model, llama_config, tokenizer, pool, params, problems, recorded):
  """config.sampling.draw = "blocked" goes to training's and evaluation's rollouts; its episodes are
  other draws for the same key, and their behaviour log-probs are still the policy's."""
  from rlef_jax import config as config_lib, experiment  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.sampling.draw = "blocked"
  assert experiment.rollout_settings(config, evaluation=False).draw == "blocked"
  assert experiment.rollout_settings(config, evaluation=True).draw == "blocked"
  engine = _engine(model, llama_config, tokenizer, pool, draw="blocked")
  records, _ = engine.run(params, problems, jax.random.key(7))
  assert [r.episode.tokens for r in records] != [r.episode.tokens for r in recorded[0]]
  batch = rollout_lib.to_batch(records, max_turns=MAX_TURNS, pad_id=tokenizer.pad_id)
  logp = np.asarray(ppo.make_logprob_fn(model)(params, jnp.asarray(batch["tokens_BxL"])))
  mask = batch["policy_mask_BxL"] > 0
  assert mask.sum() > 50
  np.testing.assert_allclose(batch["behaviour_logp_BxL"][mask], logp[mask], atol=1e-4, rtol=0)


def test_same_rng_same_episodes(model, llama_config, tokenizer, pool, params, problems, recorded):
  engine = _engine(model, llama_config, tokenizer, pool)
  again, _ = engine.run(params, problems, jax.random.key(7))
  assert _key(again) == _key(recorded[0])
  other, _ = engine.run(params, problems, jax.random.key(8))
  assert _key(other) != _key(recorded[0])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_grouping_does_not_change_episodes(model, llama_config, tokenizer, pool, params, problems,
                                           temperature):
  """num_groups only changes the schedule and the batching: each episode samples with its own keys
  (round key, episode index, turn), so its draws do not depend on which episodes share its batch."""
  runs = []
  for groups in (1, 2, 3):
    engine = _engine(model, llama_config, tokenizer, pool, num_groups=groups, temperature=temperature)
    records, _ = engine.run(params, problems, jax.random.key(1))
    runs.append([(r.episode.tokens, r.episode.policy_mask, r.episode.task_rewards) for r in records])
  assert runs[0] == runs[1] == runs[2]
  assert temperature == 0.0 or len({r[0] for r in runs[0]}) > 1  # real draws, not one repeated answer


def test_batches_of_episodes_and_prefill_pieces_do_not_change_episodes(
    model, llama_config, tokenizer, pool, params, problems, recorded):
  """sampling.max_concurrent_episodes (2 at a time: 3 batches) and sampling.prefill_chunk (prompts
  and feedback fed 16 tokens at a time, the sampler prefilling the last 16) only change how the
  episodes are scheduled and fed to the cache: the episodes are the same."""
  prompt = len(env_lib.start(problems[0], tokenizer, _env_config()).tokens)
  assert prompt > 2 * 16  # several pieces
  chunks = []
  feed = sampler_lib.feed

  def spy(params, cache, new_BxL, num_new_B, **kw):
    chunks.append(np.asarray(new_BxL).shape[1])
    return feed(params, cache, new_BxL, num_new_B, **kw)

  engine = _engine(model, llama_config, tokenizer, pool, max_episodes=2, prefill_chunk=16)
  mp = pytest.MonkeyPatch()
  mp.setattr(rollout_lib.sampler_lib, "feed", spy)
  try:
    records, _ = engine.run(params, problems, jax.random.key(7))
  finally:
    mp.undo()
  assert chunks and max(chunks) <= 16
  got, want = _key(records), _key(recorded[0])
  assert [k[:4] for k in got] == [k[:4] for k in want]  # tokens, mask, rewards, truncation
  for rec, ref in zip(records, recorded[0]):
    for a, b in zip(rec.behaviour_logp, ref.behaviour_logp):
      np.testing.assert_allclose(a, b, atol=1e-5)
  settings = rollout_lib.RolloutSettings(max_new_tokens=NEW, max_context_length=640, temperature=1.0,
                                         top_p=1.0, max_episodes=2)
  assert rollout_lib.sampler_rows(settings, len(problems)) == (1, 2)  # 2 groups of 1 row
  settings = dataclasses.replace(settings, max_episodes=64)
  assert rollout_lib.sampler_rows(settings, 1024, 4) == (32, 2)  # llama8b on one 8-GPU host
  assert rollout_lib.sampler_rows(settings, 128, 32, processes=8) == (256, 2)  # on 8 hosts
  assert rollout_lib.sampler_rows(settings, 3, 8) == (8, 1)  # padded to the data-parallel size


def test_random_feedback_runs_other_problems_programs(model, llama_config, tokenizer, pool, params,
                                                      problems):
  engine = _engine(model, llama_config, tokenizer, pool, num_groups=2, feedback="random")
  records, _ = engine.run(params, problems[:4], jax.random.key(3), feedback_problems=problems)
  assert len(records) == 4
  for rec in records:
    ep = rec.episode
    assert len(ep.turns) == MAX_TURNS  # random feedback never passes public tests early here
    for turn in ep.turns[:-1]:
      assert turn.feedback
      # The message is another problem's test output, not this response's (which has no code).
      assert "No Python code" not in turn.feedback
    expected_feedback = [user_turn_ids(tokenizer, t.feedback) for t in ep.turns[:-1]]
    for turn, nxt, fb in zip(ep.turns, ep.turns[1:], expected_feedback):
      assert list(ep.tokens[turn.response_end:nxt.prompt_end]) == fb
  again, _ = engine.run(params, problems[:4], jax.random.key(3), feedback_problems=problems)
  assert [r.episode.tokens for r in again] == [r.episode.tokens for r in records]


def test_full_context_ends_episode_with_last_response_as_final(model, llama_config, tokenizer, pool,
                                                               params, problems):
  prompt_len = max(len(env_lib.start(p, tokenizer, _env_config()).tokens) for p in problems[:4])
  # Room for the prompt and one response, not for the feedback and a second response.
  limit = prompt_len + NEW + 8
  engine = _engine(model, llama_config, tokenizer, pool, max_context_length=limit)
  records, _ = engine.run(params, problems[:4], jax.random.key(5))
  truncated = [r for r in records if r.truncated]
  assert truncated, "no episode hit the context limit; lower the limit"
  for rec in records:
    ep = rec.episode
    assert len(ep.tokens) <= limit
    last = ep.turns[-1]
    assert last.feedback is None and len(ep.tokens) == last.response_end
    assert len(ep.policy_mask) == len(ep.tokens)
    if rec.truncated:
      assert len(ep.turns) < MAX_TURNS
      # The last response is the final one: it gets the end-of-episode reward.
      assert ep.task_rewards[-1] == (1.0 if ep.solved else -1.0)
  batch = rollout_lib.to_batch(records, max_turns=MAX_TURNS, pad_id=tokenizer.pad_id)
  assert np.all(batch["turn_id_BxL"][batch["policy_mask_BxL"] == 0] == -1)


def test_prompt_longer_than_context_is_a_clear_error(model, llama_config, tokenizer, pool, params,
                                                     problems):
  prompt_len = len(env_lib.start(problems[0], tokenizer, _env_config()).tokens)
  engine = _engine(model, llama_config, tokenizer, pool, max_context_length=prompt_len)
  with pytest.raises(ValueError, match="max_context_length"):
    engine.run(params, problems[:1], jax.random.key(0))


def test_sharded_mesh_pads_groups_to_the_data_parallel_size(model, llama_config, tokenizer, pool,
                                                            params, problems):
  """3 episodes on an 8-way data-parallel mesh: the sharded KV cache needs 8 rows per group."""
  from ml_collections import ConfigDict
  mesh = sharding.make_mesh(ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  assert mesh.shape["data"] == 8
  placed = jax.device_put(params, sharding.param_shardings(model, mesh))
  engine = _engine(model, llama_config, tokenizer, pool, num_groups=2, temperature=0.0, mesh=mesh)
  records, _ = engine.run(placed, problems[:3], jax.random.key(0))
  plain = _engine(model, llama_config, tokenizer, pool, num_groups=2, temperature=0.0)
  reference, _ = plain.run(params, problems[:3], jax.random.key(0))
  assert [r.episode.tokens for r in records] == [r.episode.tokens for r in reference]
