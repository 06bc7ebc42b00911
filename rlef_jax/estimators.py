"""Estimators of the paper's solve rates from stored samples (paper §3.1; docs/method.md §5.1, §5.9).

Everything here works on plain data read from `eval/NAME.episodes.jsonl` (`python -m rlef_jax.evaluate`):
a *sample* is one submission candidate of a problem, `(public, solved[, turns])`, where `public` says
whether that candidate passed all public tests and `solved` whether it passed all scored tests (public +
private + generated); a problem contributes the list of its samples. Multi-turn (MT) samples are the
final solutions of rollouts (`public` = the last turn passed the public tests, `turns` = turns used);
single-turn (ST) samples are independent first responses. Problems weigh equally: every metric is the
mean over problems of a per-problem expectation, which is also the mean over episodes when every
problem has the same number of samples (as `evaluate` writes them).

Metrics and the choices made where the paper is open ([U] / [I] of docs/method.md):

* `pass_at_k` — the unbiased estimator of Chen et al. 2021, 1 − C(N−c, k) / C(N, k), in the stable
  product form. pass@1 over MT finals is Fig. 4a's pass@1 (the final solution counts, whatever the
  number of turns it took).
* `n_at_k` — AlphaCode's n@k with public-test filtering, as the exact expectation over every draw of k
  of the problem's N samples without replacement and every choice of submissions: the drawn samples
  that pass the public tests are kept; if more than n are kept, n of them are submitted, chosen
  uniformly at random; the problem counts as solved when a submitted sample is solved.
  **Fewer than n kept: only those are submitted** (`fill=False`, AlphaCode's rule; a draw where nothing
  passes submits nothing and fails). `fill=True` instead tops the submissions up with drawn samples that
  failed the public tests, uniformly at random (docs/method.md Open point 9's "[I] fill up at random").
  With the public tests among the scored tests (`env.score_public_tests = True`, the default) a solved
  sample always passes the public tests, so the fill adds only unsolved samples and both rules give
  the same number; they differ only when solved samples can fail the public tests (public tests not
  scored, or flaky verdicts).
  The expectation has a closed form: with g samples passing the public tests (a solved, b not) and f
  failing them (c solved, e not), the number m of passing samples among the k drawn is hypergeometric,
  and given m the submitted passing samples are a uniform min(m, n)-subset of the g, the filled ones a
  uniform (n − m)-subset of the f, so
      P(fail | m) = C(b, min(m, n)) / C(g, min(m, n))  ·  [fill and m < n: C(e, n − m) / C(f, n − m)].
  Computed with exact integer binomials (one rounding per term); n is clamped to k.
* ST 1@3 (`st_one_at_three`): the paper's rule submits the first of three independent responses that
  passes the public tests, else the last (`rlef_jax.evaluate.single_turn_one_at_three`, which depends
  on the order in which the samples were written). **Order-free version: the expectation over every
  triple of the problem's ST samples (drawn without replacement) and every order of it.** Under a
  random order the first passing response is a uniform choice among the passing ones and "the last"
  is a uniform choice among three failing ones, so this is exactly `n_at_k(samples, 1, 3, fill=True)`;
  on a problem with exactly three samples it is the average of the paper's rule over the 6 orders.
* MT 1@3 (`mt_solve_rate`): one rollout of up to 3 turns is one sample, its final solution the
  submission: the mean of `solved` over the problem's rollouts (= `mt_n_at_budget(s, 1, 3, 3,
  fill=True)`).
* MT n@budget (`mt_n_at_budget`): the budget counts turns (every response is a sample, paper §3.1).
  **A budget of B turns buys `B // max_turns` rollouts**, each charged its full turn limit whether or
  not it stopped early (the paper's "100 samples = 33 rollouts of up to 3 turns": early stops leave
  budget unused rather than buying more rollouts; Fig. 4b's "budget split evenly over episodes").
  Submissions are the rollouts' final solutions, filtered by the public tests as in `n_at_k`. So MT
  10@100 = `n_at_k(finals, 10, 33)`; ST 10@100 = `n_at_k(first responses, 10, 100)`.
* Bootstrap intervals (`bootstrap_interval`, `estimate`): 2.5 / 97.5 percentiles of the recomputed
  estimate over `resamples` resamples (default 200, the paper's), deterministic given `seed`.
  `unit="problems"` (default) resamples problems with replacement: the interval of the solve rate of
  the population the problems were drawn from, which includes problem-to-problem variation.
  `unit="samples"` keeps the problem set and resamples each problem's samples: only the sampling noise
  of the model on these problems. `evaluate.bootstrap_interval` resamples episodes pooled over problems,
  which is close to `unit="samples"` and much narrower than `"problems"` on small problem sets (the
  paper's Table 5 intervals, e.g. 16.1 (15.8–16.4) on 165 problems, can only be of that kind).
* Error analysis of paper Fig. 3 (`chrf`, `response_category`, `turn_error_stats`): per turn, the
  category of each response's public-test verdicts, the share of responses whose code repeats the
  previous turn's exactly, and the mean edit distance 1 − chrF between consecutive programs.
"""
from __future__ import annotations

import collections
import functools
import gzip
import json
import math
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 200


class Sample(NamedTuple):
  """One submission candidate: passed all public tests, passed all scored tests, turns it used."""
  public: bool
  solved: bool
  turns: int = 1


class ProblemSamples(NamedTuple):
  problem: str
  samples: list[Sample]


class EpisodeSamples(NamedTuple):
  """An episodes file grouped by problem: MT finals and ST first responses, in file order."""
  multi_turn: list[ProblemSamples]
  single_turn: list[ProblemSamples]


class RecordError(ValueError):
  """A record file that cannot be read; the message names the file (and line)."""


# --------------------------------------------------------------------------------------------------
# pass@k and n@k


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k of one problem with n samples of which c are solved (Chen et al. 2021):
  1 − C(n − c, k) / C(n, k) = 1 − Π_{i = n−c+1..n} (1 − k / i)."""
  n, c, k = int(n), int(c), int(k)
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_per_problem(ns: Sequence[int], cs: Sequence[int], k: int) -> np.ndarray:
  """`pass_at_k` of every problem (ns samples, cs solved): one value per problem."""
  return np.array([pass_at_k(n, c, k) for n, c in zip(ns, cs, strict=True)], np.float64)


def pass_at_k_of(samples: Sequence[Sequence[Any]], k: int) -> float:
  """pass@k of one problem from its samples (`solved` is the second field)."""
  return pass_at_k(len(samples), sum(bool(s[1]) for s in samples), k)


def _counts(samples: Sequence[Sequence[Any]]) -> tuple[int, int, int, int]:
  """(passing & solved, passing & unsolved, failing & solved, failing & unsolved)."""
  a = b = c = e = 0
  for s in samples:
    public, solved = bool(s[0]), bool(s[1])
    if public:
      a, b = (a + 1, b) if solved else (a, b + 1)
    else:
      c, e = (c + 1, e) if solved else (c, e + 1)
  return a, b, c, e


@functools.lru_cache(maxsize=1 << 16)
def _n_at_k_counts(a: int, b: int, c: int, e: int, n: int, k: int, fill: bool) -> float:
  """Exact n@k of a problem with the given counts (module docstring): Σ_m P(m) · (1 − P(fail | m))."""
  g, f = a + b, c + e
  total = math.comb(g + f, k)
  success = 0.0
  for m in range(max(0, k - f), min(g, k) + 1):
    draw = math.comb(g, m) * math.comb(f, k - m)  # draws with m passing samples (times total)
    top = min(m, n)
    num, den = math.comb(g, top) - math.comb(b, top), math.comb(g, top)
    if fill and m < n:  # fail only if no passing one is solved and no filled one is solved
      den_fill = math.comb(f, n - m)
      num, den = den * den_fill - math.comb(b, top) * math.comb(e, n - m), den * den_fill
    if num:
      success += draw * num / (total * den)
  return min(1.0, success)


def n_at_k(samples: Sequence[Sequence[Any]], n: int, k: int, *, fill: bool = False) -> float:
  """Expected n@k of one problem from its N samples `(public, solved, ...)`, k <= N: draw k without
  replacement, submit up to n of those that pass the public tests (uniformly at random among them),
  solved if a submission is solved. `fill=True` tops up with drawn samples failing the public tests
  when fewer than n pass (module docstring)."""
  n, k = int(n), int(k)
  if n < 1 or not 1 <= k <= len(samples):
    raise ValueError(f"n@k needs n >= 1 and 1 <= k <= samples, got n={n}, k={k}, "
                     f"samples={len(samples)}")
  return _n_at_k_counts(*_counts(samples), min(n, k), k, bool(fill))


def n_at_k_per_problem(problems: Sequence[Sequence[Sequence[Any]]], n: int, k: int, *,
                       fill: bool = False) -> np.ndarray:
  """`n_at_k` of every problem (each a list of samples): one value per problem."""
  return np.array([n_at_k(s, n, k, fill=fill) for s in problems], np.float64)


def st_one_at_three(samples: Sequence[Sequence[Any]]) -> float:
  """Order-free ST 1@3 of one problem from its single-turn samples (>= 3): the expectation, over every
  triple and every order of it, of "submit the first that passes the public tests, else the last"."""
  return n_at_k(samples, 1, 3, fill=True)


def mt_solve_rate(samples: Sequence[Sequence[Any]]) -> float:
  """MT 1@T of one problem (T = the turn limit of its rollouts): the mean of `solved` over rollouts."""
  if not samples:
    raise ValueError("a problem without samples has no solve rate")
  return float(np.mean([bool(s[1]) for s in samples]))


def rollouts_for_budget(budget: int, max_turns: int) -> int:
  """Rollouts that a budget of `budget` turns buys: each rollout is charged its full turn limit."""
  if max_turns < 1:
    raise ValueError(f"max_turns must be >= 1, got {max_turns}")
  return int(budget) // int(max_turns)


def mt_n_at_budget(samples: Sequence[Sequence[Any]], n: int, budget: int, max_turns: int, *,
                   fill: bool = False) -> float:
  """MT n@budget of one problem from its rollouts' finals: n@r with r = budget // max_turns rollouts."""
  r = rollouts_for_budget(budget, max_turns)
  if r < 1:
    raise ValueError(f"a budget of {budget} turns buys no rollout of up to {max_turns} turns")
  return n_at_k(samples, n, r, fill=fill)


# --------------------------------------------------------------------------------------------------
# Bootstrap intervals


class Estimate(NamedTuple):
  """A solve rate with its 95% interval and the data behind it."""
  mean: float
  ci95: tuple[float, float]
  problems: int
  samples: tuple[int, int]  # fewest and most samples of a problem


def _percentiles(values: np.ndarray) -> tuple[float, float]:
  return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def bootstrap_over_problems(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                            seed: int = 0) -> tuple[float, float]:
  """Interval of the mean of per-problem `values` with problems resampled with replacement: row r of
  `default_rng(seed).integers(0, P, size=(resamples, P))` is resample r."""
  x = np.asarray(values, np.float64)
  if x.size == 0:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  return _percentiles(x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1))


def bootstrap_over_samples(problems: Sequence[Sequence[Any]], per_problem: Callable[[Any], float], *,
                           resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
                           ) -> tuple[float, float]:
  """Interval of the mean over the fixed problems of `per_problem(samples)`, each problem's samples
  resampled with replacement (for r in resamples, for each problem in order:
  `rng.integers(0, N, size=N)`)."""
  if not problems:
    return (float("nan"), float("nan"))
  rng = np.random.default_rng(seed)
  means = np.empty(resamples, np.float64)
  for r in range(resamples):
    vals = []
    for s in problems:
      idx = rng.integers(0, len(s), size=len(s))
      vals.append(per_problem([s[i] for i in idx]))
    means[r] = np.mean(vals)
  return _percentiles(means)


def bootstrap_interval(problems: Sequence[Sequence[Any]], per_problem: Callable[[Any], float], *,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       unit: str = "problems") -> tuple[float, float]:
  """95% interval of the mean over problems of `per_problem(samples)` (module docstring: `unit`)."""
  if unit == "problems":
    return bootstrap_over_problems([per_problem(s) for s in problems], resamples=resamples, seed=seed)
  if unit == "samples":
    return bootstrap_over_samples(problems, per_problem, resamples=resamples, seed=seed)
  raise ValueError(f"unit must be 'problems' or 'samples', got {unit!r}")


def estimate(problems: Sequence[Sequence[Any]], per_problem: Callable[[Any], float], *,
             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, unit: str = "problems"
             ) -> Estimate:
  """Mean over problems of `per_problem(samples)` with its bootstrap interval."""
  values = [per_problem(s) for s in problems]
  if unit == "problems":
    ci = bootstrap_over_problems(values, resamples=resamples, seed=seed)
  else:
    ci = bootstrap_interval(problems, per_problem, resamples=resamples, seed=seed, unit=unit)
  sizes = [len(s) for s in problems]
  return Estimate(float(np.mean(values)) if values else float("nan"), ci, len(problems),
                  (min(sizes), max(sizes)) if sizes else (0, 0))


# --------------------------------------------------------------------------------------------------
# Episode records


def read_jsonl_numbered(path: str) -> list[tuple[int, dict[str, Any]]]:
  """(line number, JSON object) of every non-blank line; `RecordError` names the file and line. A
  path ending in `.gz` is read through gzip (archived records, e.g. a study's kept in the repository)."""
  rows = []
  try:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
          raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut gzip stream an EOFError
    raise RecordError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
  except UnicodeDecodeError:
    raise RecordError(f"{path}: not UTF-8 text") from None
  return rows


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The JSON objects of a JSONL file, one per non-blank line; `RecordError` names file and line."""
  return [row for _, row in read_jsonl_numbered(path)]


MODES = ("multi_turn", "single_turn")


def _check_episode(path: str, lineno: int, ep: dict[str, Any]) -> None:
  def bad(msg):
    raise RecordError(f"{path}:{lineno}: {msg}")
  if not isinstance(ep.get("problem"), str):
    bad("episode without a 'problem' name")
  if not isinstance(ep.get("solved"), bool):
    bad("episode without a boolean 'solved'")
  passed = ep.get("public_passed")
  if not isinstance(passed, list) or not passed or not all(isinstance(p, bool) for p in passed):
    bad("episode without a non-empty list of booleans 'public_passed'")
  if ep.get("mode", "multi_turn") not in MODES:
    bad(f"episode 'mode' must be one of {MODES}, got {ep.get('mode')!r}")
  turns = ep.get("turns", len(passed))
  if not isinstance(turns, int) or isinstance(turns, bool) or turns < 1:
    bad(f"episode 'turns' must be a positive integer, got {turns!r}")
  log = ep.get("turn_log")
  if log is not None and not (isinstance(log, list) and all(isinstance(t, dict) for t in log)):
    bad("episode 'turn_log' must be a list of objects")


def read_episodes(path: str) -> list[dict[str, Any]]:
  """An `episodes.jsonl` file, each line checked for the fields the estimators read (`problem`,
  `solved`, `public_passed`; `mode` defaults to multi_turn for records written before it existed)."""
  rows = read_jsonl_numbered(path)
  for lineno, ep in rows:
    _check_episode(path, lineno, ep)
  return [ep for _, ep in rows]


def episode_sample(ep: dict[str, Any]) -> Sample:
  """An episode's submission candidate: its final solution (public = the last turn's public pass)."""
  return Sample(bool(ep["public_passed"][-1]), bool(ep["solved"]),
                int(ep.get("turns", len(ep["public_passed"]))))


def group_samples(episodes: Iterable[dict[str, Any]]) -> EpisodeSamples:
  """Groups episodes by mode and problem. A problem's episodes of one mode are consecutive (the
  evaluator's order); each run of consecutive episodes with the same problem name is one problem."""
  groups: dict[str, list[ProblemSamples]] = {m: [] for m in MODES}
  for ep in episodes:
    out = groups[ep.get("mode", "multi_turn")]
    if not out or out[-1].problem != ep["problem"]:
      out.append(ProblemSamples(ep["problem"], []))
    out[-1].samples.append(episode_sample(ep))
  return EpisodeSamples(groups["multi_turn"], groups["single_turn"])


def load_samples(path: str) -> EpisodeSamples:
  """`read_episodes` + `group_samples`: an episodes file as per-problem MT and ST sample lists."""
  return group_samples(read_episodes(path))


# --------------------------------------------------------------------------------------------------
# Error analysis (paper Fig. 3)


@functools.lru_cache(maxsize=4096)
def _char_ngrams(text: str, order: int) -> tuple[collections.Counter, ...]:
  """Counts of the character n-grams of `text` for n = 1..order (cached: in an episode each program
  is compared twice, with the previous and with the next turn's; treat the counters as read-only)."""
  return tuple(collections.Counter([text[i:i + n] for i in range(len(text) - n + 1)])
               for n in range(1, order + 1))


def chrf(hypothesis: str, reference: str, *, order: int = 6, beta: float = 2.0) -> float:
  """Character n-gram F-score (Popović 2015) in [0, 1], as sacrebleu's sentence chrF with its defaults
  (n = 1..6, β = 2, no word n-grams, whitespace removed): precision and recall are averaged over the
  orders that both strings have n-grams of, then F_β = (1 + β²) P R / (β² P + R). Identical strings
  (after removing whitespace) score 1, also when empty (sacrebleu gives 0 there)."""
  hyp, ref = "".join(hypothesis.split()), "".join(reference.split())
  if hyp == ref:
    return 1.0
  precision = recall = 0.0
  effective = 0
  for h, r in zip(_char_ngrams(hyp, order), _char_ngrams(ref, order)):
    nh, nr = sum(h.values()), sum(r.values())
    if nh and nr:
      small, large = (h, r) if len(h) <= len(r) else (r, h)
      match = sum(min(count, large[gram]) for gram, count in small.items() if gram in large)
      precision += match / nh
      recall += match / nr
      effective += 1
  if not effective:
    return 0.0
  precision, recall = precision / effective, recall / effective
  if precision + recall == 0:
    return 0.0
  b2 = beta * beta
  return (1 + b2) * precision * recall / (b2 * precision + recall)


# Public-test verdict letters (rlef_jax.evaluate.VERDICT_CODES) -> Fig. 3's categories.
VERDICT_CATEGORY = {"P": "passed", "W": "wrong output", "E": "exception", "S": "exception",
                    "T": "timeout", "M": "out of memory", "N": "no code"}
CATEGORIES = ("passed", "wrong output", "exception", "timeout", "out of memory", "no code", "other")


def response_category(verdicts: str, public_passed: bool | None = None) -> str:
  """One category per response: "passed" when every public test passed, else the category of the
  first public test that did not pass (the first failure the feedback lists). Without verdict letters
  (no public tests recorded) `public_passed` decides between "passed" and "other"."""
  for letter in verdicts:
    if letter != "P":
      return VERDICT_CATEGORY.get(letter, "other")
  if verdicts or public_passed:
    return "passed"
  return "other"


class TurnStats(NamedTuple):
  """Fig. 3 statistics of turn t (1-based) over the MT episodes that reached it."""
  turn: int
  responses: int
  categories: dict[str, int]  # responses per category (CATEGORIES order)
  pairs: int  # responses with code whose previous turn also had code (turn >= 2)
  repeats: int  # of those, responses whose code equals the previous turn's exactly
  edit_distance: float  # mean 1 − chrF(code_t, code_{t−1}) over those pairs (nan without pairs)


def turn_error_stats(episodes: Iterable[dict[str, Any]]) -> list[TurnStats]:
  """Per turn of the multi-turn episodes that have a `turn_log`: response categories, exact code
  repeats and edit distances between consecutive programs (hypothesis = this turn's code, reference =
  the previous turn's). Turns without extracted code on either side form no pair."""
  cats: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
  pairs: dict[int, list[float]] = collections.defaultdict(list)
  repeats: dict[int, int] = collections.defaultdict(int)
  for ep in episodes:
    if ep.get("mode", "multi_turn") != "multi_turn" or not ep.get("turn_log"):
      continue
    passed = ep.get("public_passed") or []
    prev = None
    for t, turn in enumerate(ep["turn_log"], 1):
      verdicts = turn.get("public_verdicts") or ""
      cats[t][response_category(str(verdicts), bool(passed[t - 1]) if t <= len(passed) else None)] += 1
      code = turn.get("code")
      code = code if isinstance(code, str) else None
      if t > 1 and code is not None and prev is not None:
        pairs[t].append(1.0 - chrf(code, prev))
        repeats[t] += code == prev
      prev = code
  return [TurnStats(t, sum(cats[t].values()), {c: cats[t][c] for c in CATEGORIES if cats[t][c]},
                    len(pairs[t]), repeats[t],
                    float(np.mean(pairs[t])) if pairs[t] else float("nan"))
          for t in sorted(cats)]
