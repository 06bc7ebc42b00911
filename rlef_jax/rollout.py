"""Batches of multi-turn episodes: the sampler, the execution pool and the environment together.

Paper §2.1: each episode is a dialogue of at most `max_turns` responses; after each response the public
tests run and either the episode ends (they pass, or the turn limit is reached) or the feedback message
is appended and the model answers again. The final solution is scored on the private tests.

Token-in/token-out (re-tokenising a transcript can give other ids than were sampled, the most common
multi-turn bug): the sampler's own token ids are kept; what the environment appends (feedback message,
assistant header) is fed to the KV cache as the next chunk, so the history is never re-tokenised or
recomputed.

Overlap of generation and execution: the episodes are split into `num_groups` groups with their own KV
caches, visited round-robin. After a group's turn is sampled its test jobs are submitted to the pool and
the next group samples while they run; a group is only waited on when its turn comes again. The order
of every step is fixed, so a rollout is a deterministic function of (params, problems, rng) — what
bitwise resume needs. The fraction of rollout time spent waiting on execution is reported.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlef_jax import distributed
from rlef_jax import env as env_lib
from rlef_jax import model as model_lib
from rlef_jax import sampler as sampler_lib


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """How episodes are sampled (config.sampling and config.env)."""
  max_new_tokens: int          # tokens per response at most ([U] paper gives no limit)
  max_context_length: int      # KV-cache slots per episode: prompt + all turns ([U])
  temperature: float           # 1.0 in training (paper App. A.1), 0.2 for 1@3 evaluation (paper §5.1)
  top_p: float                 # 1.0 in training, 0.95 in evaluation
  draw: str = "gumbel"         # how a token is drawn (sampler.DRAWS; config.sampling.draw)
  num_groups: int = 2          # groups visited round-robin so execution overlaps generation
  length_bucket: int = 64      # prefill chunks are padded to a multiple of this (fewer compilations)
  min_cache: int = 256         # smallest KV-cache capacity; capacities are powers of two times this
  max_episodes: int = 0        # episodes sampled at the same time per process (0 = all): a call's
                               # episodes run in consecutive batches of at most this many, so that
                               # their KV caches fit (config.sampling.max_concurrent_episodes)
  prefill_chunk: int = 0       # most new tokens per row one prefill takes (0 = any): longer chunks
                               # are fed in pieces first (config.sampling.prefill_chunk)


@dataclasses.dataclass
class EpisodeRecord:
  """One finished episode with what training needs beyond the environment's `Episode`."""
  episode: Any                               # env.Episode
  behaviour_logp: list[np.ndarray]           # per turn: sampling log-probs of its response tokens
  truncated: bool                            # ended because the context was full


@dataclasses.dataclass
class RolloutStats:
  seconds: float = 0.0
  sample_seconds: float = 0.0
  execution_wait_seconds: float = 0.0
  generated_tokens: int = 0

  def as_metrics(self) -> dict[str, float]:
    total = max(self.seconds, 1e-9)
    return {"rollout/seconds": self.seconds,
            "rollout/sample_seconds": self.sample_seconds,
            "rollout/execution_wait_fraction": self.execution_wait_seconds / total,
            "rollout/generated_tokens_per_second": self.generated_tokens / total}


@dataclasses.dataclass
class _Group:
  rows: list[int]                  # indices into this process's episode list
  episode_ids: np.ndarray          # global episode index per cache row (sampling keys), -1 = idle row
  states: list[Any]
  size: int                        # this process's cache rows: len(rows) padded (see `run`)
  global_size: int                 # cache rows over all processes (`size` × process count)
  cache: model_lib.KVCache
  futures: dict[int, Any]          # row position -> (public future, random-feedback future or None)
  logps: list[list[np.ndarray]]
  truncated: list[bool]


def end_early(state: Any, max_context_length: int) -> Any:
  """Ends an episode whose next turn would not fit in the context: the last response becomes the
  final one and the feedback appended after it is dropped ([U] the paper gives no context limit)."""
  if not state.turns:
    raise ValueError(f"the prompt of problem {state.problem.name!r} has {len(state.tokens)} tokens and "
                     f"leaves no room to answer in config.sampling.max_context_length="
                     f"{max_context_length}; raise it or filter such problems")
  last = state.turns[-1]
  end = last.response_end
  return dataclasses.replace(
      state, tokens=state.tokens[:end], policy_mask=state.policy_mask[:end],
      turns=state.turns[:-1] + (dataclasses.replace(last, feedback=None),), done=True,
      pending=env_lib.PENDING_FINAL_RESULT)


def round_up(n: int, bucket: int) -> int:
  """`n` rounded up to a multiple of `bucket`, at least `bucket` (padded shapes: fewer compilations)."""
  return max(bucket, -(-n // bucket) * bucket)


def cache_capacity(needed: int, minimum: int, maximum: int) -> int:
  """The KV-cache capacity for `needed` slots: `minimum` times a power of two, at most `maximum`.

  A decode step attends over (and its cost grows with) the allocated slots, so a group's cache holds
  what its rows need now and grows between calls; powers of two keep the compiled shapes few."""
  capacity = minimum
  while capacity < needed:
    capacity *= 2
  return min(capacity, maximum)


def _num_groups(settings: RolloutSettings, num_episodes: int, multiple: int) -> int:
  """Groups of a batch of `num_episodes`: no more than fill one `multiple` of rows each."""
  return max(1, min(settings.num_groups, -(-num_episodes // multiple)))


def sampler_rows(settings: RolloutSettings, num_episodes: int, data_parallel: int = 1,
                 processes: int = 1) -> tuple[int, int]:
  """(rows of the largest group's KV cache, over all processes; groups alive at once) when each of
  `processes` processes runs `num_episodes` episodes on a mesh of `data_parallel` = data × fsdp
  shards: the batch one sampler call holds (`RolloutEngine.run`; benchmarks/fit.py)."""
  batch = min(num_episodes, settings.max_episodes or num_episodes)
  multiple = max(1, data_parallel // processes)
  groups = _num_groups(settings, batch, multiple)
  largest = -(-batch // groups)
  return -(-largest // multiple) * multiple * processes, groups


class RolloutEngine:
  """Runs batches of episodes for one policy model; reusable across rounds (compilations are cached)."""

  def __init__(self, model: Any, llama_config: model_lib.LlamaConfig, tokenizer: Any, pool: Any,
               env_config: Any, settings: RolloutSettings, mesh: Optional[jax.sharding.Mesh] = None):
    self.model = model
    self.llama_config = llama_config
    self.tokenizer = tokenizer
    self.pool = pool
    self.env_config = env_config
    self.settings = settings
    self.mesh = mesh
    self.stop_ids = tuple(sorted(tokenizer.stop_ids))
    self.decoding_config = model_lib.decoding_config(llama_config)

  def _global(self, x: np.ndarray, global_size: int) -> Any:
    """This process's rows of a sampler input as the global array (as is in one process)."""
    if not distributed.is_multiprocess():
      return x
    from rlef_jax import sharding  # pylint: disable=g-import-not-at-top
    return distributed.global_batch(x, sharding.data_sharding(self.mesh, x.ndim), global_size)

  def _init_cache(self, batch_size: int, capacity: int) -> model_lib.KVCache:
    if self.mesh is None:
      return model_lib.init_cache(self.decoding_config, batch_size, capacity)
    from rlef_jax import sharding  # pylint: disable=g-import-not-at-top
    return sharding.init_cache(self.decoding_config, batch_size, capacity, self.mesh)

  def _fit_cache(self, group: _Group, needed: int) -> None:
    """Grows the group's cache (between calls) so that `needed` slots per row fit."""
    s = self.settings
    if needed <= group.cache.capacity:
      return
    capacity = cache_capacity(needed, min(s.min_cache, s.max_context_length), s.max_context_length)
    group.cache = model_lib.grow_cache(group.cache, capacity=capacity)

  # -- one group's turn -------------------------------------------------------------------------
  def _sample_turn(self, group: _Group, params: Any, model: Any, rng: jax.Array,
                   stats: RolloutStats) -> None:
    s = self.settings
    active = [not st.done for st in group.states]
    fed = distributed.host_local(group.cache.lengths_B)
    chunks = []
    for i, st in enumerate(group.states):
      if not active[i]:
        chunks.append([])
        continue
      chunk = list(st.tokens[int(fed[i]):])
      # The next response needs room: a full context ends the episode with its last answer as final.
      if int(fed[i]) + len(chunk) + 2 > s.max_context_length:
        group.states[i] = end_early(st, s.max_context_length)
        group.truncated[i] = True
        active[i] = False
        chunk = []
      chunks.append(chunk)
    # Several processes sample one global batch together: all call the sampler or none does, with
    # one chunk width (no-ops in one process).
    if not distributed.agree_max(any(active)):
      return
    # Room for the chunk, the response and the one slot that stays free (sampler.generate).
    needed = max(int(fed[i]) + len(c) for i, c in enumerate(chunks) if active[i]) + s.max_new_tokens + 1
    self._fit_cache(group, distributed.agree_max(min(needed, s.max_context_length)))
    if s.prefill_chunk:  # bounded prefill memory: a long chunk's head is fed in pieces first
      chunks = self._feed_long_chunks(group, params, model, chunks)
    width = round_up(max(len(c) for c in chunks), s.length_bucket)
    width = distributed.agree_max(min(width, s.max_context_length))
    new_BxL = np.full((group.size, width), self.tokenizer.pad_id, np.int32)
    num_new_B = np.zeros(group.size, np.int32)
    active_B = np.zeros(group.size, bool)
    active_B[:len(active)] = active
    for i, c in enumerate(chunks):
      new_BxL[i, :len(c)] = c
      num_new_B[i] = len(c)
    # Row keys from (round key, episode, turn): an episode's draws do not depend on its batch-mates.
    turn_B = np.array([len(st.turns) for st in group.states] + [0] * (group.size - len(group.states)))
    keys_B = jax.vmap(lambda e, t: jax.random.fold_in(jax.random.fold_in(rng, e), t))(
        jnp.asarray(np.maximum(group.episode_ids, 0)), jnp.asarray(turn_B))
    key_data_Bx2 = np.asarray(jax.random.key_data(keys_B))
    t0 = time.perf_counter()
    out = sampler_lib.generate(
        params, group.cache, self._global(new_BxL, group.global_size),
        self._global(num_new_B, group.global_size), self._global(key_data_Bx2, group.global_size),
        model=model,
        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, draw=s.draw,
        stop_ids=self.stop_ids, pad_id=self.tokenizer.pad_id,
        active_B=self._global(active_B, group.global_size), mesh=self.mesh)
    tokens_BxT = distributed.host_local(out.tokens_BxT)
    logp_BxT = distributed.host_local(out.logprobs_BxT)
    lengths_B = distributed.host_local(out.lengths_B)
    stats.sample_seconds += time.perf_counter() - t0
    group.cache = out.cache
    for i in range(len(chunks)):
      if not active[i]:
        continue
      n = int(lengths_B[i])
      stats.generated_tokens += n
      response = [int(t) for t in tokens_BxT[i, :n]]
      group.logps[i].append(logp_BxT[i, :n].astype(np.float32))
      state, job = env_lib.on_response(group.states[i], response)
      group.states[i] = state
      public = self.pool.submit(job) if job is not None else None
      random_fb = None
      if state.config.feedback == "random" and len(state.turns) < state.config.max_turns:
        # Paper App. C.2: another problem's incorrect program on that problem's public tests.
        rf = env_lib.random_feedback_job(state.problem, self._problems, self._np_rng,
                                         env_config=state.config)
        random_fb = (rf, [self.pool.submit(j) for j in rf.jobs])
      group.futures[i] = (public, random_fb)

  def _feed_long_chunks(self, group: _Group, params: Any, model: Any, chunks: list) -> list:
    """Feeds every row's chunk but its last `prefill_chunk` tokens to the cache, at most that many a
    call (`sampler.feed`); returns what is left to prefill (several processes feed in lockstep)."""
    s = self.settings
    limit = s.prefill_chunk
    while distributed.agree_max(max(len(c) for c in chunks)) > limit:
      pieces = [c[:min(len(c) - limit, limit)] if len(c) > limit else [] for c in chunks]
      width = distributed.agree_max(min(round_up(max(len(p) for p in pieces), s.length_bucket), limit))
      new_BxL = np.full((group.size, width), self.tokenizer.pad_id, np.int32)
      num_new_B = np.zeros(group.size, np.int32)
      for i, piece in enumerate(pieces):
        new_BxL[i, :len(piece)] = piece
        num_new_B[i] = len(piece)
      group.cache = sampler_lib.feed(params, group.cache, self._global(new_BxL, group.global_size),
                                     self._global(num_new_B, group.global_size), model=model,
                                     mesh=self.mesh)
      chunks = [c[len(p):] for c, p in zip(chunks, pieces)]
    return chunks

  def _collect(self, group: _Group, stats: RolloutStats) -> None:
    t0 = time.perf_counter()
    for i in sorted(group.futures):
      public, random_fb = group.futures[i]
      result = public.result() if public is not None else None
      text = None
      if random_fb is not None:
        rf, futures = random_fb
        text = env_lib.random_feedback_text(rf, [f.result() for f in futures],
                                            env_config=group.states[i].config)
      group.states[i] = env_lib.on_public_result(group.states[i], result, random_feedback_text=text)
    group.futures = {}
    stats.execution_wait_seconds += time.perf_counter() - t0

  # -- a whole batch ----------------------------------------------------------------------------
  def run(self, params: Any, problems: Sequence[Any], rng: jax.Array,
          feedback_problems: Optional[Sequence[Any]] = None) -> tuple[list[EpisodeRecord], RolloutStats]:
    """Runs one episode per entry of `problems` (repeat a problem for several samples).

    `feedback_problems`: the split the random-feedback ablation draws other problems from (paper
    App. C.2); defaults to `problems`.
    """
    stats = RolloutStats()
    start = time.perf_counter()
    params, model = sampler_lib.prepare(params, self.llama_config, self.mesh)  # once per call
    self._problems = list(feedback_problems if feedback_problems is not None else problems)
    self._np_rng = np.random.default_rng(np.asarray(jax.random.key_data(rng)).ravel().tolist()
                                         if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)
                                         else np.asarray(rng).ravel().tolist())
    s = self.settings
    # A sharded KV cache needs a row count divisible by the data-parallel size: groups are padded
    # with idle rows, and no more groups are made than fill one such multiple each. With several
    # processes each one runs its own `problems` (the same number everywhere) as its block of rows
    # of every group, and all sample together (rlef_jax.distributed).
    processes = jax.process_count()
    multiple = 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    if processes > 1:
      if self.mesh is None or multiple % processes:
        raise ValueError(f"rollouts in {processes} processes need a mesh whose data × fsdp "
                         f"(now {multiple}) is a multiple of the process count, so that every "
                         "process holds its own rows of the batch")
      distributed.agree_equal(len(problems), "the number of episodes per process")
    first_episode = jax.process_index() * len(problems)  # processes run equal numbers of episodes
    records: list[Optional[EpisodeRecord]] = [None] * len(problems)
    # At most `max_episodes` episodes (and their KV caches) at a time; an episode's samples depend
    # on its own index only (row keys), so batching does not change them.
    batch = max(1, s.max_episodes or len(problems))
    for first in range(0, len(problems), batch):
      self._run_batch(params, model, problems, range(first, min(first + batch, len(problems))),
                      multiple // processes, rng, stats, records, first_episode)
    stats.seconds = time.perf_counter() - start
    return records, stats  # type: ignore[return-value]

  def _run_batch(self, params: Any, model: Any, problems: Sequence[Any], batch: range, multiple: int,
                 rng: jax.Array, stats: RolloutStats, records: list, first_episode: int) -> None:
    """Runs the episodes `problems[i]`, i in `batch`, in round-robin groups; fills `records[i]`;
    episode i is number `first_episode + i` (its sampling keys)."""
    s = self.settings
    processes = jax.process_count()
    num_groups = _num_groups(s, len(batch), multiple)
    bounds = np.linspace(batch.start, batch.stop, num_groups + 1).astype(int)
    groups = []
    for g in range(num_groups):
      rows = list(range(bounds[g], bounds[g + 1]))
      states = [env_lib.start(problems[r], self.tokenizer, self.env_config) for r in rows]
      size = -(-len(rows) // multiple) * multiple
      episode_ids = np.full(size, -1, np.int64)
      episode_ids[:len(rows)] = [first_episode + r for r in rows]
      groups.append(_Group(rows, episode_ids, states, size, size * processes,
                           self._init_cache(size * processes, min(s.min_cache, s.max_context_length)),
                           {}, [[] for _ in rows], [False] * len(rows)))

    while distributed.agree_max(not all(all(st.done for st in g.states) and not g.futures
                                        for g in groups)):
      for g in groups:
        if g.futures:
          self._collect(g, stats)
        if not distributed.agree_max(not all(st.done for st in g.states)):
          continue
        self._sample_turn(g, params, model, rng, stats)

    # Score every final solution on the private (+ generated) tests, all jobs in flight at once.
    finals = []
    for g in groups:
      for i, st in enumerate(g.states):
        job = env_lib.final_job(st)
        finals.append((g, i, st, self.pool.submit(job) if job is not None else None))
    t0 = time.perf_counter()
    for g, i, st, future in finals:
      episode = env_lib.finish(st, future.result() if future is not None else None)
      records[g.rows[i]] = EpisodeRecord(episode, g.logps[i], g.truncated[i])
    stats.execution_wait_seconds += time.perf_counter() - t0


def batch_length(records: Sequence[EpisodeRecord], length_bucket: int = 128) -> int:
  """The padded length `to_batch` gives these records (several processes agree on the largest)."""
  return round_up(max(len(r.episode.tokens) for r in records), length_bucket)


def to_batch(records: Sequence[EpisodeRecord], *, max_turns: int, pad_id: int,
             length_bucket: int = 128, min_length: int = 0) -> dict[str, np.ndarray]:
  """Right-padded training arrays of whole episodes (one row per episode = one PPO "sequence", our
  reading of the paper's "4 updates on 256 sequences each"; [U], docs/method.md open point 7).

  `min_length`: pad to at least this many positions (processes of one run pad to the same length).
  `length_B` is each episode's token count; `turn_id_BxL` marks each policy token with its turn;
  `value_index_BxT` is the last prompt token before each response (paper §3: the value is predicted from the last token of the prompt).
  """
  B = len(records)
  L = max(batch_length(records, length_bucket), min_length)
  T = max_turns
  out = {
      "tokens_BxL": np.full((B, L), pad_id, np.int32),
      "policy_mask_BxL": np.zeros((B, L), np.float32),
      "turn_id_BxL": np.full((B, L), -1, np.int32),
      "behaviour_logp_BxL": np.zeros((B, L), np.float32),
      "value_index_BxT": np.zeros((B, T), np.int32),
      "turn_mask_BxT": np.zeros((B, T), np.float32),
      "task_rewards_BxT": np.zeros((B, T), np.float32),
      "length_B": np.zeros(B, np.int32),
  }
  for b, rec in enumerate(records):
    ep = rec.episode
    out["tokens_BxL"][b, :len(ep.tokens)] = ep.tokens
    out["length_B"][b] = len(ep.tokens)
    out["policy_mask_BxL"][b, :len(ep.policy_mask)] = ep.policy_mask
    for t, turn in enumerate(ep.turns):
      start, end = turn.prompt_end, turn.response_end
      logp = rec.behaviour_logp[t]
      n = min(end - start, len(logp))
      out["turn_id_BxL"][b, start:end] = t
      out["behaviour_logp_BxL"][b, start:start + n] = logp[:n]
      out["value_index_BxT"][b, t] = start - 1
      out["turn_mask_BxT"][b, t] = 1.0
      out["task_rewards_BxT"][b, t] = turn.task_reward
    # Only policy tokens carry a turn id (an appended end-of-turn token is not the policy's).
    out["turn_id_BxL"][b] = np.where(out["policy_mask_BxL"][b] > 0, out["turn_id_BxL"][b], -1)
  return out
