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

  # Memory (per device, benchmarks/fit.py; BUILD_NOTES "8B and 70B fit"): one 8-GPU host holds policy,
  # value, both AdamW states and the reference, sharded 8 ways; more hosts add data parallelism (64 and
  # 128 GPUs, the paper's 128 H100s for 8B, App. A.1: data = 8 and 16), so the per-device state stays
  # the same and so does each step's (one episode per data-parallel shard at a time, below).
  c.mesh.data = -1  # our choice: data parallel across hosts
  c.mesh.fsdp = 4  # our choice: params/optimizer state sharded 4 ways within a host (x tensor 2 = 8)
  c.mesh.tensor = 2  # our choice: heads/MLP split over 2 GPUs: halves each device's attention scores (an 8192-token episode's H x L x L float32 scores, 8.6 GB per layer unsplit) and, with the length-split residual stream, the activations remat keeps; tensor = 1 measured 77.6 GB in the update

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
  c.sampling.max_concurrent_episodes = 64  # [U] our choice: 64 episodes per host at once (2 groups of 32,
  # each group's KV cache of up to 8192 slots 4.3 GB per GPU) beside the resident train state; a round's
  # 1024 episodes run in 16 batches on one host, 2 on 8 hosts, 1 on 16
  c.sampling.prefill_chunk = 512  # [U] our choice: prompts and feedback longer than 512 tokens are fed to
  # the cache 512 at a time, so a prefill's attention scores stay bounded whatever the prompt length

  c.rl.kl_coef = 0.05  # beta (paper §2.2, App. A.1)
  c.rl.clip_eps = 0.2  # paper App. A.1
  c.rl.value_clip = 0.2  # alpha (paper App. A.1)
  c.rl.gamma = 1.0  # paper §2.2
  c.rl.rollouts_per_round = 1024  # paper App. A.1
  c.rl.minibatch_size = 256  # paper App. A.1
  c.rl.updates_per_round = 4  # paper App. A.1
  c.rl.behaviour_correction = True  # min(pi/pi_b, 1) correction (paper App. A.1)
  c.rl.num_microbatches = -1  # [U] our choice: one episode per data-parallel shard per gradient pass (64
  # passes of 4 on 8 GPUs, 8 of 32 on 64, 4 of 64 on 128): the least activation memory, the same on any
  # number of hosts; a fixed count could not split a 256-episode minibatch evenly over 8, 64 and 128
  c.rl.logprob_chunk = 1024  # [U] our choice: logits 1024 positions at a time (B x 1024 x 128k, not x L)
  c.rl.score_batch_size = -1  # [U] our choice: score one episode per data-parallel shard at a time (4,
  # 32 or 64 a pass): a forward holds the per-episode H x L x L attention scores, so the pass is sized
  # per device, not per round
  c.rl.reference_dtype = "bfloat16"  # [U] our choice: the frozen reference only runs bf16 forward passes,
  # so a bf16 copy gives the same log-probs as the f32 one at half the memory (2 GB less per GPU on 8)

  c.optim.lr = 2e-7  # AdamW (paper App. A.1)
  # AdamW moments stay float32 (model.param_dtype: lr 2e-7 updates vanish in bf16) and are sharded like
  # their params over fsdp x tensor (sharding.opt_state_shardings): 8.0 + 7.5 GB per GPU on one host
  c.optim.weight_decay = 0.1  # paper App. A.1
  c.optim.warmup_steps = 50  # linear warm-up (paper App. A.1)

  c.train.num_updates = 12000  # paper App. A.1 (8B)
  c.train.eval_every = 800  # paper App. A.1

  c.eval.temperature = 0.2  # 1@3 evaluation (paper §3.1)
  c.eval.top_p = 0.95  # all evaluations (paper §3.1)
  c.eval.max_turns = 3  # paper §3.1

  c.warmstart.enabled = False  # RL starts directly from the Instruct model (paper §3)
  return c
