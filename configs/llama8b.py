"""RLEF on Llama 3.1 8B Instruct with the paper's hyperparameters (arXiv 2410.02089, App. A.1).

  python -m rlef_jax.train --config configs/llama8b.py --config.rl.kl_coef=0.1 ...

Every value the paper states cites its section; values the paper leaves open ([U]) are our
choices and are marked so in rlef_jax/config.py, where every field is documented.
"""

from rlef_jax import config as rlef_config


def get_config():
  c = rlef_config.base_config()

  c.model.preset = "llama3.1-8b"  # Llama 3.1 8B Instruct, one of the paper's initial policies (§3)
  c.model.dtype = "bfloat16"  # our choice: bf16 compute on H100s
  c.model.param_dtype = "float32"  # our choice: fp32 master weights; lr 2e-7 updates vanish in bf16
  c.model.remat = True  # our choice: recompute layers in the backward pass to fit long episodes
  c.model.scan_layers = True  # our choice: one compiled layer body, fast compile
  c.model.init_checkpoint = "checkpoints/llama3.1-8b-instruct"  # RL starts from Instruct, no SFT (paper §3); HF or orbax dir
  c.tokenizer.path = "checkpoints/llama3.1-8b-instruct"  # the Instruct model's tokenizer and chat template (paper §2.1)

  c.mesh.data = -1  # our choice: data parallel across hosts
  c.mesh.fsdp = 8  # our choice: params/optimizer state sharded over one 8-GPU host (paper trains 8B on 128 H100s, App. A.1)
  c.mesh.tensor = 1  # our choice: no tensor parallelism needed at 8B

  c.data.name = "code_contests"  # CodeContests train split for RL (paper §3)
  c.data.train_split = "train"  # paper §3 (669 problems without public/private tests dropped)

  c.env.max_turns = 3  # 3 LLM attempts per episode (paper §2.1)
  c.env.feedback = "true"  # execution feedback on public tests (paper §2.1)
  c.env.invalid_code_penalty = -0.2  # paper §2.2
  c.env.success_reward = 1.0  # paper §2.2
  c.env.failure_reward = -1.0  # paper §2.2

  c.env.default_time_s = 10.0  # paper App. A.2
  c.env.default_memory_bytes = 1 << 30  # paper App. A.2 ("1 GB")

  c.sampling.temperature = 1.0  # paper App. A.1
  c.sampling.top_p = 1.0  # no top-p / top-k in training (paper App. A.1)

  c.rl.kl_coef = 0.05  # beta (paper §2.2, App. A.1)
  c.rl.clip_eps = 0.2  # paper App. A.1
  c.rl.value_clip = 0.2  # alpha (paper App. A.1)
  c.rl.gamma = 1.0  # paper §2.2
  c.rl.rollouts_per_round = 1024  # paper App. A.1
  c.rl.minibatch_size = 256  # paper App. A.1
  c.rl.updates_per_round = 4  # paper App. A.1
  c.rl.behaviour_correction = True  # min(pi/pi_b, 1) correction (paper App. A.1)
  c.rl.num_microbatches = 8  # [U] our choice, not measured: 256 = 8 x 32 episodes per gradient pass
  # (the loss holds microbatch x L x 128k float32 logits and their gradient)
  c.rl.logprob_chunk = 1024  # [U] our choice, not measured: logits 1024 positions at a time
  c.rl.score_batch_size = 64  # [U] our choice, not measured: score the round 64 episodes at a time
  # (each forward then holds 64 x L x 128k logits across the slice, not 1024 x L x 128k)

  c.optim.lr = 2e-7  # AdamW (paper App. A.1)
  c.optim.weight_decay = 0.1  # paper App. A.1
  c.optim.warmup_steps = 50  # linear warm-up (paper App. A.1)

  c.train.num_updates = 12000  # paper App. A.1 (8B)
  c.train.eval_every = 800  # paper App. A.1

  c.eval.temperature = 0.2  # 1@3 evaluation (paper §3.1)
  c.eval.top_p = 0.95  # all evaluations (paper §3.1)
  c.eval.max_turns = 3  # paper §3.1

  c.warmstart.enabled = False  # RL starts directly from the Instruct model (paper §3)
  return c
