"""How many supervised steps does the tiny model need to learn to copy the separator from feedback?

A learnability probe for the synthetic family (not part of training): 2-turn dialogues whose final
target uses the separator shown in the feedback, trained from a random init; prints the loss and the
fraction of held-out dialogues whose separator the model predicts (greedy, teacher-forced).

  python experiments/diagnostics/copy_probe.py [HIDDEN] [LR]      (from the repository root)
"""
import time, sys, numpy as np, jax, jax.numpy as jnp, optax, dataclasses
import flax.linen as nn
from rlef_jax import warmstart as ws, synthetic, env as env_lib, config as config_lib, model as model_lib
from rlef_jax.tokenizer import ChatTokenizer
from rlef_jax.execution import ExecutionPool
from configs import tiny
c = tiny.get_config()
hidden = int(sys.argv[1]) if len(sys.argv) > 1 else 128
lr = float(sys.argv[2]) if len(sys.argv) > 2 else 3e-4
tok = ChatTokenizer.load("rlef_jax/assets/synthetic_tokenizer")
lc = config_lib.llama_config(c.model)
lc = dataclasses.replace(lc, hidden_size=hidden, head_dim=hidden // lc.num_heads)
m = model_lib.Llama(lc)
params = nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
recs = synthetic.generate_problems(3000, 0)
pool = ExecutionPool(workers=2)
probs = [(env_lib.Problem.from_record("synthetic", r, env_config=c.env), r) for r in recs]
# leaky dialogues: 2 turns, final target = the TRUE solution (copy is learnable)
t = time.time()
rng = np.random.default_rng(0)
examples = []
states = []
for p, r in probs:
    sep = synthetic.separator_of(r)
    wrong = [x for x in synthetic.statement_programs(r["description"]) if synthetic.separator_in_program(x) != sep]
    st = env_lib.start(p, tok, c.env)
    st, job = env_lib.on_response(st, tok.encode(f"```python\n{wrong[rng.integers(7)]}\n```") + [tok.eot_id])
    states.append((st, pool.submit(job), r))
for st, f, r in states:
    st = env_lib.on_public_result(st, f.result())
    prompt = list(st.tokens)
    examples.append((prompt + tok.encode(f"```python\n{r['solutions'][0]}\n```") + [tok.eot_id], len(prompt), synthetic.separator_of(r)))
pool.close()
print("built", len(examples), time.time() - t, flush=True)
opt = optax.adam(lr)
state = opt.init(params)
step = ws.make_sft_step(m, opt)
sep_ids = {s: tok.encode(s)[0] for s in synthetic.SEPARATORS}
def sep_acc(params, exs):
    # greedy prob mass on the correct separator at its position
    b = ws.make_batch([e[:2] for e in exs], tok.pad_id, 384)
    logits, _ = m.apply({"params": params}, jnp.asarray(b["tokens_BxL"]))
    acc = []
    for i, (ids, start, sep) in enumerate(exs):
        # position of the separator token in the response: first occurrence of sep id after start
        pos = next(j for j in range(start, len(ids)) if ids[j] == sep_ids[sep])
        pred = int(jnp.argmax(logits[i, pos - 1]))
        acc.append(pred == sep_ids[sep])
    return np.mean(acc)
test = examples[-200:]
train = examples[:-200]
t = time.time()
for k in range(151):
    batch = [train[i][:2] for i in rng.integers(len(train), size=32)]
    params, state, loss = step(params, state, ws.make_batch(batch, tok.pad_id, 384))
    if k % 25 == 0:
        print(k, float(loss), "copy acc", sep_acc(params, test[:64]), round(time.time() - t, 1), flush=True)
