"""The KV-cache sampler against step-by-step full forward passes of a tiny random Llama."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlef_jax import model as model_lib
from rlef_jax import sampler, sharding

V = 48
CFG = model_lib.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_layers=2,
                            num_heads=4, num_kv_heads=2, rope_theta=10000.0)
MODEL = model_lib.Llama(CFG)
LMAX = 64  # reference sequences are right-padded to this length (one compilation)
W, S, NEW = 12, 48, 6  # chunk width, cache length, max_new_tokens shared by most tests (few compilations)


@pytest.fixture(scope="module")
def params():
  p = MODEL.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  return jax.tree.map(lambda x: x * 2.0, jax.device_get(p))  # sharper, less tie-prone logits


@functools.partial(jax.jit)
def _full_logits(params, tokens_1xL):
  return MODEL.apply({"params": params}, tokens_1xL)[0][0]


def _next_logits(params, seq):
  """Full-forward logits after `seq` (no cache): the reference for every sampler step."""
  padded = np.zeros((1, LMAX), np.int32)
  padded[0, :len(seq)] = seq
  return np.asarray(_full_logits(params, jnp.asarray(padded))[len(seq) - 1], np.float64)


def _log_softmax(z):
  z = z - z.max()
  return z - np.log(np.exp(z).sum())


def _greedy_ref(params, prefix, n, stop_ids=()):
  seq, out = list(prefix), []
  for _ in range(n):
    tok = int(np.argmax(_next_logits(params, seq)))
    out.append(tok)
    seq.append(tok)
    if tok in stop_ids:
      break
  return out


def _chunk(rows, width=W):
  """Right-padded [B, width] chunk and per-row lengths (0-length rows allowed)."""
  L = max(width, max(len(r) for r in rows))
  chunk = np.zeros((len(rows), L), np.int32)
  for b, r in enumerate(rows):
    chunk[b, :len(r)] = r
  return chunk, np.array([len(r) for r in rows], np.int32)


def _random_rows(rng, lengths):
  return [rng.integers(1, V, n).tolist() for n in lengths]


def _generated(out, b):
  return np.asarray(out.tokens_BxT)[b, :int(out.lengths_B[b])].tolist()


def test_greedy_equals_full_forward_argmax_over_three_turns(params):
  rng = np.random.default_rng(0)
  prompts = _random_rows(rng, [5, 9, 2, 12])
  cache = model_lib.init_cache(CFG, 4, S)
  chunk, lens = _chunk(prompts)
  gen = functools.partial(sampler.generate, model=MODEL, temperature=0.0, pad_id=0,
                          max_new_tokens=NEW)
  out = gen(params, cache, chunk, lens, jax.random.key(1))
  histories = []
  for b in range(4):
    want = _greedy_ref(params, prompts[b], NEW)
    assert _generated(out, b) == want
    histories.append(prompts[b] + want)
    raw = [_log_softmax(_next_logits(params, histories[b][:len(prompts[b]) + i]))[t]
           for i, t in enumerate(want)]
    np.testing.assert_allclose(np.asarray(out.raw_logprobs_BxT)[b], raw, rtol=1e-4, atol=1e-4)
  assert np.all(np.asarray(out.logprobs_BxT) == 0.0)  # greedy samples from a point mass
  np.testing.assert_array_equal(out.cache.lengths_B, [len(h) for h in histories])

  # Turn 2 appends feedback to the cache; row 1 sits this turn out (its cache must survive).
  feedback = _random_rows(rng, [3, 0, 4, 1])
  chunk, lens = _chunk(feedback)
  out = gen(params, out.cache, chunk, lens, jax.random.key(2),
            active_B=np.array([True, False, True, True]))
  for b in (0, 2, 3):
    want = _greedy_ref(params, histories[b] + feedback[b], NEW)
    assert _generated(out, b) == want
    histories[b] += feedback[b] + want
  assert int(out.lengths_B[1]) == 0 and not bool(out.stopped_B[1])
  np.testing.assert_array_equal(out.cache.lengths_B, [len(h) for h in histories])

  # Turn 3: only row 1 continues, after the garbage its idle cache slots received in turn 2.
  feedback = _random_rows(rng, [0, 2, 0, 0])
  chunk, lens = _chunk(feedback)
  out = gen(params, out.cache, chunk, lens, jax.random.key(3),
            active_B=np.array([False, True, False, False]))
  assert _generated(out, 1) == _greedy_ref(params, histories[1] + feedback[1], NEW)
  np.testing.assert_array_equal(np.asarray(out.lengths_B)[[0, 2, 3]], [0, 0, 0])


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.8)])
def test_logprobs_equal_full_forward_under_the_sampling_distribution(params, temperature, top_p):
  rng = np.random.default_rng(1)
  prompts = _random_rows(rng, [4, 7, 3, 6])
  chunk, lens = _chunk(prompts)
  out = sampler.generate(params, model_lib.init_cache(CFG, 4, S), chunk, lens, jax.random.key(5),
                         model=MODEL, max_new_tokens=NEW, temperature=temperature, top_p=top_p)
  for b in range(4):
    gen = _generated(out, b)
    assert len(gen) == NEW
    for i, tok in enumerate(gen):
      logits = _next_logits(params, prompts[b] + gen[:i])
      scaled = logits / temperature
      order = np.argsort(-scaled)
      probs = np.exp(_log_softmax(scaled))
      kept, mass = [], 0.0
      for j in order:  # the nucleus: most likely first, until the mass reaches top_p
        if mass >= top_p:
          break
        kept.append(j)
        mass += probs[j]
      assert tok in kept
      want = np.log(probs[tok] / sum(probs[j] for j in kept))
      np.testing.assert_allclose(out.logprobs_BxT[b, i], want, rtol=1e-4, atol=1e-4)
      np.testing.assert_allclose(out.raw_logprobs_BxT[b, i], _log_softmax(logits)[tok],
                                 rtol=1e-4, atol=1e-4)


def test_top_p_sampling_never_leaves_the_nucleus():
  rng = np.random.default_rng(2)
  logits = rng.normal(scale=2.0, size=(6, V)).astype(np.float32)
  top_p = 0.6
  logq = np.asarray(sampler.sampling_logprobs_BxV(jnp.asarray(logits), 1.0, top_p))
  draws = np.asarray(jax.random.categorical(jax.random.key(0), jnp.asarray(logq), axis=-1,
                                            shape=(4000, 6)))
  for b in range(6):
    probs = np.exp(_log_softmax(logits[b].astype(np.float64)))
    order = np.argsort(-probs)
    cum = np.cumsum(probs[order])
    nucleus = set(order[:np.searchsorted(cum, top_p) + 1].tolist())
    assert set(np.flatnonzero(np.isfinite(logq[b])).tolist()) == nucleus
    assert set(draws[:, b].tolist()) <= nucleus
    for j in nucleus:  # empirical frequencies follow the renormalised nucleus probabilities
      p = probs[j] / sum(probs[k] for k in nucleus)
      assert abs(np.mean(draws[:, b] == j) - p) < 4 * np.sqrt(p * (1 - p) / 4000) + 1e-3


def test_stop_ids_end_rows_independently_and_the_stop_token_is_cached(params):
  rng = np.random.default_rng(3)
  prompts = _random_rows(rng, [3, 5, 4, 6])
  refs = [_greedy_ref(params, p, NEW) for p in prompts]
  stop = refs[0][2]
  want_lengths = [r.index(stop) + 1 if stop in r else NEW for r in refs]
  assert len(set(want_lengths)) > 1, "seed gives no row-to-row difference; pick another"
  chunk, lens = _chunk(prompts)
  out = sampler.generate(params, model_lib.init_cache(CFG, 4, S), chunk, lens, jax.random.key(0),
                         model=MODEL, max_new_tokens=NEW, temperature=0.0, stop_ids=(stop, V + 5),
                         pad_id=0)
  np.testing.assert_array_equal(out.lengths_B, want_lengths)
  np.testing.assert_array_equal(out.stopped_B, [stop in r for r in refs])
  assert not np.any(out.out_of_cache_B)
  for b in range(4):
    n = want_lengths[b]
    assert _generated(out, b) == refs[b][:n]
    assert np.all(np.asarray(out.tokens_BxT)[b, n:] == 0)
    assert np.all(np.asarray(out.raw_logprobs_BxT)[b, n:] == 0.0)
  np.testing.assert_array_equal(out.cache.lengths_B, [len(p) + n for p, n in zip(prompts, want_lengths)])
  # The next turn continues after the stop token, which the cache already holds.
  feedback = _random_rows(rng, [2, 2, 2, 2])
  chunk, lens = _chunk(feedback)
  out2 = sampler.generate(params, out.cache, chunk, lens, jax.random.key(0), model=MODEL,
                          max_new_tokens=NEW, temperature=0.0)
  for b in range(4):
    history = prompts[b] + refs[b][:want_lengths[b]] + feedback[b]
    assert _generated(out2, b) == _greedy_ref(params, history, NEW)


def test_rows_stop_before_overflowing_the_cache(params):
  rng = np.random.default_rng(4)
  prompts = _random_rows(rng, [12, 4, 10, 1])
  chunk, lens = _chunk(prompts)
  out = sampler.generate(params, model_lib.init_cache(CFG, 4, 16), chunk, lens, jax.random.key(0),
                         model=MODEL, max_new_tokens=NEW, temperature=0.0)
  np.testing.assert_array_equal(out.lengths_B, [3, 6, 5, 6])  # 16 − 1 free slot − prompt, or NEW
  np.testing.assert_array_equal(out.out_of_cache_B, [True, False, True, False])
  np.testing.assert_array_equal(out.cache.lengths_B, [15, 10, 15, 7])
  for b in range(4):
    assert _generated(out, b) == _greedy_ref(params, prompts[b], int(out.lengths_B[b]))


def test_bad_inputs_raise_clear_errors(params):
  cache = model_lib.init_cache(CFG, 2, 16)
  chunk = np.ones((2, 4), np.int32)
  gen = functools.partial(sampler.generate, params, model=MODEL, max_new_tokens=4)
  with pytest.raises(ValueError, match="active but have num_new_B == 0"):
    gen(cache, chunk, np.array([4, 0]), jax.random.key(0))
  with pytest.raises(ValueError, match="allocate a longer cache"):
    gen(model_lib.init_cache(CFG, 2, 4), chunk, np.array([4, 4]), jax.random.key(0))
  with pytest.raises(ValueError, match="top_p"):
    gen(cache, chunk, np.array([4, 4]), jax.random.key(0), top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    gen(cache, chunk, np.array([4, 4]), jax.random.key(0), temperature=-1.0)
  with pytest.raises(ValueError, match="batch size"):
    gen(model_lib.init_cache(CFG, 3, 16), chunk, np.array([4, 4]), jax.random.key(0))


# The blocked draw on a mesh (its reshape of a vocabulary a mesh may split): in the slow set, for the
# default suite's 15 minutes (25 s on 2 workers).
@pytest.mark.parametrize("draw", ["gumbel", pytest.param("blocked", marks=pytest.mark.slow)])
def test_sharded_generation_equals_unsharded(params, draw):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rng = np.random.default_rng(5)
  prompts = _random_rows(rng, [5, 3, 8, 2])
  chunk, lens = _chunk(prompts)
  kwargs = dict(model=MODEL, max_new_tokens=NEW, temperature=1.0, draw=draw)
  want = sampler.generate(params, model_lib.init_cache(CFG, 4, S), chunk, lens, jax.random.key(7),
                          **kwargs)
  sharded_params = sharding.shard_params(params, sharding.param_shardings(MODEL, mesh, params))
  cache = sharding.init_cache(CFG, 4, S, mesh)
  got = sampler.generate(sharded_params, cache, chunk, lens, jax.random.key(7), mesh=mesh, **kwargs)
  np.testing.assert_array_equal(got.tokens_BxT, want.tokens_BxT)
  np.testing.assert_allclose(got.logprobs_BxT, want.logprobs_BxT, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(got.cache.lengths_B, want.cache.lengths_B)
  for g, c in zip(got.cache.keys + got.cache.values, cache.keys + cache.values):
    assert g.sharding.is_equivalent_to(c.sharding, 4)


def test_a_row_samples_the_same_whatever_its_batch_mates(params):
  """Per-row keys: row A's draws depend on its key, prompt and tokens only, not on the other rows, the
  batch size or the row's position in the batch (so episodes do not depend on how they are batched)."""
  rng = np.random.default_rng(8)
  a, b, c, d = _random_rows(rng, [6, 4, 9, 3])
  keys = jax.random.split(jax.random.key(11), 4)
  gen = functools.partial(sampler.generate, model=MODEL, temperature=1.0, max_new_tokens=NEW)
  chunk, lens = _chunk([a, b])
  first = gen(params, model_lib.init_cache(CFG, 2, S), chunk, lens, keys[jnp.array([0, 1])])
  chunk, lens = _chunk([c, d, a])
  second = gen(params, model_lib.init_cache(CFG, 3, S), chunk, lens, keys[jnp.array([2, 3, 0])])
  assert _generated(first, 0) == _generated(second, 2)
  np.testing.assert_allclose(np.asarray(first.logprobs_BxT)[0], np.asarray(second.logprobs_BxT)[2],
                             atol=1e-5)
  # Raw key data works the same as typed keys (the rollout passes it across processes).
  chunk, lens = _chunk([a, b])
  raw = gen(params, model_lib.init_cache(CFG, 2, S), chunk, lens,
            np.asarray(jax.random.key_data(keys[jnp.array([0, 1])])))
  assert _generated(raw, 0) == _generated(first, 0) and _generated(raw, 1) == _generated(first, 1)
  # A different key for A changes its draws (the keys matter).
  chunk, lens = _chunk([a, b])
  other = gen(params, model_lib.init_cache(CFG, 2, S), chunk, lens, keys[jnp.array([3, 1])])
  assert _generated(other, 0) != _generated(first, 0)


def test_feeding_a_chunk_in_pieces_then_generating_equals_one_prefill(params):
  """`feed` appends tokens without sampling: a prompt fed in pieces (rows of different lengths, some
  with nothing in a piece) then `generate` on the rest samples what one prefill of it all samples."""
  rng = np.random.default_rng(12)
  rows = _random_rows(rng, [17, 5, 11])
  keys = jax.random.split(jax.random.key(4), 3)
  gen = functools.partial(sampler.generate, model=MODEL, temperature=1.0, max_new_tokens=NEW)
  chunk, lens = _chunk(rows, width=20)
  whole = gen(params, model_lib.init_cache(CFG, 3, S), chunk, lens, keys)
  cache = model_lib.init_cache(CFG, 3, S)
  head = [r[:max(0, len(r) - 4)] for r in rows]  # all but the last 4 tokens, 8 at a time
  for start in range(0, 16, 8):
    chunk, lens = _chunk([r[start:start + 8] for r in head], width=8)
    cache = sampler.feed(params, cache, chunk, lens, model=MODEL)
  np.testing.assert_array_equal(np.asarray(cache.lengths_B), [len(r) for r in head])
  chunk, lens = _chunk([r[len(h):] for r, h in zip(rows, head)], width=4)
  pieces = gen(params, cache, chunk, lens, keys)
  for b in range(3):
    assert _generated(pieces, b) == _generated(whole, b)
  np.testing.assert_allclose(np.asarray(pieces.logprobs_BxT), np.asarray(whole.logprobs_BxT), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(pieces.lengths_B), np.asarray(whole.lengths_B))


def test_prepare_on_a_mesh_lays_weights_out_for_decoding(params):
  """With a mesh, the sampler's copy of the weights is split over `tensor` only (never gathered)."""
  mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2})
  placed = sharding.shard_params(params, sharding.param_shardings(MODEL, mesh))
  prepared, model = sampler.prepare(placed, CFG, mesh)
  want = sharding.sampling_param_shardings(model, mesh)
  for x, s in zip(jax.tree.leaves(prepared), jax.tree.leaves(want)):
    assert x.sharding.is_equivalent_to(s, x.ndim)
  assert all("fsdp" not in str(s.spec) for s in jax.tree.leaves(want))
  plain, _ = sampler.prepare(params, CFG)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), prepared, plain)


def test_attend_window_covers_what_a_call_can_touch():
  assert sampler.attend_window(np.array([10, 3]), np.array([5, 0]), 20, 4096) == 128
  assert sampler.attend_window(np.array([100, 3]), np.array([20, 0]), 8, 4096) == 256  # 129 needed
  assert sampler.attend_window(np.array([1000]), np.array([0]), 100, 512) == 512  # capped at S


def test_a_wide_chunk_beside_a_nearly_full_idle_row_leaves_its_history_intact(params):
  """Padding of a chunk wider than an idle row's free space runs off the cache end; those writes are
  dropped, so the idle row's history (and its next turn) is unaffected."""
  rng = np.random.default_rng(3)
  long_prompt, short_prompt = _random_rows(rng, [S - 8, 3])
  gen = functools.partial(sampler.generate, model=MODEL, temperature=0.0, pad_id=0, max_new_tokens=2)
  cache = model_lib.init_cache(CFG, 2, S)
  chunk, lens = _chunk([long_prompt, short_prompt], width=S - 8)
  out = gen(params, cache, chunk, lens, jax.random.key(0))
  first = _generated(out, 0)
  # Row 0 idles while row 1 gets a chunk wider than row 0's remaining slots.
  follow = rng.integers(1, V, 20).tolist()
  chunk, lens = _chunk([[], follow], width=20)
  out = gen(params, out.cache, chunk, lens, jax.random.key(1), active_B=np.array([False, True]))
  # Row 0 continues: its cache must still hold exactly its own history.
  nxt = [int(rng.integers(1, V))]
  chunk, lens = _chunk([nxt, []], width=1)
  out = gen(params, out.cache, chunk, lens, jax.random.key(2), active_B=np.array([True, False]))
  assert _generated(out, 0) == _greedy_ref(params, long_prompt + first + nxt, 2)


@pytest.mark.parametrize("scale", [0.05, 1.0, 8.0])  # flat (the sort fallback) to peaked (top-k only)
@pytest.mark.parametrize("top_p", [0.5, 0.95])
def test_nucleus_over_a_large_vocabulary_equals_a_numpy_reference(scale, top_p):
  rng = np.random.default_rng(int(scale * 100) + int(top_p * 10))
  logits = rng.normal(size=(6, 3000)) * scale
  logits[0, :40] = logits[0, 0]  # ties at the nucleus edge are kept
  got = np.asarray(sampler.sampling_logprobs_BxV(jnp.asarray(logits, jnp.float32), 0.7, top_p))
  for b in range(6):
    z = logits[b] / 0.7
    order = np.argsort(-z, kind="stable")
    p = np.exp(z - z.max())
    p /= p.sum()
    mass_before = np.cumsum(p[order]) - p[order]
    threshold = z[order][max(int(np.sum(mass_before < top_p)), 1) - 1]
    keep = z >= threshold - 1e-6 * abs(threshold)
    want = np.where(keep, z - np.log(np.sum(np.exp(z[keep] - z.max()))) - z.max(), -np.inf)
    assert np.array_equal(np.isfinite(got[b]), keep), (scale, top_p, b)
    np.testing.assert_allclose(got[b][keep], want[keep], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_compacting_finished_rows_away_changes_nothing(params, temperature):
  """Rows that stopped leave the decoding batch (a smaller batch decodes the rest): the outputs,
  log-probs and the cache are those of decoding the whole batch to the end."""
  rng = np.random.default_rng(21)
  prompts = _random_rows(rng, [5, 3, 8, 2, 6, 4, 7, 1])
  chunk, lens = _chunk(prompts)
  # Frequent stop ids: rows stop at different steps, so the batch compacts several times.
  kwargs = dict(model=MODEL, max_new_tokens=16, temperature=temperature, stop_ids=tuple(range(1, 12)),
                segment=2)
  keys = jax.random.split(jax.random.key(4), 8)
  whole = sampler.generate(params, model_lib.init_cache(CFG, 8, S), chunk, lens, keys,
                           compact_rows=False, **kwargs)
  lengths = np.asarray(whole.lengths_B)
  assert len(set(lengths.tolist())) > 2 and lengths.max() > 4 * lengths.min()  # ragged: compaction happens
  compacted = sampler.generate(params, model_lib.init_cache(CFG, 8, S), chunk, lens, keys, **kwargs)
  for name in ("tokens_BxT", "lengths_B", "stopped_B", "out_of_cache_B"):
    np.testing.assert_array_equal(getattr(compacted, name), getattr(whole, name), err_msg=name)
  np.testing.assert_allclose(compacted.logprobs_BxT, whole.logprobs_BxT, atol=1e-5)
  np.testing.assert_allclose(compacted.raw_logprobs_BxT, whole.raw_logprobs_BxT, atol=1e-5)
  # Slots past a row's length hold scratch (the pad each decoding step writes there): not compared.
  filled_BxS = np.arange(S)[None, :] < np.asarray(whole.cache.lengths_B)[:, None]
  np.testing.assert_array_equal(compacted.cache.lengths_B, whole.cache.lengths_B)
  pairs = [(a, b, filled_BxS[:, None, None, :]) for a, b in zip(compacted.cache.keys, whole.cache.keys)]  # [B, K, Dh, S]
  pairs += [(a, b, filled_BxS[:, None, :, None]) for a, b in zip(compacted.cache.values, whole.cache.values)]
  for a, b, mask in pairs:
    # Another batch size is another matmul blocking: float32 rounding, on the scale of the tensor's
    # entries (keys and values up to ~6.5 here; differences to 1.8e-5 seen on an AMD EPYC machine,
    # also on entries near 0 that are sums of larger terms, where a fixed atol of 1e-5 failed).
    np.testing.assert_allclose(np.where(mask, a, 0), np.where(mask, b, 0),
                               atol=1e-5 * max(1.0, float(np.max(np.abs(b)))))


def test_compacted_rows_are_padded_to_the_data_parallel_size(params):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  rng = np.random.default_rng(22)
  prompts = _random_rows(rng, [5, 3, 8, 2, 6, 4, 7, 1])
  chunk, lens = _chunk(prompts)
  kwargs = dict(model=MODEL, max_new_tokens=16, temperature=1.0, stop_ids=tuple(range(1, 12)), segment=2)
  keys = jax.random.split(jax.random.key(5), 8)
  want = sampler.generate(params, model_lib.init_cache(CFG, 8, S), chunk, lens, keys, compact_rows=False,
                          **kwargs)
  sharded_params = sharding.shard_params(params, sharding.param_shardings(MODEL, mesh, params))
  got = sampler.generate(sharded_params, sharding.init_cache(CFG, 8, S, mesh), chunk, lens, keys, mesh=mesh,
                         **kwargs)
  np.testing.assert_array_equal(got.tokens_BxT, want.tokens_BxT)
  np.testing.assert_array_equal(got.lengths_B, want.lengths_B)


@pytest.mark.parametrize("vocab,top_p", [(48, 1.0), (37, 1.0), (37, 0.7), (300, 1.0)])
def test_the_blocked_draw_samples_the_softmax_exactly(vocab, top_p):
  """The two-level draw (a block by its mass, then a token in it) has the distribution of one
  Gumbel-max over the vocabulary: empirical frequencies over many keys against the softmax (a ragged
  last block when V is not a multiple of the block; a nucleus leaves blocks empty), and its log
  normaliser is logsumexp over V."""
  rng = np.random.default_rng(vocab)
  logits = rng.normal(scale=1.5, size=(3, vocab)).astype(np.float32)
  logits[1, :5] += 6.0  # one peaked row
  logq = np.asarray(sampler.sampling_logprobs_BxV(jnp.asarray(logits), 1.0, top_p)) if top_p < 1 else logits
  n = 20000
  keys = jax.random.split(jax.random.key(vocab), n)
  draw = jax.jit(jax.vmap(lambda k: sampler.blocked_draw_B(jnp.stack([k] * 3), jnp.asarray(logq))))
  tokens_NxB, logz_NxB = (np.asarray(x) for x in draw(keys))
  for b in range(3):
    z = logq[b].astype(np.float64)
    want_logz = np.log(np.sum(np.exp(z[np.isfinite(z)] - z.max()))) + z.max()
    np.testing.assert_allclose(logz_NxB[:, b], want_logz, rtol=1e-5, atol=1e-5)
    p = np.exp(z - want_logz)
    counts = np.bincount(tokens_NxB[:, b], minlength=vocab)
    assert np.all(counts[p == 0] == 0)  # never outside the nucleus
    # Each frequency within 4.5 standard errors, and a chi-square over the tokens expected >= 5 times.
    se = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(counts / n - p) <= 4.5 * se + 2e-4), b
    big = p * n >= 5
    chi2 = np.sum((counts[big] - n * p[big]) ** 2 / (n * p[big]))
    dof = int(big.sum()) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (b, chi2, dof)


def test_a_wrong_draw_is_refused_and_the_blocked_draw_keeps_the_samplers_invariants(params):
  """`draw="blocked"` in `generate`: log-probs equal the full forward's (T = 1, and T = 0.7 with a
  nucleus), the draw depends on the row's own key only, and an unknown draw is one clear error."""
  rng = np.random.default_rng(31)
  prompts = _random_rows(rng, [4, 7, 3])
  chunk, lens = _chunk(prompts)
  keys = jax.random.split(jax.random.key(7), 3)
  with pytest.raises(ValueError, match="draw must be one of"):
    sampler.generate(params, model_lib.init_cache(CFG, 3, S), chunk, lens, keys, model=MODEL,
                     max_new_tokens=NEW, draw="uniform")
  outs = {}
  for temperature, top_p in [(1.0, 1.0), (0.7, 0.8)]:
    out = outs[temperature] = sampler.generate(
        params, model_lib.init_cache(CFG, 3, S), chunk, lens, keys, model=MODEL, max_new_tokens=NEW,
        temperature=temperature, top_p=top_p, draw="blocked")
    for b in range(2):  # two rows checked token by token against the full forward (time)
      gen = _generated(out, b)
      assert len(gen) == NEW
      for i, tok in enumerate(gen):
        logits = _next_logits(params, prompts[b] + gen[:i])
        raw = _log_softmax(logits)
        np.testing.assert_allclose(out.raw_logprobs_BxT[b, i], raw[tok], rtol=1e-4, atol=1e-4)
        if top_p == 1.0:
          np.testing.assert_allclose(out.logprobs_BxT[b, i], _log_softmax(logits / temperature)[tok],
                                     rtol=1e-4, atol=1e-4)
        else:
          want = np.asarray(sampler.sampling_logprobs_BxV(jnp.asarray(logits[None], jnp.float32),
                                                          temperature, top_p))[0]
          assert np.isfinite(want[tok])  # inside the nucleus
          np.testing.assert_allclose(out.logprobs_BxT[b, i], want[tok], rtol=1e-4, atol=1e-4)
  # Row 2 alone with its key draws what it drew in the batch (temperature 1).
  c2, l2 = _chunk([prompts[2]])
  alone = sampler.generate(params, model_lib.init_cache(CFG, 1, S), c2, l2, keys[2:3], model=MODEL,
                           max_new_tokens=NEW, draw="blocked")
  assert _generated(alone, 0) == _generated(outs[1.0], 2)
