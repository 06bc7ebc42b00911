"""Does the PPO pipeline move the policy the right way? A sanity check of rollout -> batch -> update.

Single-turn episodes of the warm-started tiny model get an artificial reward, +1 iff the code uses the
separator '-', else -1; after each round of two updates the share of '-' answers should rise.

  python experiments/diagnostics/ppo_direction.py WORKDIR    (WORKDIR of a tiny run: its reference_params)
"""
import sys
import dataclasses, numpy as np, jax, jax.numpy as jnp
from rlef_jax import experiment, round_batch, warmstart, rollout, ppo, ppo_update, model as model_lib, synthetic, env as env_lib
from configs import tiny
from absl import flags
flags.FLAGS(["x"])
c = tiny.get_config()
c.env.max_turns = 1
c.optim.lr = 3e-4
c.optim.warmup_steps = 0
run = experiment.build(c, sys.argv[1])
ref = warmstart.reference_params(run, jax.random.key(0))
policy_opt, value_opt = ppo.make_optimizers(c.optim, total_steps=100)
vp = model_lib.value_params_from_policy(ref, jax.random.key(1), run.llama_config)
pp = jax.tree.map(lambda x: jnp.array(x, copy=True), ref)
state = ppo.init_train_state(pp, vp, policy_opt, value_opt, jax.random.key(2))
engine = rollout.RolloutEngine(run.policy_model, run.llama_config, run.tokenizer, run.pool, c.env, experiment.rollout_settings(c, evaluation=False), run.mesh)
fns = round_batch.make_score_fns(run)
update = ppo_update.make_update_step(run.policy_model, run.value_model, policy_opt, value_opt, run.ppo_settings, mesh=run.mesh)
recs = synthetic.generate_problems(64, 5)
probs = [env_lib.Problem.from_record("synthetic", r, env_config=c.env) for r in recs]
def frac_dash(records):
    return np.mean([ (r.episode.turns[0].code or "").startswith("print('-'") for r in records])
for rnd in range(8):
    records, _ = engine.run(state.policy_params, probs, jax.random.key(100 + rnd))
    print("round", rnd, "P(sep '-')", frac_dash(records), "valid", np.mean([r.episode.turns[0].valid for r in records]), flush=True)
    new = []
    for r in records:
        ep = r.episode
        good = (ep.turns[0].code or "").startswith("print('-'")
        turns = (dataclasses.replace(ep.turns[0], task_reward=1.0 if good else -1.0),)
        new.append(dataclasses.replace(r, episode=dataclasses.replace(ep, turns=turns)))
    batch, _ = round_batch.make_round_batch(run, state, ref, new, fns)
    for k in range(2):
        rows = np.arange(k * 32, (k + 1) * 32)
        state, m = update(state, {key: jnp.asarray(batch[key][rows]) for key in ppo.minibatch_keys(run.ppo_settings)})
run.close()
