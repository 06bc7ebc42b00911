"""rlef_jax.estimators: hand-computed cases and brute-force enumeration of every draw and submission."""
import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from rlef_jax import estimators as E
from rlef_jax import evaluate

T, F = True, False


# --------------------------------------------------------------------------------------------------
# Brute force, written from the definitions (no shared code with the estimators).


def brute_pass_at_k(n, c, k):
  solved = [i < c for i in range(n)]
  subsets = list(itertools.combinations(range(n), k))
  return Fraction(sum(any(solved[i] for i in s) for s in subsets), len(subsets))


def brute_n_at_k(samples, n, k, fill=False):
  """Average over every k-subset of every admissible submission choice (module docstring's rule)."""
  total = Fraction(0)
  subsets = list(itertools.combinations(range(len(samples)), k))
  for subset in subsets:
    kept = [i for i in subset if samples[i][0]]
    if len(kept) >= n:
      choices = [list(c) for c in itertools.combinations(kept, n)]
    elif fill:
      failing = [i for i in subset if not samples[i][0]]
      choices = [kept + list(c) for c in itertools.combinations(failing, min(n, k) - len(kept))]
    else:
      choices = [kept]
    total += Fraction(sum(any(samples[i][1] for i in c) for c in choices), len(choices))
  return total / len(subsets)


def paper_st_rule(triple):
  """ST 1@3 as the paper states it: the first response passing the public tests, else the last."""
  return next((s for s in triple if s[0]), triple[-1])[1]


def count_patterns(max_n):
  """Every multiset of (public, solved) samples with 1..max_n samples, as a sample list."""
  kinds = [(T, T), (T, F), (F, T), (F, F)]
  for size in range(1, max_n + 1):
    for combo in itertools.combinations_with_replacement(kinds, size):
      yield list(combo)


# --------------------------------------------------------------------------------------------------
# pass@k


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (3, 1, 1, 1 / 3),
    (10, 0, 5, 0.0),
    (10, 10, 1, 1.0),
    (4, 2, 3, 1.0),  # n - c < k: every draw holds a solved sample
    (200, 3, 10, 1 - math.comb(197, 10) / math.comb(200, 10)),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
  assert E.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_enumeration():
  for n in range(1, 8):
    for c in range(n + 1):
      for k in range(1, n + 1):
        assert E.pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_vectorised_and_from_samples():
  ns, cs = [5, 10, 3, 7], [2, 0, 3, 1]
  got = E.pass_at_k_per_problem(ns, cs, 2)
  assert got.shape == (4,)
  np.testing.assert_allclose(got, [E.pass_at_k(n, c, 2) for n, c in zip(ns, cs)])
  assert E.pass_at_k_of([(T, T), (F, F), (T, F), (F, F), (T, T)], 2) == pytest.approx(0.7)


def test_pass_at_k_rejects_impossible_arguments():
  for args in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
    with pytest.raises(ValueError, match="pass@k"):
      E.pass_at_k(*args)


# --------------------------------------------------------------------------------------------------
# n@k


def test_n_at_k_hand_computed():
  # One passing+solved (s0), one passing+unsolved (s1), two failing; 1@2. Of the 6 pairs: {s0,s1}
  # submits one of two at random (1/2), {s0,fail} x2 submits s0 (1), {s1,fail} x2 and {fail,fail} fail.
  samples = [(T, T), (T, F), (F, F), (F, F)]
  assert E.n_at_k(samples, 1, 2) == pytest.approx(2.5 / 6, abs=1e-15)
  # 2@2 submits both when both pass: {s0,s1} -> 1.
  assert E.n_at_k(samples, 2, 2) == pytest.approx(3 / 6, abs=1e-15)
  # 1@1 = P(drawn sample passes public and is solved).
  assert E.n_at_k(samples, 1, 1) == pytest.approx(1 / 4, abs=1e-15)
  # n > k is clamped: 10@4 of all four samples submits every passing one.
  assert E.n_at_k(samples, 10, 4) == 1.0


def test_n_at_k_submits_only_public_passes_when_fewer_than_n_pass():
  # A solved sample that fails the public tests is never submitted without fill ...
  samples = [(F, T), (F, F), (F, F)]
  assert E.n_at_k(samples, 10, 3) == 0.0
  # ... and with fill it is submitted whenever drawn, as one of the n - m top-ups.
  assert E.n_at_k(samples, 10, 3, fill=True) == 1.0
  assert E.n_at_k(samples, 1, 1, fill=True) == pytest.approx(1 / 3)
  # Fewer than n pass: all of them are submitted, so one solved passing sample counts when drawn.
  samples = [(T, T), (F, F), (F, F), (F, F)]
  assert E.n_at_k(samples, 10, 2) == pytest.approx(1 / 2)
  assert E.n_at_k(samples, 10, 4) == 1.0
  # With public tests scored (solved implies public pass) fill makes no difference.
  samples = [(T, T), (T, F), (F, F), (F, F), (T, F)]
  for n, k in [(1, 2), (2, 3), (3, 5), (10, 4)]:
    assert E.n_at_k(samples, n, k, fill=True) == pytest.approx(E.n_at_k(samples, n, k), abs=1e-15)


def test_n_at_k_matches_enumeration_of_every_draw_and_submission():
  checked = 0
  for samples in count_patterns(6):
    for k in range(1, len(samples) + 1):
      for n in range(1, k + 2):
        for fill in (False, True):
          want = float(brute_n_at_k(samples, n, k, fill))
          assert E.n_at_k(samples, n, k, fill=fill) == pytest.approx(want, abs=1e-12), (
              samples, n, k, fill)
          checked += 1
  assert checked > 5000


def test_n_at_k_ignores_sample_order_and_larger_sets_match_enumeration():
  rng = np.random.default_rng(0)
  for _ in range(20):
    samples = [(bool(p), bool(s)) for p, s in rng.integers(0, 2, size=(9, 2))]
    n, k = int(rng.integers(1, 4)), int(rng.integers(3, 10))
    want = float(brute_n_at_k(samples, n, k))
    perm = [samples[i] for i in rng.permutation(len(samples))]
    assert E.n_at_k(samples, n, k) == pytest.approx(want, abs=1e-12)
    assert E.n_at_k(perm, n, k) == E.n_at_k(samples, n, k)


def test_n_at_k_large_budgets_stay_exact_enough():
  # 200 samples, 10@100: a problem where 5 samples pass, 1 of them solved.
  samples = [(T, T)] + [(T, F)] * 4 + [(F, F)] * 195
  got = E.n_at_k(samples, 10, 100)
  # At most 5 pass, so every drawn passing sample is submitted: success = P(s0 drawn) = 100/200.
  assert got == pytest.approx(0.5, abs=1e-14)
  samples = [(T, T)] * 3 + [(T, F)] * 30 + [(F, F)] * 167
  got = E.n_at_k(samples, 10, 100)
  assert 0 < got < 1
  # 1 - sum over m of P(m) C(30, min(m,10)) / C(33, min(m,10)), written with Fractions.
  fail = sum(Fraction(math.comb(33, m) * math.comb(167, 100 - m), math.comb(200, 100))
             * Fraction(math.comb(30, min(m, 10)), math.comb(33, min(m, 10))) for m in range(0, 34))
  assert got == pytest.approx(float(1 - fail), abs=1e-14)


def test_n_at_k_rejects_impossible_arguments():
  with pytest.raises(ValueError, match="n@k"):
    E.n_at_k([(T, T)] * 3, 1, 4)
  with pytest.raises(ValueError, match="n@k"):
    E.n_at_k([(T, T)] * 3, 0, 2)
  np.testing.assert_allclose(E.n_at_k_per_problem([[(T, T)], [(F, F)], [(T, T), (T, F)]], 1, 1),
                             [1.0, 0.0, 0.5])


# --------------------------------------------------------------------------------------------------
# The paper's metrics


def test_st_one_at_three_is_the_paper_rule_averaged_over_orders():
  kinds = [(T, T), (T, F), (F, T), (F, F)]
  for triple in itertools.product(kinds, repeat=3):
    orders = list(itertools.permutations(triple))
    # evaluate.single_turn_one_at_three is the order-dependent rule on written triples.
    outcomes = [{"problem": "p", "public_passed": [p], "solved": s} for order in orders
                for p, s in order]
    want = np.mean(evaluate.single_turn_one_at_three(outcomes))
    assert E.st_one_at_three(list(triple)) == pytest.approx(want, abs=1e-12), triple


def test_st_one_at_three_over_all_triples_of_more_samples():
  rng = np.random.default_rng(1)
  for size in (3, 4, 6, 7):
    for _ in range(10):
      samples = [(bool(p), bool(s)) for p, s in rng.integers(0, 2, size=(size, 2))]
      ordered = list(itertools.permutations(samples, 3))
      want = Fraction(sum(paper_st_rule(t) for t in ordered), len(ordered))
      assert E.st_one_at_three(samples) == pytest.approx(float(want), abs=1e-12)
  with pytest.raises(ValueError):
    E.st_one_at_three([(T, T), (T, T)])


def test_mt_metrics_and_the_budget_of_turns():
  assert E.rollouts_for_budget(100, 3) == 33
  assert E.rollouts_for_budget(99, 3) == 33
  assert E.rollouts_for_budget(100, 5) == 20
  assert E.rollouts_for_budget(2, 3) == 0
  rollouts = [E.Sample(T, T, 1), E.Sample(F, F, 3), E.Sample(T, F, 2), E.Sample(F, F, 3),
              E.Sample(T, T, 3), E.Sample(F, F, 3)]
  assert E.mt_solve_rate(rollouts) == pytest.approx(2 / 6)
  # MT 1@3 is 1@1 over rollouts with the final solution submitted unconditionally.
  assert E.mt_n_at_budget(rollouts, 1, 3, 3, fill=True) == pytest.approx(E.mt_solve_rate(rollouts))
  # A budget of 6 or 8 turns buys 2 rollouts of up to 3 turns, early stops or not.
  for budget in (6, 8):
    assert E.mt_n_at_budget(rollouts, 1, budget, 3) == pytest.approx(
        float(brute_n_at_k(rollouts, 1, 2)), abs=1e-12)
  # 10@100 = 10 submissions among 33 rollouts' finals.
  many = rollouts * 6  # 36 rollouts
  assert E.mt_n_at_budget(many, 10, 100, 3) == E.n_at_k(many, 10, 33)
  with pytest.raises(ValueError, match="no rollout"):
    E.mt_n_at_budget(rollouts, 1, 2, 3)


# --------------------------------------------------------------------------------------------------
# Bootstrap


def _percentile(sorted_values, q):
  pos = q / 100 * (len(sorted_values) - 1)
  lo = math.floor(pos)
  hi = min(lo + 1, len(sorted_values) - 1)
  return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


@pytest.mark.parametrize("seed", [0, 5])
def test_bootstrap_over_problems_matches_an_independent_computation(seed):
  values = [1.0, 0.0, 0.25, 0.5, 1.0, 0.0, 0.75]
  rng = np.random.default_rng(seed)
  means = sorted(sum(values[i] for i in rng.integers(0, len(values), size=len(values))) / len(values)
                 for _ in range(200))
  lo, hi = E.bootstrap_over_problems(values, seed=seed)
  assert lo == pytest.approx(_percentile(means, 2.5), abs=1e-12)
  assert hi == pytest.approx(_percentile(means, 97.5), abs=1e-12)
  assert E.bootstrap_over_problems(values, seed=seed) == (lo, hi)  # deterministic
  assert E.bootstrap_over_problems(values, seed=seed + 1) != (lo, hi)
  assert all(math.isnan(v) for v in E.bootstrap_over_problems([]))


def test_bootstrap_over_samples_matches_an_independent_computation():
  problems = [[(T, T), (F, F), (T, F)], [(F, F)] * 4, [(T, T), (T, T), (F, F), (T, F), (F, F)]]
  rng = np.random.default_rng(3)
  means = []
  for _ in range(50):
    vals = []
    for s in problems:
      picks = rng.integers(0, len(s), size=len(s))
      vals.append(sum(s[i][1] for i in picks) / len(s))
    means.append(sum(vals) / len(vals))
  means.sort()
  lo, hi = E.bootstrap_interval(problems, E.mt_solve_rate, resamples=50, seed=3, unit="samples")
  assert lo == pytest.approx(_percentile(means, 2.5), abs=1e-12)
  assert hi == pytest.approx(_percentile(means, 97.5), abs=1e-12)
  with pytest.raises(ValueError, match="unit"):
    E.bootstrap_interval(problems, E.mt_solve_rate, unit="episodes")


def test_problem_resampling_includes_problem_variation_sample_resampling_does_not():
  # Half the problems always solved, half never: the samples carry no noise, the problems do.
  problems = [[(T, T)] * 5] * 10 + [[(F, F)] * 5] * 10
  est = E.estimate(problems, E.mt_solve_rate)
  assert est.mean == 0.5 and est.problems == 20 and est.samples == (5, 5)
  assert est.ci95[0] < 0.4 and est.ci95[1] > 0.6
  assert E.estimate(problems, E.mt_solve_rate, unit="samples").ci95 == (0.5, 0.5)
  # The default is the paper's 200 resamples.
  assert E.BOOTSTRAP_RESAMPLES == 200
  assert est.ci95 == E.bootstrap_over_problems([1.0] * 10 + [0.0] * 10, resamples=200, seed=0)


# --------------------------------------------------------------------------------------------------
# Loading episodes


def _episode(problem, public_passed, solved, mode=None, **extra):
  ep = {"problem": problem, "turns": len(public_passed), "public_passed": public_passed,
        "solved": solved, **extra}
  if mode:
    ep["mode"] = mode
  return ep


def test_load_samples_groups_consecutive_episodes_by_mode_and_problem(tmp_path):
  rows = [_episode("a", [F, T], T, "multi_turn"), _episode("a", [F, F, F], F, "multi_turn"),
          _episode("b", [T], F, "multi_turn"),
          _episode("a", [T], T, "single_turn"), _episode("a", [F], F, "single_turn"),
          _episode("a", [F], F, "single_turn"), _episode("b", [F], T, "single_turn")]
  path = tmp_path / "x.episodes.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in rows[:3]) + "\n\n" +
                  "\n".join(json.dumps(r) for r in rows[3:]) + "\n")
  got = E.load_samples(str(path))
  assert got.multi_turn == [("a", [E.Sample(T, T, 2), E.Sample(F, F, 3)]), ("b", [E.Sample(T, F, 1)])]
  assert got.single_turn == [("a", [E.Sample(T, T, 1), E.Sample(F, F, 1), E.Sample(F, F, 1)]),
                             ("b", [E.Sample(F, T, 1)])]
  # Records without `mode` are multi-turn.
  legacy = E.group_samples([_episode("c", [F, F], F), _episode("c", [T], T)])
  assert legacy.multi_turn == [("c", [E.Sample(F, F, 2), E.Sample(T, T, 1)])] and not legacy.single_turn


@pytest.mark.parametrize("line,message", [
    ('{"problem": "a", "solved": tru', "not valid JSON"),
    ('[1, 2]', "expected a JSON object"),
    ('{"solved": true, "public_passed": [true]}', "'problem'"),
    ('{"problem": "a", "public_passed": [true]}', "'solved'"),
    ('{"problem": "a", "solved": true, "public_passed": []}', "'public_passed'"),
    ('{"problem": "a", "solved": true, "public_passed": [true], "mode": "x"}', "'mode'"),
    ('{"problem": "a", "solved": true, "public_passed": [true], "turns": 0}', "'turns'"),
])
def test_read_episodes_names_the_file_and_line(tmp_path, line, message):
  path = tmp_path / "bad.episodes.jsonl"
  path.write_text(json.dumps(_episode("a", [T], T)) + "\n\n" + line + "\n")
  with pytest.raises(E.RecordError, match=message) as err:
    E.read_episodes(str(path))
  assert str(err.value).startswith(f"{path}:3: ")
  with pytest.raises(E.RecordError, match="cannot read"):
    E.read_episodes(str(tmp_path / "missing.jsonl"))


# --------------------------------------------------------------------------------------------------
# chrF and the error analysis


@pytest.mark.parametrize("hyp,ref,expected", [
    ("ab", "ab", 1.0),
    ("ab", "ac", 0.25),  # 1-grams P = R = 1/2, 2-grams P = R = 0: averages 1/4, F = 1/4
    ("a", "ab", 5 * 0.5 / 4.5),  # P = 1, R = 1/2 (only 1-grams count): 5 P R / (4 P + R)
    ("ab", "a", 5 * 0.5 / 3),  # P = 1/2, R = 1
    ("aaa", "aa", 0.875),  # 1-grams P 2/3 R 1, 2-grams P 1/2 R 1: P = 7/12, R = 1
    ("a b\n c", "abc", 1.0),  # whitespace ignored
    ("abc", "xyz", 0.0),
    ("", "abc", 0.0),
    ("", " \n", 1.0),  # identical after removing whitespace
    # sacrebleu 2.6.0 CHRF().sentence_score(hyp, [ref]).score / 100:
    ("def f(x):\n  return x+1\n", "def f(x):\n    return x + 2\n", 0.9300541370394312),
    ("print(1)", "import sys\nprint(sum(map(int, sys.stdin.read().split())))", 0.0851030230757571),
    ("abcdefgh", "abcdefg", 0.9515349630471859),
])
def test_chrf_hand_computed_and_sacrebleu_values(hyp, ref, expected):
  assert E.chrf(hyp, ref) == pytest.approx(expected, abs=1e-12)


def test_response_category():
  assert E.response_category("PPP") == "passed"
  assert E.response_category("PWE") == "wrong output"
  assert E.response_category("PEW") == "exception"
  assert E.response_category("S") == "exception"
  assert E.response_category("PT") == "timeout"
  assert E.response_category("M") == "out of memory"
  assert E.response_category("NNN") == "no code"
  assert E.response_category("X") == "other"
  assert E.response_category("", True) == "passed" and E.response_category("", False) == "other"


def _turn(code, verdicts):
  return {"response": "```python\n" + (code or "") + "\n```", "code": code, "valid": code is not None,
          "truncated": False, "public_verdicts": verdicts, "feedback": None}


def test_turn_error_stats_counts_by_hand():
  episodes = [
      # repeats its code once, then edits it: "ab" -> "ab" (distance 0) -> "ac" (0.75)
      _episode("p", [F, F, F], F, "multi_turn",
               turn_log=[_turn("ab", "W"), _turn("ab", "W"), _turn("ac", "TP")]),
      # no code at turn 1 (no pair at turn 2), then passes
      _episode("p", [F, T], T, "multi_turn", turn_log=[_turn(None, "NN"), _turn("x=1", "PP")]),
      # passes at once
      _episode("q", [T], T, "multi_turn", turn_log=[_turn("print(1)", "P")]),
      # single-turn and log-less episodes are ignored
      _episode("q", [F], F, "single_turn", turn_log=[_turn("z", "W")]),
      _episode("q", [F], F, "multi_turn"),
  ]
  stats = E.turn_error_stats(episodes)
  assert [s.turn for s in stats] == [1, 2, 3]
  assert stats[0] == E.TurnStats(1, 3, {"passed": 1, "wrong output": 1, "no code": 1}, 0, 0,
                                 stats[0].edit_distance)
  assert math.isnan(stats[0].edit_distance)
  assert stats[1] == E.TurnStats(2, 2, {"passed": 1, "wrong output": 1}, 1, 1, 0.0)
  assert stats[2] == E.TurnStats(3, 1, {"timeout": 1}, 1, 0, 0.75)
