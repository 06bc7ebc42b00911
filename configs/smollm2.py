"""RLEF with a real Instruct model on real tasks: SmolLM2-135M-Instruct on MBPP, evaluated on HumanEval+.

  python -m rlef_jax.convert --direction=gguf_to_orbax --src=smollm2-135m-instruct \
      --dst=checkpoints/smollm2-135m-instruct          # once: params + tokenizer (ChatML template)
  python -m rlef_jax.train --config=configs/smollm2.py --workdir=runs/smollm2

The real-model path end to end: the model's own chat template and stop ids, MBPP's train problems as
the RL task set (first assert public and fed back, the other asserts private; rlef_jax/data/mbpp.py),
and transfer evaluation on HumanEval+ (base tests fed back, plus tests scoring; paper App. C.4). The RL
hyperparameters follow the paper where it gives them; what differs is marked with the reason.
SmolLM2-135M is weak at code (BUILD_NOTES.md "SmolLM2-135M-Instruct before training"), so this is a
pipeline for a GPU run and a CPU demonstration that every step is right, not a paper-scale result.
"""

from rlef_jax import config as rlef_config


def get_config():
  c = rlef_config.base_config()

  c.model.preset = "smollm2-135m"  # SmolLM2-135M-Instruct (Apache-2.0): hidden 576, 30 layers, 9/3 heads
  c.model.dtype = "float32"  # our choice: CPU computes float32 fastest; bfloat16 on an accelerator
  c.model.param_dtype = "float32"
  # Both needed for the PPO update to fit: at 16 x 2048 tokens the compiled update's temporaries are
  # 556 GB with neither, 545 GB with remat alone, 16.8 GB with both (benchmarks/fit.py; BUILD_NOTES.md).
  # The sampler decodes with unrolled layers either way (sampler.prepare); the converted params (stored
  # unrolled unless converted with --scan_layers) are stacked on load.
  c.model.remat = True
  c.model.scan_layers = True
  # our choice: the update's and scoring's attention by 64-token query blocks (the same logits, no
  # scores above the diagonal): at 16 x 2048 tokens the update's temporaries 8.1 -> 6.3 GB and a scoring
  # pass's 7.4 -> 2.1 GB (benchmarks/fit.py); at 4 x 512 an update 47.0 -> 39.2 s on 2 CPU cores
  # (benchmarks/ppo_step.py; BUILD_NOTES.md "The update's MFU by remat policy"). The remat policy stays
  # "nothing_saveable": keeping the matmul outputs is faster but does not fit 16 GB at 16 x 2048.
  c.model.attention = "blocked"
  c.model.init_checkpoint = "checkpoints/smollm2-135m-instruct/params"  # made by the convert command above
  c.tokenizer.path = "checkpoints/smollm2-135m-instruct/tokenizer"  # the model's ChatML template and stop ids

  c.mesh.data = -1  # every device does data parallelism (a 135M model needs no sharding)
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  c.data.name = "mbpp"  # MBPP train split as the RL task set (not the paper's CodeContests: not offline)
  c.data.train_split = "train"  # 263 problems (MBPP 601-974 without the tasks MBPP+ re-uses)

  c.env.default_time_s = 4.0  # our choice: EvalPlus's minimum per-test limit; MBPP functions are small
  c.env.default_memory_bytes = 1 << 30  # paper App. A.2

  c.sampling.temperature = 1.0  # paper App. A.1
  c.sampling.top_p = 1.0  # paper App. A.1
  c.sampling.max_new_tokens = 384  # [U] our choice: SmolLM2's working answers fit in ~300 tokens; longer ones are degenerate repeats (BUILD_NOTES.md)
  c.sampling.max_context_length = 2048  # [U] our choice: prompt + 3 answers + 2 feedback messages
  c.sampling.prefill_chunk = 512  # our choice: a long prompt fed in 512-token pieces; 8.5 GB of prefill temporaries at 32 rows in one piece, 2.6 GB so (benchmarks/fit.py)

  c.rl.kl_coef = 0.05  # paper App. A.1
  c.rl.rollouts_per_round = 64  # our choice, not the paper's 1024: a CPU- or single-GPU-sized round
  c.rl.minibatch_size = 16  # 4 updates per round of a quarter each, as the paper's 4 x 256 = 1024
  c.rl.updates_per_round = 4  # paper App. A.1 (4 updates per round)
  c.rl.num_microbatches = 2  # our choice: 8-episode chunks; the update's in-loop peak on one device is 10.1 GB with blocked attention (11.9 GB einsum), 20.6 GB in one chunk with einsum (benchmarks/fit.py)
  c.rl.score_batch_size = 16
  c.rl.logprob_chunk = 128  # our choice: a 49k vocabulary; 16 episodes x 2048 tokens of float32 logits would be 6.4 GB per pass (and again in the gradient)

  c.optim.lr = 1e-6  # our choice: the paper's 2e-7 is for 8B/70B with 256-episode minibatches
  c.optim.value_lr = 1e-5  # our choice: the value head starts random
  c.optim.warmup_steps = 20

  c.train.num_updates = 400
  c.train.eval_every = 100
  c.train.checkpoint_every = 20

  c.eval.dataset = "humaneval_plus"  # transfer evaluation (paper Table 2: HumanEval+ / MBPP+)
  c.eval.split = "test"  # HumanEval+ has one split (164 tasks)
  c.eval.num_rollouts_per_problem = 1  # our choice on CPU; the paper uses 20 for HumanEval+ (Table 5)
  c.eval.max_problems = 0  # all 164
  c.eval.batch_size = 32  # our choice: 32 episodes' KV caches (~94 MB each at 2048 float32 slots, computed from the shapes) at a time; all 164 at once reached 19.7 GB RSS
  c.eval.temperature = 0.2  # paper §3.1
  c.eval.top_p = 0.95  # paper §3.1
  return c
