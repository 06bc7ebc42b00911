"""A tiny random Llama learning the synthetic task family on CPU in minutes.

  python -m rlef_jax.train --config configs/tiny.py --workdir /tmp/rlef_tiny

Not a paper setting: a CPU-scale smoke run of the full pipeline (warm start, then RLEF). The RL
hyperparameters are plausible starting values, to be tuned.
"""

from rlef_jax import config as rlef_config


def get_config():
  c = rlef_config.base_config()

  c.model.preset = "tiny"  # hidden 128, 2 layers, 4 heads / 2 kv heads (rlef_jax.config.MODEL_PRESETS)
  c.model.vocab_size = 491  # = the synthetic tokenizer's vocabulary (train.py checks they are equal)
  c.model.dtype = "float32"  # CPU computes float32 fastest
  c.model.param_dtype = "float32"
  c.model.remat = False  # activations are small
  c.model.scan_layers = False  # 2 layers compile quickly unrolled
  c.model.init_checkpoint = ""  # random init, then the supervised warm start
  c.tokenizer.path = "rlef_jax/assets/synthetic_tokenizer"

  c.mesh.data = -1  # every CPU device does data parallelism
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.data.name = "synthetic"  # rlef_jax.synthetic task family
  c.data.train_split = "train"
  c.data.eval_split = "valid"

  c.env.default_time_s = 2.0  # synthetic programs are tiny
  c.env.default_memory_bytes = 256 << 20

  c.sampling.max_new_tokens = 128  # synthetic solutions are short
  c.sampling.max_context_length = 512  # = the tiny preset's max_position_embeddings

  c.rl.rollouts_per_round = 64
  c.rl.minibatch_size = 32
  c.rl.updates_per_round = 2  # one pass over each round's rollouts, as in the paper's 4 x 256 = 1024

  c.optim.lr = 1e-5
  c.optim.value_lr = 1e-4
  c.optim.warmup_steps = 10

  c.train.num_updates = 400
  c.train.eval_every = 20
  c.train.checkpoint_every = 20
  c.train.log_every = 1

  c.eval.num_rollouts_per_problem = 4
  c.eval.max_problems = 64

  c.warmstart.enabled = True  # the random tiny model must first learn to answer in code
  c.warmstart.steps = 300
  c.warmstart.lr = 3e-4
  c.warmstart.batch_size = 32
  return c
