"""experiments/diagnostics/episode_stats.py: the per-turn rates, repeats, first-answer concentration
and timeouts of constructed episodes, against values counted by hand; a gzipped record reads the same;
a damaged file gets one line naming it."""
import gzip
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "diagnostics", "episode_stats.py")


def _module():
  spec = importlib.util.spec_from_file_location("episode_stats", SCRIPT)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _ep(problem, codes, public, solved, final="PP", mode="multi_turn", verdicts=None):
  verdicts = verdicts or ["P" if p else "W" for p in public]
  return {"problem": problem, "turns": len(codes), "valid": [bool(c) for c in codes],
          "public_passed": public, "solved": solved, "truncated": False, "mode": mode,
          "final_verdicts": final, "final_groups": [["public", 1], ["private", 1]],
          "turn_log": [{"code": c, "valid": bool(c), "public_verdicts": v, "feedback": None,
                        "response": c, "truncated": False} for c, v in zip(codes, verdicts)]}


EPISODES = [
    # problem a: first codes x, x, y -> mode share 2/3
    _ep("a", ["x", "x", "z"], [False, False, True], True),       # turn 2 repeats, turn 3 not
    _ep("a", ["x", "w"], [False, True], True, final="TP"),          # a timeout in the final tests
    _ep("a", ["y"], [True], False, final="PW"),
    # problem b: first codes u, u -> mode share 1
    _ep("b", ["u", "", ""], [False, False, False], False, verdicts=["T", "N", "N"]),  # empty: no repeat
    _ep("b", ["u", "u", "u"], [False, False, False], False),      # repeats at turns 2 and 3
    # single-turn episodes of problem a, one each: no problem with two, so no mode share
    _ep("a", ["x"], [True], True, mode="single_turn"),
]


def test_stats_against_hand_counts():
  s = _module().stats(EPISODES)
  mt, st = s["multi_turn"], s["single_turn"]
  assert (mt["episodes"], mt["solved"], mt["turns"], mt["truncated"]) == (5, 2 / 5, 12 / 5, 0)
  t1, t2, t3 = mt["per_turn"]
  assert (t1["reached"], t1["valid"], t1["public"], t1["repeats"]) == (5, 1.0, 1 / 5, None)
  assert (t2["reached"], t2["valid"], t2["public"]) == (4, 3 / 4, 1 / 4)
  assert t2["repeats"] == 2 / 4  # "x" after "x", "u" after "u"; "" after "u" and "w" after "x" are not
  assert (t3["reached"], t3["valid"], t3["public"], t3["repeats"]) == (3, 2 / 3, 1 / 3, 1 / 3)
  assert mt["first_answer_mode_share"] == (2 / 3 + 1) / 2
  assert mt["timeouts"] == 2  # one final verdict, one public verdict at turn 1
  assert st["episodes"] == 1 and st["first_answer_mode_share"] is None and st["timeouts"] == 0


def test_first_answers_without_code_and_records_without_turn_logs():
  mod = _module()
  # problem c: first answers "", "", "v", "w": the two with code differ -> share 1/2 (not 2/4 or 1)
  rows = [_ep("c", [""], [False], False), _ep("c", [""], [False], False),
          _ep("c", ["v"], [False], False), _ep("c", ["w"], [False], False)]
  assert mod.stats(rows)["multi_turn"]["first_answer_mode_share"] == 1 / 2
  assert mod.stats(rows)["multi_turn"]["per_turn"][0]["valid"] == 2 / 4
  # the estimators' minimal record: no turn_log, valid or turns
  bare = [{"problem": "a", "solved": True, "public_passed": [False, True]},
          {"problem": "a", "solved": False, "public_passed": [False]}]
  s = mod.stats(bare)["multi_turn"]
  assert (s["turns"], s["first_answer_mode_share"], s["timeouts"]) == (1.5, None, 0)
  assert [(r["reached"], r["valid"], r["public"], r["repeats"]) for r in s["per_turn"]] == [
      (2, None, 0.0, None), (1, None, 1.0, None)]


def test_the_command_reads_gzipped_records_and_names_a_damaged_file(tmp_path):
  plain = tmp_path / "step_0.episodes.jsonl"
  plain.write_text("".join(json.dumps(e) + "\n" for e in EPISODES))
  packed = tmp_path / "step_1.episodes.jsonl.gz"
  with gzip.open(packed, "wt") as f:
    f.write(plain.read_text())
  outs = [subprocess.run([sys.executable, SCRIPT, str(p)], capture_output=True, text=True, timeout=120)
          for p in (plain, packed)]
  assert [o.returncode for o in outs] == [0, 0], outs[0].stderr + outs[1].stderr
  assert outs[0].stdout.splitlines()[1:] == outs[1].stdout.splitlines()[1:]
  assert "turn 2: reached by 4, valid code 0.750, passes public tests 0.250, repeats previous code 0.500" \
      in outs[0].stdout
  bad = tmp_path / "bad.episodes.jsonl"
  bad.write_text('{"problem": "a"\n')
  out = subprocess.run([sys.executable, SCRIPT, str(bad)], capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1 and str(bad) in out.stderr
